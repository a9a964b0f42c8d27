"""synth/checks/backup.py on answers as PostgreSQL and pgBackRest give them (a stand-in host).
The real ones answer in tests/live/test_backup.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from synth.checks.backup import backup_checks

NOW = 1_800_000_000.0


@dataclass
class Result:
    rc: int
    stdout: str = ""
    stderr: str = ""


@dataclass
class Host:
    recovery: str = "f"
    archiver: str = "000000010000000000000005|1799999990||0|0"
    info: object = field(
        default_factory=lambda: [
            {"status": {"code": 0, "message": "ok"}, "backup": [{"timestamp": {"start": 1, "stop": NOW - 3600}}]}
        ]
    )
    info_rc: int = 0

    def run(self, command: str) -> Result:
        if "pg_is_in_recovery" in command:
            return Result(0, self.recovery)
        if "pg_stat_archiver" in command:
            return Result(0, self.archiver)
        if " info" in command:
            return Result(self.info_rc, json.dumps(self.info), "ERROR: [055]: unable to load info file")
        return Result(127, "", f"unexpected: {command}")


def test_a_healthy_leader() -> None:
    a, b = backup_checks(Host(), now=NOW)
    assert a.ok and "000000010000000000000005, 10 s ago" in a.detail
    assert b.ok and "ended 60 min ago" in b.detail


def test_a_standby_does_not_archive() -> None:
    (only,) = backup_checks(Host(recovery="t"), now=NOW)
    assert only.ok and "standby" in only.detail


def test_failing_archiving_is_reported() -> None:
    a, _ = backup_checks(
        Host(archiver="000000010000000000000005|1799999000|000000010000000000000006|1799999990|7"), now=NOW
    )
    assert not a.ok and "archiving fails: 000000010000000000000006 failed 10 s ago" in a.detail


def test_an_old_backup_fails() -> None:
    info = [{"status": {"code": 0, "message": "ok"}, "backup": [{"timestamp": {"stop": NOW - 5 * 86400}}]}]
    _, b = backup_checks(Host(info=info), now=NOW)
    assert not b.ok and "5 days ago" in b.detail and "timers" in b.detail


def test_no_backup_fails_except_in_a_rollout() -> None:
    info = [{"status": {"code": 2, "message": "no valid backups"}, "backup": []}]
    assert not backup_checks(Host(info=info), now=NOW)[1].ok
    assert backup_checks(Host(info=info), now=NOW, rollout=True)[1].ok


def test_an_unreadable_repository_fails_except_in_a_rollout() -> None:
    missing = [{"status": {"code": 1, "message": "missing stanza path"}, "backup": []}]
    b = backup_checks(Host(info=missing), now=NOW)[1]
    assert not b.ok and "cannot read the repository: stanza lemmy: missing stanza path" in b.detail
    assert backup_checks(Host(info=missing), now=NOW, rollout=True)[1].ok, "storage machines come after"
    b = backup_checks(Host(info_rc=1), now=NOW)[1]
    assert not b.ok and "unable to load info file" in b.detail
