"""Edits of cluster.toml that keep the user's comments, order and formatting (tomlkit).

Each function takes the file's text and returns the new text; it never writes. The caller
validates the result (model.parse) before writing anything, so an edit that would make the
cluster invalid leaves the file untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tomlkit
from tomlkit.items import Table

from synth.errors import Problem, SynthError
from synth.model import Cluster, automatic_failover, etcd_members, replication_factor


def _doc(text: str, file: str) -> Any:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise SynthError.single(file, "", f"TOML syntax error: {exc}") from None


def add_machine(
    text: str,
    file: str,
    name: str,
    roles: Sequence[str],
    address: str,
    private_address: str | None = None,
    system: str | None = None,
    storage: dict[str, str] | None = None,
) -> str:
    """TEXT with a new [machines.NAME] table appended after the last machine.

    STORAGE: the storage_* and garage_node_id keys of a machine with role "storage".
    """
    doc = _doc(text, file)
    machines = doc.get("machines")
    if machines is None:
        machines = tomlkit.table(is_super_table=True)
        doc["machines"] = machines
    if name in machines:
        raise SynthError.single(
            file, f"machines.{name}", "a machine of that name exists already; choose another name or remove it first"
        )
    table: Table = tomlkit.table()
    table.add("address", address)
    if private_address is not None:
        table.add("private_address", private_address)
    table.add("roles", list(roles))
    if system is not None:
        table.add("system", system)
    for key, value in (storage or {}).items():
        table.add(key, value)
    machines[name] = table
    return str(tomlkit.dumps(doc))


def keep_etcd_members(text: str, file: str, before: Cluster) -> tuple[str, list[str]]:
    """TEXT (an edit of the cluster BEFORE) with [etcd] members recorded as BEFORE chose them, when
    the edit would otherwise move etcd members: the etcd cluster keeps its members, however the
    machines change. Returns the text and the members recorded ([] when nothing was needed)."""
    import tomllib

    from synth.model import from_data

    if before.etcd.members is not None or not automatic_failover(before):
        return text, []
    old = etcd_members(before)
    try:
        after = from_data(tomllib.loads(text), file)
    except (SynthError, tomllib.TOMLDecodeError):
        return text, []  # the caller reports why the edit is invalid
    if etcd_members(after) == old or not all(m in after.machines for m in old):
        return text, []
    doc = _doc(text, file)
    etcd = doc.get("etcd")
    if etcd is None:
        etcd = tomlkit.table()
        etcd.comment("the etcd members, recorded by synth so that adding machines never moves them")
        doc["etcd"] = etcd
    etcd["members"] = old
    return str(tomlkit.dumps(doc)), old


def remove_machine(text: str, file: str, cluster: Cluster, name: str) -> str:
    """TEXT without [machines.NAME]; refuses removals that would break the cluster, saying why."""
    if name not in cluster.machines:
        raise SynthError.single(file, f"machines.{name}", f"no machine named {name!r} in {file}")
    roles = cluster.machines[name].roles
    problems: list[Problem] = []
    others = [m for m in cluster.machines_with("postgres") if m != name]
    # Under Patroni [postgres] primary only names the member the cluster was created from: it
    # passes to the next postgres machine (the leader is whoever Patroni elected).
    new_primary = others[0] if automatic_failover(cluster) and name == cluster.postgres.primary and others else None
    if name == cluster.postgres.primary and new_primary is None:
        replicas = others
        way_out = (
            f"promote a replica first (`synth promote {replicas[0]}`), then remove {name}"
            if replicas
            else "add a postgres machine, let it replicate, promote it, then remove this one"
        )
        problems.append(
            Problem(
                f"machines.{name}", f"{name} is the PostgreSQL primary: removing it would lose the database; {way_out}"
            )
        )
    for role, noun in (("frontend", "frontend"), ("backend", "backend"), ("pictrs", "pict-rs machine")):
        if role in roles and cluster.machines_with(role) == [name]:
            problems.append(
                Problem(
                    f"machines.{name}",
                    f"{name} is the only {noun}: add another machine with role {role!r} "
                    f"(`synth add-machine NAME --role {role} --address ADDRESS`) before removing it",
                )
            )
    if "storage" in roles:
        left = len(cluster.machines_with("storage")) - 1
        rf = replication_factor(cluster)
        if left < rf:
            problems.append(
                Problem(
                    f"machines.{name}",
                    f"removing {name} leaves {left} storage machine{'s' if left != 1 else ''}, fewer than "
                    f"[storage] replication_factor = {rf} copies of every image; add a storage machine first "
                    "(`synth add-machine NAME --role storage --address ADDRESS --capacity SIZE`)",
                )
            )
    if problems:
        raise SynthError(file, problems)
    doc = _doc(text, file)
    del doc["machines"][name]
    out = str(tomlkit.dumps(doc))
    if new_primary is not None:
        out = set_primary(out, file, new_primary)
    recorded = cluster.etcd.members
    if recorded is not None and name in recorded:
        # A recorded etcd member leaves: the first machine of synth's placement order that is not a
        # member yet takes its place (the postgres machines first, then the others in file order).
        pgs = cluster.machines_with("postgres")
        candidates = [m for m in pgs + [m for m in cluster.machines if m not in pgs] if m != name and m not in recorded]
        if candidates:
            doc = _doc(out, file)
            doc["etcd"]["members"] = [candidates[0] if m == name else m for m in recorded]
            out = str(tomlkit.dumps(doc))
    return out


def set_primary(text: str, file: str, name: str) -> str:
    """TEXT with [postgres] primary = NAME, keeping the line's comment."""
    doc = _doc(text, file)
    postgres = doc.get("postgres")
    if postgres is None or "primary" not in postgres:
        raise SynthError.single(file, "postgres.primary", "missing; add a [postgres] table with primary = ...")
    old = postgres["primary"]
    new = tomlkit.string(name)
    comment = getattr(getattr(old, "trivia", None), "comment", "")
    if comment:
        new.comment(comment.lstrip("#").strip())
    postgres["primary"] = new
    return str(tomlkit.dumps(doc))


def set_machine_keys(text: str, file: str, values: dict[str, dict[str, str]]) -> str:
    """TEXT with [machines.NAME] KEY = VALUE for each NAME: {KEY: VALUE}, keeping everything else."""
    doc = _doc(text, file)
    for name, keys in values.items():
        table = doc["machines"][name]
        for key, value in keys.items():
            table[key] = value
    return str(tomlkit.dumps(doc))
