"""`synth diagram`: draw the cluster (SVG or PNG laid out by Graphviz, its DOT source, or Mermaid)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from synth.commands.common import CLUSTER_ARG, user_errors


@click.command("diagram")
@CLUSTER_ARG
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["svg", "png", "dot", "mermaid"]),
    default="svg",
    show_default=True,
    help="svg and png are laid out by Graphviz's dot; dot is the graph itself; mermaid is for GitHub.",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default: stdout)."
)
@user_errors
def diagram(cluster_file: Path, fmt: str, output: Path | None) -> None:
    """Draw the cluster: machines, roles, traffic and replication.

    \b
    Needs Graphviz's `dot` for svg and png (Debian/Ubuntu: apt install
    graphviz; Nix: pkgs.graphviz, which the flake's synth has on its PATH).
    """
    from synth import diagram as d
    from synth.model import load

    if fmt == "png" and output is None:
        click.echo("synth: PNG is binary; give -o FILE", err=True)
        sys.exit(1)
    c = load(cluster_file, pending_node_ids=True)  # a picture needs no Garage node ids yet
    if fmt == "mermaid":
        data = d.mermaid(c).encode()
    elif fmt == "dot":
        data = d.with_digest(d.dot_source(c)).encode()
    else:
        try:
            data = d.render(c, fmt)
        except d.GraphvizError as exc:
            click.echo(f"synth: {exc}", err=True)
            sys.exit(1)
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        output.write_bytes(data)
        click.echo(f"wrote {output}")
