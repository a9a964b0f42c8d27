"""The NixOS VM tests are written for a machine with Nix and KVM; here we check their wiring.

Every scenario file is a flake check (through nixos-tests/default.nix), is built by the GitHub
workflow, has its test script beside it with the marker lib.nix cuts at, and is built from host
modules that synth generated (the drift test in test_golden.py keeps those current). The test-only
secrets the VMs derive at boot have the formats their consumers check, and the storage machines'
test node keys are the ones whose ids the test TOMLs record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess

import pytest

from synth import garage
from synth.model import load
from tests.conftest import ROOT, require_tool

TESTS = ROOT / "nixos-tests"
MARKER = "# ---- test body (nixos-tests/lib.nix drops everything above this line) ----\n"


def scenario_files() -> list[str]:
    """Scenarios: a <name>.nix with its test script <name>.py beside it (helpers have no script)."""
    return sorted(p.stem for p in TESTS.glob("*.nix") if (TESTS / f"{p.stem}.py").exists() and p.stem != "lib")


def nix_eval_json(expr: str) -> object:
    nix = require_tool("nix-instantiate")
    out = subprocess.run([nix, "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wired_scenarios() -> list[str]:
    args = '{ pkgs = throw "no pkgs here"; self = throw "no self here"; }'
    names = nix_eval_json(f"builtins.attrNames (import {TESTS}/default.nix {args})")
    assert isinstance(names, list)
    return sorted(names)


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


def storage_machines_of_test_tomls() -> list[tuple[str, str, str | None]]:
    """(test TOML, machine, garage_node_id) for every machine with role "storage" of nixos-tests/*.toml."""
    found = []
    for toml in sorted(TESTS.glob("*.toml")):
        cluster = load(toml)
        for name, machine in cluster.machines.items():
            if "storage" in machine.roles:
                found.append((toml.name, name, machine.garage_node_id))
    return found


def test_garage_test_keys_belong_to_the_tomls_node_ids() -> None:
    """The VMs' node keys (garage-keys.nix, TEST-ONLY) are the keys whose ids the test TOMLs record,
    made from the seed that garage-keys.nix documents; an id without its key would leave Garage
    unable to start (install-node-key.sh refuses a key of another id)."""
    keys = nix_eval_json(f"import {TESTS}/garage-keys.nix")
    assert isinstance(keys, dict)
    used = storage_machines_of_test_tomls()
    assert used, "some test TOML has storage machines"
    for toml, name, node_id in used:
        assert name in keys, f"{toml}: storage machine {name} has no test node key in nixos-tests/garage-keys.nix"
        assert node_id is not None, f"{toml}: storage machine {name} has no garage_node_id"
        assert garage.node_id(keys[name]) == node_id, f"{toml}: {name}'s garage_node_id is not its test key's id"
        seed = hashlib.sha256(f"lemmy-cluster vm test {name}".encode()).digest()
        assert base64.b64decode(keys[name])[:32] == seed, f"garage-keys.nix: {name}'s seed is not the documented one"
    assert sorted(keys) == sorted({name for _, name, _ in used}), "garage-keys.nix holds only keys the TOMLs use"


# garage-setup.sh's checks of pict-rs's S3 key, and Garage's of its rpc_secret (64 hex digits).
SECRET_FORMATS = {
    "hex32": re.compile(r"[0-9a-f]{32}"),
    "hex64": re.compile(r"[0-9a-f]{64}"),
    "garage-key-id": re.compile(r"GK[0-9a-f]{24}"),
}


@pytest.mark.parametrize("fmt", [*SECRET_FORMATS, None])
def test_test_secret_formats(fmt: str | None) -> None:
    """secret-values.nix's test_secret gives each format (hex32 by default, the first 32 digits of
    the same hash as hex64), the same value for the same name, and refuses an unknown format."""
    bash = require_tool("bash")
    require_tool("sha256sum")
    function = nix_eval_json(f"(import {TESTS}/secret-values.nix).shellFunction")
    assert isinstance(function, str)

    def run(name: str, fmt: str | None) -> subprocess.CompletedProcess[str]:
        call = f"test_secret {name}" + (f" {fmt}" if fmt else "")
        return subprocess.run([bash, "-c", f"set -e\n{function}\n{call}"], capture_output=True, text=True, check=False)

    out = run("s3-access-key", fmt)
    assert out.returncode == 0, out.stderr
    pattern = SECRET_FORMATS[fmt or "hex32"]
    assert pattern.fullmatch(out.stdout), out.stdout
    assert run("s3-access-key", fmt).stdout == out.stdout
    assert run("s3-secret-key", fmt).stdout != out.stdout
    seed = nix_eval_json(f"(import {TESTS}/secret-values.nix).seed")
    digest = hashlib.sha256(f"{seed}:s3-access-key".encode()).hexdigest()
    expected = {"hex32": digest[:32], "hex64": digest, "garage-key-id": "GK" + digest[:24]}[fmt or "hex32"]
    assert out.stdout == expected
    assert run("s3-access-key", "base64").returncode != 0
