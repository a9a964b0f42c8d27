"""Write the generated files safely.

The new file set is computed in memory first (any error: nothing is touched). Then every new or
changed file is written to a temporary name beside its target; only when all of them are written
are they renamed into place (rename is atomic per file), and generated files of machines that left
the cluster are removed. Files synth did not write (no synth header) are never overwritten or
deleted: a conflict is an error before anything is written.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from synth.errors import Problem, SynthError
from synth.render import HEADER_MARK

MANAGED_DIR = "hosts"


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_folders: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def is_generated(path: Path) -> bool:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return fh.read(len(HEADER_MARK)) == HEADER_MARK
    except OSError:
        return False


_STATE_VERSION = re.compile(r'^\s*stateVersion = "([^"]*)";', re.M)


def state_version_changes(out: Path, files: dict[str, str], changed: list[str]) -> list[Problem]:
    """A machine whose generated system.stateVersion would change: refused, with the fix.

    NixOS keeps data formats by stateVersion (PostgreSQL's data directory among them): it must stay
    what the machine was installed with.
    """
    problems: list[Problem] = []
    for rel in changed:
        parts = rel.split("/")
        if len(parts) != 3 or parts[2] != "default.nix":
            continue
        old = _STATE_VERSION.search((out / rel).read_text(encoding="utf-8", errors="replace"))
        new = _STATE_VERSION.search(files[rel])
        if old and new and old.group(1) != new.group(1):
            problems.append(
                Problem(
                    f"machines.{parts[1]}.state_version",
                    f"{out / rel} has system.stateVersion {old.group(1)!r} and would get {new.group(1)!r}: it "
                    f'must never change on an existing machine; add state_version = "{old.group(1)}" to '
                    f"[machines.{parts[1]}] ([cluster] state_version is for machines added later)",
                )
            )
    return problems


def diff(out: Path, files: dict[str, str], source: str) -> Changes:
    """Compare FILES (relative to OUT) with the disk. Raise SynthError on a foreign-file conflict."""
    ch = Changes()
    problems: list[Problem] = []
    for rel, text in sorted(files.items()):
        target = out / rel
        if target.is_dir():
            problems.append(Problem("", f"{target} is a folder where synth must write a file; move it away"))
        elif not target.exists():
            ch.added.append(rel)
        elif not is_generated(target):
            problems.append(
                Problem(
                    "",
                    f"{target} exists and was not written by synth (no '{HEADER_MARK}' header); "
                    "synth never overwrites your files: move it away (for hardware settings use "
                    "hardware-configuration.nix beside it, which the generated module imports)",
                )
            )
        elif target.read_text(encoding="utf-8", errors="replace") != text:
            ch.changed.append(rel)
        else:
            ch.unchanged.append(rel)
    problems += state_version_changes(out, files, ch.changed)
    if problems:
        raise SynthError(source, problems)
    managed = out / MANAGED_DIR
    if managed.is_dir():
        for path in sorted(managed.rglob("*.nix")):
            rel = path.relative_to(out).as_posix()
            if rel not in files and path.is_file() and is_generated(path):
                ch.removed.append(rel)
    return ch


def apply(out: Path, files: dict[str, str], ch: Changes) -> None:
    """Carry out CH (from ``diff``): stage, then rename into place, then remove stale files."""
    staged: list[tuple[Path, Path]] = []
    try:
        for rel in ch.added + ch.changed:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".synth-tmp", dir=target.parent)
            tmp = Path(tmp_name)
            staged.append((tmp, target))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(files[rel])
            os.chmod(tmp, 0o644)
    except OSError:
        for staged_tmp, _ in staged:
            staged_tmp.unlink(missing_ok=True)
        raise
    for staged_tmp, target in staged:
        os.replace(staged_tmp, target)
    for rel in ch.removed:
        stale = out / rel
        stale.unlink(missing_ok=True)
        folder = stale.parent
        managed = out / MANAGED_DIR
        while folder != managed and folder.is_dir():
            if any(folder.iterdir()):
                ch.kept_folders.append(folder.relative_to(out).as_posix())
                break
            folder.rmdir()
            folder = folder.parent
