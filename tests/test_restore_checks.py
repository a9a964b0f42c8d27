"""modules/backup/scripts/restore.sh's checks (its section 1) with a stand-in for the pgbackrest
command: what it asks the repository (info, then repo-ls of the newest archived WAL segment's
folder) and which targets it refuses before anything changes. The real pgbackrest runs in
tests/live/test_backup.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, require_tool

RESTORE = ROOT / "modules" / "backup" / "scripts" / "restore.sh"

# The stand-in: records its arguments, answers info and repo-ls from files, fails on FAIL.
STANDIN = r"""import json, os, sys
args = sys.argv[1:]
folder = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(folder, "calls"), "a") as f:
    f.write(json.dumps(args) + "\n")
if os.path.exists(os.path.join(folder, "fail-" + args[-1].split("/")[0])):
    print("ERROR: [041]: stand-in failure", file=sys.stderr)
    sys.exit(41)
if args[-1] == "info":
    print(open(os.path.join(folder, "info.json")).read())
elif len(args) > 1 and args[-2] == "repo-ls":
    print(open(os.path.join(folder, "repo-ls.json")).read())
else:
    print("the stand-in was asked to change something: " + " ".join(args), file=sys.stderr)
    sys.exit(99)
"""

NEWEST = "00000002000000030000004A"


def segments(archive_id: str, database: int, newest: str) -> dict[str, Any]:
    """An entry of info's archive list."""
    return {
        "database": {"id": database, "repo-key": 1},
        "id": archive_id,
        "min": f"{newest[:8]}{0:016X}",
        "max": newest,
    }


def info(first_stop: int, archive: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "name": "lemmy",
            "status": {"code": 0, "message": "ok"},
            "backup": [
                {"type": "full", "timestamp": {"start": first_stop - 60, "stop": first_stop}},
                {"type": "diff", "timestamp": {"start": first_stop + 60, "stop": first_stop + 120}},
            ],
            "archive": archive if archive is not None else [segments("15-1", 1, NEWEST)],
        }
    ]


def listing(archived: int, newest: str = NEWEST) -> dict[str, Any]:
    """repo-ls --output=json of the newest segment's folder: names to {type, size, time}."""
    before = f"{newest[:16]}{int(newest[16:], 16) - 1:08X}"
    return {
        ".": {"type": "path"},
        f"{before}-0123456789abcdef0123456789abcdef01234567.gz": {"type": "file", "size": 100, "time": archived - 60},
        f"{newest}-89abcdef0123456789abcdef0123456789abcdef.gz": {"type": "file", "size": 100, "time": archived},
        # Written later than the segment, but not it: a promotion's partial segment of the old timeline.
        f"{newest}.partial-fedcba9876543210fedcba9876543210fedcba98.gz": {
            "type": "file",
            "size": 100,
            "time": archived + 3600,
        },
    }


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        require_tool("jq")
        self.now = int(time.time())
        self.first_stop = self.now - 7200
        self.archived = self.now - 1800
        self.bin = tmp_path / "standin"
        self.bin.mkdir()
        (self.bin / "pgbackrest.py").write_text(STANDIN)
        self.set(info(self.first_stop), listing(self.archived))
        self.base = tmp_path / "pg"
        self.data = self.base / "data"
        self.data.mkdir(parents=True)
        (self.data / "PG_VERSION").write_text("15\n")

    def set(self, info_json: Any, listing_json: Any) -> None:
        (self.bin / "info.json").write_text(json.dumps(info_json))
        (self.bin / "repo-ls.json").write_text(json.dumps(listing_json))

    def calls(self) -> list[list[str]]:
        path = self.bin / "calls"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def restore(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *["bash", str(RESTORE), "--data-dir", str(self.data), "--stanza", "lemmy", *args],
                *["--", sys.executable, str(self.bin / "pgbackrest.py"), "--config=/etc/pgbackrest.conf"],
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def at(self, epoch: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(epoch))

    def tree(self) -> list[str]:
        return sorted(str(p.relative_to(self.base)) for p in self.base.rglob("*"))


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def test_a_time_after_the_newest_archived_segment_is_refused_and_nothing_changes(lab: Lab) -> None:
    before = lab.tree()
    r = lab.restore("--time", lab.at(lab.archived + 60))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "is after the end of the archive" in r.stderr, r.stderr
    # The segment's own time (not the later .partial's, nor the one before), in UTC.
    assert f"its newest WAL segment ({NEWEST}) was archived at {lab.at(lab.archived)}" in r.stderr, r.stderr
    assert "--latest" in r.stderr and "synth backup" in r.stderr, r.stderr
    assert lab.tree() == before
    calls = lab.calls()
    assert [c[-1] for c in calls] == ["info", f"archive/lemmy/15-1/{NEWEST[:16]}"], calls
    assert calls[1][-2:] == ["repo-ls", f"archive/lemmy/15-1/{NEWEST[:16]}"]
    assert "--stanza=lemmy" in calls[1] and "--output=json" in calls[1], calls[1]
    assert "--config=/etc/pgbackrest.conf" in calls[1], "repo-ls goes through the same command (the wrapper)"


def test_a_time_before_the_newest_archived_segment_passes(lab: Lab) -> None:
    r = lab.restore("--time", lab.at(lab.archived - 60), "--check-only")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checks passed" in r.stdout, r.stdout
    # The segment's own second is still reachable (a commit in it was before it was archived).
    assert lab.restore("--time", lab.at(lab.archived), "--check-only").returncode == 0


def test_the_newest_database_s_archive_is_the_one_listed(lab: Lab) -> None:
    """After a major upgrade the old database's archive id stays in info beside the new one."""
    archive = [segments("16-2", 2, NEWEST), segments("15-1", 1, "0000000100000009000000FF")]
    lab.set(info(lab.first_stop, archive), listing(lab.archived))
    r = lab.restore("--time", lab.at(lab.archived + 60), "--check-only")
    assert r.returncode == 1 and "after the end of the archive" in r.stderr, r.stdout + r.stderr
    assert lab.calls()[-1][-1] == f"archive/lemmy/16-2/{NEWEST[:16]}"


def test_latest_does_not_list_the_archive(lab: Lab) -> None:
    r = lab.restore("--latest", "--check-only")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c[-1] for c in lab.calls()] == ["info"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("repo-ls fails", "cannot list archive/lemmy/15-1/"),
        ("segment missing", f"the newest archived WAL segment {NEWEST} is not in archive/lemmy/15-1/"),
        ("not json", f"the newest archived WAL segment {NEWEST} is not in"),
        ("no archive", "WAL archive of stanza lemmy is empty or unreadable"),
    ],
)
def test_when_the_end_of_the_archive_cannot_be_found_it_is_refused(lab: Lab, case: str, expected: str) -> None:
    if case == "repo-ls fails":
        (lab.bin / "fail-archive").write_text("")
    elif case == "segment missing":
        # Only the segment before it and the later .partial are there.
        kept = {k: v for k, v in listing(lab.archived).items() if not k.startswith(NEWEST + "-")}
        lab.set(info(lab.first_stop), kept)
    elif case == "not json":
        (lab.bin / "repo-ls.json").write_text("P1 ERROR: something")
    elif case == "no archive":
        lab.set(info(lab.first_stop, []), listing(lab.archived))
    before = lab.tree()
    r = lab.restore("--time", lab.at(lab.archived - 60))
    assert r.returncode == 1, r.stdout + r.stderr
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert lab.tree() == before


def test_the_earlier_refusals_still_come_first(lab: Lab) -> None:
    r = lab.restore("--time", lab.at(lab.now + 3600))
    assert r.returncode == 1 and "is in the future" in r.stderr, r.stderr
    r = lab.restore("--time", lab.at(lab.first_stop - 60))
    assert r.returncode == 1 and "before the end of the first backup" in r.stderr, r.stderr
    assert [c[-1] for c in lab.calls()] == ["info", "info"], "neither listed the archive"
