"""modules/backup/scripts/pictrs-backup.sh on real folders with rsync: a local pict-rs's folder
(its sled repository and files) copied into snapshots, pict-rs stopped only for the second pass
and always started again, unchanged files hard-linked, old snapshots expired."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_tool

SCRIPT = ROOT / "modules" / "backup" / "scripts" / "pictrs-backup.sh"


def run(src: Path, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--source", str(src), "--dest", str(dest), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def pictrs(tmp_path: Path) -> Path:
    require_tool("rsync")
    src = tmp_path / "pict-rs"
    (src / "sled-repo-v1").mkdir(parents=True)
    (src / "sled-repo-v1" / "db").write_bytes(b"sled" * 1000)
    (src / "files").mkdir()
    for i in range(3):
        (src / "files" / f"image{i}.webp").write_bytes(os.urandom(2048))
    return src


def snapshots(dest: Path) -> list[Path]:
    return sorted(p for p in dest.iterdir() if p.name.startswith("20"))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_snapshot_is_the_folder_and_pictrs_is_stopped_then_started(pictrs: Path, tmp_path: Path) -> None:
    log = tmp_path / "units.log"
    dest = tmp_path / "backup"
    r = run(pictrs, dest, "--stop-command", f"echo stop >> {log}", "--start-command", f"echo start >> {log}")
    assert r.returncode == 0, r.stderr
    (snap,) = snapshots(dest)
    assert tree(snap) == tree(pictrs)
    assert log.read_text().split() == ["stop", "start"]


def test_unchanged_files_are_hard_linked_and_old_snapshots_expire(pictrs: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    assert run(pictrs, dest, "--keep", "2").returncode == 0
    first = snapshots(dest)[0]
    (pictrs / "files" / "new.webp").write_bytes(b"new")
    subprocess.run(["sleep", "1.1"], check=True)  # snapshot names are to the second
    assert run(pictrs, dest, "--keep", "2").returncode == 0
    second = snapshots(dest)[-1]
    assert (second / "files" / "new.webp").exists() and not (first / "files" / "new.webp").exists()
    assert os.stat(first / "files" / "image0.webp").st_ino == os.stat(second / "files" / "image0.webp").st_ino
    subprocess.run(["sleep", "1.1"], check=True)
    r = run(pictrs, dest, "--keep", "2")
    assert r.returncode == 0 and "expired" in r.stdout
    assert len(snapshots(dest)) == 2 and first not in snapshots(dest)
    assert tree(pictrs) == tree(snapshots(dest)[-1]), "pict-rs's own folder is untouched"


def test_pictrs_is_started_again_when_the_copy_fails(pictrs: Path, tmp_path: Path) -> None:
    log = tmp_path / "units.log"
    dest = tmp_path / "backup"
    # The stop command takes the folder away under the second pass: rsync fails, start still runs.
    moved = pictrs.with_name("moved")
    stop = f"echo stop >> {log}; mv {pictrs} {moved}"
    start = f"mv {moved} {pictrs}; echo start >> {log}"
    r = run(pictrs, dest, "--stop-command", stop, "--start-command", start)
    assert r.returncode != 0
    assert log.read_text().split() == ["stop", "start"]
    assert not snapshots(dest), "a failed copy is no snapshot"


def test_refusals(pictrs: Path, tmp_path: Path) -> None:
    r = run(tmp_path / "nope", tmp_path / "backup")
    assert r.returncode == 1 and "is not a folder" in r.stderr
    r = run(pictrs, pictrs / "backup")
    assert r.returncode == 1 and "inside" in r.stderr
    r = run(pictrs, tmp_path / "backup", "--keep", "0")
    assert r.returncode == 2 and "whole number" in r.stderr
