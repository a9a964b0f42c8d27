"""Evaluate the modules' pure Nix functions, as the NixOS modules do, for the live tests.

The settings handed to Patroni, etcd and HAProxy, and PostgreSQL's pg_hba lines, are computed by
pure Nix files beside the modules (builtins only): the module calls them on its options, and the
live tests call the very same files on the options synth renders into the host module, with
Debian's `nix-instantiate` (no nixpkgs needed). Nothing is copied by hand into Python.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "modules"


def evaluate(file: Path, argument: Any, attr: str | None = None) -> Any:
    """`import FILE ARGUMENT` (ARGUMENT passed as JSON), evaluated strictly; optionally one attribute."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as arg:
        json.dump(argument, arg)
        arg.flush()
        expr = f"import {file} (builtins.fromJSON (builtins.readFile {arg.name}))"
        if attr is not None:
            expr = f"({expr}).{attr}"
        r = subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
            text=True,
            capture_output=True,
            check=False,
        )
    if r.returncode != 0:
        raise RuntimeError(f"nix-instantiate failed on {file}: {r.stderr.strip()}")
    return json.loads(r.stdout)
