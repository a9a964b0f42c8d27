"""synth.rollout: batch order, parallel limit, health gating, rollback of the failing batch, exit codes;
the commands it builds; `synth deploy --dry-run` against reviewed golden outputs; the refusals."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from synth import rollout as d
from synth.checks import CheckResult
from synth.model import load
from synth.order import Batch
from tests.conftest import EXAMPLES, ROOT
from tests.test_cli import run as cli

GOLDEN = ROOT / "tests" / "golden" / "deploy"

OK = [CheckResult("fine", True, "")]
BAD = [CheckResult("nginx listening on port 80", False, "expected a listener, got nothing")]


class Fake:
    """A recording runner and checker. FAIL_REBUILD: machines whose rebuild exits 1; UNHEALTHY:
    machines whose checks fail (until rolled back); HEALTHY_AFTER: checks that fail N rounds first."""

    def __init__(
        self,
        fail_rebuild: Iterable[str] = (),
        unhealthy: Iterable[str] = (),
        healthy_after: dict[str, int] | None = None,
        fail_rollback: Iterable[str] = (),
        rebuild_seconds: float = 0.0,
        rollback_repairs: bool = True,
    ) -> None:
        self.rollback_repairs = rollback_repairs
        self.fail_rebuild = set(fail_rebuild)
        self.unhealthy = set(unhealthy)
        self.healthy_after = dict(healthy_after or {})
        self.fail_rollback = set(fail_rollback)
        self.rebuild_seconds = rebuild_seconds
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.lines: list[tuple[str, str]] = []

    def run(self, name: str, action: str) -> int:
        with self.lock:
            self.log.append((action, name))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(self.rebuild_seconds)
            if action == "rollback":
                if self.rollback_repairs:
                    self.unhealthy.discard(name)
                return 1 if name in self.fail_rollback else 0
            return 1 if name in self.fail_rebuild else 0
        finally:
            with self.lock:
                self.running -= 1

    def check(self, name: str) -> list[CheckResult]:
        with self.lock:
            self.log.append(("check", name))
            if name in self.unhealthy:
                return BAD
            left = self.healthy_after.get(name, 0)
            if left > 0:
                self.healthy_after[name] = left - 1
                return BAD
            return OK

    def emit(self, host: str, message: str) -> None:
        with self.lock:
            self.lines.append((host, message))

    def actions(self, kind: str) -> list[str]:
        return [n for a, n in self.log if a == kind]


class Clock:
    """A fake clock: sleep() advances it, so check timeouts take no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


BATCHES = [
    Batch("postgres-primary", ("db1",)),
    Batch("postgres-replicas", ("db2",)),
    Batch("pictrs", ("app1",)),
    Batch("frontends", ("fe1", "fe2")),
    Batch("frontends", ("fe3", "fe4")),
]
ALL = ["db1", "db2", "app1", "fe1", "fe2", "fe3", "fe4"]


def go(fake: Fake, batches: list[Batch] = BATCHES, **kw: object) -> d.Outcome:
    clock = Clock()
    opts: dict[str, object] = {"check_timeout": 120.0, "check_interval": 5.0, "sleep": clock.sleep, "clock": clock}
    opts.update(kw)
    return d.run_batches(batches, fake.run, fake.check, emit=fake.emit, **opts)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- orchestration


def test_all_healthy_deploys_in_batch_order_and_checks_each_batch_before_the_next() -> None:
    fake = Fake()
    out = go(fake)
    assert out.exit_code == d.EXIT_OK
    assert out.status == dict.fromkeys(ALL, d.DEPLOYED)
    # Every machine of batch i is checked before any machine of batch i+1 is rebuilt.
    seen_batches = []
    for action, name in fake.log:
        idx = next(i for i, b in enumerate(BATCHES) if name in b.machines)
        seen_batches.append((idx, action))
    for (i1, a1), (i2, _a2) in itertools.pairwise(seen_batches):
        assert i2 >= i1, f"batch {i2} acted after batch {i1} had started: {fake.log}"
        if i2 > i1:
            assert a1 == "check", f"batch {i2} started before batch {i1}'s checks: {fake.log}"
    rebuilt = fake.actions("rebuild")
    assert sorted(rebuilt) == sorted(ALL)
    order = [next(i for i, b in enumerate(BATCHES) if n in b.machines) for n in rebuilt]
    assert order == sorted(order), f"batches rebuilt in order: {rebuilt}"
    assert fake.actions("rollback") == []


def test_next_batch_waits_until_the_checks_pass() -> None:
    fake = Fake(healthy_after={"app1": 3})
    clock = Clock()
    out = d.run_batches(
        BATCHES, fake.run, fake.check, emit=fake.emit, check_timeout=120, check_interval=5,
        sleep=clock.sleep, clock=clock,
    )  # fmt: skip
    assert out.exit_code == d.EXIT_OK
    # app1 checked 4 times (3 failures, then a pass) before fe1 or fe2 was rebuilt.
    first_fe = fake.log.index(("rebuild", "fe1"))
    app1_checks = [i for i, e in enumerate(fake.log) if e == ("check", "app1")]
    assert len(app1_checks) == 4
    assert app1_checks[-1] < first_fe
    assert clock.sleeps == [5, 5, 5], "retried every check_interval seconds"


def test_failing_checks_roll_back_only_that_batch_and_stop() -> None:
    fake = Fake(unhealthy={"fe2"})
    out = go(fake)
    assert out.exit_code == d.EXIT_CHECK == 2
    assert out.failed_batch == 4
    assert sorted(fake.actions("rollback")) == ["fe1", "fe2"], "exactly the failing batch is rolled back"
    assert "fe3" not in fake.actions("rebuild") and "fe4" not in fake.actions("rebuild")
    assert out.status == {
        "db1": d.DEPLOYED,
        "db2": d.DEPLOYED,
        "app1": d.DEPLOYED,
        "fe1": d.ROLLED_BACK,
        "fe2": d.ROLLED_BACK,
        "fe3": d.NOT_STARTED,
        "fe4": d.NOT_STARTED,
    }
    assert list(out.failed_checks) == ["fe2"]
    assert ("fe2", f"check FAILED: {BAD[0].name}: {BAD[0].detail}") in fake.lines
    assert "checks of fe2 still failing after 120s" in out.message


def test_check_timeout_is_honoured() -> None:
    fake = Fake(unhealthy={"db1"})
    clock = Clock()
    out = d.run_batches(
        BATCHES, fake.run, fake.check, emit=fake.emit, check_timeout=12, check_interval=5,
        sleep=clock.sleep, clock=clock, recheck_after_rollback=False,
    )  # fmt: skip
    assert out.exit_code == d.EXIT_CHECK
    assert clock.sleeps == [5, 5, 2], "checks at 0, 5, 10 and 12 s, then give up"
    assert fake.actions("check") == ["db1"] * 4
    assert fake.actions("rebuild") == ["db1"]
    assert fake.actions("rollback") == ["db1"]


def test_zero_timeout_checks_once() -> None:
    fake = Fake(unhealthy={"db1"})
    out = go(fake, check_timeout=0, recheck_after_rollback=False)
    assert out.exit_code == d.EXIT_CHECK
    assert fake.actions("check") == ["db1"]


def test_failed_rebuild_exits_1_and_rolls_back_the_batch() -> None:
    fake = Fake(fail_rebuild={"db2"})
    out = go(fake)
    assert out.exit_code == d.EXIT_COMMAND == 1
    assert fake.actions("rebuild") == ["db1", "db2"]
    assert fake.actions("rollback") == ["db2"]
    rollback_at = fake.log.index(("rollback", "db2"))
    assert ("check", "db2") not in fake.log[:rollback_at], "a failed rebuild is not health-checked"
    assert out.status["db1"] == d.DEPLOYED
    assert out.status["db2"] == d.ROLLED_BACK
    assert all(out.status[n] == d.NOT_STARTED for n in ("app1", "fe1", "fe2", "fe3", "fe4"))
    assert "the rebuild of db2 (exit 1) failed" in out.message


def test_failed_rebuild_with_parallel_1_starts_no_more_of_the_batch() -> None:
    batches = [Batch("frontends", ("fe1", "fe2", "fe3"))]
    fake = Fake(fail_rebuild={"fe1"})
    out = go(fake, batches, parallel=1)
    assert fake.actions("rebuild") == ["fe1"]
    assert fake.actions("rollback") == ["fe1"]
    assert out.status == {"fe1": d.ROLLED_BACK, "fe2": d.NOT_STARTED, "fe3": d.NOT_STARTED}


def test_failed_rollback_exits_1() -> None:
    fake = Fake(unhealthy={"fe1"}, fail_rollback={"fe1"})
    out = go(fake)
    assert out.exit_code == d.EXIT_COMMAND
    assert out.status["fe1"] == d.ROLLBACK_FAILED
    assert out.status["fe2"] == d.ROLLED_BACK
    assert "a rollback FAILED" in out.message


def test_rolled_back_batch_is_checked_again() -> None:
    fake = Fake(unhealthy={"fe1"})
    out = go(fake)
    assert out.exit_code == d.EXIT_CHECK
    after = fake.log[fake.log.index(("rollback", "fe1")) :]
    assert sorted(n for a, n in after if a == "check") == ["fe1", "fe2"], "the rolled-back machines are rechecked"
    assert ("fe1", "checks passed (1)") in fake.lines[-3:]


def test_machine_still_failing_after_rollback_is_reported() -> None:
    fake = Fake(unhealthy={"fe1"}, rollback_repairs=False)
    out = go(fake, check_timeout=10)
    assert out.exit_code == d.EXIT_CHECK, "the exit code stays the one of the failure"
    assert ("fe1", "still failing its checks after the rollback") in fake.lines
    assert ("fe2", "still failing its checks after the rollback") not in fake.lines


def test_parallel_limit_within_a_batch() -> None:
    batches = [Batch("frontends", ("a", "b", "c", "d", "e"))]
    fake = Fake(rebuild_seconds=0.05)
    go(fake, batches, parallel=2)
    assert fake.max_running == 2
    fake = Fake(rebuild_seconds=0.05)
    go(fake, batches)
    assert fake.max_running == 5, "default: the whole batch at once"


def test_exception_in_checker_is_a_failed_check() -> None:
    def check(name: str) -> list[CheckResult]:
        raise OSError("no route to host")

    fake = Fake()
    out = d.run_batches(
        [Batch("pictrs", ("app1",))], fake.run, check, emit=fake.emit, check_timeout=0, recheck_after_rollback=False
    )
    assert out.exit_code == d.EXIT_CHECK
    assert "no route to host" in out.failed_checks["app1"][0].detail


def test_summary_lists_every_machine() -> None:
    out = go(Fake(unhealthy={"fe2"}))
    assert out.summary() == [
        "summary:",
        "  db1   deployed",
        "  db2   deployed",
        "  app1  deployed",
        "  fe1   rolled back",
        "  fe2   rolled back",
        "  fe3   not started",
        "  fe4   not started",
    ]


def test_progress_names_the_host_on_every_event() -> None:
    fake = Fake(unhealthy={"fe1"})
    go(fake, check_timeout=0)
    host_events = [(h, m) for h, m in fake.lines if h]
    for name in ("db1", "fe1", "fe2"):
        messages = [m for h, m in host_events if h == name]
        assert "rebuild: started" in messages
    assert ("fe1", "rollback: started") in host_events
    assert ("fe1", "rollback: done") in host_events
    assert any(m.startswith("batch 4/5 (frontends): fe1, fe2") for h, m in fake.lines if not h)


# --------------------------------------------------------------------------- commands


def test_nixos_rebuild_commands() -> None:
    s = d.Settings(flake=".", nix_sshopts="-o StrictHostKeyChecking=accept-new", build_host="builder")
    hc = d.host_commands("db1", "root", "10.0.0.30", s)
    assert hc.rebuild == [
        "nixos-rebuild", "switch", "--flake", ".#db1", "--target-host", "root@10.0.0.30",
        "--build-host", "builder", "--use-substitutes",
    ]  # fmt: skip
    assert hc.rollback == [
        "nixos-rebuild",
        "switch",
        "--rollback",
        "--flake",
        ".#db1",
        "--target-host",
        "root@10.0.0.30",
    ]
    assert hc.env == {"NIX_SSHOPTS": "-o StrictHostKeyChecking=accept-new"}
    deployer = d.host_commands("fe1", "deployer", "fe1.example.org", d.Settings(flake="site", use_substitutes=False))
    assert deployer.rebuild == [
        "nixos-rebuild", "switch", "--flake", "./site#fe1", "--target-host", "deployer@fe1.example.org",
        "--use-remote-sudo",
    ]  # fmt: skip
    assert deployer.env == {}


def test_nixops4_command() -> None:
    hc = d.host_commands("db1", "root", "10.0.0.30", d.Settings(flake="/srv/cluster", backend="nixops4"))
    assert hc.rebuild == ["nixops4", "apply", "--no-interactive", "db1"]
    assert hc.cwd == "/srv/cluster"
    assert hc.rollback[:3] == ["nixos-rebuild", "switch", "--rollback"]


def test_templates_replace_placeholders_quoted_and_leave_shell_syntax() -> None:
    s = d.Settings(
        flake="my flake",
        rebuild_template="echo {name} {address} {user} {flake} ${HOME} {other}",
        rollback_template="undo {name}",
    )
    hc = d.host_commands("fe1", "root", "10.0.0.10", s)
    assert hc.rebuild == "echo fe1 10.0.0.10 root './my flake' ${HOME} {other}"
    assert hc.rollback == "undo fe1"


# --------------------------------------------------------------------------- CLI


def _flake_with_hardware(folder: Path, example: str) -> Path:
    for name in load(EXAMPLES / f"{example}.toml").machines:
        (folder / "hosts" / name).mkdir(parents=True, exist_ok=True)
        (folder / "hosts" / name / "hardware-configuration.nix").write_text("{ }\n")
    return folder


@pytest.mark.parametrize("example", ["small", "large"])
def test_dry_run_golden(example: str, tmp_path: Path) -> None:
    flake = _flake_with_hardware(tmp_path, example)
    code, out, err = cli(
        "deploy", str(EXAMPLES / f"{example}.toml"), "--dry-run", "--flake", ".",
        "--ssh-option", "StrictHostKeyChecking=accept-new", cwd=flake,
    )  # fmt: skip
    assert code == 0, err
    golden = (GOLDEN / f"{example}.txt").read_text()
    assert out == golden, f"differs from tests/golden/deploy/{example}.txt:\n{out}"
    assert list(flake.iterdir()) == [flake / "hosts"], "a dry run writes nothing"


def test_dry_run_selection_by_host_and_role(tmp_path: Path) -> None:
    flake = _flake_with_hardware(tmp_path, "large")
    code, out, err = cli(
        "deploy", str(EXAMPLES / "large.toml"), "--dry-run", "--flake", str(flake),
        "--host", "edge3", "--role", "postgres", "--rebuild-command", "echo {name}",
    )  # fmt: skip
    assert code == 0, err
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert commands == ["echo db1", "echo db2", "echo db3", "echo edge3"]


def test_missing_hardware_configuration_is_refused(tmp_path: Path) -> None:
    flake = _flake_with_hardware(tmp_path, "small")
    (flake / "hosts" / "fe2" / "hardware-configuration.nix").unlink()
    code, out, err = cli("deploy", str(EXAMPLES / "small.toml"), "--flake", str(flake))
    assert code == 1
    assert out == ""
    assert f"machines.fe2: {flake}/hosts/fe2/hardware-configuration.nix is missing" in err
    assert "nixos-generate-config --show-hardware-config" in err
    assert "machines.fe1" not in err


def test_unknown_host_and_role_are_refused(tmp_path: Path) -> None:
    code, _, err = cli("deploy", str(EXAMPLES / "small.toml"), "--host", "fe9", "--role", "cache", "--dry-run")
    assert code == 1
    assert "--host: no machine named 'fe9'; did you mean 'fe" in err
    assert "--role: unknown role 'cache'" in err


def test_deploy_with_templates_runs_gates_and_rolls_back(tmp_path: Path) -> None:
    """The CLI end to end with local commands and a machine whose checks cannot log in:
    exit 2, the rollback ran for that machine only, nothing after it started."""
    log = tmp_path / "log"
    code, out, err = cli(
        "deploy", str(EXAMPLES / "small.toml"), "--host", "fe1", "--host", "fe2",
        "--rebuild-command", f"echo rebuild {{name}} >> {log}",
        "--rollback-command", f"echo rollback {{name}} >> {log}",
        "--check-timeout", "0", "--ssh-option", "ConnectTimeout=1",
        "--ssh-option", "Port=1",  # nothing listens there: every check fails
    )  # fmt: skip
    assert code == 2, out + err
    assert log.read_text().splitlines() == ["rebuild fe1", "rollback fe1"]
    assert "  fe1  rolled back\n  fe2  not started\n" in out
    assert "ssh login" in out


def test_failed_rebuild_command_exits_1(tmp_path: Path) -> None:
    code, out, err = cli(
        "deploy", str(EXAMPLES / "small.toml"), "--host", "fe1",
        "--rebuild-command", "echo building {name}; exit 3", "--rollback-command", "true",
        "--check-timeout", "0", "--ssh-option", "ConnectTimeout=1", "--ssh-option", "Port=1",
    )  # fmt: skip
    assert code == 1
    assert "fe1  | building fe1" in out
    assert "rebuild: FAILED with exit code 3" in out
    assert "the rebuild of fe1 (exit 3) failed" in err
