#!/usr/bin/env python3
"""Run shared/tools/nixos-eval over every host module of the repository and the VM tests' nodes.

    scripts/nixos-eval-all.py [--tool PATH/eval-config] [--jobs N]

Evaluates, each with modules/default.nix (the role modules):
- every generated host module: hosts/*, tests/golden/*/hosts/*, nixos-tests/*/hosts/*, as the
  flake builds it: the module alone, which imports its hardware-configuration.nix (or
  modules/no-hardware.nix) and its configuration.nix itself. The goldens and the VM tests' host
  modules are not in a checkout's hosts/ (their ../../modules does not exist, so they import no
  no-hardware.nix): they get modules/no-hardware.nix here, as they would in hosts/;
- every node of the VM tests as the scenario builds it: its host module (or, for the one-node
  Garage of pictrs-shared, s3.nix with the settings the scenario gives it), nixos-tests/node.nix
  (test secrets and tools), and what the test framework sets (networking.hostName and
  networking.primaryIPAddress, 192.168.1.N by the node's place among the sorted node names, and
  virtualisation.useBootLoader = false, which qemu-vm.nix declares).

Prints one line per evaluation with its number of findings (nixos-eval's blocks: unknown option,
type error, assertion, warning, ...; not the warning of modules/no-hardware.nix, which says on
purpose that a machine has no hardware configuration yet) and exits 1 if any has one. Needs nixos-eval's inputs (see
its README); they are not in CI, so this runs by hand (README: "What was checked where").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "nixos-tests"
DEFAULT_TOOL = ROOT.parent / "shared" / "tools" / "nixos-eval" / "eval-config"


def host_modules() -> list[Path]:
    found = []
    for pattern in ("hosts/*/default.nix", "tests/golden/*/hosts/*/default.nix", "nixos-tests/*/hosts/*/default.nix"):
        found += sorted(ROOT.glob(pattern))
    return found


def as_the_flake_builds(host: Path) -> list[Path]:
    """A machine's modules as flake.nix gives them (besides the role modules): its host module,
    which imports its hardware-configuration.nix, or modules/no-hardware.nix where it has none,
    and its configuration.nix where there is one. A host module outside a checkout's hosts/ (a
    golden, a VM test's) finds no ../../modules/no-hardware.nix and imports nothing in its place:
    it gets it here, as it would in hosts/."""
    if (host.parent / "hardware-configuration.nix").is_file() or (
        host.parents[2] / "modules" / "no-hardware.nix"
    ).is_file():
        return [host]
    return [host, ROOT / "modules" / "no-hardware.nix"]


def framework_module(folder: Path, node: str, address: str, extra: str = "") -> Path:
    """What the NixOS test framework sets on a node, as a module file: its host name and its
    address on the test network, networking.primaryIPAddress, an option that the framework
    declares itself (nixos/lib/testing/network.nix; declared here as a string)."""
    path = folder / f"framework-{node}-{abs(hash((address, extra)))}.nix"
    lines = [
        "{ lib, ... }:",
        "{",
        "  options.networking.primaryIPAddress = lib.mkOption {",
        "    type = lib.types.str;",
        '    default = "";',
        '    description = "Address of the node on the test network (set by the test framework).";',
        "  };",
        "  config = {",
        f'    networking.hostName = "{node}";',
        # qemu-vm.nix, which the framework imports, declares it (default false); modules/access.nix
        # takes its presence for a VM, which boots without a boot loader. `virtualisation` is one
        # of nixos-eval's unchecked namespaces, so the value is set here rather than declared.
        "    virtualisation.useBootLoader = false;",
        f'    networking.primaryIPAddress = "{address}";',
        *extra.splitlines(),
        "  };",
        "}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def vm_nodes(folder: Path) -> list[tuple[str, list[Path]]]:
    """(label, module files) of every lemmy-cluster node of the VM tests."""
    out: list[tuple[str, list[Path]]] = []
    for toml_path in sorted(TESTS.glob("*/cluster.toml")):
        scenario = toml_path.parent.name
        cluster = tomllib.loads(toml_path.read_text())
        for name, machine in sorted(cluster["machines"].items()):
            address = machine.get("private_address", machine["address"])
            host = toml_path.parent / "hosts" / name / "default.nix"
            extra = "    virtualisation.diskSize = 2048;\n" if "storage" in machine["roles"] else ""
            mods = [host, TESTS / "node.nix", framework_module(folder, name, address, extra)]
            out.append((f"nixos-tests/{scenario}: node {name}", mods))
    # pictrs-shared's S3 server: a one-node Garage (s3.nix), set up by its test.nix.
    cluster = tomllib.loads((TESTS / "pictrs-shared" / "cluster.toml").read_text())
    pictrs = cluster["pictrs"]
    endpoint_host = pictrs["endpoint"].split("//", 1)[1].rsplit(":", 1)[0]
    clients = " ".join(f'"{cluster["machines"][m]["address"]}"' for m in ("media1", "media2"))
    settings = (
        "    lemmy-cluster-test.s3 = {\n"
        f'      bucket = "{pictrs["bucket"]}";\n'
        f'      region = "{pictrs["region"]}";\n'
        f'      domain = "{cluster["cluster"]["domain"]}";\n'
        f"      clients = [ {clients} ];\n"
        "    };\n"
        "    virtualisation.diskSize = 2048;\n"
    )
    framework = framework_module(folder, "s3", endpoint_host, settings)
    mods = [TESTS / "node.nix", TESTS / "pictrs-shared" / "s3.nix", framework]
    out.append(("nixos-tests/pictrs-shared: node s3", mods))
    return out


# The warning of modules/no-hardware.nix, the stand-in for a machine without its
# hardware-configuration.nix yet (every generated example host): intended, so not a finding.
NO_HARDWARE = "hardware-configuration.nix is missing; this system is for evaluation only"


def evaluate(tool: Path, modules: list[Path]) -> tuple[int, str]:
    out = subprocess.run(
        [str(tool), "--json", str(ROOT / "modules" / "default.nix"), *map(str, modules)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings, summary = 0, out.stderr.strip().splitlines()[-1:] or ["no output"]
    for line in out.stdout.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "summary":
            summary = [record.get("summary", "")]
        elif not (record.get("kind") == "warning" and NO_HARDWARE in record.get("message", "")):
            findings += 1
    if out.returncode == 2:
        raise SystemExit(f"nixos-eval could not run: {out.stderr.strip()}")
    return findings, summary[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", type=Path, default=DEFAULT_TOOL)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--select", default="", help="only the evaluations whose label contains this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nixos-eval-all-") as tmp:
        runs = [(str(p.relative_to(ROOT)), as_the_flake_builds(p)) for p in host_modules()] + vm_nodes(Path(tmp))
        runs = [run for run in runs if args.select in run[0]]
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda run: evaluate(args.tool, run[1]), runs))
    total = 0
    for (label, _), (findings, summary) in zip(runs, results, strict=True):
        total += findings
        print(f"{findings:3d} findings  {label}  ({summary})")
    print(f"{total} findings in {len(runs)} evaluations")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
