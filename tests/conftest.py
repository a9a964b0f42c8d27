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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (`make test`): every live test module stays on one worker, since its
    tests share a module fixture (hosts, a bridge, namespaces). A module may name its own group to
    share a worker with another one (test_postgres.py and test_promote.py use the same hosts)."""
    for item in items:
        if item.get_closest_marker("live") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else item.nodeid))
