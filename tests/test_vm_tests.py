"""The NixOS VM tests are written for a machine with Nix and KVM; here we check their wiring, and
their scripts as the driver build checks them before any VM starts.

A scenario is a folder nixos-tests/<scenario>/ with a test.nix; every one is a flake check
(nixos-tests/default.nix finds the folders), is built by the GitHub workflow (whose matrix lists
the same folders), has its test.py with the marker lib.nix cuts at, and is built from host
modules that synth generated (the drift test in test_golden.py keeps those current). Each
script, as the driver gets it, passes ty, ruff and mypy with the driver's globals typed (faithful
stub: nixos-tests/driver/). The test-only secrets the VMs derive at boot have the formats their
consumers check, and the storage machines' test node keys are the ones whose ids the test TOMLs
record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synth import garage
from synth.model import load
from tests.conftest import ROOT, require_tool
from tests.vm_scripts import (
    DRIVER,
    MARKER,
    TESTS,
    declared_globals,
    driver_script,
    driver_symbols,
    python_name,
    scenario_info,
    scenarios,
)

BIN = Path(sys.executable).parent


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


def test_every_scenario_folder_is_a_check() -> None:
    assert scenarios(), "nixos-tests/ has scenario folders"
    assert wired_scenarios() == scenarios(), "nixos-tests/default.nix must give one check per folder with a test.nix"
    flake = (ROOT / "flake.nix").read_text()
    assert "import ./nixos-tests { inherit pkgs self; }" in flake, "flake.nix's checks include the VM tests"
    loose = sorted(p.name for p in TESTS.glob("*.py") if p.name != "lib.py")
    assert not loose, f"scenario scripts live in their folder (nixos-tests/<scenario>/test.py), not {loose}"
    assert not list(TESTS.glob("*.toml")), "test clusters live in their folder (nixos-tests/<scenario>/cluster.toml)"


def test_the_workflow_builds_every_scenario_folder() -> None:
    """The VM-test matrix of .github/workflows/nix.yml is the list of scenario folders, made by the
    workflow itself (so a new folder needs no edit there either)."""
    workflow = (ROOT / ".github" / "workflows" / "nix.yml").read_text()
    assert "nix flake check --no-build" in workflow, "cheap evaluation runs first"
    assert "ls nixos-tests/*/test.nix" in workflow, "the eval job lists the scenario folders"
    assert "matrix:\n        scenario: ${{ fromJSON(needs.eval.outputs.scenarios) }}" in workflow


@pytest.mark.parametrize("scenario", scenarios())
def test_scenario_has_its_script(scenario: str) -> None:
    folder = TESTS / scenario
    nix_file = (folder / "test.nix").read_text()
    assert "file = ./test.py;" in nix_file, f"{scenario}/test.nix reads its script {scenario}/test.py"
    script = (folder / "test.py").read_text()
    assert script.count(MARKER) == 1, f"{scenario}/test.py has the marker line exactly once"
    body = script.split(MARKER, 1)[1]
    assert "with subtest(" in body, "phases are subtests"
    assert "start_cluster(" in body or "start_all()" in body or ".start()" in body, "the script boots its machines"
    if (folder / "cluster.toml").exists():
        assert (folder / "hosts" / "machines.nix").exists(), f"{scenario}/hosts/ is generated from its cluster.toml"


# ---------------------------------------------------------------------------- the driver's checks


def driver_scripts() -> list[str]:
    return scenarios()


@pytest.fixture(scope="module")
def nodes() -> dict[str, list[str]]:
    nix = require_tool("nix-instantiate")
    return {scenario: scenario_info(nix, scenario).nodes for scenario in scenarios()}


@pytest.fixture(scope="module")
def assembled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    """scenario -> (the script as the driver build type-checks it, written to a file; the number
    of lines in front of the test script)."""
    nix = require_tool("nix-instantiate")
    folder = tmp_path_factory.mktemp("driver-scripts")
    out = {}
    for scenario in scenarios():
        text, head = driver_script(scenario_info(nix, scenario))
        path = folder / scenario / "testScriptWithTypes"
        path.parent.mkdir()
        path.write_text(text)
        out[scenario] = (path, head)
    return out


def run_tool(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, env=env)


def report(tool: str, scenario: str, out: subprocess.CompletedProcess[str], head: int) -> str:
    return (
        f"{tool} rejects the test script of nixos-tests/{scenario} as the driver build would "
        f"(lines after {head} are lib.py, the parameters and test.py's body):\n{out.stdout}{out.stderr}"
    )


@pytest.mark.parametrize("scenario", driver_scripts())
def test_script_passes_ty_as_in_the_driver_build(scenario: str, assembled: dict[str, tuple[Path, int]]) -> None:
    """`ty check` of the script with the driver's globals (since nixpkgs PR #509615). One rule is
    off: ty takes a name that is only declared (`subtest: Callable[...]`, `fe1: QemuMachine;`, as
    the driver's prepend and node hints are written) for one used before it is defined, which would
    fail every NixOS test, so the driver build cannot have it on; ruff's F821 (below) still finds
    undefined names."""
    path, head = assembled[scenario]
    args = [str(BIN / "ty"), "check", "--no-progress", "--output-format", "concise", "--python", sys.prefix]
    args += ["--extra-search-path", str(DRIVER), "--ignore", "unresolved-reference", path.name]
    out = run_tool(args, path.parent)
    assert out.returncode == 0, report("ty", scenario, out, head)


@pytest.mark.parametrize("scenario", driver_scripts())
def test_script_passes_ruff_as_in_the_driver_build(
    scenario: str, assembled: dict[str, tuple[Path, int]], nodes: dict[str, list[str]]
) -> None:
    """`ruff check --select F` of the script with the driver's globals (since nixpkgs PR #509615;
    pyflakes before it). As pyflakes got them in PYFLAKES_BUILTINS, the names the driver defines
    (its symbols and one per node) are builtins: declared only by annotation, they would be
    undefined names to ruff."""
    path, head = assembled[scenario]
    names = sorted(driver_symbols() | {python_name(n) for n in nodes[scenario]})
    args = [str(BIN / "ruff"), "check", "--isolated", "--no-cache", "--select", "F", "--output-format", "concise"]
    args += ["--config", f"builtins = {json.dumps(names)}"]
    out = run_tool([*args, path.name], path.parent)
    assert out.returncode == 0, report("ruff", scenario, out, head)


@pytest.mark.parametrize("scenario", driver_scripts())
def test_script_passes_mypy_as_in_the_driver_build(scenario: str, assembled: dict[str, tuple[Path, int]]) -> None:
    """mypy, as the driver build ran it until nixpkgs PR #509615 (it still finds what ty misses)."""
    path, head = assembled[scenario]
    env = dict(os.environ, MYPYPATH=str(DRIVER))
    args = [str(BIN / "mypy"), "--no-implicit-optional", "--pretty", "--no-color-output"]
    args += ["--cache-dir", str(path.parent / ".mypy_cache"), path.name]
    out = run_tool(args, path.parent, env)
    assert out.returncode == 0, report("mypy", scenario, out, head)


@pytest.mark.parametrize(
    "call",
    [
        'wait_for_unti("nginx.service")',  # no such method
        'succeed("true", timeout="5")',  # timeout is int | None
        "wait_for_open_port(80, 60)",  # addr is a str
        'wait_until_succeeds("true").decode()',  # it returns str
    ],
)
def test_the_driver_check_sees_machine_methods(call: str, tmp_path: Path) -> None:
    """The machines are typed with the driver's real methods (not Any): a wrong method name or
    argument is found by mypy on a node (`fe1.CALL`) and by ty and mypy in a helper whose machine
    parameter is annotated, as lib.py's are. (ty takes a node that the hints only declare for
    unbound, and so checks nothing on it at the top level of a script.)"""
    nix = require_tool("nix-instantiate")
    text, _ = driver_script(scenario_info(nix, "cluster"))
    ty = [str(BIN / "ty"), "check", "--no-progress", "--output-format", "concise", "--python", sys.prefix]
    ty += ["--extra-search-path", str(DRIVER), "--ignore", "unresolved-reference", "testScriptWithTypes"]
    mypy = [str(BIN / "mypy"), "--no-implicit-optional", "--cache-dir", str(tmp_path / ".mypy_cache")]
    mypy += ["testScriptWithTypes"]
    mypy_env = dict(os.environ, MYPYPATH=str(DRIVER))
    path = tmp_path / "testScriptWithTypes"

    path.write_text(f"{text}\nfe1.{call}\n")
    assert run_tool(mypy, tmp_path, mypy_env).returncode != 0, f"mypy accepts fe1.{call}"
    path.write_text(f'{text}\n\ndef helper(machine: "QemuMachine") -> None:\n    machine.{call}\n')
    assert run_tool(ty, tmp_path).returncode != 0, f"ty accepts machine.{call} in a helper"
    assert run_tool(mypy, tmp_path, mypy_env).returncode != 0, f"mypy accepts machine.{call} in a helper"


def test_every_parameter_is_declared_with_its_type() -> None:
    """A parameter that a scenario passes is declared in driver_globals.pyi (the lint header
    imports it from there, and the driver check above gives it a value of that type)."""
    nix = require_tool("nix-instantiate")
    declared = declared_globals()
    for scenario in scenarios():
        info = scenario_info(nix, scenario)
        missing = [p for p in info.params if p not in declared]
        assert not missing, f"nixos-tests/{scenario}/test.nix passes {missing}, undeclared in driver_globals.pyi"
        nodes = [n for n in info.nodes if declared.get(n) != "Machine"]
        assert not nodes, f"nixos-tests/{scenario}: nodes {nodes} are not declared as Machine in driver_globals.pyi"


def storage_machines_of_test_tomls() -> list[tuple[str, str, str | None]]:
    """(test TOML, machine, garage_node_id) for every machine with role "storage" of the test
    clusters (nixos-tests/<scenario>/cluster.toml)."""
    found = []
    for toml in sorted(TESTS.glob("*/cluster.toml")):
        cluster = load(toml)
        for name, machine in cluster.machines.items():
            if "storage" in machine.roles:
                found.append((str(toml.relative_to(TESTS)), name, machine.garage_node_id))
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
    s3 = nix_eval_json(f"import {TESTS}/pictrs-shared/s3-node.nix")
    assert isinstance(s3, dict)
    assert garage.node_id(keys[s3["name"]]) == s3["nodeId"], "pictrs-shared/s3-node.nix: the id of the s3 node's key"
    seed = hashlib.sha256(f"lemmy-cluster vm test {s3['name']}".encode()).digest()
    assert base64.b64decode(keys[s3["name"]])[:32] == seed, (
        "garage-keys.nix: the s3 node's seed is not the documented one"
    )
    used_names = {name for _, name, _ in used} | {s3["name"]}
    assert sorted(keys) == sorted(used_names), "garage-keys.nix holds only keys the TOMLs and the s3 node use"


def test_wireguard_test_keys_belong_to_the_tomls_public_keys() -> None:
    """The VMs' WireGuard keys (wireguard-keys.nix, TEST-ONLY) are the keys whose public halves the
    test TOMLs with the mesh record, made from the documented seed: a wrong one leaves a machine
    with no tunnel to anyone."""
    from synth import mesh

    keys = nix_eval_json(f"import {TESTS}/wireguard-keys.nix")
    assert isinstance(keys, dict)
    used: set[str] = set()
    for toml in sorted(TESTS.glob("*/cluster.toml")):
        cluster = load(toml)
        if not mesh.enabled(cluster):
            continue
        for name, machine in cluster.machines.items():
            where = f"{toml.relative_to(TESTS)}: {name}"
            assert name in keys, f"{where} has no test WireGuard key in nixos-tests/wireguard-keys.nix"
            got = mesh.public_key(keys[name])
            assert got == machine.wireguard_public_key, f"{where}: not its test key's public key"
            seed = hashlib.sha256(f"lemmy-cluster vm test wireguard {name}".encode()).digest()
            assert base64.b64decode(keys[name]) == seed, f"wireguard-keys.nix: {name}'s key is not the documented seed"
            used.add(name)
    assert used, "some test TOML has the mesh"
    assert sorted(keys) == sorted(used), "wireguard-keys.nix holds only keys the TOMLs use"


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


# ---------------------------------------------------------------------------- nixpkgs' executables

# What /proc/<pid>/exe of a service's main process is, under the package's store path, as nixpkgs
# builds the program (Swarsel/nixpkgs@4aa6836a). A wrapped program runs as bin/.<name>-wrapped.
PROCESS_EXECUTABLES = {
    "pict-rs": (
        "bin/.pict-rs-wrapped",
        "pkgs/by-name/pi/pict-rs/package.nix: postInstall wrapProgram $out/bin/pict-rs --prefix PATH "
        "(imagemagick, ffmpeg, exiftool)",
    ),
    "lemmy_server": ("bin/lemmy_server", "pkgs/servers/web-apps/lemmy/server.nix: no wrapper"),
}

# `exe.endswith("/bin/<name>")` and the like: what a script expects a process's executable to be.
EXPECTED_EXECUTABLE = re.compile(r"""endswith\(\s*f?["'](/bin/[^"']+)["']\s*\)""")


def test_scripts_expect_the_executables_nixpkgs_builds() -> None:
    """A test script that checks which program a unit runs (readlink /proc/<pid>/exe) expects the
    file nixpkgs installs, wrapper included."""
    found = []
    for script in [*sorted(TESTS.glob("*/test.py")), TESTS / "lib.py"]:
        for match in EXPECTED_EXECUTABLE.finditer(script.read_text()):
            found.append((script.relative_to(TESTS), match.group(1)))
    assert found, "the scripts check the executables of pict-rs and lemmy_server"
    for script, suffix in found:
        name = suffix.rsplit("/", 1)[1].removeprefix(".").removesuffix("-wrapped")
        assert name in PROCESS_EXECUTABLES, f"{script}: add {name} to PROCESS_EXECUTABLES with its nixpkgs source"
        exe, source = PROCESS_EXECUTABLES[name]
        assert suffix == "/" + exe, f"{script}: the process of {name} runs .../{exe}, not ...{suffix} ({source})"
