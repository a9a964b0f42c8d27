"""`synth validate`: check the cluster file and report every problem."""

from __future__ import annotations

from pathlib import Path

import click

from synth.commands.common import CLUSTER_ARG, load_cluster, user_errors


@click.command("validate")
@CLUSTER_ARG
@click.option("--json", "as_json", is_flag=True, help="Print the result (or every problem) as JSON on stdout.")
@user_errors
def validate(cluster_file: Path, as_json: bool) -> None:
    """Check CLUSTER (default ./cluster.toml) and report every problem. Exit codes: 0 valid; 1 not."""
    c = load_cluster(cluster_file)
    from synth.mesh import warnings

    for w in warnings(c):
        click.echo(f"warning: {w.render(str(cluster_file))}", err=True)
    roles: dict[str, int] = {}
    for m in c.machines.values():
        for r in m.roles:
            roles[r] = roles.get(r, 0) + 1
    if as_json:
        import json

        doc = {"ok": True, "cluster": c.cluster.name, "machines": {n: list(m.roles) for n, m in c.machines.items()}}
        click.echo(json.dumps(doc, indent=2))
        return
    summary = ", ".join(f"{n} {r}" for r, n in sorted(roles.items()))
    click.echo(f"{cluster_file}: OK: cluster {c.cluster.name!r}, {len(c.machines)} machines ({summary})")
