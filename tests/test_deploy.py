"""synth.rollout: batch order, parallel limit, health gating, rollback of the failing batch, exit codes;
the commands it builds; `synth deploy --dry-run` against reviewed golden outputs; the refusals."""

from __future__ import annotations

import itertools
import shlex
import subprocess
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
    assert out.exit_code == d.EXIT_CHECK == 3
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


class States:
    """Running systems per machine; a rebuild of a machine in CHANGES switches it to a new one."""

    def __init__(self, names: Iterable[str], changes: Iterable[str] = (), unreadable: Iterable[str] = ()) -> None:
        self.now = {n: f"/nix/store/old-{n}" for n in names}
        self.changes = set(changes)
        self.unreadable = set(unreadable)

    def state(self, name: str) -> str | None:
        return None if name in self.unreadable else self.now[name]

    def wrap(self, fake: Fake) -> d.Run:
        def run(name: str, action: str) -> int:
            rc = fake.run(name, action)
            if action == "rebuild" and name in self.changes:
                self.now[name] = f"/nix/store/new-{name}"
            if action == "rollback" and rc == 0:
                self.now[name] = f"/nix/store/old-{name}"
            return rc

        return run


def test_a_failed_rebuild_that_changed_nothing_rolls_nothing_back() -> None:
    """An evaluation error, a missing file: the rebuild never switched, so the healthy machine,
    the database primary included, stays on the system it runs."""
    fake = Fake(fail_rebuild={"db1"})
    st = States(ALL)
    clock = Clock()
    out = d.run_batches(
        BATCHES, st.wrap(fake), fake.check, emit=fake.emit, state=st.state, sleep=clock.sleep, clock=clock
    )
    assert out.exit_code == d.EXIT_COMMAND
    assert fake.actions("rollback") == []
    assert out.status["db1"] == d.UNCHANGED
    assert ("db1", "running system unchanged (/nix/store/old-db1): not rolled back") in fake.lines


def test_only_machines_whose_system_changed_are_rolled_back() -> None:
    fake = Fake(unhealthy={"fe2"})
    st = States(ALL, changes={"fe2"})  # fe1's rebuild found nothing to change
    clock = Clock()
    out = d.run_batches(
        BATCHES, st.wrap(fake), fake.check, emit=fake.emit, state=st.state, sleep=clock.sleep, clock=clock
    )
    assert out.exit_code == d.EXIT_CHECK
    assert fake.actions("rollback") == ["fe2"]
    assert out.status["fe1"] == d.UNCHANGED and out.status["fe2"] == d.ROLLED_BACK
    assert st.now["fe2"] == "/nix/store/old-fe2"


def test_a_machine_whose_system_cannot_be_read_starts_nothing_of_its_batch() -> None:
    fake = Fake()
    st = States(ALL, unreadable={"fe2"})
    clock = Clock()
    out = d.run_batches(
        BATCHES, st.wrap(fake), fake.check, emit=fake.emit, state=st.state, sleep=clock.sleep, clock=clock
    )
    assert out.exit_code == d.EXIT_COMMAND
    assert "fe1" not in fake.actions("rebuild") and "fe2" not in fake.actions("rebuild")
    assert out.status["app1"] == d.DEPLOYED and out.status["fe1"] == d.NOT_STARTED
    assert "cannot read the running system of fe2" in out.message


def test_every_machine_is_built_before_any_is_activated() -> None:
    fake = Fake()
    go(fake, build=True)
    builds = [i for i, (a, _) in enumerate(fake.log) if a == "build"]
    first_rebuild = next(i for i, (a, _) in enumerate(fake.log) if a == "rebuild")
    assert len(builds) == len(ALL) and max(builds) < first_rebuild


def test_a_failed_build_activates_nothing() -> None:
    fake = Fake(fail_rebuild=set())
    failing = Fake()

    def run(name: str, action: str) -> int:
        rc = fake.run(name, action)
        return 1 if action == "build" and name == "fe3" else rc

    clock = Clock()
    out = d.run_batches(BATCHES, run, failing.check, emit=fake.emit, build=True, sleep=clock.sleep, clock=clock)
    assert out.exit_code == d.EXIT_COMMAND
    assert fake.actions("rebuild") == [] and fake.actions("rollback") == []
    assert sorted(fake.actions("build")) == sorted(ALL), "every build runs, so every failure is reported at once"
    assert out.status["fe3"] == d.BUILD_FAILED and out.status["db1"] == d.BUILT
    assert out.message == "the build of fe3 (exit 1) failed; no machine was activated"


# --------------------------------------------------------------------------- commands


def test_nixos_rebuild_commands() -> None:
    s = d.Settings(flake=".", nix_sshopts="-o StrictHostKeyChecking=accept-new")
    hc = d.host_commands("db1", "root", "10.0.0.30", s)
    nix = ["nix", "--extra-experimental-features", "nix-command flakes"]
    toplevel = ".#nixosConfigurations.db1.config.system.build.toplevel"
    assert hc.build == [*nix, "build", "--no-link", "--print-out-paths", toplevel]
    assert hc.copy == f"{shlex.join(nix)} copy --to ssh-ng://root@10.0.0.30 --substitute-on-destination {{path}}"
    assert hc.rebuild is None, "activation is synth's own (synth.activate), with its magic rollback"
    assert hc.rollback is None, "the rollback goes back to the system that ran before, over ssh"
    assert hc.env == {"NIX_SSHOPTS": "-o StrictHostKeyChecking=accept-new"}
    deployer = d.host_commands("fe1", "deployer", "fe1.example.org", d.Settings(flake="site", use_substitutes=False))
    assert (
        deployer.build is not None
        and deployer.build[-1] == "./site#nixosConfigurations.fe1.config.system.build.toplevel"
    )
    assert deployer.copy == f"{shlex.join(nix)} copy --to ssh-ng://deployer@fe1.example.org {{path}}"
    assert deployer.env == {}
    built = d.host_commands("db1", "root", "10.0.0.30", d.Settings(flake=".", build_host="builder"))
    assert built.build is not None and built.build[6:10] == ["--eval-store", "auto", "--store", "ssh-ng://builder"]
    assert built.copy == f"{shlex.join(nix)} copy --from ssh-ng://builder --to ssh-ng://root@10.0.0.30 {{path}}"


def test_nixops4_command() -> None:
    hc = d.host_commands("db1", "root", "10.0.0.30", d.Settings(flake="/srv/cluster", backend="nixops4"))
    assert hc.rebuild == ["nixops4", "apply", "--no-interactive", "db1"]
    assert hc.cwd == "/srv/cluster"
    assert hc.build is None and hc.rollback is None


def test_templates_replace_placeholders_quoted_and_leave_shell_syntax() -> None:
    s = d.Settings(
        flake="my flake",
        rebuild_template="echo {name} {address} {user} {flake} ${HOME} {other}",
        rollback_template="undo {name} {before}",
        build_template="make {name}",
    )
    hc = d.host_commands("fe1", "root", "10.0.0.10", s)
    assert hc.rebuild == "echo fe1 10.0.0.10 root './my flake' ${HOME} {other}"
    assert hc.rollback == "undo fe1 {before}", "{before} is known once the machine's system was read"
    assert d.expand(hc.rollback, {"before": "/nix/store/x y"}) == "undo fe1 '/nix/store/x y'"
    assert hc.build == "make fe1"
    assert d.host_commands("fe1", "root", "10.0.0.10", d.Settings(flake=".", rebuild_template="x")).build is None


# --------------------------------------------------------------------------- CLI


def _flake_with_hardware(folder: Path, example: str) -> Path:
    """FOLDER with EXAMPLE's generated hosts/ and a hardware configuration for every machine."""
    assert cli("generate", str(EXAMPLES / f"{example}.toml"), "--out", str(folder))[0] == 0
    for name in load(EXAMPLES / f"{example}.toml").machines:
        (folder / "hosts" / name).mkdir(parents=True, exist_ok=True)
        (folder / "hosts" / name / "hardware-configuration.nix").write_text("{ }\n")
    return folder


def _cluster_in(folder: Path, example: str = "small") -> Path:
    """A copy of EXAMPLE in FOLDER with its hosts/ generated (no drift)."""
    import shutil

    shutil.copy(EXAMPLES / f"{example}.toml", folder / "cluster.toml")
    assert cli("generate", str(folder / "cluster.toml"))[0] == 0
    return folder / "cluster.toml"


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
    assert [p.name for p in flake.iterdir()] == ["hosts"], "a dry run writes nothing"


def test_dry_run_selection_by_host_and_role(tmp_path: Path) -> None:
    flake = _flake_with_hardware(tmp_path, "large")
    code, out, err = cli(
        "deploy", str(EXAMPLES / "large.toml"), "--dry-run", "--flake", str(flake),
        "--host", "edge3", "--role", "postgres", "--rebuild-command", "echo {name}",
    )  # fmt: skip
    assert code == 0, err
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert commands == ["echo db1", "echo db2", "echo db3", "echo edge3"]
    assert "# build:" not in out, "a rebuild command builds by itself"


def test_missing_hardware_configuration_is_refused(tmp_path: Path) -> None:
    flake = _flake_with_hardware(tmp_path, "small")
    (flake / "hosts" / "fe2" / "hardware-configuration.nix").unlink()
    code, out, err = cli("deploy", str(EXAMPLES / "small.toml"), "--flake", str(flake))
    assert code == 1
    assert out == ""
    assert f"machines.fe2: {flake}/hosts/fe2/hardware-configuration.nix is missing" in err
    assert "hosts:" not in err, "hosts/ matches the cluster file"
    assert "nixos-generate-config --show-hardware-config" in err
    assert "machines.fe1" not in err


def test_unknown_host_and_role_are_refused(tmp_path: Path) -> None:
    code, _, err = cli("deploy", str(EXAMPLES / "small.toml"), "--host", "fe9", "--role", "cache", "--dry-run")
    assert code == 1
    assert "--host: no machine named 'fe9'; did you mean 'fe" in err
    assert "--role: unknown role 'cache'" in err


def test_deploy_to_an_unreachable_machine_starts_nothing(tmp_path: Path) -> None:
    """The CLI end to end with local commands and machines it cannot log in to: their running
    system cannot be read, so nothing of the batch starts (and nothing is rolled back): exit 1."""
    log = tmp_path / "log"
    code, out, err = cli(
        "deploy", str(_cluster_in(tmp_path)), "--host", "fe1", "--host", "fe2",
        "--rebuild-command", f"echo rebuild {{name}} >> {log}",
        "--rollback-command", f"echo rollback {{name}} >> {log}",
        "--check-timeout", "0", "--ssh-option", "ConnectTimeout=1",
        "--ssh-option", "Port=1",  # nothing listens there
    )  # fmt: skip
    assert code == 1, out + err
    assert not log.exists(), "neither a rebuild nor a rollback ran"
    assert "batch 1: cannot read the running system of fe1 (is it reachable over SSH?)" in err
    assert "  fe1  not started\n  fe2  not started\n" in out


def test_drifted_hosts_and_untracked_files_are_refused_and_dry_run_lists_them(tmp_path: Path) -> None:
    from tests.conftest import require_tool

    require_tool("git")

    repo = tmp_path / "repo"
    sub = repo / "site"
    sub.mkdir(parents=True)
    cluster = _cluster_in(sub)
    for name in load(cluster).machines:
        (sub / "hosts" / name / "hardware-configuration.nix").write_text("{ }\n")
    (sub / "flake.nix").write_text("{ }\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "site/flake.nix", "site/hosts"], check=True)
    subprocess.run(
        [*git, "-C", str(repo), "reset", "-q", "--", "site/hosts/db1/hardware-configuration.nix"], check=True
    )
    (sub / "cluster.toml").write_text(cluster.read_text().replace('site_name = "Example Lemmy"', 'site_name = "Other"'))

    code, out, err = cli("deploy", str(cluster))
    assert code == 1 and out == ""
    assert f"hosts: {sub / 'hosts'} differs from {cluster} (hosts/app1/default.nix)" in err
    assert "run `synth generate" in err
    assert f"git: {sub / 'hosts/db1/hardware-configuration.nix'} is not tracked by git" in err
    assert "hosts/db2/hardware-configuration.nix" not in err

    code, out, err = cli("deploy", str(cluster), "--dry-run")
    assert code == 1, "a dry run says a real run would refuse"
    refused = [line for line in out.splitlines() if line.startswith("# would refuse: ")]
    assert len(refused) == 2, out
    assert "# batch 1/" in out, "the plan is shown all the same"
    assert "a real run would refuse (2 problem(s) above)" in err


# --------------------------------------------------------------------------- Lemmy upgrades

UP_BATCHES = [
    Batch("postgres-primary", ("db1",)),
    Batch("pictrs", ("app1",)),
    Batch("backend", ("app2", "app3")),
    Batch("frontends", ("fe1",)),
]
UP = d.LemmyUpgrade("app1", ("app2", "app3"), "0.19.8", "0.19.9")


def test_lemmy_version_of_a_unit_file() -> None:
    unit = "ExecStart=/nix/store/" + "a" * 32 + "-lemmy-server-0.19.9/bin/lemmy_server\n"
    assert d.lemmy_version(unit) == "0.19.9"
    assert d.lemmy_version("ExecStart=/bin/true\n") is None


def test_an_upgrade_migrates_in_one_backend_while_the_others_are_stopped() -> None:
    fake = Fake()
    out = go(fake, UP_BATCHES, upgrade=lambda: UP)
    assert out.exit_code == d.EXIT_OK, out.message
    log = fake.log
    first = log.index(("rebuild", "app1"))
    assert log.index(("stop-lemmy", "app2")) < first and log.index(("stop-lemmy", "app3")) < first
    assert log.index(("rebuild", "db1")) < log.index(("stop-lemmy", "app2")), "stopped only when app1's turn comes"
    first_checked = max(i for i, e in enumerate(log) if e == ("check", "app1"))
    for other in ("app2", "app3"):
        rebuilt, started = log.index(("rebuild", other)), log.index(("start-lemmy", other))
        checked = log.index(("check", other))
        assert first_checked < rebuilt < started < checked, "after the migrations; started before its checks"
    assert any("Lemmy 0.19.8 -> 0.19.9: app1 runs the database migrations, alone" in m for _, m in fake.lines)


def test_the_first_backend_is_alone_in_its_batch() -> None:
    batches = d.upgrade_batches([Batch("backend", ("app1", "app2", "app3"))], UP)
    assert batches == [Batch("backend", ("app1",)), Batch("backend", ("app2", "app3"))]


def test_a_failed_upgrade_is_held_not_rolled_back() -> None:
    """app1's checks fail after it may have migrated: rolling it back would run the old Lemmy
    against the new schema, so nothing is rolled back and the other backends stay stopped."""
    fake = Fake(unhealthy={"app1"})
    out = go(fake, UP_BATCHES, upgrade=lambda: UP)
    assert out.exit_code == d.EXIT_CHECK
    assert fake.actions("rollback") == []
    assert fake.actions("start-lemmy") == [], "the stopped backends stay stopped"
    assert out.status["app1"] == d.UPGRADE_HELD and out.status["app2"] == d.NOT_STARTED
    assert "the Lemmy upgrade is held (app1 migrated, others stopped)" in out.message


def test_an_upgrade_whose_first_backend_never_switched_starts_the_others_again() -> None:
    fake = Fake(fail_rebuild={"app1"})
    st = States(["db1", "app1", "app2", "app3", "fe1"])
    clock = Clock()
    out = d.run_batches(
        UP_BATCHES, st.wrap(fake), fake.check, emit=fake.emit, state=st.state, upgrade=lambda: UP,
        sleep=clock.sleep, clock=clock,
    )  # fmt: skip
    assert out.exit_code == d.EXIT_COMMAND
    assert sorted(fake.actions("start-lemmy")) == ["app2", "app3"], "no migration ran: the old Lemmy goes on"
    assert fake.actions("rollback") == [] and out.status["app1"] == d.UNCHANGED


def test_an_upgrade_that_would_leave_a_backend_out_activates_nothing() -> None:
    def refuse() -> d.LemmyUpgrade:
        raise ValueError("this deploy changes Lemmy 0.19.8 -> 0.19.9 ... add --role backend")

    fake = Fake()
    out = go(fake, UP_BATCHES, upgrade=refuse, build=True)
    assert out.exit_code == d.EXIT_COMMAND and "add --role backend" in out.message
    assert fake.actions("rebuild") == [] and len(fake.actions("build")) == 5


def test_the_runner_refuses_an_upgrade_without_every_backend(tmp_path: Path) -> None:
    from synth.commands.deploy import Runner
    from synth.remote import SshOptions

    c = load(EXAMPLES / "large.toml")
    backends = c.machines_with("backend")
    assert len(backends) == 2
    unit = "etc/systemd/system/lemmy.service"

    def system(version: str) -> Path:
        p = tmp_path / version / unit
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"ExecStart=/nix/store/{'b' * 32}-lemmy-server-{version}/bin/lemmy_server\n")
        return tmp_path / version

    runner = Runner(c, {}, SshOptions(), lambda h, m: None, goal="switch", confirm_timeout=30, current_system="/x")
    running = (system("0.19.8") / unit).read_text()
    runner._ssh = lambda name, command, **kw: subprocess.CompletedProcess([], 0, running, "")  # type: ignore[method-assign]
    runner.toplevel = {n: str(system("0.19.9")) for n in backends}
    up = runner.lemmy_upgrade(backends)
    assert up == d.LemmyUpgrade(backends[0], (backends[1],), "0.19.8", "0.19.9")
    with pytest.raises(ValueError, match=f"leaves out the backend\\(s\\) {backends[1]}"):
        runner.lemmy_upgrade([backends[0]])
    runner.toplevel = {n: str(system("0.19.8")) for n in backends}
    assert runner.lemmy_upgrade(backends) is None, "same version: no upgrade"


def test_dry_run_json(tmp_path: Path) -> None:
    import json

    flake = _flake_with_hardware(tmp_path, "small")
    code, out, err = cli("deploy", str(EXAMPLES / "small.toml"), "--dry-run", "--json", "--flake", str(flake))
    assert code == 0, err
    data = json.loads(out)
    assert data["refusals"] == [] and data["goal"] == "switch" and data["confirm_timeout"] == 30
    assert data["batches"][0] == {"stage": "postgres-primary", "machines": ["db1"]}
    (flake / "hosts" / "db1" / "hardware-configuration.nix").unlink()
    code, out, _ = cli("deploy", str(EXAMPLES / "small.toml"), "--dry-run", "--json", "--flake", str(flake))
    assert code == 1
    assert [r.split(": ")[1] for r in json.loads(out)["refusals"]] == ["machines.db1"]


def test_real_run_errors_as_json(tmp_path: Path) -> None:
    import json

    code, out, err = cli("deploy", str(tmp_path / "missing.toml"), "--json")
    assert code == 1 and err == ""
    assert json.loads(out)["ok"] is False


def test_after_a_failed_confirmation_synth_waits_for_the_machines_own_revert(monkeypatch: pytest.MonkeyPatch) -> None:
    """The running system is read only once the machine reports its revert: a revert that takes
    long (switch-to-configuration restarts services) is never caught half-way and rolled back on
    top. A late confirmation that the machine took ("done") keeps the new system; a machine that
    cannot be reached is waited for only until its deadline plus UNREACHABLE_WAIT."""
    from synth.commands import deploy as dep
    from synth.remote import SshOptions

    c = load(EXAMPLES / "large.toml")
    said: list[str] = []
    clock = [0.0]
    monkeypatch.setattr(dep.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(dep.time, "monotonic", lambda: clock[0])
    runner = dep.Runner(
        c, {}, SshOptions(), lambda h, m: said.append(m), goal="switch", confirm_timeout=3, current_system="/x"
    )
    unreachable = (255, "")
    for answers, code, message in (
        (
            [(0, "activated"), (0, "activated"), (0, ""), (0, "reverted")],
            1,
            "the machine reverted by itself (its activation reports reverted)",
        ),
        ([(0, "activated"), (0, "done")], 0, "the machine took the confirmation after all: the new system stays"),
        ([unreachable] * 100, 1, "(it cannot be reached): its running system is read next"),
    ):
        states = iter(answers)
        seen: list[str] = []
        clock[0] = 0.0

        def ssh(
            name: str, command: str, states: Iterable[tuple[int, str]] = states, seen: list[str] = seen, **kw: object
        ) -> subprocess.CompletedProcess[str]:
            seen.append(command)
            rc, out = next(iter(states))
            return subprocess.CompletedProcess([], rc, out + "\n", "")

        runner._ssh = ssh  # type: ignore[method-assign]
        said.clear()
        assert runner._await_revert("db1", "T1") == code
        assert said[-1].endswith(message), said
        assert all("/run/lemmy-cluster/deploy/T1/state" in cmd for cmd in seen)
        if answers[0] != unreachable:
            assert len(seen) == len(answers), "it stops polling at the first final state"
        else:
            assert clock[0] <= 3 + dep.UNREACHABLE_WAIT + 2, f"waited {clock[0]} s for an unreachable machine"
