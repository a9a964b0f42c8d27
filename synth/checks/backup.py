"""Checks of the backup role, through a testinfra Host: what `synth verify` reports about backups.

On the machine that takes the writes (a standby does not archive; its check says so):
- the WAL archive: the last archived segment and its age, and FAIL while archiving fails (the
  last failure is newer than the last success);
- the repository: the age of the newest backup that completed, FAIL when there is none or when
  it is older than MAX_BACKUP_AGE (default two days: the differential backup runs daily).
On the backup machine (role "backup", repository_checks): its pgBackRest server runs, and the
newest backup's age.

    results = backup_checks(host, access=PsqlAccess(), pgbackrest="lemmy-cluster-pgbackrest")
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from synth.checks import CheckResult
from synth.checks.postgres import DEFAULT_ACCESS, PsqlAccess, query

DEFAULT_MAX_BACKUP_AGE = 2 * 24 * 3600
# During a rollout the repository may not be usable yet: the storage machines that hold an "s3"
# repository are deployed after the postgres machines, and the stanza comes with the first start.
_LATER = " (in a rollout this does not fail: the repository may come later)"
PGBACKREST = "lemmy-cluster-pgbackrest"


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} days"


def backup_checks(
    host: Any,
    *,
    stanza: str = "lemmy",
    access: PsqlAccess = DEFAULT_ACCESS,
    pgbackrest: str = PGBACKREST,
    max_backup_age: float = DEFAULT_MAX_BACKUP_AGE,
    rollout: bool = False,
    now: float | None = None,
) -> list[CheckResult]:
    from synth.backupsteps import parse_archiver

    now = time.time() if now is None else now
    ok, out = query(host, "SELECT pg_is_in_recovery()", access)
    if not ok:
        return [CheckResult("backup: archive", False, f"PostgreSQL does not answer: {out}")]
    if out == "t":
        return [CheckResult("backup: archive", True, "a standby: the machine that leads archives and backs up")]
    results = []
    q = (
        "SELECT coalesce(last_archived_wal, ''), coalesce(extract(epoch FROM last_archived_time)::bigint, 0), "
        "coalesce(last_failed_wal, ''), coalesce(extract(epoch FROM last_failed_time)::bigint, 0), failed_count "
        "FROM pg_stat_archiver"
    )
    ok, out = query(host, q, access)
    st = parse_archiver(out) if ok else None
    if st is None:
        results.append(CheckResult("backup: archive", False, f"cannot read pg_stat_archiver: {out}"))
    elif st.failed_at > st.last_at:
        results.append(
            CheckResult(
                "backup: archive",
                False,
                f"archiving fails: {st.failed_wal} failed {_age(now - st.failed_at)} ago"
                + (f", the last success ({st.last_wal}) was {_age(now - st.last_at)} ago" if st.last_wal else ""),
            )
        )
    elif not st.last_wal:
        results.append(CheckResult("backup: archive", rollout, "no WAL archived yet"))
    else:
        results.append(
            CheckResult("backup: archive", True, f"last archived WAL {st.last_wal}, {_age(now - st.last_at)} ago")
        )
    results += _last_backup(host, stanza, pgbackrest, max_backup_age, rollout, now)
    return results


def repository_checks(
    host: Any,
    *,
    stanza: str = "lemmy",
    pgbackrest: str = PGBACKREST,
    max_backup_age: float = DEFAULT_MAX_BACKUP_AGE,
    rollout: bool = False,
    now: float | None = None,
    images: bool = False,
) -> list[CheckResult]:
    """The backup machine (role "backup"): its pgBackRest server runs, and the repository's newest
    backup (which it takes) is recent; with IMAGES, the last copy of pict-rs's bucket succeeded
    within a day (it runs every six hours)."""
    now = time.time() if now is None else now
    r = host.run("systemctl is-active lemmy-cluster-pgbackrest-server.service")
    state = (r.stdout or r.stderr).strip() or f"exit {r.rc}"
    results = [
        CheckResult(
            "backup: repository server",
            r.rc == 0,
            "pgBackRest's TLS server runs" if r.rc == 0 else f"lemmy-cluster-pgbackrest-server is {state}",
        )
    ]
    results += _last_backup(host, stanza, pgbackrest, max_backup_age, rollout, now)
    if images:
        results.append(_images_copy(host, now))
    return results


IMAGES_UNIT = "lemmy-cluster-images-backup.service"
MAX_IMAGES_AGE = 24 * 3600


def _images_copy(host: Any, now: float) -> CheckResult:
    """The last run of the bucket's copy: its result and when it ended (systemd's record)."""
    r = host.run(f"systemctl show --timestamp=unix -p Result -p ExecMainExitTimestamp {IMAGES_UNIT}")
    fields = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line) if r.rc == 0 else {}
    if "Result" not in fields:
        return CheckResult(
            "backup: images copy", False, f"cannot read {IMAGES_UNIT}: {(r.stderr or r.stdout).strip()[:200]}"
        )
    ended = fields.get("ExecMainExitTimestamp", "").lstrip("@")
    if not ended or not ended.isdigit() or int(ended) == 0:
        return CheckResult(
            "backup: images copy", True, "no copy of pict-rs's bucket yet (its timer runs every six hours)"
        )
    age = now - int(ended)
    if fields["Result"] != "success":
        return CheckResult(
            "backup: images copy",
            False,
            f"the last copy of pict-rs's bucket failed ({fields['Result']}), {_age(age)} ago",
        )
    good = age <= MAX_IMAGES_AGE
    limit = f" (more than {_age(MAX_IMAGES_AGE)}: does its timer run?)" if not good else ""
    return CheckResult("backup: images copy", good, f"pict-rs's bucket copied {_age(age)} ago{limit}")


def _last_backup(
    host: Any, stanza: str, pgbackrest: str, max_backup_age: float, rollout: bool, now: float
) -> list[CheckResult]:
    from synth.backupsteps import last_backup_stop

    results: list[CheckResult] = []
    r = host.run(f"{pgbackrest} --stanza={shlex.quote(stanza)} --output=json info")
    try:
        info = json.loads(r.stdout) if r.rc == 0 else None
    except json.JSONDecodeError:
        info = None
    if info is None:
        detail = (r.stderr or r.stdout or f"exit {r.rc}").strip()[:300]
        results.append(
            CheckResult(
                "backup: last backup", rollout, f"cannot read the repository: {detail}" + (_LATER if rollout else "")
            )
        )
        return results
    status = info[0].get("status", {}) if info else {"code": 1, "message": "no stanza"}
    stop = last_backup_stop(info)
    if status.get("code") not in (0, 2):  # 2: "no valid backups"
        detail = f"cannot read the repository: stanza {stanza}: {status.get('message', '?')}"
        results.append(CheckResult("backup: last backup", rollout, detail + (_LATER if rollout else "")))
    elif stop is None:
        results.append(CheckResult("backup: last backup", rollout, "no backup in the repository yet"))
    else:
        age = now - stop
        good = age <= max_backup_age
        limit = f" (more than {_age(max_backup_age)}: do the backup timers run?)" if not good else ""
        results.append(CheckResult("backup: last backup", good, f"the last good backup ended {_age(age)} ago{limit}"))
    return results
