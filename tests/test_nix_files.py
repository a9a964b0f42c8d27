"""Every .nix file parses, and generated modules mean in Nix exactly what synth intended."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from synth.model import load
from synth.render import HOST_IMPORTS, host_data, host_module, machines_data
from synth.topology import plan
from tests.conftest import EXAMPLES, ROOT, require_tool
from tests.test_cli import run


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


def nix_eval(expr: str) -> object:
    nix = require_tool("nix-instantiate")
    out = subprocess.run([nix, "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{expr}: {out.stderr}"
    return json.loads(out.stdout)


def nix_eval_file(path: Path) -> object:
    """The attributes of PATH other than a host module's `imports` (checked on their own below)."""
    return nix_eval(f'builtins.removeAttrs (import {path}) [ "imports" ]')


def nix_imports(path: Path) -> list[str]:
    """The files the host module PATH imports, as absolute paths (toString: nothing is copied)."""
    got = nix_eval(f"map toString (import {path}).imports")
    assert isinstance(got, list)
    return got


def generated_host_modules() -> list[Path]:
    patterns = ("hosts/*/default.nix", "tests/golden/*/hosts/*/default.nix", "nixos-tests/*/hosts/*/default.nix")
    return sorted(p for pattern in patterns for p in ROOT.glob(pattern))


def test_every_generated_host_module_starts_with_its_imports() -> None:
    """The committed host modules (hosts/, the goldens, the VM tests') all carry HOST_IMPORTS
    right after their header, before any setting: the machine's own files come with the module."""
    modules = generated_host_modules()
    assert len(modules) > 30
    for path in modules:
        text = path.read_text()
        body = text[text.index("\n{\n") + 1 :]
        assert body.startswith("{\n" + HOST_IMPORTS), path


def test_host_module_imports_its_hardware_or_no_hardware_and_configuration(tmp_path: Path) -> None:
    """hosts/<m>/default.nix in a checkout imports its hardware-configuration.nix, or
    modules/no-hardware.nix while that is missing, and its configuration.nix when present; what
    flake.nix no longer adds itself."""
    checkout = tmp_path / "checkout"
    (checkout / "modules").mkdir(parents=True)
    no_hardware = checkout / "modules" / "no-hardware.nix"
    no_hardware.write_text((ROOT / "modules" / "no-hardware.nix").read_text())
    shutil.copy(EXAMPLES / "small.toml", checkout / "cluster.toml")
    code, _, err = run("generate", str(checkout / "cluster.toml"))
    assert code == 0, err
    hosts = checkout / "hosts"
    hardware = hosts / "db1" / "hardware-configuration.nix"
    hardware.write_text("{ }\n")
    own = hosts / "fe1" / "configuration.nix"
    own.write_text('{ boot.loader.grub.devices = [ "/dev/sda" ]; }\n')
    (hosts / "app1" / "hardware-configuration.nix").write_text("{ }\n")
    (hosts / "app1" / "configuration.nix").write_text("{ }\n")
    assert nix_imports(hosts / "db1" / "default.nix") == [str(hardware)]
    assert nix_imports(hosts / "fe1" / "default.nix") == [str(no_hardware), str(own)]
    assert nix_imports(hosts / "fe2" / "default.nix") == [str(no_hardware)]
    assert nix_imports(hosts / "app1" / "default.nix") == [
        str(hosts / "app1" / "hardware-configuration.nix"),
        str(hosts / "app1" / "configuration.nix"),
    ]
    # Outside a checkout (no ../../modules beside hosts/), a missing hardware file imports
    # nothing: whoever imports the module brings the hardware (qemu-vm.nix, /etc/nixos's own).
    no_hardware.unlink()
    assert nix_imports(hosts / "fe2" / "default.nix") == []
    assert nix_imports(hosts / "fe1" / "default.nix") == [str(own)]


def test_the_committed_hosts_import_no_hardware_and_the_vm_nodes_nothing() -> None:
    """The repository's hosts/ (no hardware files yet) import modules/no-hardware.nix, so the
    nixos-eval hook's `modules/default.nix hosts/<m>/default.nix` is the flake's machine. The VM
    tests' host modules import nothing: a VM node must not become evaluation-only (it gets its
    file systems from qemu-vm.nix, and must switch to its specialisations)."""
    hosts = sorted(ROOT.glob("hosts/*/default.nix"))
    assert hosts
    for path in hosts:
        assert not (path.parent / "hardware-configuration.nix").exists(), f"{path}: the test assumes none yet"
        assert nix_imports(path) == [str(ROOT / "modules" / "no-hardware.nix")], path
    vm_hosts = sorted(ROOT.glob("nixos-tests/*/hosts/*/default.nix"))
    assert len(vm_hosts) > 20
    for path in vm_hosts:
        assert nix_imports(path) == [], path


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


def test_host_data_cannot_bring_its_own_imports() -> None:
    """HOST_IMPORTS is the host module's only `imports`: data carrying one would make two."""
    assert host_module({"a": 1}) == "{\n" + HOST_IMPORTS + "  a = 1;\n}\n"
    with pytest.raises(ValueError, match="without 'imports'"):
        host_module({"imports": [], "a": 1})
    with pytest.raises(ValueError):
        host_module({})
