"""`synth backup`: the backups in the repository and the WAL archive's state; `--now` takes one.

Over SSH, on the postgres machine that takes the writes (the first that answers
`pg_is_in_recovery()` with f): `lemmy-cluster-pgbackrest --stanza=lemmy --output=json info` (the
backup role's wrapper: pgbackrest with the repository's passphrase) and PostgreSQL's
pg_stat_archiver; with --now first `lemmy-cluster-pgbackrest --stanza=lemmy backup --type=TYPE` (on the backup
machine when the cluster has one: a backup runs where the repository is).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from synth.commands.common import load_cluster, make_ssh_options, ssh_options, user_errors


@click.command("backup")
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default="cluster.toml",
    show_default=True,
    help="The cluster file.",
)
@click.option("--now", is_flag=True, help="Take a backup now (on the machine that leads), then list.")
@click.option(
    "--type",
    "backup_type",
    type=click.Choice(["full", "diff", "incr"]),
    default="full",
    show_default=True,
    help="With --now: the kind of backup.",
)
@ssh_options
@user_errors
def backup(cluster_file: Path, now: bool, backup_type: str, ssh_option: tuple[str, ...], identity: Path | None) -> None:
    """List the backups and the WAL archive's state; with --now, take a backup first."""
    import json
    import time

    from synth import backupsteps as bs
    from synth.backup import STANZA, repository_host
    from synth.errors import SynthError
    from synth.remote import ssh_argv

    c = load_cluster(cluster_file)
    file = str(cluster_file)
    if c.backup is None:
        raise SynthError.single(file, "backup", "this cluster has no [backup] section; add one (see the README)")
    opts = make_ssh_options(cluster_file, ssh_option, identity)

    def remote(machine: str, command: str) -> subprocess.CompletedProcess[str]:
        m = c.machines[machine]
        return subprocess.run(
            ssh_argv(m.ssh_user, m.address, command, opts), capture_output=True, text=True, check=False
        )

    leader = None
    seen = []
    for name in c.machines_with("postgres"):
        r = remote(name, bs.RECOVERY_CHECK)
        if r.returncode == 0 and r.stdout.strip() == "f":
            leader = name
            break
        seen.append(f"{name}: {(r.stdout.strip() or r.stderr.strip() or f'exit {r.returncode}').splitlines()[-1]}")
    if leader is None:
        raise SynthError.single(
            file, "postgres", "no postgres machine takes the writes (" + "; ".join(seen) + "); nothing was done"
        )
    # A backup runs where the repository is: the backup machine, which takes it from the primary.
    taker = repository_host(c) or leader
    if now:
        click.echo(f"{taker}: taking a {backup_type} backup" + (f" of {leader}" if taker != leader else ""))
        r = remote(taker, f"{bs.PGBACKREST} --stanza={STANZA} backup --type={backup_type}")
        for line in (r.stdout + r.stderr).splitlines():
            click.echo(f"{taker}: {line}")
        if r.returncode != 0:
            raise SynthError.single(
                file, "backup", f"the backup on {taker} failed (exit code {r.returncode}; see above)"
            )
    r = remote(leader, f"{bs.PGBACKREST} --stanza={STANZA} --output=json info")
    try:
        info = json.loads(r.stdout) if r.returncode == 0 else None
    except json.JSONDecodeError:
        info = None
    if info is None:
        raise SynthError.single(
            file,
            "backup",
            f"cannot read the repository from {leader}: {(r.stderr.strip() or r.stdout.strip())[:400]}",
        )
    click.echo(f"repository ({c.backup.repository}), read on {leader}:")
    for line in bs.describe_info(info):
        click.echo(line)
    a = remote(leader, bs.ARCHIVER_CHECK)
    st = bs.parse_archiver(a.stdout) if a.returncode == 0 else None
    if st is None:
        click.echo(f"archive status of {leader}: unknown ({(a.stderr.strip() or a.stdout.strip())[:200]})")
        return
    if st.last_wal:
        click.echo(f"last archived WAL: {st.last_wal}, {int(time.time()) - st.last_at} s ago (on {leader})")
    else:
        click.echo(f"no WAL archived yet on {leader}")
    if st.failed_count:
        ago = int(time.time()) - st.failed_at
        click.echo(f"archive failures: {st.failed_count}, the last one ({st.failed_wal}) {ago} s ago")
