"""The order in which machines are (re)deployed: safe for the data, never all frontends at once.

1. the PostgreSQL primary (a replica clones it; backends run migrations against it); under
   Patroni, the member that creates the cluster ([postgres] primary),
2. the PostgreSQL replicas (under Patroni: the other members), one at a time,
   then the etcd members that are not postgres machines, one at a time (on a first deploy the
   postgres machines' members may not have a quorum yet: Patroni waits for it, and the role checks
   of a deploy accept that wait),
   then the storage machines (Garage), one at a time: with three copies of every object, reads and
   writes go on while one restarts,
   then the backup machine (pgBackRest's repository host: it creates the stanza and its first
   backup once a primary answers; until then the primary keeps its WAL in pg_wal),
3. pict-rs (half of the machines at a time, when several share object storage),
4. the backends (the first to start runs Lemmy's migrations against the primary), in batches of at
   most half of them, so that the API keeps answering,
5. the frontends, in batches of at most half of them, so that at least one always serves.

A machine with several roles is deployed in the stage of its earliest role. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from synth.model import Cluster, etcd_members

STAGES = ("postgres-primary", "postgres-replicas", "etcd", "storage", "backup", "pictrs", "backend", "frontends")
# Stages whose machines serve in parallel: deployed at most half of them at a time (by role).
HALF_AT_A_TIME = {"pictrs": "pictrs", "backend": "backend", "frontends": "frontend"}


@dataclass(frozen=True)
class Batch:
    stage: str
    machines: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"stage": self.stage, "machines": list(self.machines)}


def stage_of(c: Cluster, name: str) -> str:
    roles = c.machines[name].roles
    if "postgres" in roles:
        return "postgres-primary" if name == c.postgres.primary else "postgres-replicas"
    if name in etcd_members(c):
        return "etcd"
    if "storage" in roles:
        return "storage"
    if "backup" in roles:
        return "backup"
    if "pictrs" in roles:
        return "pictrs"
    if "backend" in roles:
        return "backend"
    return "frontends"


def half_batch_size(total: int) -> int:
    """At most half of a role's machines at once (one at a time for two or three)."""
    return max(1, total // 2)


def batches(c: Cluster, only: Iterable[str] | None = None) -> list[Batch]:
    """The deployment batches for the machines ONLY (default: all), in order.

    Frontend and backend batches are sized against all machines of that role in the cluster, so
    deploying a subset never takes down more than half of them.
    """
    wanted = set(c.machines) if only is None else set(only)
    unknown = wanted - set(c.machines)
    if unknown:
        raise KeyError(", ".join(sorted(unknown)))
    by_stage: dict[str, list[str]] = {s: [] for s in STAGES}
    for name in c.machines:  # file order
        if name in wanted:
            by_stage[stage_of(c, name)].append(name)
    out: list[Batch] = []
    for stage in STAGES:
        names = by_stage[stage]
        if not names:
            continue
        if stage in HALF_AT_A_TIME:
            size = half_batch_size(len(c.machines_with(HALF_AT_A_TIME[stage])))
            out += [Batch(stage, tuple(names[i : i + size])) for i in range(0, len(names), size)]
        elif stage in ("postgres-replicas", "etcd", "storage"):
            # One at a time: the other replicas keep the standby count up, the other etcd members
            # etcd's quorum, the other storage machines Garage's quorum, while one restarts.
            out += [Batch(stage, (n,)) for n in names]
        else:
            out.append(Batch(stage, tuple(names)))
    return out
