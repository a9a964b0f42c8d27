"""`synth diagram`: draw the cluster (SVG, PNG or Mermaid)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from synth.commands.common import CLUSTER_ARG, load_cluster, user_errors


@click.command("diagram")
@CLUSTER_ARG
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["svg", "png", "mermaid"]),
    default="svg",
    show_default=True,
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default: stdout)."
)
@user_errors
def diagram(cluster_file: Path, fmt: str, output: Path | None) -> None:
    """Draw the cluster: machines, roles, traffic and replication."""
    from synth import diagram as d

    c = load_cluster(cluster_file)
    if fmt == "mermaid":
        data: bytes = d.mermaid(c).encode()
    elif fmt == "svg":
        data = d.svg(c).encode()
    else:
        try:
            data = d.png(d.svg(c))
        except RuntimeError as exc:
            click.echo(f"synth: {exc}", err=True)
            sys.exit(1)
    if output is None:
        if fmt == "png":
            click.echo("synth: PNG is binary; give -o FILE", err=True)
            sys.exit(1)
        click.echo(data.decode(), nl=False)
    else:
        output.write_bytes(data)
        click.echo(f"wrote {output}")
