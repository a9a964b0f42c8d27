"""synth backup and synth restore: what they run where, in which order, and their refusals.

A stand-in `ssh` on PATH records every remote command (machine and command) and answers as the
backup role's tools would; a FAIL pattern makes the matching command fail. The real tools run in
the live tests (tests/live/test_backup.py, test_backup_patroni.py).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from synth.backupsteps import parse_time
from tests.conftest import EXAMPLES
from tests.test_cli import run, snapshot

FAKE_SSH = r"""import json, os, sys
args = sys.argv[1:]
if "-G" in args:  # synth's check of the ssh options (synth/remote.py): nothing reaches a machine
    sys.exit(0)
command = args[-1]
host = args[-2].split("@")[-1]
log = os.environ["FAKE_SSH_LOG"]
with open(log, "a") as f:
    f.write(json.dumps([host, command]) + "\n")
fail = os.environ.get("FAKE_SSH_FAIL", "")
if fail and fail in command:
    print("refused by the stand-in", file=sys.stderr)
    sys.exit(1)
if "pg_is_in_recovery" in command:
    print("f" if host == os.environ.get("FAKE_SSH_LEADER", "") else "t")
elif "--output=json info" in command:
    print(os.environ.get("FAKE_SSH_INFO", "[]"))
elif "pg_stat_archiver" in command:
    print("000000010000000000000003|1700000000||0|0")
else:
    print("ok: " + command)
"""

INFO = [
    {
        "name": "lemmy",
        "status": {"code": 0, "message": "ok"},
        "cipher": "aes-256-cbc",
        "backup": [
            {
                "label": "20261201-010000F",
                "type": "full",
                "timestamp": {"start": 1764550800, "stop": 1764550860},
                "info": {"size": 52428800, "repository": {"delta": 10485760}},
            }
        ],
        "archive": [{"id": "15-1", "min": "000000010000000000000001", "max": "000000010000000000000003"}],
    }
]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    # The test's own Python (the flake's sandbox has no /usr/bin/env python3).
    ssh.write_text(f"#!{sys.executable}\n" + FAKE_SSH)
    ssh.chmod(ssh.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    monkeypatch.setenv("FAKE_SSH_INFO", json.dumps(INFO))
    yield log


def calls(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [tuple(json.loads(line)) for line in log.read_text().splitlines()]  # type: ignore[misc]


def cluster(tmp_path: Path, example: str = "large") -> Path:
    toml = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLES / f"{example}.toml", toml)
    return toml


def test_backup_lists_on_the_machine_that_leads(tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = cluster(tmp_path)
    monkeypatch.setenv("FAKE_SSH_LEADER", "10.1.0.41")
    code, out, err = run("backup", "--cluster", str(toml))
    assert code == 0, err
    assert "20261201-010000F  full" in out and "stanza lemmy: ok, cipher aes-256-cbc" in out
    assert "last archived WAL: 000000010000000000000003" in out
    commands = [c for _, c in calls(fake)]
    assert not any("backup --type" in c for c in commands), "no backup without --now"


def test_backup_now_runs_on_the_leader_only(tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = cluster(tmp_path)
    monkeypatch.setenv("FAKE_SSH_LEADER", "10.1.0.41")
    code, _, err = run("backup", "--now", "--type", "diff", "--cluster", str(toml))
    assert code == 0, err
    taken = [(h, c) for h, c in calls(fake) if "backup --type" in c]
    assert taken == [("10.1.0.41", "lemmy-cluster-pgbackrest --stanza=lemmy backup --type=diff")]


def test_backup_without_a_leader_does_nothing(tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = cluster(tmp_path)
    monkeypatch.setenv("FAKE_SSH_LEADER", "nobody")
    code, _, err = run("backup", "--now", "--cluster", str(toml))
    assert code == 1 and "no postgres machine takes the writes" in err, err
    assert not any("backup --type" in c for _, c in calls(fake))


def test_restore_prints_the_steps_and_asks(tmp_path: Path, fake: Path) -> None:
    toml = cluster(tmp_path)
    code, out, _ = run("restore", "--to", "2026-12-01 14:00:00+00:00", "--cluster", str(toml))
    assert code == 1 and "Nothing was done." in out
    assert "lemmy-cluster-restore --time '2026-12-01 14:00:00.000000+00'" in out
    assert calls(fake) == [], "nothing runs before the answer"


def test_restore_under_patroni_runs_every_step_in_order(tmp_path: Path, fake: Path) -> None:
    toml = cluster(tmp_path)
    code, out, err = run("restore", "--latest", "--yes", "--cluster", str(toml))
    assert code == 0, err
    db1, db2, db3 = "10.1.0.41", "10.1.0.42", "10.1.0.43"
    assert calls(fake) == [
        (db1, "lemmy-cluster-restore --check-only --latest"),
        (db2, "systemctl stop patroni.service"),
        (db3, "systemctl stop patroni.service"),
        (db1, "systemctl stop patroni.service"),
        (db1, "lemmy-cluster-patroni-forget"),
        (db1, "lemmy-cluster-restore --latest"),
        (db2, "lemmy-cluster-move-aside"),
        (db3, "lemmy-cluster-move-aside"),
        (db1, "systemctl start patroni.service"),
        (db2, "systemctl start patroni.service"),
        (db3, "systemctl start patroni.service"),
        (db1, "lemmy-cluster-pgbackrest --stanza=lemmy backup --type=full"),
    ]
    assert "Restored." in out


def test_restore_without_patroni(tmp_path: Path, fake: Path) -> None:
    toml = cluster(tmp_path, "single")
    code, _, err = run("restore", "--latest", "--yes", "--cluster", str(toml))
    assert code == 0, err
    commands = [c for _, c in calls(fake)]
    assert commands[1:4] == [
        "systemctl stop postgresql.service",
        "lemmy-cluster-restore --latest",
        "systemctl start postgresql.service",
    ]


def test_a_failed_check_changes_nothing(tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = cluster(tmp_path)
    monkeypatch.setenv("FAKE_SSH_FAIL", "--check-only")
    before = snapshot(tmp_path / "bin")
    code, _, err = run("restore", "--latest", "--yes", "--cluster", str(toml))
    assert code == 1 and "step 1 failed on db1" in err and "nothing was changed" in err, err
    assert len(calls(fake)) == 1, "nothing after the check"
    assert snapshot(tmp_path / "bin") == before


def test_a_failed_later_step_says_what_is_done_and_what_is_left(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restore itself fails (step 6 of 12): the steps before it are done, so the report must
    not end with the "nothing was written" of a refused input, and names the steps left to run."""
    toml = cluster(tmp_path)
    monkeypatch.setenv("FAKE_SSH_FAIL", "lemmy-cluster-restore --latest")
    code, _, err = run("restore", "--latest", "--yes", "--cluster", str(toml))
    assert code == 1, err
    assert "step 6 failed on db1" in err and "steps 1-5 are done, none after" in err, err
    assert "run steps 6-12 above by hand" in err, err
    assert "nothing was written" not in err and "nothing was changed" not in err, err
    assert calls(fake)[-1] == ("10.1.0.41", "lemmy-cluster-restore --latest"), "nothing after the failed step"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "give exactly one of --to TIME and --latest"),
        (["--latest", "--to", "2026-01-01 00:00:00+00:00"], "give exactly one"),
        (["--to", "yesterday"], "is not a time"),
        (["--to", "2026-01-01 00:00:00"], "has no time zone"),
        (["--to", "2999-01-01 00:00:00+00:00"], "is in the future"),
    ],
)
def test_restore_refuses_bad_input(tmp_path: Path, fake: Path, args: list[str], expected: str) -> None:
    toml = cluster(tmp_path)
    code, _, err = run("restore", *args, "--yes", "--cluster", str(toml))
    assert code == 1 and expected in err, err
    assert "Traceback" not in err
    assert calls(fake) == []


def test_restore_without_a_backup_section(tmp_path: Path, fake: Path) -> None:
    toml = cluster(tmp_path, "small")
    code, _, err = run("restore", "--latest", "--yes", "--cluster", str(toml))
    assert code == 1 and "no [backup] section" in err, err


def test_parse_time_normalizes_to_utc() -> None:
    assert parse_time("2026-01-01T15:00:00+01:00") == "2026-01-01 14:00:00.000000+00"
    assert parse_time("2026-01-01 14:00Z") == "2026-01-01 14:00:00.000000+00"
