"""`synth deploy`: build everything, then batch by batch (synth.order), health-gated, rolling back
only what changed in the batch that fails.

The command, its refusals and its side effects (Runner); the orchestration and the commands as
data are in synth.rollout, the activation with magic rollback in synth.activate.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import TYPE_CHECKING

import click

from synth.commands.common import (
    CLUSTER_ARG,
    folder_of,
    host_option,
    make_ssh_options,
    select,
    ssh_options,
    user_errors,
)

if TYPE_CHECKING:
    from synth.errors import Problem
    from synth.model import Cluster
    from synth.remote import SshOptions
    from synth.rollout import Command, HostCommands, LemmyUpgrade


@click.command("deploy")
@CLUSTER_ARG
@host_option
@click.option("--role", "roles", multiple=True, metavar="ROLE", help="Also every machine with ROLE (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the exact commands, batch by batch; run nothing.")
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=None,
    help="Machines of one batch rebuilt at once (default: the whole batch).",
)
@click.option(
    "--build-host",
    default=None,
    metavar="HOST",
    help="Build on HOST (nix build --store ssh-ng://HOST), then copy from there to each machine.",
)
@click.option(
    "--use-substitutes/--no-use-substitutes",
    default=True,
    show_default=True,
    help="Let the machines download from binary caches instead of receiving everything from here.",
)
@ssh_options
@click.option(
    "--backend",
    type=click.Choice(["nixos-rebuild", "nixops4"]),
    default="nixos-rebuild",
    show_default=True,
    help="How a machine is rebuilt. nixops4 (pre-release) needs a nixops4 flake output, one member per machine.",
)
@click.option(
    "--goal",
    type=click.Choice(["switch", "boot", "test", "dry-activate"]),
    default="switch",
    show_default=True,
    help="switch: activate and make it the boot default; boot: the boot default only; test: activate, "
    "boot default unchanged; dry-activate: show what activation would do.",
)
@click.option(
    "--confirm-timeout",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="Seconds a machine waits, after switch/test, for the deployer to confirm over a new ssh "
    "connection; without it the machine reverts by itself (0: no magic rollback).",
)
@click.option(
    "--build-command",
    default=None,
    metavar="TEMPLATE",
    help="Shell command that replaces the build; its last line of output is the system's store path.",
)
@click.option(
    "--copy-command",
    default=None,
    metavar="TEMPLATE",
    help="Shell command that replaces the copy to the machine (nix copy); {path} is the system.",
)
@click.option(
    "--rebuild-command",
    default=None,
    metavar="TEMPLATE",
    help="Shell command that replaces copy and activation; {name}, {address}, {user}, {flake} are replaced "
    "(quoted). No magic rollback then.",
)
@click.option(
    "--rollback-command",
    default=None,
    metavar="TEMPLATE",
    help="Shell command that replaces the rollback (to the system that ran before: {before}); same placeholders.",
)
@click.option(
    "--current-system",
    default="/run/current-system",
    show_default=True,
    metavar="PATH",
    help="The link to the running system on the machines, read before and after each batch.",
)
@click.option(
    "--state-dir",
    default="/run/lemmy-cluster/deploy",
    show_default=True,
    hidden=True,
    metavar="PATH",
    help="Where on the machines the activation keeps its script and reports (for tests).",
)
@click.option(
    "--flake",
    default=None,
    metavar="DIR",
    help="The flake with hosts/ (default: the folder of CLUSTER).",
)
@click.option(
    "--check-timeout",
    type=click.FloatRange(min=0),
    default=120,
    show_default=True,
    help="Seconds a batch's checks may take to pass (they are retried while services restart).",
)
@click.option(
    "--check-interval",
    type=click.FloatRange(min=0.1),
    default=5,
    show_default=True,
    help="Seconds between two rounds of checks.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan (--dry-run) or the outcome as JSON on stdout.")
@user_errors
def deploy(
    cluster_file: Path,
    hosts: tuple[str, ...],
    roles: tuple[str, ...],
    dry_run: bool,
    parallel: int | None,
    build_host: str | None,
    use_substitutes: bool,
    ssh_option: tuple[str, ...],
    identity: Path | None,
    backend: str,
    goal: str,
    confirm_timeout: int,
    build_command: str | None,
    copy_command: str | None,
    rebuild_command: str | None,
    rollback_command: str | None,
    current_system: str,
    state_dir: str,
    flake: str | None,
    check_timeout: float,
    check_interval: float,
    as_json: bool,
) -> None:
    """Deploy CLUSTER's machines: build every one first, then activate them batch by batch; each
    batch's checks must pass before the next.

    Order: the PostgreSQL primary (under Patroni: the bootstrap member), the other postgres
    machines one at a time, the other etcd members and the storage machines one at a time,
    pict-rs, the backends and the frontends at most half of each at a time. Machines: all, or
    those given by --host and/or --role (together: the union).

    Refused before anything runs: hosts/ differs from CLUSTER (run `synth generate`), a file the
    flake needs is not tracked by git, a machine has no hosts/<name>/hardware-configuration.nix.
    --dry-run prints the plan and what a real run would refuse.

    After switch/test, a machine reverts by itself unless the deployer confirms over a new ssh
    connection within --confirm-timeout. When a build fails, nothing is activated. When an
    activation fails, or a batch's checks still fail after --check-timeout, nothing more starts
    and the machines of that batch whose running system changed go back to the one that ran
    before (others are left alone). A change of Lemmy's version migrates in the first backend
    alone, the other backends stopped meanwhile (see the README). Exit codes: 0 all deployed; 1 bad input, refused, or a
    build, activation or rollback failed; 3 a batch failed its checks (never 2: that is a usage
    error).
    """
    import json
    import threading
    import time

    from synth import rollout as d
    from synth.commands.verify import role_checker
    from synth.errors import SynthError
    from synth.model import load
    from synth.order import batches as order_batches
    from synth.topology import plan

    c = load(cluster_file)
    opts = make_ssh_options(cluster_file, ssh_option, identity)
    names = select(c, cluster_file, hosts, roles)
    flake_dir = flake if flake is not None else str(folder_of(cluster_file))
    refused = refusals(c, cluster_file, Path(flake_dir), names, ours=rebuild_command is None)
    settings = d.Settings(
        flake=flake_dir,
        backend=backend,
        build_host=build_host,
        use_substitutes=use_substitutes,
        rebuild_template=rebuild_command,
        rollback_template=rollback_command,
        build_template=build_command,
        copy_template=copy_command,
        nix_sshopts=opts.nix_sshopts(),
        goal=goal,
    )
    commands = {n: d.host_commands(n, c.machines[n].ssh_user, c.machines[n].address, settings) for n in names}
    batches = order_batches(c, names)
    if dry_run:
        from synth.model import etcd_members

        members = etcd_members(c)
        roles_of = {n: [*c.machines[n].roles, *(["etcd"] if n in members else [])] for n in names}
        lines = d.dry_run_lines(
            batches, commands, roles_of, check_timeout, goal=goal, confirm_timeout=confirm_timeout,
            refusals=[p.render(str(cluster_file)) for p in refused],
        )  # fmt: skip
        if as_json:
            doc = {
                "batches": [b.to_json() for b in batches],
                "goal": goal,
                "confirm_timeout": confirm_timeout,
                "refusals": [p.render(str(cluster_file)) for p in refused],
                "lines": lines,
            }
            click.echo(json.dumps(doc, indent=2))
        else:
            for line in lines:
                click.echo(line)
        if refused:
            click.echo(f"synth deploy: a real run would refuse ({len(refused)} problem(s) above)", err=True)
            sys.exit(d.EXIT_COMMAND)
        return
    if refused:
        raise SynthError(str(cluster_file), refused)

    lock = threading.Lock()
    t0 = time.monotonic()
    width = max(len(n) for n in names)

    def emit(host: str, message: str) -> None:
        stamp = f"[{time.monotonic() - t0:7.1f}s]"
        with lock:
            click.echo(f"{stamp} {host:<{width}}  {message}" if host else f"{stamp} {message}", err=as_json)

    runner = Runner(
        c, commands, opts, emit, goal=goal, confirm_timeout=confirm_timeout, current_system=current_system,
        state_dir=state_dir,
    )  # fmt: skip
    outcome = d.run_batches(
        batches,
        runner.run,
        role_checker(c, plan(c), opts, rollout=True),
        emit=emit,
        parallel=parallel,
        check_timeout=check_timeout,
        check_interval=check_interval,
        build=any(hc.build is not None for hc in commands.values()),
        state=runner.state,
        upgrade=lambda: runner.lemmy_upgrade([n for b in batches for n in b.machines]),
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "exit_code": outcome.exit_code,
                    "message": outcome.message,
                    "status": outcome.status,
                    "failed_batch": outcome.failed_batch,
                    "systems": {n: {"before": runner.before.get(n), "new": runner.toplevel.get(n)} for n in names},
                },
                indent=2,
            )
        )
    else:
        for line in outcome.summary():
            click.echo(line)
    if outcome.exit_code != d.EXIT_OK:
        click.echo(f"synth deploy: {outcome.message}", err=True)
        sys.exit(outcome.exit_code)
    if not as_json:
        click.echo(f"synth deploy: {outcome.message}")


def refusals(c: Cluster, cluster_file: Path, flake_dir: Path, names: list[str], *, ours: bool) -> list[Problem]:
    """Why a real deploy must not start: hosts/ drifted from CLUSTER_FILE, a file the flake needs
    is not tracked by git (flakes see tracked files only), a machine lacks its hardware
    configuration. OURS: the flake is deployed by synth's own commands (not --rebuild-command)."""
    from synth import generate as gen
    from synth.errors import Problem, SynthError
    from synth.render import render_files
    from synth.rollout import missing_hardware

    problems: list[Problem] = []
    files = render_files(c, cluster_file.name)
    try:
        ch = gen.diff(flake_dir, files, str(cluster_file))
    except SynthError as exc:
        problems += exc.problems
    else:
        stale = [*ch.added, *ch.changed, *ch.removed]
        if stale:
            shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
            problems.append(
                Problem(
                    "hosts",
                    f"{flake_dir / 'hosts'} differs from {cluster_file} ({shown}): the machines would get "
                    f"what an older cluster file said; run `synth generate {cluster_file}`, review and commit",
                )
            )
    if not ours:
        return problems
    for n in missing_hardware(flake_dir, names):
        problems.append(
            Problem(
                f"machines.{n}",
                f"{flake_dir / 'hosts' / n / 'hardware-configuration.nix'} is missing, and NixOS "
                f"refuses to switch without it; on the machine run `nixos-generate-config "
                f"--show-hardware-config`, save the output there and commit it",
            )
        )
    for rel in untracked(flake_dir):
        problems.append(
            Problem(
                "git",
                f"{flake_dir / rel} is not tracked by git, and a flake in a git repository sees tracked "
                f"files only (the build would fail, or miss it): `git add {flake_dir / rel}`",
            )
        )
    return problems


def untracked(flake_dir: Path) -> list[str]:
    """Files under FLAKE_DIR that the flake reads (flake.nix, flake.lock, hosts/, modules/) and git
    does not track, ignored ones included; [] outside a git work tree."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=flake_dir, capture_output=True, text=True, check=False)

    try:
        inside = git("rev-parse", "--is-inside-work-tree")
    except OSError:
        return []
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return []
    paths = [p for p in ("flake.nix", "flake.lock", "hosts", "modules") if (flake_dir / p).exists()]
    if not paths:
        return []
    out = git("ls-files", "--others", "-z", "--", *paths)
    return sorted(f for f in out.stdout.split("\0") if f and not f.endswith((".synth-tmp", "~")))


# After a failed confirmation, how long past the machine's own deadline synth goes on trying to read
# the state of a machine it cannot reach before it goes on (the machine reverts all the same).
UNREACHABLE_WAIT = 30


class Runner:
    """The deploy's side effects: the build, copy, activation and rollback commands, and the reads of
    each machine's running system (the first read of a machine is its BEFORE)."""

    def __init__(
        self,
        c: Cluster,
        commands: dict[str, HostCommands],
        opts: SshOptions,
        emit: Callable[[str, str], None],
        *,
        goal: str,
        confirm_timeout: int,
        current_system: str,
        state_dir: str = "/run/lemmy-cluster/deploy",
    ) -> None:
        self.state_dir = state_dir
        self.c = c
        self.commands = commands
        self.opts = opts
        self.emit = emit
        self.goal = goal
        self.confirm_timeout = confirm_timeout
        self.current_system = current_system
        self.before: dict[str, str] = {}
        self.toplevel: dict[str, str] = {}
        self.lock = threading.Lock()

    def _ssh(
        self, name: str, command: str, stdin: str | None = None, timeout: float = 60, keepalive: bool = False
    ) -> CompletedProcess[str]:
        from dataclasses import replace

        from synth.remote import ssh_run

        m = self.c.machines[name]
        opts = self.opts
        if keepalive and "serveraliveinterval" not in opts.settings():
            # An activation that cuts the machine off must not leave this ssh waiting for minutes.
            opts = replace(opts, options=(*opts.options, "ServerAliveInterval=3", "ServerAliveCountMax=3"))
        remote = command if m.ssh_user == "root" else f"sudo -n sh -c {shlex.quote(command)}"
        if stdin is not None:
            remote = "sh -s" if m.ssh_user == "root" else "sudo -n sh -s"
        return ssh_run(m.ssh_user, m.address, remote, opts, timeout=timeout, stdin=stdin)

    def state(self, name: str) -> str | None:
        r = self._ssh(name, f"readlink -e {shlex.quote(self.current_system)}", timeout=30)
        path = r.stdout.strip()
        if r.returncode != 0 or not path:
            return None
        with self.lock:
            self.before.setdefault(name, path)
        return path

    def _stream(self, name: str, cmd: Command, env: dict[str, str], cwd: str | None) -> tuple[int, list[str]]:
        from synth.remote import run_streamed
        from synth.rollout import show

        self.emit(name, f"$ {show(cmd)}")
        lines: list[str] = []

        def on_line(line: str) -> None:
            lines.append(line)
            self.emit(name, f"| {line}")

        return run_streamed(cmd, on_line, env=env, cwd=cwd), lines

    def run(self, name: str, action: str) -> int:
        hc = self.commands[name]
        if action == "build":
            assert hc.build is not None
            rc, lines = self._stream(name, hc.build, hc.env, hc.cwd)
            paths = [ln.strip() for ln in lines if ln.strip().startswith("/")]
            if rc == 0 and not paths:
                self.emit(name, "build: printed no store path")
                return 1
            if rc == 0:
                with self.lock:
                    self.toplevel[name] = paths[-1]
                self.emit(name, f"system: {paths[-1]}")
            return rc
        if action == "rollback":
            return self._roll_back(name)
        if action in ("stop-lemmy", "start-lemmy"):
            verb = action.split("-")[0]
            # lemmy-federate (a dedicated sender) goes with lemmy_server, where there is one.
            cmd = (
                f"systemctl {verb} lemmy.service && if systemctl cat lemmy-federate.service >/dev/null 2>&1; "
                f"then systemctl {verb} lemmy-federate.service; fi"
            )
            r = self._ssh(name, cmd, timeout=300)
            for line in (r.stdout + r.stderr).splitlines():
                self.emit(name, f"| {line}")
            return r.returncode
        if hc.rebuild is not None:
            return self._stream(name, hc.rebuild, hc.env, hc.cwd)[0]
        return self._activate(name)

    def _activate(self, name: str) -> int:
        import secrets as token_source

        from synth import activate
        from synth.rollout import expand

        hc = self.commands[name]
        path = self.toplevel.get(name)
        if path is None:
            self.emit(name, "no system was built for this machine")
            return 1
        if hc.copy is not None:
            rc, _ = self._stream(name, expand(hc.copy, {"path": path}), hc.env, None)
            if rc != 0:
                return rc
        token = f"{time.strftime('%Y%m%dT%H%M%S')}-{token_source.token_hex(4)}"
        script = activate.launcher(
            path, self.goal, self.confirm_timeout, token, current_system=self.current_system, state_dir=self.state_dir
        )
        self.emit(name, f"activate ({self.goal}): {path}")
        r = self._ssh(name, "", stdin=script, timeout=activate.LAUNCH_WAIT + 60, keepalive=True)
        for line in (r.stdout + r.stderr).splitlines():
            self.emit(name, f"| {line}")
        if r.returncode not in (0, 255):
            return r.returncode  # the activation failed and the machine went back by itself
        confirmed = self.goal in activate.CONFIRMED_GOALS and self.confirm_timeout > 0
        if not confirmed:
            return 0 if r.returncode == 0 else 1
        c = self._ssh(name, activate.confirm_command(token, self.state_dir), timeout=max(15, self.confirm_timeout))
        if c.returncode == 0:
            self.emit(name, "confirmed over a new ssh connection")
            return 0
        detail = (c.stderr or c.stdout).strip()
        self.emit(
            name,
            f"cannot confirm over a new ssh connection ({detail or c.returncode}): the machine reverts by "
            f"itself within {self.confirm_timeout}s; waiting for that",
        )
        return self._await_revert(name, token)

    def _await_revert(self, name: str, token: str) -> int:
        """After a failed confirmation: wait until the machine reports its activation reverted (its
        previous system running again), so that whatever reads its running system next does not
        catch a revert half-way (and roll back on top of it). Polls its state file over ssh: while
        it answers "activated" (the revert is under way) until the deadline plus REVERT_WAIT; while
        it cannot be reached, until the deadline plus UNREACHABLE_WAIT; then the caller reads its
        running system (or finds it unreadable) as before."""
        from synth import activate

        start = time.monotonic()
        time.sleep(min(self.confirm_timeout, 2))
        while True:
            r = self._ssh(name, activate.state_command(token, self.state_dir), timeout=15)
            state = r.stdout.strip() if r.returncode == 0 else None
            if state in ("reverted", "failed"):
                self.emit(name, f"the machine reverted by itself (its activation reports {state})")
                return 1
            if state == "done":
                # The confirmation reached it after all (the confirming ssh timed out late).
                self.emit(name, "the machine took the confirmation after all: the new system stays")
                return 0
            waited = time.monotonic() - start
            limit = self.confirm_timeout + (activate.REVERT_WAIT if state is not None else UNREACHABLE_WAIT)
            if waited >= limit:
                why = f"its activation still reports {state!r}" if state is not None else "it cannot be reached"
                self.emit(name, f"no report of the revert after {waited:.0f}s ({why}): its running system is read next")
                return 1
            time.sleep(2)

    def lemmy_upgrade(self, order: list[str]) -> LemmyUpgrade | None:
        """The Lemmy upgrade this deploy makes, if the new systems' Lemmy differs from the running one.

        Read from lemmy.service of the built system (here) and of the running one (over ssh). Raises
        ValueError when the upgrade cannot be done safely: a backend of the cluster left out of the
        deploy would go on writing with the old Lemmy against the new schema."""
        from synth.rollout import LemmyUpgrade, lemmy_version

        backends = [n for n in order if "backend" in self.c.machines[n].roles]
        if not backends:
            return None
        unit = "etc/systemd/system/lemmy.service"
        changes: dict[str, tuple[str, str]] = {}
        for name in backends:
            path = self.toplevel.get(name)
            try:
                new = lemmy_version(Path(path, unit).read_text()) if path is not None else None
            except OSError:
                new = None
            if new is None:
                self.emit(
                    name, f"no Lemmy version in the new system's {unit} (or it was not built here): no upgrade handling"
                )
                continue
            r = self._ssh(name, f"cat {shlex.quote(self.current_system)}/{unit}", timeout=30)
            old = lemmy_version(r.stdout) if r.returncode == 0 else None
            if old is not None and old != new:
                changes[name] = (old, new)
        if not changes:
            return None
        old, new = next(iter(changes.values()))
        missing = [n for n in self.c.machines_with("backend") if n not in backends]
        if missing:
            raise ValueError(
                f"this deploy changes Lemmy {old} -> {new}, whose migrations change the database, but leaves out the "
                f"backend(s) {', '.join(missing)}, which would go on writing with Lemmy {old}: deploy every backend "
                "together (add --role backend)"
            )
        return LemmyUpgrade(backends[0], tuple(backends[1:]), old, new)

    def _roll_back(self, name: str) -> int:
        from synth import activate
        from synth.rollout import expand

        hc = self.commands[name]
        before = self.before.get(name)
        if before is None:
            self.emit(name, "rollback: the system that ran before is unknown")
            return 1
        if hc.rollback is not None:
            return self._stream(name, expand(hc.rollback, {"before": before}), hc.env, None)[0]
        script = activate.rollback_script(before, "test" if self.goal == "test" else "switch")
        self.emit(name, f"$ ssh {self.c.machines[name].ssh_user}@{self.c.machines[name].address} {script}")
        r = self._ssh(name, script, timeout=600)
        for line in (r.stdout + r.stderr).splitlines():
            self.emit(name, f"| {line}")
        return r.returncode
