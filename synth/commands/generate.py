"""`synth generate`: write hosts/ from the cluster file (or, with --check, say what would change)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from synth.commands.common import CLUSTER_ARG, OUT_OPTION, load_cluster, out_dir_for, user_errors, write_hosts


@click.command("generate")
@CLUSTER_ARG
@OUT_OPTION
@click.option("--check", is_flag=True, help="Write nothing; exit 1 and list the files that would change.")
@user_errors
def generate(cluster_file: Path, out_dir: Path | None, check: bool) -> None:
    """Generate hosts/<machine>/default.nix and hosts/machines.nix from CLUSTER."""
    from synth import generate as gen
    from synth.render import render_files

    c = load_cluster(cluster_file)
    out = out_dir_for(cluster_file, out_dir)
    if not check:
        write_hosts(c, cluster_file, out)
        return
    files = render_files(c, cluster_file.name)
    changes = gen.diff(out, files, str(cluster_file))
    if not changes.any:
        click.echo(f"{out / 'hosts'}: up to date ({len(files)} files)")
        return
    for label, items in (("added", changes.added), ("changed", changes.changed), ("removed", changes.removed)):
        for rel in items:
            click.echo(f"would be {label}: {out / rel}")
    click.echo(f"synth: {out / 'hosts'} is out of date; run `synth generate {cluster_file}`", err=True)
    sys.exit(1)
