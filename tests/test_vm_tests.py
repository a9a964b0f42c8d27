"""The NixOS VM tests are written for a machine with Nix and KVM; here we check their wiring.

Every scenario file is a flake check (through nixos-tests/default.nix), is built by the GitHub
workflow, has its test script beside it with the marker lib.nix cuts at, and is built from host
modules that synth generated (the drift test in test_golden.py keeps those current).
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import ROOT, require_tool

TESTS = ROOT / "nixos-tests"
MARKER = "# ---- test body (nixos-tests/lib.nix drops everything above this line) ----\n"


def scenario_files() -> list[str]:
    """Scenarios: a <name>.nix with its test script <name>.py beside it (helpers have no script)."""
    return sorted(p.stem for p in TESTS.glob("*.nix") if (TESTS / f"{p.stem}.py").exists() and p.stem != "lib")


def wired_scenarios() -> list[str]:
    nix = require_tool("nix-instantiate")
    args = '{ pkgs = throw "no pkgs here"; self = throw "no self here"; }'
    expr = f"builtins.attrNames (import {TESTS}/default.nix {args})"
    out = subprocess.run([nix, "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return sorted(json.loads(out.stdout))


def test_every_scenario_is_a_check() -> None:
    assert wired_scenarios() == scenario_files(), "nixos-tests/default.nix must list every scenario file, once"
    flake = (ROOT / "flake.nix").read_text()
    assert "import ./nixos-tests { inherit pkgs self; }" in flake, "flake.nix's checks include the VM tests"


def test_the_workflow_builds_every_scenario() -> None:
    workflow = (ROOT / ".github" / "workflows" / "nix.yml").read_text()
    block = workflow.split("scenario:\n", 1)[1]
    listed = re.findall(r"^\s+- ([a-z0-9-]+)\s*$", block.split("steps:", 1)[0], re.M)
    assert sorted(listed) == scenario_files(), "the matrix of .github/workflows/nix.yml"
    assert "nix flake check --no-build" in workflow, "cheap evaluation runs first"


@pytest.mark.parametrize("scenario", scenario_files())
def test_scenario_has_its_script(scenario: str) -> None:
    nix_file = (TESTS / f"{scenario}.nix").read_text()
    assert f"./{scenario}.py" in nix_file, f"{scenario}.nix reads its script {scenario}.py"
    script = (TESTS / f"{scenario}.py").read_text()
    assert script.count(MARKER) == 1, f"{scenario}.py has the marker line exactly once"
    body = script.split(MARKER, 1)[1]
    assert "with subtest(" in body, "phases are subtests"
    assert "start_cluster(" in body or "start_all()" in body or ".start()" in body, "the script boots its machines"
