"""`synth plan`: what a `generate` followed by a deploy would change, per machine, and in what order.

Pure apart from reading the current files: nothing is written.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth import generate, order
from synth.dbsteps import database_steps
from synth.model import Cluster
from synth.render import HEADER_MARK, render_files


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str  # added | changed | removed
    diff: str


@dataclass
class Plan:
    files: list[FileChange] = field(default_factory=list)
    redeploy: list[str] = field(default_factory=list)
    decommission: list[str] = field(default_factory=list)
    batches: list[order.Batch] = field(default_factory=list)
    # What a deploy does not do by itself for PostgreSQL and etcd (synth.dbsteps).
    steps: list[str] = field(default_factory=list)
    # Each machine's WireGuard peers that change (synth.mesh.peer_changes).
    mesh: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": [{"path": f.path, "status": f.status, "diff": f.diff} for f in self.files],
            "redeploy": self.redeploy,
            "decommission": self.decommission,
            "batches": [b.to_json() for b in self.batches],
            "steps": self.steps,
            "mesh": self.mesh,
        }


def _machine_of(rel: str) -> str | None:
    parts = rel.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "hosts" else None


def _unified(rel: str, old: str | None, new: str | None) -> str:
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        (new or "").splitlines(keepends=True),
        fromfile=f"a/{rel}" if old is not None else "/dev/null",
        tofile=f"b/{rel}" if new is not None else "/dev/null",
    )
    return "".join(lines)


def files_at_revision(out: Path, rev: str) -> dict[str, str]:
    """The generated files under OUT/hosts as committed at git revision REV ({rel: text})."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=out, capture_output=True, text=True, check=True).stdout

    # Paths from the repository's root (--full-name), as `git show REV:PATH` wants them: OUT may be
    # a subfolder of the repository (cluster.toml in a folder of its own).
    prefix = git("rev-parse", "--show-prefix").strip()
    names = git("ls-tree", "-r", "--name-only", "--full-name", rev, "--", "hosts").splitlines()
    old: dict[str, str] = {}
    for name in names:
        rel = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        if rel.endswith(".nix"):
            text = git("show", f"{rev}:{name}")
            if text.startswith(HEADER_MARK):
                old[rel] = text
    return old


def compute(c: Cluster, source: str, out: Path, old: dict[str, str] | None = None) -> Plan:
    """Compare what `generate` would write with the files on disk, or with OLD ({rel: text})."""
    files = render_files(c, Path(source).name)
    p = Plan()
    if old is None:
        ch = generate.diff(out, files, source)
        for status, rels in (("added", ch.added), ("changed", ch.changed), ("removed", ch.removed)):
            for rel in rels:
                before = (out / rel).read_text(encoding="utf-8", errors="replace") if status != "added" else None
                p.files.append(FileChange(rel, status, _unified(rel, before, files.get(rel))))
    else:
        for rel in sorted(set(files) | set(old)):
            before, after = old.get(rel), files.get(rel)
            if before == after:
                continue
            status = "added" if before is None else "removed" if after is None else "changed"
            p.files.append(FileChange(rel, status, _unified(rel, before, after)))
    p.files.sort(key=lambda f: f.path)
    touched = {m for f in p.files if (m := _machine_of(f.path)) is not None}
    p.redeploy = [m for m in c.machines if m in touched]
    p.decommission = sorted(m for m in touched if m not in c.machines)
    p.batches = order.batches(c, p.redeploy)
    if old is None:
        old = {
            f"hosts/{d.name}/default.nix": text
            for d in sorted((out / "hosts").glob("*"))
            if (d / "default.nix").is_file()
            and (text := (d / "default.nix").read_text(encoding="utf-8", errors="replace")).startswith(HEADER_MARK)
        }
    p.steps = database_steps(c, old) if p.files else []
    from synth.mesh import peer_changes

    p.mesh = peer_changes(old, files) if p.files else []
    return p
