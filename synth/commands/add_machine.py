"""`synth add-machine`: add a machine to the cluster file (comments kept), then regenerate hosts/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from synth.commands.common import CLUSTER_OPTION, OUT_OPTION, edit_cluster, user_errors

if TYPE_CHECKING:
    from synth.model import Cluster


@click.command("add-machine")
@click.argument("name")
@click.option(
    "--role", "roles", multiple=True, required=True, help="frontend, backend, pictrs, postgres or storage (repeat)."
)
@click.option("--address", required=True, help="How the deployer reaches it: IP address or DNS name.")
@click.option("--private-address", default=None, help="Its cluster-internal IP (default: --address, if an IP).")
@click.option("--system", default=None, help="Nix system, if not the cluster's default.")
@click.option(
    "--behind-nat", is_flag=True, help="With the mesh: the machine has no address the others can reach (home NAT)."
)
@click.option("--capacity", default=None, help='Role storage: disk space Garage may use, e.g. "500G".')
@click.option("--zone", default=None, help="Role storage: its zone (default: the machine's name).")
@CLUSTER_OPTION
@OUT_OPTION
@user_errors
def add_machine(
    name: str,
    roles: tuple[str, ...],
    address: str,
    private_address: str | None,
    system: str | None,
    behind_nat: bool,
    capacity: str | None,
    zone: str | None,
    cluster_file: Path,
    out_dir: Path | None,
) -> None:
    """Add machine NAME to the cluster file (keeping its comments), then regenerate hosts/.

    A machine with role storage gets its Garage node key in secrets/ (beside the cluster file; an
    existing key of that name is kept) and its id in the cluster file.
    """
    from synth.edit import add_machine as edit
    from synth.edit import keep_etcd_members
    from synth.errors import SynthError

    file = str(cluster_file)
    storage: dict[str, str] | None = None
    before_write = None
    if "storage" in roles:
        if capacity is None:
            raise SynthError.single(
                file, f"machines.{name}.storage_capacity", "role storage needs --capacity, e.g. --capacity 500G"
            )
        from synth.commands.secrets import node_key_for

        node_id, before_write, key_note = node_key_for(cluster_file, name)
        storage = {"storage_capacity": capacity}
        if zone is not None:
            storage["storage_zone"] = zone
        storage["garage_node_id"] = node_id
    elif capacity is not None or zone is not None:
        raise SynthError.single(
            file, f"machines.{name}", "--capacity and --zone are only for machines with --role storage"
        )

    from synth.commands.mesh import join_mesh

    with_mesh, before_write, mesh_note = join_mesh(cluster_file, name, behind_nat, before_write)

    pinned: list[str] = []

    def change(text: str, current: Cluster) -> str:
        new_text, kept = keep_etcd_members(
            edit(
                text,
                file,
                name,
                roles,
                address,
                private_address,
                system,
                storage,
                state_version=current.cluster.state_version,
            ),
            file,
            current,
        )
        pinned[:] = kept
        return new_text

    edit_cluster(cluster_file, with_mesh(change), out_dir, before_write)
    if pinned:
        click.echo(
            f"etcd: its members stay {', '.join(pinned)} (now recorded as [etcd] members): a new postgres machine "
            "would otherwise take the place of a member, and etcd changes members only one at a time"
        )
    if mesh_note is not None:
        click.echo(mesh_note)
        click.echo(f"Next: `synth secrets push --host {name} {cluster_file}` installs its WireGuard key.")
    if storage is not None:
        click.echo(key_note)
        click.echo(f"Next: `synth secrets push --host {name} {cluster_file}` installs its secrets.")
    click.echo(
        f"Next: `synth plan` shows which machines to deploy; deploy {name} and every machine whose hosts/ changed."
    )
