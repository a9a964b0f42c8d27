"""`synth plan`: what a `generate` followed by a deploy would change, per machine, and in what order.

Pure apart from reading the current files: nothing is written.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth import generate, order
from synth.model import Cluster
from synth.render import render_files


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

    def to_json(self) -> dict[str, Any]:
        return {
            "files": [{"path": f.path, "status": f.status, "diff": f.diff} for f in self.files],
            "redeploy": self.redeploy,
            "decommission": self.decommission,
            "batches": [b.to_json() for b in self.batches],
        }


def _machine_of(rel: str) -> str | None:
    parts = rel.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "hosts" else None


def _unified(out: Path, rel: str, new: str | None) -> str:
    path = out / rel
    old = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        (new or "").splitlines(keepends=True),
        fromfile=f"a/{rel}" if path.exists() else "/dev/null",
        tofile=f"b/{rel}" if new is not None else "/dev/null",
    )
    return "".join(lines)


def compute(c: Cluster, source: str, out: Path) -> Plan:
    files = render_files(c, Path(source).name)
    ch = generate.diff(out, files, source)
    p = Plan()
    for status, rels in (("added", ch.added), ("changed", ch.changed), ("removed", ch.removed)):
        for rel in rels:
            p.files.append(FileChange(rel, status, _unified(out, rel, files.get(rel))))
    p.files.sort(key=lambda f: f.path)
    touched = {m for f in p.files if (m := _machine_of(f.path)) is not None}
    p.redeploy = [m for m in c.machines if m in touched]
    p.decommission = sorted(m for m in touched if m not in c.machines)
    p.batches = order.batches(c, p.redeploy)
    return p
