"""`synth remove-machine`: remove a machine from the cluster file (refusing unsafe removals)."""

from __future__ import annotations

from pathlib import Path

import click

from synth.commands.common import CLUSTER_OPTION, OUT_OPTION, edit_cluster, load_cluster, user_errors


@click.command("remove-machine")
@click.argument("name")
@CLUSTER_OPTION
@OUT_OPTION
@user_errors
def remove_machine(name: str, cluster_file: Path, out_dir: Path | None) -> None:
    """Remove machine NAME from the cluster file (refusing unsafe removals), then regenerate hosts/."""
    from synth.edit import remove_machine as edit

    before = load_cluster(cluster_file)
    edit_cluster(cluster_file, lambda text, c: edit(text, str(cluster_file), c, name), out_dir)
    node_id = before.machines[name].garage_node_id if name in before.machines else None
    if node_id is not None:
        click.echo(
            f"Before switching {name} off, move its data: on another storage machine run "
            f"`garage layout remove {node_id}`, then `garage layout apply --version N` (N: the version "
            "that `garage layout show` proposes), and wait until `garage status` no longer lists it as "
            "draining (Garage copies its objects to the remaining machines)."
        )
    click.echo(f"Next: deploy the machines whose hosts/ changed, then switch {name} off.")
