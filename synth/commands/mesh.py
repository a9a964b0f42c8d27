"""`synth mesh`: the WireGuard mesh's keys (rotate-key), and the key helpers secrets/add-machine use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import tomlkit

from synth.commands.common import CLUSTER_OPTION, OUT_OPTION, edit_cluster, folder_of, user_errors

if TYPE_CHECKING:
    from synth.model import Cluster

SECRETS_DIR = "secrets"


def key_path(cluster_file: Path, name: str) -> Path:
    from synth.mesh import SECRET_KEY
    from synth.topology import local_secret_name

    return folder_of(cluster_file) / SECRETS_DIR / local_secret_name(SECRET_KEY, name)


def read_public_key(path: Path) -> str:
    """The public key of the private key file PATH (MeshKeyError when it is not one)."""
    from synth.mesh import MeshKeyError, public_key

    try:
        return public_key(path.read_text(encoding="ascii"))
    except UnicodeDecodeError:
        raise MeshKeyError("not base64") from None


def check_mesh_keys(c: Cluster, folder: Path, file: str) -> dict[str, str]:
    """The public key of every machine's existing private key file in FOLDER; SynthError when a
    file is broken, disagrees with the key recorded in the cluster file, or a recorded key is lost."""
    from synth import mesh
    from synth.errors import Problem, SynthError
    from synth.topology import local_secret_name

    if not mesh.enabled(c):
        return {}
    keys: dict[str, str] = {}
    problems = []
    for name, m in c.machines.items():
        path = folder / local_secret_name(mesh.SECRET_KEY, name)
        where = f"machines.{name}.wireguard_public_key"
        recorded = m.wireguard_public_key
        if path.exists():
            try:
                keys[name] = read_public_key(path)
            except mesh.MeshKeyError as exc:
                problems.append(
                    Problem(where, f"{path} is not a WireGuard private key ({exc}); restore it from your backup")
                )
                continue
            if recorded is not None and recorded != keys[name]:
                problems.append(
                    Problem(
                        where,
                        f"{recorded} is not the public key of {path} ({keys[name]}); restore the key file from "
                        f"your backup, or make a new key with `synth mesh rotate-key {name}`",
                    )
                )
        elif recorded is not None:
            problems.append(
                Problem(
                    where,
                    f"recorded, but its private key {path} is missing; restore it from your backup of secrets/, "
                    f"or make a new one with `synth mesh rotate-key {name}`",
                )
            )
    if problems:
        raise SynthError(file, problems)
    return keys


def mesh_records(c: Cluster, public_keys: dict[str, str]) -> dict[str, dict[str, str]]:
    """What `synth secrets init` records: each machine's mesh address and public key not recorded yet."""
    from synth import mesh

    if not mesh.enabled(c):
        return {}
    addresses = mesh.addresses(c)
    out: dict[str, dict[str, str]] = {}
    for name, m in c.machines.items():
        keys: dict[str, str] = {}
        if m.mesh_address is None:
            keys["mesh_address"] = addresses[name]
        if m.wireguard_public_key is None and name in public_keys:
            keys["wireguard_public_key"] = public_keys[name]
        if keys:
            out[name] = keys
    return out


def new_machine_key(cluster_file: Path, name: str) -> tuple[str, Callable[[], None] | None, str]:
    """(public key, what writes the private key, what to tell) for a machine NAME joining the mesh:
    an existing key file of that name is kept, else a new key is made (written only when the caller
    runs the returned function)."""
    from synth import mesh
    from synth.commands.secrets import write_secret
    from synth.errors import SynthError

    path = key_path(cluster_file, name)
    if path.exists():
        try:
            return read_public_key(path), None, f"kept: {path} (the existing WireGuard key of {name})"
        except mesh.MeshKeyError as exc:
            raise SynthError.single(
                str(cluster_file), f"machines.{name}", f"{path} is not a WireGuard private key ({exc}); move it away"
            ) from None
    private = mesh.new_private_key()

    def write() -> None:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_secret(path, private + "\n")

    return mesh.public_key(private), write, f"created: {path} (the WireGuard key of {name})"


Edit = Callable[[str, "Cluster"], str]


def join_mesh(
    cluster_file: Path, name: str, behind_nat: bool, before_write: Callable[[], None] | None
) -> tuple[Callable[[Edit], Edit], Callable[[], None] | None, str | None]:
    """What `synth add-machine NAME` adds with the mesh on: (a wrapper of its cluster-file edit that
    records NAME's behind_nat, mesh_address and wireguard_public_key; BEFORE_WRITE followed by the
    writing of its new key file; what to tell). Without the mesh: nothing, and --behind-nat refused."""
    from synth import mesh
    from synth.edit import set_machine_keys
    from synth.errors import SynthError
    from synth.model import load

    file = str(cluster_file)
    c = load(cluster_file)
    if not mesh.enabled(c):
        if behind_nat:
            raise SynthError.single(
                file,
                f"machines.{name}.behind_nat",
                'only used with [network] mesh = "wireguard"; turn the mesh on first',
            )
        return (lambda edit: edit), before_write, None
    public, write_key, note = new_machine_key(cluster_file, name)
    address = mesh.free_address(c)

    def wrap(edit: Edit) -> Edit:
        def edited(text: str, current: Cluster) -> str:
            new_text = edit(text, current)
            if behind_nat:
                doc = tomlkit.parse(new_text)
                doc["machines"][name]["behind_nat"] = True
                new_text = tomlkit.dumps(doc)
            keys = {"mesh_address": address, "wireguard_public_key": public}
            return set_machine_keys(new_text, file, {name: keys})

        return edited

    def write_both() -> None:
        if before_write is not None:
            before_write()
        if write_key is not None:
            write_key()

    return wrap, write_both, note


@click.group("mesh")
def mesh_group() -> None:
    """The WireGuard mesh ([network] mesh = "wireguard"): its keys."""


@mesh_group.command("rotate-key")
@click.argument("name")
@CLUSTER_OPTION
@OUT_OPTION
@user_errors
def rotate_key(name: str, cluster_file: Path, out_dir: Path | None) -> None:
    """Give machine NAME a new WireGuard key: the old key file is kept (renamed), the new public
    key is recorded in the cluster file (comments kept) and hosts/ is regenerated.

    Every peer of NAME gets the new public key in its host module; until NAME and its peers are
    deployed with the new key, their tunnels to NAME carry nothing.
    """
    import datetime

    from synth import mesh
    from synth.commands.secrets import write_secret
    from synth.edit import set_machine_keys
    from synth.errors import SynthError
    from synth.model import load
    from synth.topology import plan

    file = str(cluster_file)
    c = load(cluster_file)
    if not mesh.enabled(c):
        raise SynthError.single(file, "network.mesh", 'the mesh is off; set [network] mesh = "wireguard" first')
    if name not in c.machines:
        raise SynthError.single(file, f"machines.{name}", f"no machine named {name!r} in {file}")
    path = key_path(cluster_file, name)
    private = mesh.new_private_key()
    public = mesh.public_key(private)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.name}.replaced-{stamp}")

    def before_write() -> None:
        if path.exists():
            path.rename(kept)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_secret(path, private + "\n")

    old = c.machines[name].wireguard_public_key
    new = edit_cluster(
        cluster_file,
        lambda text, _c: set_machine_keys(text, file, {name: {"wireguard_public_key": public}}),
        out_dir,
        before_write,
    )
    mp = plan(new)[name].mesh
    peers = [p.name for p in mp.peers] if mp is not None else []
    click.echo(f"machines.{name}.wireguard_public_key: {old} -> {public}")
    if kept.exists():
        click.echo(f"kept: {kept} (the old key)")
    click.echo(f"created: {path}")
    click.echo(f"peers whose host modules now name the new key: {', '.join(peers) or 'none'}")
    click.echo(
        f"Next: `synth secrets push --host {name} {cluster_file}`, then deploy {name} and "
        f"{', '.join(peers) or 'nothing else'} (`synth plan --since HEAD` shows every change); "
        f"their tunnels to {name} carry nothing until both ends have the new key."
    )
