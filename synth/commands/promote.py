"""`synth promote MACHINE`: make MACHINE the PostgreSQL machine that takes the writes.

Under Patroni (automatic failover): a planned switchover. On MACHINE over SSH,
`lemmy-cluster-pg-switchover MACHINE` (modules/postgres/scripts/switchover.sh) asks Patroni to move
the leadership there; it refuses a member that does not stream from the leader (in synchronous
mode: that is not the synchronous standby) and does nothing when MACHINE leads already. The
clients follow by themselves and the cluster file does not change (`[postgres] primary` only says
which member created the cluster).

With manual failover:
1. refuse a machine that is not a postgres machine or is not a healthy replica (PostgreSQL answers
   and is in recovery) — nothing is changed then; the current primary: nothing to do;
2. run the promote tool on it over SSH (the NixOS module installs `lemmy-cluster-pg-promote`,
   which wraps modules/postgres/scripts/promote.sh);
3. set `[postgres] primary` in the cluster file (comments kept) and regenerate hosts/;
4. print what to deploy next, in order.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from synth.commands.common import edit_cluster, load_cluster, make_ssh_options, ssh_options, user_errors

RECOVERY_CHECK = "runuser -u postgres -- psql -XAtc 'SELECT pg_is_in_recovery()'"
PROMOTE = "lemmy-cluster-pg-promote"
SWITCHOVER = "lemmy-cluster-pg-switchover {candidate}"


@click.command("promote")
@click.argument("machine")
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default="cluster.toml",
    show_default=True,
    help="The cluster file.",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option(
    "--check-command", default=RECOVERY_CHECK, show_default=True, help="Remote command printing t on a standby."
)
@click.option("--promote-command", default=PROMOTE, show_default=True, help="Remote command that promotes the standby.")
@click.option(
    "--switchover-command",
    default=SWITCHOVER,
    show_default=True,
    help="Under Patroni: remote command that moves the leadership ({candidate}: MACHINE, shell-quoted).",
)
@ssh_options
@user_errors
def promote(
    machine: str,
    cluster_file: Path,
    out_dir: Path | None,
    check_command: str,
    promote_command: str,
    switchover_command: str,
    ssh_option: tuple[str, ...],
    identity: Path | None,
) -> None:
    """Make the PostgreSQL machine MACHINE the one that takes the writes.

    Under Patroni (automatic failover) a planned switchover to MACHINE, a healthy replica; the
    clients follow by themselves. With manual failover: promote the replica MACHINE to primary and
    make the cluster file follow.
    """
    import shlex

    from synth.edit import set_primary
    from synth.errors import SynthError
    from synth.model import automatic_failover
    from synth.order import batches
    from synth.remote import ssh_argv

    c = load_cluster(cluster_file)
    file = str(cluster_file)
    if machine not in c.machines:
        raise SynthError.single(file, f"machines.{machine}", f"no machine named {machine!r}")
    if "postgres" not in c.machines[machine].roles:
        raise SynthError.single(
            file, f"machines.{machine}", f"{machine} has no postgres role: only a replica can be promoted"
        )
    opts = make_ssh_options(cluster_file, ssh_option, identity)
    m = c.machines[machine]

    def remote(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ssh_argv(m.ssh_user, m.address, command, opts), capture_output=True, text=True, check=False
        )

    if automatic_failover(c):
        done = remote(switchover_command.replace("{candidate}", shlex.quote(machine)))
        for line in (done.stdout + done.stderr).splitlines():
            click.echo(f"{machine}: {line}")
        if done.returncode != 0:
            raise SynthError.single(
                file,
                f"machines.{machine}",
                f"the switchover to {machine} did not happen (exit code {done.returncode}; see above); "
                "nothing was changed",
            )
        click.echo(
            f"{machine} takes the writes. The backends and pict-rs follow the leader by themselves: nothing to "
            f"deploy, and {file} stays as it is."
        )
        return
    if machine == c.postgres.primary:
        click.echo(f"{machine} is already the primary; nothing to do.")
        return

    state = remote(check_command)
    seen = (state.stdout.strip() or state.stderr.strip() or f"exit code {state.returncode}").splitlines()[-1]
    if state.returncode != 0 or state.stdout.strip() != "t":
        raise SynthError.single(
            file,
            f"machines.{machine}",
            f"{machine} is not a healthy replica (PostgreSQL must answer and be in recovery; got: {seen}); "
            "nothing was changed",
        )
    click.echo(f"{machine}: healthy standby; promoting")
    done = remote(promote_command)
    for line in (done.stdout + done.stderr).splitlines():
        click.echo(f"{machine}: {line}")
    if done.returncode != 0:
        raise SynthError.single(
            file,
            f"machines.{machine}",
            f"the promote command failed (exit code {done.returncode}); {file} was not changed",
        )
    old = c.postgres.primary
    new = edit_cluster(cluster_file, lambda text, _c: set_primary(text, file, machine), out_dir)
    click.echo(f"{machine} is the primary now; {old} must not start as a primary again.")
    click.echo("Deploy next, in this order (the backends then use the new primary, the replicas follow it):")
    others = [n for n in new.machines_with("postgres") if n not in (machine, old)]
    # pict-rs with object storage keeps its repository on the primary (a single URL): it follows too.
    pictrs = new.machines_with("pictrs") if new.pictrs.store == "object_storage" else []
    order = batches(new, [machine, *others, *pictrs, *new.machines_with("backend")])
    for i, b in enumerate(order, 1):
        click.echo(f"  {i}. {b.stage}: {', '.join(b.machines)}")
    click.echo(f"Then, on {old} once it is repaired: deploy it (its start is refused), run `lemmy-cluster-pg-rejoin`, ")
    click.echo("and start postgresql: it clones the new primary and follows it.")
