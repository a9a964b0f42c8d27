"""`synth plan`: what `synth generate` and a deploy would change, per machine, and in what order."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from synth.commands.common import CLUSTER_ARG, OUT_OPTION, load_cluster, out_dir_for, user_errors

EXIT_CHANGES = 3  # like terraform's -detailed-exitcode, but not 2: click's usage error


@click.command("plan")
@CLUSTER_ARG
@OUT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--since",
    metavar="REV",
    default=None,
    help="Compare with hosts/ as committed at this git revision (e.g. HEAD: what is deployed) instead of the disk.",
)
@user_errors
def plan(cluster_file: Path, out_dir: Path | None, as_json: bool, since: str | None) -> None:
    """Show what `synth generate` and a deploy would change, per machine, and in what order.

    Without --since: compared with hosts/ on disk (a preview of `synth generate`). With --since
    REV: compared with hosts/ at that git revision, e.g. after `synth add-machine` regenerated.
    Exit codes: 0 nothing would change; 3 something would; 1 bad input.
    """
    import json
    import subprocess

    from synth.changes import compute, files_at_revision
    from synth.errors import SynthError

    c = load_cluster(cluster_file)
    out = out_dir_for(cluster_file, out_dir)
    old = None
    if since is not None:
        try:
            old = files_at_revision(out, since)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise SynthError.single(
                str(cluster_file), "--since", f"cannot read {since} with git: {detail.strip()}"
            ) from None
    p = compute(c, str(cluster_file), out, old)
    if as_json:
        click.echo(json.dumps(p.to_json(), indent=2))
        sys.exit(EXIT_CHANGES if p.files else 0)
    if not p.files:
        against = f"hosts/ at {since}" if since else "hosts/"
        click.echo(f"No changes: {against} matches the cluster file; nothing to deploy.")
        return
    for f in p.files:
        click.echo(f"== {f.status}: {f.path}")
        click.echo(f.diff, nl=False)
    click.echo()
    if p.mesh:
        click.echo("WireGuard peers that change (deploy both ends of each):")
        for line in p.mesh:
            click.echo(f"  {line}")
    if p.decommission:
        click.echo(
            f"Machines leaving the cluster (switch them off after the others are deployed): {', '.join(p.decommission)}"
        )
    if p.batches:
        lead = "Deploy" if since else "Run `synth generate`, then deploy"
        click.echo(f"{lead} in this order (each batch after the previous one is healthy):")
        for i, b in enumerate(p.batches, 1):
            click.echo(f"  {i}. {b.stage}: {', '.join(b.machines)}")
    if p.steps:
        click.echo("The database (a deploy does not do these by itself; read them before deploying):")
        for step in p.steps:
            click.echo(f"  - {step}")
    sys.exit(EXIT_CHANGES)
