"""Every .nix file parses, and generated modules mean in Nix exactly what synth intended."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from synth.model import load
from synth.render import host_data, machines_data
from synth.topology import plan
from tests.conftest import EXAMPLES, ROOT, require_tool


def repo_nix_files() -> list[Path]:
    """Every .nix file of the repository (git's view when there is one, e.g. not in Nix's sandbox)."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "*.nix"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return [ROOT / line for line in out.stdout.splitlines() if line and (ROOT / line).is_file()]
    return sorted(p for p in ROOT.rglob("*.nix") if ".venv" not in p.parts and "build" not in p.parts)


def test_there_are_nix_files() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in repo_nix_files()}
    assert {"flake.nix", "modules/default.nix", "modules/frontend/default.nix", "hosts/machines.nix"} <= names


@pytest.mark.parametrize("path", repo_nix_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_nix_file_parses(path: Path) -> None:
    nix = require_tool("nix-instantiate")
    out = subprocess.run([nix, "--parse", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{path}: {out.stderr}"


def nix_eval_file(path: Path) -> object:
    nix = require_tool("nix-instantiate")
    out = subprocess.run([nix, "--eval", "--strict", "--json", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{path}: {out.stderr}"
    return json.loads(out.stdout)


@pytest.mark.parametrize("example", ["single", "small", "large", "storage"])
def test_generated_hosts_read_back_as_intended(example: str) -> None:
    """The round trip: hosts/<m>/default.nix evaluated by Nix equals synth's data for that host."""
    # storage: the example plus the node ids that `synth secrets init` records
    toml = ROOT / "tests" / "golden" / "storage.toml" if example == "storage" else EXAMPLES / f"{example}.toml"
    cluster = load(toml)
    plans = plan(cluster)
    golden = ROOT / "tests" / "golden" / example / "hosts"
    for name, h in plans.items():
        assert nix_eval_file(golden / name / "default.nix") == host_data(cluster, h), name
    assert nix_eval_file(golden / "machines.nix") == machines_data(cluster, plans)


def test_the_flake_exports_every_role_module() -> None:
    """nixosModules has one output per role module (every modules/<role>/default.nix), which
    modules/default.nix imports too, so a NixOS user can take a single role."""
    import re

    flake = (ROOT / "flake.nix").read_text()
    block = flake[flake.index("nixosModules = {") : flake.index("};", flake.index("nixosModules = {"))]
    exported = dict(re.findall(r"^\s*([a-z-]+) = \./modules(?:/([\w.-]+))?;", block, re.M))
    roles = sorted(p.parent.name for p in (ROOT / "modules").glob("*/default.nix"))
    missing = [r for r in roles if exported.get(r) != r]
    assert not missing, f"flake.nix nixosModules lacks {missing} (= ./modules/<role>)"
    imports = (ROOT / "modules" / "default.nix").read_text()
    assert all(f"./{r}\n" in imports for r in roles), "modules/default.nix imports every role module"
