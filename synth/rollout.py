"""Health-gated, batch-by-batch deployment that never harms what it did not change.

First every machine of the deploy is BUILT (evaluation and build, nothing activated): one that
fails to build stops the run before any machine was touched. Then the batches come from
synth.order (data first, frontends last and never all at once). For each batch, in order:

1. the running system of each machine is read (STATE: /run/current-system over SSH);
2. the rebuild (activation) command of every machine of the batch runs, up to PARALLEL at a time;
3. the role checks of those machines are retried (every CHECK_INTERVAL seconds, for at most
   CHECK_TIMEOUT seconds, since services restart) until every one passes;
4. only then does the next batch start.

When a rebuild fails or the checks still fail at the deadline, nothing more is started, and the
machines of THAT batch whose running system CHANGED (read again) are rolled back; a machine whose
rebuild never switched (an evaluation error, a failed build, a refused activation) is left as it
is, so a healthy machine is never moved to an older generation. Earlier batches passed their checks
and stay. The run ends with EXIT_COMMAND (1) for a failed command or EXIT_CHECK (3) for failed
checks (never 2, click's usage error). A rollback command that fails also gives EXIT_COMMAND.

This module runs no process and opens no connection itself: the caller injects RUN (rebuild or roll
back one machine, return the exit code), CHECK (the role checks of one machine) and EMIT (one line
of progress), so the orchestration is unit-tested with fakes. The commands themselves are built
here too (`host_commands`), as plain data, so `--dry-run` prints exactly what a real run executes.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from synth.checks import CheckResult, failures
from synth.order import Batch

EXIT_OK = 0
EXIT_COMMAND = 1
EXIT_CHECK = 3

DEPLOYED = "deployed"
ROLLED_BACK = "rolled back"
ROLLBACK_FAILED = "rollback FAILED"
NOT_STARTED = "not started"
UNCHANGED = "unchanged, not rolled back"
UPGRADE_HELD = "Lemmy upgrade held, not rolled back"
BUILT = "built, not activated"
BUILD_FAILED = "build FAILED"

BACKENDS = ("nixos-rebuild", "nixops4")
PLACEHOLDERS = ("name", "address", "user", "flake")  # and {path} (copy), {before} (rollback)

Command = list[str] | str  # an argv, or a shell command line (from a template)
Run = Callable[[str, str], int]  # (machine, "build" | "rebuild" | "rollback") -> exit code
State = Callable[[str], "str | None"]  # machine -> its running system (a store path), None: unreadable
Check = Callable[[str], list[CheckResult]]
Emit = Callable[[str, str], None]  # (machine or "", message)


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Settings:
    """How machines are built, activated and rolled back (the `synth deploy` options)."""

    flake: str
    backend: str = "nixos-rebuild"
    build_host: str | None = None
    use_substitutes: bool = True
    rebuild_template: str | None = None
    rollback_template: str | None = None
    build_template: str | None = None
    copy_template: str | None = None
    nix_sshopts: str = ""
    goal: str = "switch"


@dataclass(frozen=True)
class HostCommands:
    """One machine's commands. BUILD prints the system's store path (its last line); COPY puts
    {path} into the machine's store; then synth activates it (synth.activate). REBUILD, when set
    (a --rebuild-command or nixops4), replaces copy and activation. ROLLBACK, when set (a
    --rollback-command), replaces the rollback to {before} over ssh."""

    name: str
    build: Command | None
    copy: str | None
    rebuild: Command | None
    rollback: str | None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # nixops4 runs in the flake's folder


def expand(template: str, values: Mapping[str, str]) -> str:
    """TEMPLATE with {name}, {address}, {user}, {flake} (and {path}, {before} where given)
    replaced by shell-quoted VALUES.

    Only these placeholders are replaced, so shell syntax such as ${VAR} stays as it is.
    """
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in values) + r")\}")
    return pattern.sub(lambda m: shlex.quote(values[m.group(1)]), template)


def flake_ref(flake: str) -> str:
    """A local folder as a flake reference nix will not mistake for a registry name ("dir" -> "./dir")."""
    if flake.startswith(("/", ".", "~")) or ":" in flake:
        return flake
    return f"./{flake}"


def host_commands(name: str, user: str, address: str, s: Settings) -> HostCommands:
    """The build, copy, rebuild and rollback commands of one machine."""
    flake = flake_ref(s.flake)
    values = {"name": name, "address": address, "user": user, "flake": flake}
    env = {"NIX_SSHOPTS": s.nix_sshopts} if s.nix_sshopts else {}
    toplevel = f"{flake}#nixosConfigurations.{name}.config.system.build.toplevel"
    build: Command | None = None
    copy: str | None = None
    rebuild: Command | None = None
    cwd: str | None = None
    store = f"ssh-ng://{user}@[{address}]" if ":" in address else f"ssh-ng://{user}@{address}"
    nix = ["nix", "--extra-experimental-features", "nix-command flakes"]
    if s.backend == "nixos-rebuild":
        if s.build_host is None:
            build = [*nix, "build", "--no-link", "--print-out-paths", toplevel]
            copy = shlex.join(
                [*nix, "copy", "--to", store, *(["--substitute-on-destination"] if s.use_substitutes else [])]
            )
        else:
            # Built on the build host, then copied from there to the machine.
            remote = f"ssh-ng://{s.build_host}"
            build = [
                *nix,
                "build",
                "--no-link",
                "--print-out-paths",
                "--eval-store",
                "auto",
                "--store",
                remote,
                toplevel,
            ]
            copy = shlex.join([*nix, "copy", "--from", remote, "--to", store])
        copy += " {path}"
    elif s.backend == "nixops4":
        # UNVERIFIED: nixops4 is pre-release; `nixops4 apply [--no-interactive] <member>` is what its
        # own tests run. It needs a `nixops4` flake output with one member per machine, named like
        # the machine; lemmy-cluster's flake does not define one. nixops4 has no rollback: the
        # rollback goes to the system that ran before, over ssh.
        rebuild = ["nixops4", "apply", "--no-interactive", name]
        cwd = s.flake
    else:
        raise ValueError(f"unknown backend {s.backend!r}; choose one of {', '.join(BACKENDS)}")
    if s.build_template is not None:
        build = expand(s.build_template, values)
    elif s.rebuild_template is not None:
        build = None  # the rebuild command builds by itself
    if s.copy_template is not None:
        copy = s.copy_template
    if s.rebuild_template is not None:
        rebuild = expand(s.rebuild_template, values)
        cwd = None
    rollback = expand(s.rollback_template, values) if s.rollback_template is not None else None
    return HostCommands(name, build, copy, rebuild, rollback, env, cwd)


def show(cmd: Command, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """CMD as one shell line, as --dry-run prints it."""
    text = cmd if isinstance(cmd, str) else shlex.join(cmd)
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted((env or {}).items()))
    line = prefix + text
    return f"(cd {shlex.quote(cwd)} && {line})" if cwd else line


def missing_hardware(flake_dir: Path, names: Sequence[str]) -> list[str]:
    """The machines among NAMES without hosts/<name>/hardware-configuration.nix in FLAKE_DIR."""
    return [n for n in names if not (flake_dir / "hosts" / n / "hardware-configuration.nix").is_file()]


def dry_run_lines(
    batches: Sequence[Batch],
    commands: Mapping[str, HostCommands],
    roles: Mapping[str, Sequence[str]],
    check_timeout: float,
    *,
    goal: str = "switch",
    confirm_timeout: int = 30,
    refusals: Sequence[str] = (),
) -> list[str]:
    """What a real run does: the builds, then batch by batch the exact commands, the checks that
    gate, the rollback; and what a real run would refuse."""
    out: list[str] = [f"# would refuse: {r}" for r in refusals]
    builds = [n for b in batches for n in b.machines if commands[n].build is not None]
    if builds:
        out.append(f"# build: every machine first ({len(builds)}), nothing is activated before all are built")
        for name in builds:
            hc = commands[name]
            assert hc.build is not None
            out.append(show(hc.build, hc.env, hc.cwd))
    for i, batch in enumerate(batches, 1):
        out.append(f"# batch {i}/{len(batches)} ({batch.stage}): {', '.join(batch.machines)}")
        for name in batch.machines:
            out.append(f"#   {name}: read the running system ({{before}})")
        for name in batch.machines:
            hc = commands[name]
            if hc.rebuild is not None:
                out.append(show(hc.rebuild, hc.env, hc.cwd))
                continue
            if hc.copy is not None:
                out.append(show(hc.copy, hc.env))
            confirmed = goal in ("switch", "test") and confirm_timeout > 0
            out.append(
                f"#   {name}: activate {{path}} ({goal}) on the machine"
                + (f"; it reverts by itself unless confirmed over a new ssh connection within {confirm_timeout}s"
                   if confirmed else "")
            )  # fmt: skip
        for name in batch.machines:
            out.append(f"#   gate: the {'/'.join(roles[name])} checks of {name} pass within {check_timeout:g}s")
        for name in batch.machines:
            hc = commands[name]
            back = show(hc.rollback, hc.env) if hc.rollback is not None else f"back to {{before}} over ssh ({goal})"
            out.append(f"#   on failure, if its running system changed: {back}")
    return out


# --------------------------------------------------------------------------- orchestration


@dataclass
class Outcome:
    """How a run ended: per machine DEPLOYED / ROLLED_BACK / ROLLBACK_FAILED / NOT_STARTED."""

    status: dict[str, str]
    exit_code: int
    message: str = ""
    failed_batch: int | None = None  # 1-based
    failed_checks: dict[str, list[CheckResult]] = field(default_factory=dict)

    def summary(self) -> list[str]:
        width = max((len(n) for n in self.status), default=0)
        lines = [f"  {name:<{width}}  {st}" for name, st in self.status.items()]
        return ["summary:", *lines]


def _checks_safely(check: Check, name: str) -> list[CheckResult]:
    try:
        return check(name)
    except Exception as exc:  # a check that cannot run (SSH down, ...) is a failed check
        return [CheckResult("checks could run", False, f"{type(exc).__name__}: {exc}")]


def wait_healthy(
    names: Sequence[str],
    check: Check,
    *,
    timeout: float,
    interval: float,
    emit: Emit,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    workers: int | None = None,
) -> dict[str, list[CheckResult]]:
    """Retry the checks of NAMES until all pass or TIMEOUT; return the last failures of those that did not."""
    deadline = clock() + timeout
    pending = list(names)
    last: dict[str, list[CheckResult]] = {}
    waiting_said: set[str] = set()
    with ThreadPoolExecutor(max_workers=max(1, workers or len(pending) or 1)) as pool:
        while True:
            results = dict(zip(pending, pool.map(lambda n: _checks_safely(check, n), pending), strict=True))
            still: list[str] = []
            for name in pending:
                bad = failures(results[name])
                if bad:
                    last[name] = bad
                    still.append(name)
                    if name not in waiting_said:
                        waiting_said.add(name)
                        emit(name, f"checks: {len(bad)} of {len(results[name])} failing, retrying ({bad[0]})")
                else:
                    emit(name, f"checks passed ({len(results[name])})")
            pending = still
            if not pending:
                return {}
            remaining = deadline - clock()
            if remaining <= 0:
                return {n: last[n] for n in pending}
            sleep(min(interval, remaining))


@dataclass(frozen=True)
class LemmyUpgrade:
    """A deploy that changes the Lemmy version: FIRST (the first backend of the deploy order)
    runs the migrations, alone; OTHERS, every other backend, are stopped before FIRST is
    activated and started again after their own activation (none runs the old Lemmy against the
    new schema, none runs a second migration at the same time)."""

    first: str
    others: tuple[str, ...]
    old: str
    new: str


def lemmy_version(unit_text: str) -> str | None:
    """The Lemmy version of a lemmy.service unit file (from its lemmy_server store path), or None."""
    m = re.search(r"/nix/store/[a-z0-9]{32}-lemmy-server-([^/\s]+)/bin/lemmy_server", unit_text)
    return m.group(1) if m else None


def upgrade_batches(batches: Sequence[Batch], up: LemmyUpgrade) -> list[Batch]:
    """BATCHES with UP.first alone in its batch (the rest of that batch right after it)."""
    out: list[Batch] = []
    for b in batches:
        if up.first in b.machines and len(b.machines) > 1:
            out.append(Batch(b.stage, (up.first,)))
            out.append(Batch(b.stage, tuple(n for n in b.machines if n != up.first)))
        else:
            out.append(b)
    return out


def run_batches(
    batches: Sequence[Batch],
    run: Run,
    check: Check,
    *,
    emit: Emit,
    parallel: int | None = None,
    check_timeout: float = 120,
    check_interval: float = 5,
    recheck_after_rollback: bool = True,
    build: bool = False,
    state: State | None = None,
    upgrade: Callable[[], LemmyUpgrade | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Deploy BATCHES in order, gated by CHECK; on failure roll back what changed in the failing batch.

    BUILD: run(name, "build") for every machine first (PARALLEL at a time); any failure stops the
    run before anything is activated. STATE: reads a machine's running system before and after its
    batch; without it every started machine of a failing batch counts as changed.
    """
    status = {name: NOT_STARTED for b in batches for name in b.machines}
    if build:
        names = list(status)
        emit("", f"build: {len(names)} machine(s), before any is activated")
        workers = max(1, min(parallel or len(names), len(names)))
        _, failed = _rebuild_batch(names, run, emit, workers, clock, action="build", stop_early=False)
        if failed:
            for name in names:
                status[name] = BUILD_FAILED if name in failed else BUILT
            what = ", ".join(f"{n} (exit {rc})" for n, rc in failed.items())
            return Outcome(status, EXIT_COMMAND, f"the build of {what} failed; no machine was activated")
    try:
        up = upgrade() if upgrade is not None else None
    except ValueError as exc:  # an upgrade that cannot be done safely: nothing was activated
        return Outcome(status, EXIT_COMMAND, str(exc))
    if up is not None:
        batches = upgrade_batches(batches, up)
        emit(
            "",
            f"Lemmy {up.old} -> {up.new}: {up.first} runs the database migrations, alone; "
            + (f"{', '.join(up.others)} stop(s) before and start(s) after its own activation; " if up.others else "")
            + f"the API does not write from the stop until {up.first} passes its checks",
        )
    for index, batch in enumerate(batches, 1):
        names = list(batch.machines)
        emit("", f"batch {index}/{len(batches)} ({batch.stage}): {', '.join(names)}")
        before: dict[str, str | None] = {}
        if state is not None:
            before = _read_states(names, state)
            unreadable = [n for n in names if before[n] is None]
            if unreadable:
                message = (
                    f"batch {index}: cannot read the running system of {', '.join(unreadable)} "
                    "(is it reachable over SSH?); nothing of this batch was started"
                )
                return Outcome(status, EXIT_COMMAND, message, index)
            for n in names:
                emit(n, f"running system: {before[n]}")
        if up is not None and up.first in batch.machines:
            stopped = list(up.others)
            for name in stopped:
                emit(name, "stop Lemmy (the migrations run in " + up.first + ")")
                rc = run(name, "stop-lemmy")
                if rc != 0:
                    message = f"batch {index}: cannot stop Lemmy on {name} (exit {rc}); nothing of the upgrade started"
                    for n in stopped[: stopped.index(name)]:
                        run(n, "start-lemmy")
                    return Outcome(status, EXIT_COMMAND, message, index)
        workers = max(1, min(parallel or len(names), len(names)))
        started_in_order, failed = _rebuild_batch(names, run, emit, workers, clock)
        upgrading = up is not None and bool({up.first, *up.others} & set(names))
        if up is not None and upgrading:
            for name in [n for n in names if n in up.others and n not in failed]:
                emit(name, "start Lemmy (after the migrations)")
                run(name, "start-lemmy")

        if failed:
            what = ", ".join(f"{n} (exit {rc})" for n, rc in failed.items())
            message = f"batch {index}: the rebuild of {what} failed"
            if up is not None and upgrading:
                if up.first in names and state is not None and state(up.first) == before.get(up.first):
                    # The first backend never switched: the schema is the old one; the others go on.
                    for name in up.others:
                        emit(name, "start Lemmy again (no migration ran)")
                        run(name, "start-lemmy")
                else:
                    return _upgrade_failure(up, index, names, status, message, EXIT_COMMAND, {}, emit)
            return _roll_back(
                index, started_in_order, run, check, status, EXIT_COMMAND, message, {}, emit,
                recheck_after_rollback, check_timeout, check_interval, sleep, clock, state, before,
            )  # fmt: skip

        bad = wait_healthy(
            names, check, timeout=check_timeout, interval=check_interval, emit=emit, sleep=sleep, clock=clock
        )
        if bad:
            for name, results in bad.items():
                for r in results:
                    emit(name, f"check FAILED: {r.name}: {r.detail}")
            message = f"batch {index}: checks of {', '.join(bad)} still failing after {check_timeout:g}s"
            if up is not None and upgrading:
                return _upgrade_failure(up, index, names, status, message, EXIT_CHECK, bad, emit)
            return _roll_back(
                index, started_in_order, run, check, status, EXIT_CHECK, message, bad, emit,
                recheck_after_rollback, check_timeout, check_interval, sleep, clock, state, before,
            )  # fmt: skip
        for name in names:
            status[name] = DEPLOYED
    return Outcome(status, EXIT_OK, f"{len(status)} machines deployed in {len(batches)} batches")


def _upgrade_failure(
    up: LemmyUpgrade,
    index: int,
    names: Sequence[str],
    status: dict[str, str],
    message: str,
    exit_code: int,
    bad: dict[str, list[CheckResult]],
    emit: Emit,
) -> Outcome:
    """A failure while the new schema may be in place: nothing is rolled back (an older Lemmy must
    not run against it), the stopped backends stay stopped."""
    for name in names:
        status[name] = UPGRADE_HELD
    emit(
        "",
        f"{message}; Lemmy {up.new} may have migrated the database: nothing is rolled back (Lemmy {up.old} must not "
        f"run against the new schema) and {', '.join(up.others) or 'no other backend'} stay(s) stopped; fix "
        f"{up.first} and deploy again",
    )
    return Outcome(
        status, exit_code, message + f"; the Lemmy upgrade is held ({up.first} migrated, others stopped)", index, bad
    )


def _read_states(names: Sequence[str], state: State) -> dict[str, str | None]:
    def one(name: str) -> str | None:
        try:
            return state(name)
        except Exception:  # unreadable is None: the caller decides what that means
            return None

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def _rebuild_batch(
    names: list[str],
    run: Run,
    emit: Emit,
    workers: int,
    clock: Callable[[], float],
    action: str = "rebuild",
    stop_early: bool = True,
) -> tuple[list[str], dict[str, int]]:
    """Run ACTION for NAMES, WORKERS at a time; after the first failure start no more (STOP_EARLY).

    Returns the machines started (in batch order) and {machine: exit code} of the failed ones.
    """
    stop = threading.Event()
    lock = threading.Lock()
    started: set[str] = set()
    failed: dict[str, int] = {}

    def rebuild(name: str) -> None:
        if stop.is_set():
            return
        with lock:
            started.add(name)
        emit(name, f"{action}: started")
        t0 = clock()
        rc = run(name, action)
        if rc == 0:
            emit(name, f"{action}: done ({clock() - t0:.1f}s)")
            return
        emit(name, f"{action}: FAILED with exit code {rc}")
        with lock:
            failed[name] = rc
        if stop_early:
            stop.set()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(rebuild, names))
    return [n for n in names if n in started], {n: failed[n] for n in names if n in failed}


def _roll_back(
    index: int,
    names: list[str],
    run: Run,
    check: Check,
    status: dict[str, str],
    exit_code: int,
    message: str,
    bad: dict[str, list[CheckResult]],
    emit: Emit,
    recheck: bool,
    check_timeout: float,
    check_interval: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    state: State | None = None,
    before: Mapping[str, str | None] | None = None,
) -> Outcome:
    started = names
    if state is not None and before is not None:
        after = _read_states(started, state)
        names = []
        for name in started:
            if after[name] is None:
                emit(name, "running system unreadable after the rebuild: rolling it back to be safe")
                names.append(name)
            elif after[name] != before.get(name):
                emit(name, f"running system changed: {before.get(name)} -> {after[name]}")
                names.append(name)
            else:
                emit(name, f"running system unchanged ({after[name]}): not rolled back")
                status[name] = UNCHANGED
    if not names:
        emit("", f"{message}; no machine of batch {index} changed: nothing to roll back; later batches are not started")
        return Outcome(status, exit_code, message, index, bad)
    emit("", f"{message}; rolling back batch {index}: {', '.join(names)}; later batches are not started")

    def one(name: str) -> tuple[str, int]:
        emit(name, "rollback: started")
        rc = run(name, "rollback")
        emit(name, "rollback: done" if rc == 0 else f"rollback: FAILED with exit code {rc}")
        return name, rc

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        results = dict(pool.map(one, names))
    for name, rc in results.items():
        status[name] = ROLLED_BACK if rc == 0 else ROLLBACK_FAILED
    rolled = [n for n, rc in results.items() if rc == 0]
    if any(rc != 0 for rc in results.values()):
        exit_code = EXIT_COMMAND
        message += "; a rollback FAILED"
    if recheck and rolled:
        still = wait_healthy(
            rolled, check, timeout=check_timeout, interval=check_interval, emit=emit, sleep=sleep, clock=clock
        )
        for name in still:
            emit(name, "still failing its checks after the rollback")
    return Outcome(status, exit_code, message, index, bad)
