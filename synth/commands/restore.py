"""`synth restore --to TIME | --latest`: the cluster's database back to a point in time.

Prints every step first (synth.backupsteps.restore_steps), asks (or --yes), then runs them over
SSH in order, stopping at the first that fails. The first step only checks (the repository
answers, the passphrase decrypts it, a backup and the WAL archive can reach the target): when it
fails nothing has changed. No step deletes a data directory: the restored machine's and every
replica's are kept beside the new one (<data>.before-restore-<UTC time>).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from synth.commands.common import load_cluster, make_ssh_options, ssh_options, user_errors


@click.command("restore")
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default="cluster.toml",
    show_default=True,
    help="The cluster file.",
)
@click.option("--to", "to", metavar="TIME", default=None, help="The point in time, e.g. '2026-12-01 14:00:00+00:00'.")
@click.option("--latest", is_flag=True, help="To the last archived commit (e.g. after losing the leader's disk).")
@click.option("--yes", is_flag=True, help="Do not ask before running the steps.")
@ssh_options
@user_errors
def restore(
    cluster_file: Path,
    to: str | None,
    latest: bool,
    yes: bool,
    ssh_option: tuple[str, ...],
    identity: Path | None,
) -> None:
    """Restore the cluster's PostgreSQL from the backups, to --to TIME or --latest."""
    from synth import backupsteps as bs
    from synth.errors import SynthError
    from synth.remote import ssh_argv

    file = str(cluster_file)
    if (to is None) == (not latest):
        raise SynthError.single(file, "", "give exactly one of --to TIME and --latest")
    c = load_cluster(cluster_file)
    if c.backup is None:
        raise SynthError.single(
            file, "backup", "this cluster has no [backup] section, so there is nothing to restore from"
        )
    target = None
    if to is not None:
        try:
            target = bs.parse_time(to)
        except ValueError as exc:
            raise SynthError.single(file, "--to", str(exc)) from None
    opts = make_ssh_options(cluster_file, ssh_option, identity)
    steps = bs.restore_steps(c, target)
    click.echo(f"Restore of {c.cluster.name} to {target or 'the last archived commit'}: these steps, in order:")
    for i, s in enumerate(steps, 1):
        click.echo(f"  {i}. {s.machine}: {s.what}\n       $ {s.command}")
    back = next(n for n, st in enumerate(steps, 1) if "takes the writes" in st.what)
    click.echo(f"Lemmy's backends have no database from step 2 until step {back} is done.")
    if not yes:
        try:
            go = click.confirm("Run them?", default=False)
        except click.Abort:
            go = False
        if not go:
            click.echo("\nNothing was done.")
            raise SystemExit(1)
    for i, s in enumerate(steps, 1):
        m = c.machines[s.machine]
        click.echo(f"[{i}/{len(steps)}] {s.machine}: {s.what}")
        r = subprocess.run(
            ssh_argv(m.ssh_user, m.address, s.command, opts), capture_output=True, text=True, check=False
        )
        for line in (r.stdout + r.stderr).splitlines():
            click.echo(f"{s.machine}: {line}")
        if r.returncode != 0:
            if i == 1:
                raise SynthError.single(
                    file, "", f"step 1 failed on {s.machine} (exit code {r.returncode}; see above): nothing was changed"
                )
            # Not a SynthError: its report ends with "nothing was written", which is no longer true.
            click.echo(
                f"synth: step {i} failed on {s.machine} (exit code {r.returncode}; see above): steps 1-{i - 1} "
                "are done, none after. The old data directories are kept (<data>.before-restore-*); fix the "
                f"cause, then run steps {i}-{len(steps)} above by hand in order.",
                err=True,
            )
            sys.exit(1)
    click.echo("Restored. The old data directories are kept beside the new ones (<data>.before-restore-*).")
