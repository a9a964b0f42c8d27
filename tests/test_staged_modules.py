"""tests/live/staged.py: the store-like copy of modules/ that the live tests hand to other users."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.conftest import ROOT, require_root, require_tool
from tests.live.staged import MODULES


def files(top: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(top)): p.read_bytes()
        for p in sorted(top.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_copy_holds_the_modules_files() -> None:
    assert files(MODULES) == files(ROOT / "modules")
    assert not MODULES.is_relative_to(ROOT), "outside the checkout, whose folders may be closed to others"


def test_the_copy_has_the_stores_modes() -> None:
    """Readable (and, for folders and scripts, enterable or runnable) by everyone, writable by
    nobody but root."""
    for path in [MODULES, *MODULES.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        source = ROOT / "modules" / path.relative_to(MODULES)
        runnable = path.is_dir() or source.stat().st_mode & stat.S_IXUSR
        assert mode == (0o555 if runnable else 0o444), f"{path}: {oct(mode)}"


def test_another_user_reads_every_file() -> None:
    """As `nobody` (no access to root's folders), every file of the copy can be read: it is on a
    path that every user can walk."""
    require_root()
    assert all(p.stat().st_mode & stat.S_IXOTH for p in MODULES.parents), "every folder up to the copy is o+x"
    runuser = require_tool("runuser")
    listed = [str(p) for p in MODULES.rglob("*") if p.is_file()]
    args = [runuser, "-u", "nobody", "--", "cat", *listed]
    out = subprocess.run(args, capture_output=True, check=False, cwd="/", env={"PATH": os.defpath})
    assert out.returncode == 0, out.stderr.decode()
