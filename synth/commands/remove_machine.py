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
    from synth.model import automatic_failover, etcd_members

    before = load_cluster(cluster_file)
    after = edit_cluster(cluster_file, lambda text, c: edit(text, str(cluster_file), c, name), out_dir)
    if automatic_failover(before) and not automatic_failover(after):
        left = after.machines_with("postgres")[0]
        click.echo(
            f"{left} is the one postgres machine left: PostgreSQL leaves Patroni (and etcd goes). First make {left} "
            f"lead while {name} still runs (`synth promote {left}`), then deploy {left}: plain PostgreSQL takes its "
            f"data directory over. Then switch {name} off."
        )
    elif automatic_failover(before) and name in before.machines_with("postgres"):
        if after.postgres.primary != before.postgres.primary:
            click.echo(f"[postgres] primary (the member the cluster was created from) is now {after.postgres.primary}.")
        click.echo(
            f"Next, before deploying: `synth decommission {name}` (it moves the leadership away if {name} leads and "
            f"stops Patroni on {name}, printing each step first)"
            + (
                f"; after the deploy, `synth decommission {name}` again takes it out of etcd"
                if name in etcd_members(before)
                else ""
            )
            + ". What it does, to do by hand instead:"
        )
        click.echo(
            f"{name} runs under Patroni: if it leads, move the leadership first (`synth promote "
            f"{after.machines_with('postgres')[0]}`); before switching it off, `systemctl stop patroni` on {name}. "
            "Patroni drops its replication slot on the leader by itself 30 minutes after it left."
        )
    if name in etcd_members(before) and automatic_failover(after) and name not in before.machines_with("postgres"):
        click.echo(
            f"Next: deploy the others, then `synth decommission {name}` takes it out of etcd (printing each step "
            "first). What it does, to do by hand instead:"
        )
    if name in etcd_members(before) and automatic_failover(after):
        joined = [m for m in etcd_members(after) if m not in etcd_members(before)]
        stays = next((m for m in etcd_members(after) if m in etcd_members(before)), etcd_members(after)[0])
        click.echo(
            f"{name} is an etcd member: "
            + (f"{', '.join(joined)} takes its place (it joins by itself on its first start); " if joined else "")
            + "once the others are deployed"
            + (f" and Patroni is stopped on {name}" if name in before.machines_with("postgres") else "")
            + f", run `lemmy-cluster-etcd-remove-member {name}` on {stays} (it says what it will do and refuses "
            f"while a member that stays is unhealthy), then switch {name} off. `synth plan --since HEAD` lists "
            "these steps."
        )
    node_id = before.machines[name].garage_node_id if name in before.machines else None
    if node_id is not None:
        click.echo(
            f"Before switching {name} off, move its data: on another storage machine run "
            f"`garage layout remove {node_id}`, then `garage layout apply --version N` (N: the version "
            "that `garage layout show` proposes), and wait until `garage status` no longer lists it as "
            "draining (Garage copies its objects to the remaining machines)."
        )
    click.echo(f"Next: deploy the machines whose hosts/ changed, then switch {name} off.")
