"""Health-gated, batch-by-batch deployment with rollback of the failing batch.

The batches come from synth.order (data first, frontends last and never all at once). For each
batch, in order:

1. the rebuild command of every machine of the batch runs, up to PARALLEL at a time;
2. the role checks of those machines are retried (every CHECK_INTERVAL seconds, for at most
   CHECK_TIMEOUT seconds, since services restart) until every one passes;
3. only then does the next batch start.

When a rebuild fails or the checks still fail at the deadline, nothing more is started: the
machines of THAT batch that were started are rolled back (earlier batches passed their checks and
stay), and the run ends with EXIT_COMMAND (1) for a failed command or EXIT_CHECK (2) for failed
checks. A rollback command that fails also gives EXIT_COMMAND: the operator must look.

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
EXIT_CHECK = 2

DEPLOYED = "deployed"
ROLLED_BACK = "rolled back"
ROLLBACK_FAILED = "rollback FAILED"
NOT_STARTED = "not started"

BACKENDS = ("nixos-rebuild", "nixops4")
PLACEHOLDERS = ("name", "address", "user", "flake")

Command = list[str] | str  # an argv, or a shell command line (from a template)
Run = Callable[[str, str], int]  # (machine, "rebuild" | "rollback") -> exit code
Check = Callable[[str], list[CheckResult]]
Emit = Callable[[str, str], None]  # (machine or "", message)


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Settings:
    """How machines are rebuilt and rolled back (the `synth deploy` options)."""

    flake: str
    backend: str = "nixos-rebuild"
    build_host: str | None = None
    use_substitutes: bool = True
    rebuild_template: str | None = None
    rollback_template: str | None = None
    nix_sshopts: str = ""


@dataclass(frozen=True)
class HostCommands:
    name: str
    rebuild: Command
    rollback: Command
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # nixops4 runs in the flake's folder


def expand(template: str, values: Mapping[str, str]) -> str:
    """TEMPLATE with {name}, {address}, {user} and {flake} replaced by shell-quoted VALUES.

    Only these four placeholders are replaced, so shell syntax such as ${VAR} stays as it is.
    """
    pattern = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
    return pattern.sub(lambda m: shlex.quote(values[m.group(1)]), template)


def flake_ref(flake: str) -> str:
    """A local folder as a flake reference nix will not mistake for a registry name ("dir" -> "./dir")."""
    if flake.startswith(("/", ".", "~")) or ":" in flake:
        return flake
    return f"./{flake}"


def host_commands(name: str, user: str, address: str, s: Settings) -> HostCommands:
    """The rebuild and rollback commands of one machine."""
    target = f"{user}@{address}"
    flake = flake_ref(s.flake)
    values = {"name": name, "address": address, "user": user, "flake": flake}
    env = {"NIX_SSHOPTS": s.nix_sshopts} if s.nix_sshopts else {}
    sudo = ["--use-remote-sudo"] if user != "root" else []
    rollback: Command = [
        "nixos-rebuild",
        "switch",
        "--rollback",
        "--flake",
        f"{flake}#{name}",
        "--target-host",
        target,
        *sudo,
    ]
    rebuild: Command
    cwd: str | None = None
    if s.backend == "nixos-rebuild":
        rebuild = ["nixos-rebuild", "switch", "--flake", f"{flake}#{name}", "--target-host", target]
        if s.build_host is not None:
            rebuild += ["--build-host", s.build_host]
        if s.use_substitutes:
            rebuild.append("--use-substitutes")
        rebuild += sudo
    elif s.backend == "nixops4":
        # UNVERIFIED: nixops4 is pre-release; `nixops4 apply [--no-interactive] <member>` is what its
        # own tests run. It needs a `nixops4` flake output with one member per machine, named like
        # the machine; lemmy-cluster's flake does not define one. nixops4 has no rollback: the
        # rollback goes through nixos-rebuild on the target's system profile.
        rebuild = ["nixops4", "apply", "--no-interactive", name]
        cwd = s.flake
    else:
        raise ValueError(f"unknown backend {s.backend!r}; choose one of {', '.join(BACKENDS)}")
    if s.rebuild_template is not None:
        rebuild = expand(s.rebuild_template, values)
        cwd = None
    if s.rollback_template is not None:
        rollback = expand(s.rollback_template, values)
    return HostCommands(name, rebuild, rollback, env, cwd)


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
) -> list[str]:
    """What a real run does, batch by batch: the exact commands, the checks that gate, the rollback."""
    out: list[str] = []
    for i, batch in enumerate(batches, 1):
        out.append(f"# batch {i}/{len(batches)} ({batch.stage}): {', '.join(batch.machines)}")
        for name in batch.machines:
            hc = commands[name]
            out.append(show(hc.rebuild, hc.env, hc.cwd))
        for name in batch.machines:
            out.append(f"#   gate: the {'/'.join(roles[name])} checks of {name} pass within {check_timeout:g}s")
        for name in batch.machines:
            hc = commands[name]
            out.append(f"#   on failure: {show(hc.rollback, hc.env)}")
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
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Deploy BATCHES in order, gated by CHECK; on failure roll back the failing batch and stop."""
    status = {name: NOT_STARTED for b in batches for name in b.machines}
    for index, batch in enumerate(batches, 1):
        names = list(batch.machines)
        emit("", f"batch {index}/{len(batches)} ({batch.stage}): {', '.join(names)}")
        workers = max(1, min(parallel or len(names), len(names)))
        started_in_order, failed = _rebuild_batch(names, run, emit, workers, clock)

        if failed:
            what = ", ".join(f"{n} (exit {rc})" for n, rc in failed.items())
            message = f"batch {index}: the rebuild of {what} failed"
            return _roll_back(
                index, started_in_order, run, check, status, EXIT_COMMAND, message, {}, emit,
                recheck_after_rollback, check_timeout, check_interval, sleep, clock,
            )  # fmt: skip

        bad = wait_healthy(
            names, check, timeout=check_timeout, interval=check_interval, emit=emit, sleep=sleep, clock=clock
        )
        if bad:
            for name, results in bad.items():
                for r in results:
                    emit(name, f"check FAILED: {r.name}: {r.detail}")
            message = f"batch {index}: checks of {', '.join(bad)} still failing after {check_timeout:g}s"
            return _roll_back(
                index, started_in_order, run, check, status, EXIT_CHECK, message, bad, emit,
                recheck_after_rollback, check_timeout, check_interval, sleep, clock,
            )  # fmt: skip
        for name in names:
            status[name] = DEPLOYED
    return Outcome(status, EXIT_OK, f"{len(status)} machines deployed in {len(batches)} batches")


def _rebuild_batch(
    names: list[str], run: Run, emit: Emit, workers: int, clock: Callable[[], float]
) -> tuple[list[str], dict[str, int]]:
    """Rebuild NAMES, WORKERS at a time; after the first failure start no more.

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
        emit(name, "rebuild: started")
        t0 = clock()
        rc = run(name, "rebuild")
        if rc == 0:
            emit(name, f"rebuild: done ({clock() - t0:.1f}s)")
            return
        emit(name, f"rebuild: FAILED with exit code {rc}")
        with lock:
            failed[name] = rc
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
) -> Outcome:
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
