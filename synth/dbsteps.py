"""The database steps of a plan: what a deploy cannot do by itself for PostgreSQL and etcd.

`synth plan` compares the generated host modules as they are (on disk, or at a git revision) with
what the cluster file now gives, and says, besides the files and the deploy order:

- a move from plain PostgreSQL to Patroni (a cluster growing to two postgres machines, or from
  manual to automatic failover): which member takes the existing database over, that etcd comes
  first, and that nothing is copied or deleted;
- postgres machines leaving a Patroni cluster (stop Patroni on them first; their replication slot);
- etcd members joining (they add themselves to the running cluster with `etcdctl member add` on
  their first start: one at a time) and leaving (`lemmy-cluster-etcd-remove-member` on a member
  that stays, which nothing runs by itself).

Pure: it reads the old files' text (synth's own deterministic output), never a machine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from synth.model import Cluster, automatic_failover, etcd_members


@dataclass(frozen=True)
class OldHost:
    """What a previously generated host module says about the database."""

    postgres: str | None  # "patroni", "primary", "replica" or None
    etcd_members: tuple[str, ...]  # the members it was configured with (empty: not a member)


_ROLE = re.compile(r'^\s+role = "(primary|replica)";$', re.M)
_PATRONI = re.compile(r"^\s+patroni = \{$", re.M)
_ETCD = re.compile(r"^      etcd = \{\n(.*?)^      \};$", re.M | re.S)
_MEMBERS = re.compile(r"^        members = \{\n(.*?)^        \};$", re.M | re.S)
_MEMBER = re.compile(r'^\s+([A-Za-z0-9_-]+) = "[^"]*";$', re.M)


def read_old_host(text: str) -> OldHost:
    if "      postgres = {" not in text:
        pg = None
    elif _PATRONI.search(text):
        pg = "patroni"
    else:
        m = _ROLE.search(text)
        pg = m.group(1) if m else None
    members: tuple[str, ...] = ()
    etcd = _ETCD.search(text)
    found = _MEMBERS.search(etcd.group(1)) if etcd else None
    if found:
        members = tuple(sorted(_MEMBER.findall(found.group(1))))
    return OldHost(pg, members)


@dataclass
class Steps:
    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)


def database_steps(c: Cluster, old_files: Mapping[str, str]) -> list[str]:
    """The steps for the database layer, in the order to do them (empty: nothing special)."""
    old = {rel.split("/")[1]: read_old_host(text) for rel, text in old_files.items() if rel.count("/") == 2}
    s = Steps()
    new_members = etcd_members(c)
    old_members = sorted({m for h in old.values() for m in h.etcd_members})
    had_etcd = any(h.etcd_members for h in old.values())
    pgs = c.machines_with("postgres")
    was_plain = [n for n, h in old.items() if h.postgres in ("primary", "replica")]
    patroni = automatic_failover(c)

    if patroni and was_plain and not any(h.postgres == "patroni" for h in old.values()):
        primary = c.postgres.primary
        s.add(
            f"PostgreSQL moves to Patroni (automatic failover). The deploy order does it: the etcd members start with "
            f"their machines ({', '.join(new_members)}); on {primary}, [postgres] primary, Patroni takes the running "
            "database over as it is (its data directory is kept, only nixpkgs' postgresql.conf link is set aside as "
            "postgresql.conf.before-patroni); every other postgres machine "
            + (
                "follows it with its own data (a replica of the same database)"
                if len(was_plain) > 1
                else "clones it (a new replica)"
            )
            + ". Until etcd has a quorum (a majority of its members deployed), Patroni waits and the database does "
            "not accept writes: deploy the postgres machines and the etcd members one after the other, without a "
            "pause. Take a backup first if you have none."
        )
    if not patroni and any(h.postgres == "patroni" for h in old.values()) and len(pgs) == 1:
        s.add(
            f"PostgreSQL leaves Patroni: {pgs[0]} is the one postgres machine left. First make it lead, while the "
            f"others still run (`synth promote {pgs[0]}`); then deploy it: nixpkgs' services.postgresql takes the "
            "data directory over as it is (Patroni's postgresql.conf is replaced by nixpkgs' link). The etcd members "
            "stop their etcd (its data stays in /var/lib/etcd); nothing else needs etcd."
        )
    if not patroni and any(h.postgres == "patroni" for h in old.values()) and len(pgs) >= 2:
        s.add(
            "PostgreSQL leaves Patroni (manual failover): this is not done by a deploy. Stop Patroni on every "
            "postgres machine, keep the leader's data directory for the primary and clone the replicas with "
            "`lemmy-cluster-pg-rejoin`; ask for help before doing this on a cluster with data."
        )
    if patroni:
        for name, h in old.items():
            if h.postgres == "patroni" and name not in pgs:
                s.add(
                    f"postgres: {name} leaves the Patroni cluster. Before deploying, `synth decommission {name}` "
                    "does what follows, each step printed first (by hand instead: if it leads, "
                    f"`synth promote` another member; then `systemctl stop patroni` on {name}): it leaves cleanly "
                    "(it stops its PostgreSQL and its member entry expires within 20 s). Patroni keeps its "
                    "replication slot on the leader for 30 minutes "
                    "(member_slots_ttl, in case it comes back) and then drops it by itself; until then the leader "
                    "keeps at most 16GB of WAL for it."
                )
    if had_etcd and patroni:
        joining = [m for m in new_members if m not in old_members]
        leaving = [m for m in old_members if m not in new_members]
        stays = [m for m in new_members if m in old_members] or new_members
        for m in joining:
            s.add(
                f"etcd: {m} joins the running etcd cluster on its first start by itself (lemmy-cluster-etcd-join runs "
                f"`etcdctl member add {m}` on a running member and starts it with the current members); deploy one "
                "joining member at a time, each once the previous one is healthy."
            )
        for m in leaving:
            how = (
                f"`synth decommission {m}` (again, if it ran before the deploy) does it over SSH and then stops "
                f"{m}'s etcd; by hand: "
                if m not in c.machines
                else ""
            )
            s.add(
                f"etcd: {m} leaves. Once the joining members run (and, on a postgres machine, its Patroni is "
                f"stopped), {how}on a member that stays ({stays[0]}): `lemmy-cluster-etcd-remove-member {m}` (it says "
                "what it will do, refuses while a member that stays is unhealthy or Patroni still counts "
                f"{m} as a member, and does nothing if "
                f"{m} is no member); {m}'s etcd then stops by itself. Remove one member at a time: a majority "
                "must stay."
            )
    return s.lines
