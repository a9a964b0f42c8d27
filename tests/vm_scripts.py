"""The NixOS VM test scenarios of nixos-tests/ and their scripts as the test driver gets them.

A scenario is a folder nixos-tests/<scenario>/ with a test.nix (found by nixos-tests/default.nix
the same way). ``scenario_info`` evaluates a scenario's test.nix with `nix-instantiate` and stand-in
`pkgs` and `t` (nixos-tests/lib.nix) that only keep names: its node names and the names of the
parameters its script gets. ``driver_script`` assembles the script that the driver build
type-checks (nixos/lib/testing/driver.nix of the pinned nixpkgs): the driver's globals
(nixos-tests/driver/prepend.py), the node type hints, then the script that lib.nix's `script`
makes (lib.py, the parameters, the body of test.py). Parameter values come from the nodes'
configuration, which cannot be evaluated here: each parameter gets a value of the type that
nixos-tests/driver_globals.pyi declares for it.
"""

from __future__ import annotations

import ast
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

TESTS = ROOT / "nixos-tests"
DRIVER = TESTS / "driver"
PREPEND = DRIVER / "prepend.py"
GLOBALS = TESTS / "driver_globals.pyi"
MARKER = "# ---- test body (nixos-tests/lib.nix drops everything above this line) ----\n"

# A value of each parameter type of driver_globals.pyi, as lib.nix's pythonLiteral writes one.
SAMPLE_VALUES = {
    "str": '"x"',
    "int": "1",
    "list[str]": '["x"]',
    "dict[str, str]": '{"x": "x"}',
}


def scenarios() -> list[str]:
    """Every folder of nixos-tests/ with a test.nix, as nixos-tests/default.nix finds them."""
    return sorted(p.parent.name for p in TESTS.glob("*/test.nix"))


@dataclass(frozen=True)
class ScenarioInfo:
    nodes: list[str]
    params: list[str]
    script: Path


def _eval_expr(scenario: str) -> str:
    return f"""
let
  t = {{
    clusterNode = args: {{ }};
    clientNode = {{ }};
    testNode = args: {{ }};
    hostModule = dir: machine: dir + "/hosts/${{machine}}/default.nix";
    script = {{ file, params ? {{ }}, checks ? [ ] }}: {{
      file = toString file;
      params = builtins.attrNames params;
    }};
  }};
  pkgs = {{
    testers.runNixOSTest = test: test;
    lib = throw "nixpkgs' lib is not available here";
  }};
  test = import {TESTS}/{scenario}/test.nix {{ inherit pkgs t; }};
  script = test.testScript {{ nodes = throw "node configurations are not evaluated here"; }};
in
{{
  nodes = builtins.attrNames test.nodes;
  inherit (script) params file;
}}
"""


def scenario_info(nix_instantiate: str, scenario: str) -> ScenarioInfo:
    out = subprocess.run(
        [nix_instantiate, "--eval", "--strict", "--json", "-E", _eval_expr(scenario)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"nixos-tests/{scenario}/test.nix: {out.stderr}")
    data = json.loads(out.stdout)
    return ScenarioInfo(nodes=data["nodes"], params=data["params"], script=Path(data["file"]))


def declared_globals() -> dict[str, str]:
    """NAME -> annotation (as written) of every variable that driver_globals.pyi declares."""
    tree = ast.parse(GLOBALS.read_text())
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def driver_symbols() -> set[str]:
    """The names the driver defines for every test script (start_all, subtest, ...): those that
    prepend.py declares."""
    tree = ast.parse(PREPEND.read_text())
    return {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def python_name(node: str) -> str:
    """The driver's pythonizeName: the variable that a node's machine object is bound to."""
    head = node[0] if (node[0].isascii() and (node[0].isalpha() or node[0] == "_")) else "_"
    tail = "".join(c if (c.isascii() and (c.isalnum() or c == "_")) else "_" for c in node[1:])
    return head + tail


def script_body(script: Path) -> str:
    """test.py without its lint header, as lib.nix's `body` cuts it."""
    parts = script.read_text().split(MARKER)
    if len(parts) != 2:
        raise AssertionError(f"{script} must contain the marker line exactly once")
    return parts[1]


def lib_nix_script(info: ScenarioInfo) -> str:
    """The test script as nixos-tests/lib.nix's `script` makes it (parameters by name, in Nix's
    attribute order, each with a value of its declared type)."""
    declared = declared_globals()
    params = ""
    for name in sorted(info.params):
        annotation = declared.get(name)
        if annotation not in SAMPLE_VALUES:
            raise AssertionError(
                f"nixos-tests/driver_globals.pyi must declare the parameter {name} as one of {sorted(SAMPLE_VALUES)}"
            )
        params += f"{name} = {SAMPLE_VALUES[annotation]}\n"
    scenario = info.script.parent.name
    return "\n".join(
        [
            (TESTS / "lib.py").read_text(),
            "# ---- parameters of this test, from the nodes' configuration (nixos-tests/lib.nix) ----",
            params,
            f"# ---- nixos-tests/{scenario}/{info.script.name} ----",
            script_body(info.script),
        ]
    )


def driver_script(info: ScenarioInfo) -> tuple[str, int]:
    """The file the driver build type-checks (driver.nix: test-script-prepend.py, the machine
    type hints on one line, the vlan hints, then the test script), and the number of lines before
    the test script."""
    hints = " ".join(f"{python_name(n)}: QemuMachine;" for n in info.nodes)
    # Every node is on the default VLAN 1 (virtualisation.vlans = [ 1 ]); no node is a container.
    head = PREPEND.read_text() + hints + "\n" + "\n" + "vlan1: VLan\n"
    return head + lib_nix_script(info), head.count("\n")
