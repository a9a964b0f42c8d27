"""Shared test helpers.

Tests that need a tool (nix-instantiate, nginx, PostgreSQL, root for network namespaces) call
``require(...)``: outside CI a missing tool skips the test and says why; in CI (CI=true), where
.ci/run installs everything, a missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, why: str) -> None:
    """Skip (outside CI) or fail (in CI) when CONDITION is false."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {why}")
    pytest.skip(why)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (make test installs it; CI does)")
    assert path is not None
    return path


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces); CI runs as root")
