"""The modules' files as the Nix store holds them, for the processes of other users.

On a NixOS machine a module's script runs from the Nix store, where every file is readable by
every user and nothing can be written. A live test that hands a file of modules/ to a process of
another user (a script run as the postgres user, like the module's units) must not hand it the
checkout's file instead: a checkout may sit in a folder that user cannot enter (root's home, mode
0700, or a `mktemp -d` folder), and the test would fail for a reason a NixOS machine never has.

``MODULES`` is a copy of modules/ made once per test session (at the first import of this
module) in a temporary folder that everyone may enter (the system's temporary directory, or /tmp
or /var/tmp when that one is closed to other users, as a pytest basetemp may be), with the
store's modes: folders 0555, files 0444, executables 0555, owned by whoever runs the tests. It is
removed when the session ends. Every live test that gives a module file to another user takes it
from here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readonly(path: Path) -> None:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return
    if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
        path.chmod(0o555)
    else:
        path.chmod(0o444)


def _remove(top: Path) -> None:
    if not top.exists():
        return
    for folder, dirs, _files in os.walk(top):
        os.chmod(folder, 0o755)
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o755)
    shutil.rmtree(top, ignore_errors=True)


def _traversable_by_others(path: Path) -> bool:
    """Every folder from / to PATH lets other users through (o+x)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _parent() -> Path:
    """The first temporary folder that other users can walk to (o+x on it and every folder above
    it); the system's temporary directory when none is (then only root's own tests can use the
    copy, which is what test_staged_modules checks)."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(candidate)
        if path.is_dir() and _traversable_by_others(path):
            return path
    return Path(tempfile.gettempdir())


def stage(source: Path = ROOT / "modules") -> Path:
    """A store-like copy of SOURCE (see the module's docstring); its path."""
    top = Path(tempfile.mkdtemp(prefix="lemmy-cluster-store-", dir=_parent()))
    top.chmod(0o755)  # mkdtemp makes it 0700
    copy = top / source.name
    shutil.copytree(source, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for folder, dirs, files in os.walk(copy, topdown=False):
        for name in files + dirs:
            _readonly(Path(folder, name))
    _readonly(copy)
    top.chmod(0o555)
    atexit.register(_remove, top)
    return copy


MODULES = stage()
