"""The steps of `synth restore` and the reading of pgBackRest's `info` (pure: no I/O).

A restore runs, over SSH, the tools the backup role installs on every postgres machine
(modules/backup/default.nix):

- ``lemmy-cluster-restore (--time T | --latest) [--check-only]``: modules/backup/scripts/restore.sh
  on the machine's data directory (checks first; restores into a new folder, keeps the old data
  directory aside, replays to the target and promotes, stops cleanly);
- ``lemmy-cluster-move-aside``: a replica's data directory aside, so that it clones afresh;
- ``lemmy-cluster-patroni-forget``: the stopped Patroni cluster's keys out of etcd;
- ``lemmy-cluster-pgbackrest``: pgbackrest with the repository's passphrase.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from synth.backup import STANZA, repository_host
from synth.model import Cluster, automatic_failover

RESTORE = "lemmy-cluster-restore"
MOVE_ASIDE = "lemmy-cluster-move-aside"
FORGET = "lemmy-cluster-patroni-forget"
PGBACKREST = "lemmy-cluster-pgbackrest"
RECOVERY_CHECK = "runuser -u postgres -- psql -XAtc 'SELECT pg_is_in_recovery()'"
ARCHIVER_QUERY = (
    "SELECT coalesce(last_archived_wal, ''), coalesce(extract(epoch FROM last_archived_time)::bigint, 0), "
    "coalesce(last_failed_wal, ''), coalesce(extract(epoch FROM last_failed_time)::bigint, 0), failed_count "
    "FROM pg_stat_archiver"
)
ARCHIVER_CHECK = f"runuser -u postgres -- psql -XAt -c {shlex.quote(ARCHIVER_QUERY)}"


@dataclass(frozen=True)
class Step:
    machine: str
    what: str
    command: str
    changes: bool = True  # False: a check, which changes nothing


def parse_time(text: str) -> str:
    """TEXT ('2026-12-01 14:00:00+00:00', ISO 8601 with T, seconds optional) as the UTC time
    PostgreSQL's recovery_target_time takes; ValueError with the reason when it is not one."""
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a time such as '2026-12-01 14:00:00+00:00'") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add it, e.g. '{raw}+00:00' (UTC)")
    utc = when.astimezone(UTC)
    if utc > datetime.now(UTC):
        raise ValueError(f"{text!r} is in the future; give a time that has passed, or --latest")
    return utc.strftime("%Y-%m-%d %H:%M:%S.%f+00")


def restore_steps(c: Cluster, target: str | None) -> list[Step]:
    """Every step of a restore to TARGET (None: the end of the archive), in order."""
    pgs = c.machines_with("postgres")
    first = c.postgres.primary
    others = [m for m in pgs if m != first]
    when = shlex.join(["--time", target]) if target is not None else "--latest"
    point = f"the state at {target}" if target is not None else "the last archived commit"
    patroni = automatic_failover(c)
    unit = "patroni.service" if patroni else "postgresql.service"
    steps = [
        Step(
            first,
            f"check: the repository answers, the passphrase decrypts it, a backup and the archive can reach {point}",
            f"{RESTORE} --check-only {when}",
            changes=False,
        )
    ]
    steps += [Step(m, f"stop {unit}", f"systemctl stop {unit}") for m in [*others, first]]
    if patroni:
        steps.append(Step(first, "remove the stopped cluster's state from etcd (Patroni)", FORGET))
    steps.append(
        Step(
            first,
            f"restore {point} into a new folder, keep the data directory aside (never deleted), replay and promote",
            f"{RESTORE} {when}",
        )
    )
    steps += [
        Step(m, "move the data directory aside (kept), so that it clones the restored primary", MOVE_ASIDE)
        for m in others
    ]
    steps.append(Step(first, f"start {unit}: the restored database takes the writes", f"systemctl start {unit}"))
    steps += [Step(m, f"start {unit}: clones the restored database", f"systemctl start {unit}") for m in others]
    # A backup runs where the repository is: on the backup machine when there is one.
    steps.append(
        Step(
            repository_host(c) or first,
            "a full backup of the restored database (its new timeline)",
            f"{PGBACKREST} --stanza={STANZA} backup --type=full",
        )
    )
    return steps


# --------------------------------------------------------------------------- pgbackrest info


def _when(epoch: Any) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def describe_info(info: list[dict[str, Any]]) -> list[str]:
    """Lines for an admin from `pgbackrest --output=json info` (one stanza)."""
    if not info:
        return ["no stanza in the repository yet (lemmy-cluster-backup-init creates it on the leader)"]
    st = info[0]
    lines = [f"stanza {st.get('name')}: {st.get('status', {}).get('message', '?')}, cipher {st.get('cipher', '?')}"]
    backups = st.get("backup", [])
    if not backups:
        lines.append("no backup yet")
    for b in backups:
        ts = b.get("timestamp", {})
        info_ = b.get("info", {})
        lines.append(
            f"  {b.get('label')}  {b.get('type'):4}  {_when(ts.get('start', 0))} .. {_when(ts.get('stop', 0))}"
            f"  database {_size(info_.get('size'))}, stored {_size(info_.get('repository', {}).get('delta'))}"
        )
    for a in st.get("archive", []):
        lines.append(f"  WAL archive {a.get('id')}: {a.get('min')} .. {a.get('max')}")
    return lines


def last_backup_stop(info: list[dict[str, Any]]) -> int | None:
    """When the newest backup ended (epoch), or None."""
    if not info:
        return None
    stops = [int(b.get("timestamp", {}).get("stop", 0)) for b in info[0].get("backup", []) if not b.get("error")]
    return max(stops) if stops else None


@dataclass(frozen=True)
class Archiver:
    last_wal: str
    last_at: int
    failed_wal: str
    failed_at: int
    failed_count: int


def parse_archiver(text: str) -> Archiver | None:
    """ARCHIVER_CHECK's output (psql -At: fields separated by |), or None."""
    fields = text.strip().split("|")
    if len(fields) != 5:
        return None
    try:
        return Archiver(fields[0], int(fields[1]), fields[2], int(fields[3]), int(fields[4]))
    except ValueError:
        return None
