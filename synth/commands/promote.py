"""`synth promote MACHINE`: make a PostgreSQL replica the primary, then the cluster file follow.

1. refuse a machine that is not a postgres machine, is already the primary, or is not a healthy
   replica (PostgreSQL answers and is in recovery) — nothing is changed then;
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
@ssh_options
@user_errors
def promote(
    machine: str,
    cluster_file: Path,
    out_dir: Path | None,
    check_command: str,
    promote_command: str,
    ssh_option: tuple[str, ...],
    identity: Path | None,
) -> None:
    """Promote the PostgreSQL replica MACHINE to primary and make the cluster file follow."""
    from synth.edit import set_primary
    from synth.errors import SynthError
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
    if machine == c.postgres.primary:
        raise SynthError.single(file, "postgres.primary", f"{machine} is already the primary; nothing to do")
    opts = make_ssh_options(cluster_file, ssh_option, identity)
    m = c.machines[machine]

    def remote(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ssh_argv(m.ssh_user, m.address, command, opts), capture_output=True, text=True, check=False
        )

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
