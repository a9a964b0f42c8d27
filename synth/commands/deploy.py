"""`synth deploy`: batch by batch (synth.order), health-gated, rolling back the batch that fails.

The command only; the orchestration and the rebuild/rollback commands are in synth.rollout.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
@click.option("--build-host", default=None, metavar="HOST", help="Build on HOST (nixos-rebuild --build-host).")
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
    "--rebuild-command",
    default=None,
    metavar="TEMPLATE",
    help="Shell command that replaces the rebuild; {name}, {address}, {user}, {flake} are replaced (quoted).",
)
@click.option(
    "--rollback-command",
    default=None,
    metavar="TEMPLATE",
    help="Shell command that replaces the rollback (nixos-rebuild switch --rollback); same placeholders.",
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
    rebuild_command: str | None,
    rollback_command: str | None,
    flake: str | None,
    check_timeout: float,
    check_interval: float,
) -> None:
    """Deploy CLUSTER's machines batch by batch; each batch's checks must pass before the next.

    Order: the PostgreSQL primary, the replicas one at a time, pict-rs, the backend, then the
    frontends at most half at a time. Machines: all, or those given by --host and/or --role
    (together: the union). A machine without hosts/<name>/hardware-configuration.nix is refused.

    When a rebuild fails, or a batch's checks still fail after --check-timeout, nothing more
    starts: that batch is rolled back and the run stops. Exit codes: 0 all deployed; 1 a
    rebuild or rollback command failed (or bad input); 2 a batch failed its checks and was rolled back.
    """
    import threading
    import time

    from synth import rollout as d
    from synth.commands.verify import role_checker
    from synth.errors import Problem, SynthError
    from synth.model import load
    from synth.order import batches as order_batches
    from synth.remote import run_streamed
    from synth.topology import plan

    c = load(cluster_file)
    opts = make_ssh_options(cluster_file, ssh_option, identity)
    names = select(c, cluster_file, hosts, roles)
    flake_dir = flake if flake is not None else str(folder_of(cluster_file))
    if rebuild_command is None:
        missing = d.missing_hardware(Path(flake_dir), names)
        if missing:
            raise SynthError(
                str(cluster_file),
                [
                    Problem(
                        f"machines.{n}",
                        f"{Path(flake_dir) / 'hosts' / n / 'hardware-configuration.nix'} is missing, and NixOS "
                        f"refuses to switch without it; on the machine run `nixos-generate-config "
                        f"--show-hardware-config`, save the output there and commit it",
                    )
                    for n in missing
                ],
            )
    settings = d.Settings(
        flake=flake_dir,
        backend=backend,
        build_host=build_host,
        use_substitutes=use_substitutes,
        rebuild_template=rebuild_command,
        rollback_template=rollback_command,
        nix_sshopts=opts.nix_sshopts(),
    )
    commands = {n: d.host_commands(n, c.machines[n].ssh_user, c.machines[n].address, settings) for n in names}
    batches = order_batches(c, names)
    if dry_run:
        from synth.model import etcd_members

        members = etcd_members(c)
        roles_of = {n: [*c.machines[n].roles, *(["etcd"] if n in members else [])] for n in names}
        for line in d.dry_run_lines(batches, commands, roles_of, check_timeout):
            click.echo(line)
        return

    lock = threading.Lock()
    t0 = time.monotonic()
    width = max(len(n) for n in names)

    def emit(host: str, message: str) -> None:
        stamp = f"[{time.monotonic() - t0:7.1f}s]"
        with lock:
            click.echo(f"{stamp} {host:<{width}}  {message}" if host else f"{stamp} {message}")

    def run(name: str, action: str) -> int:
        hc = commands[name]
        cmd = hc.rebuild if action == "rebuild" else hc.rollback
        emit(name, f"$ {d.show(cmd)}")
        return run_streamed(
            cmd, lambda line: emit(name, f"| {line}"), env=hc.env, cwd=hc.cwd if action == "rebuild" else None
        )

    outcome = d.run_batches(
        batches,
        run,
        role_checker(c, plan(c), opts, rollout=True),
        emit=emit,
        parallel=parallel,
        check_timeout=check_timeout,
        check_interval=check_interval,
    )
    for line in outcome.summary():
        click.echo(line)
    if outcome.exit_code != d.EXIT_OK:
        click.echo(f"synth deploy: {outcome.message}", err=True)
        sys.exit(outcome.exit_code)
    click.echo(f"synth deploy: {outcome.message}")
