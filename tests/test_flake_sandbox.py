"""The flake's `synth-tests` check, emulated: the non-live tests in a Nix build's environment.

`nix flake check` builds checks.<system>.synth-tests with `pkgs.runCommand` (flake.nix): a copy of
the flake's source (the files git tracks), `python -m pytest -m "not live" tests` with PYTHONPATH
at the copy, HOME in the build folder, no network, CI unset, and on PATH only Python (with the
flake's test inputs) and what stdenv gives every build (coreutils, findutils, diffutils, sed,
grep, gawk, tar, gzip, bzip2, xz, make, patch, file, bash). No ssh, git, nix-instantiate, nginx,
PostgreSQL or openssl: a test that needs one must say so (tests/conftest.py's `require_tool`),
and is then skipped there. Here the same run is made with PATH holding only those programs.

The Python packages the check gets are flake.nix's `pythonTestInputs`;
test_flake_python_inputs_match_pyproject checks that they are the project's dependencies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

# The programs of stdenv's initial PATH (pkgs/stdenv/generic/common-path.nix), by package.
STDENV = {
    "coreutils": (
        "[ arch b2sum base32 base64 basename basenc cat chcon chgrp chmod chown chroot cksum comm cp csplit "
        "cut date dd df dir dircolors dirname du echo env expand expr factor false fmt fold groups head "
        "hostid id install join kill link ln logname ls md5sum mkdir mkfifo mknod mktemp mv nice nl nohup "
        "nproc numfmt od paste pathchk pinky pr printenv printf ptx pwd readlink realpath rm rmdir runcon "
        "seq sha1sum sha224sum sha256sum sha384sum sha512sum shred shuf sleep sort split stat stdbuf stty "
        "sum sync tac tail tee test timeout touch tr true truncate tsort tty uname unexpand uniq unlink "
        "users vdir wc who whoami yes"
    ),
    "findutils": "find xargs",
    "diffutils": "cmp diff diff3 sdiff",
    "gnused": "sed",
    "gnugrep": "grep egrep fgrep",
    "gawk": "awk gawk",
    "gnutar": "tar",
    "gzip": "gzip gunzip zcat",
    "bzip2": "bzip2 bunzip2",
    "xz": "xz unxz",
    "gnumake": "make",
    "patch": "patch",
    "file": "file",
    "bash": "bash sh",
}
# What the check adds to PATH besides Python (flake.nix: its nativeBuildInputs), by package.
CHECK_INPUTS = {"graphviz": "dot", "gixy": "gixy"}
THIS_TEST = "tests/test_flake_sandbox.py::test_the_non_live_tests_pass_in_the_flake_sandbox"


def sandbox_path(folder: Path) -> Path:
    """FOLDER/bin with `python` (this interpreter, with the test dependencies), the stdenv
    programs and those of the check's other inputs, as far as this machine has them."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    for programs in [*STDENV.values(), *CHECK_INPUTS.values()]:
        for name in programs.split():
            found = shutil.which(name)
            if found:
                (bin_dir / name).symlink_to(found)
    return bin_dir


def flake_source(folder: Path) -> Path:
    """A writable copy of the files git tracks (a flake's `self` holds exactly those)."""
    source = folder / "source"
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        listed = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [f for f in listed.decode().split("\0") if f and (ROOT / f).is_file()]
    else:  # a copy without git (a source tarball): everything but what git would ignore
        skip = {".git", ".venv", "build", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "secrets"}
        files = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and "__pycache__" not in p.parts
        ]
    for rel in files:
        target = source / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return source


def test_the_non_live_tests_pass_in_the_flake_sandbox(tmp_path: Path) -> None:
    bin_dir = sandbox_path(tmp_path)
    source = flake_source(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": str(bin_dir), "HOME": str(home), "TMPDIR": str(tmp_path), "PYTHONPATH": str(source)}
    if "LANG" in os.environ:
        env["LANG"] = os.environ["LANG"]
    args = [
        "python",
        "-m",
        "pytest",
        "-q",
        "-o",
        "addopts=",
        "-rfE",
        "-p",
        "no:cacheprovider",
        "-m",
        "not live",
        "tests",
    ]
    args += ["--deselect", THIS_TEST, f"--basetemp={tmp_path / 'pytest'}"]
    out = subprocess.run(
        args, cwd=source, env=env, capture_output=True, text=True, check=False, executable=bin_dir / "python"
    )
    tail = "\n".join(out.stdout.splitlines()[-40:])
    assert out.returncode == 0, f"the flake's synth-tests check would fail (PATH: Python and stdenv only):\n{tail}"


# ---------------------------------------------------------------------------- the flake's Python inputs

# PyPI name -> nixpkgs python3Packages attribute, where they differ.
NIXPKGS_NAMES = {"pytest-testinfra": "pytest-testinfra"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def nix_list(flake: str, head: str) -> set[str]:
    """The names in the Nix list that follows HEAD in flake.nix (one identifier a line)."""
    start = flake.index(head) + len(head)
    body = flake[start : flake.index("]", start)]
    return {w for w in re.findall(r"[A-Za-z][\w-]*", body)}


@pytest.fixture(scope="module")
def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_flake_python_inputs_match_pyproject(pyproject: dict[str, object]) -> None:
    """The synth package of the flake depends on every runtime dependency of pyproject.toml, and
    the synth-tests check gets them and the test dependencies that the non-live tests import
    (pytest, hypothesis); a missing one fails the Nix build (an import error) and nothing here."""
    flake = (ROOT / "flake.nix").read_text()
    project = pyproject["project"]
    assert isinstance(project, dict)
    runtime = {NIXPKGS_NAMES.get(n, n) for n in requirement_names(project["dependencies"])}
    package = nix_list(flake, "dependencies = with pkgs.python3Packages; [")
    tests = nix_list(flake, "pythonTestInputs =\n        ps: with ps; [")
    assert runtime <= package, f"flake.nix packages.synth lacks {sorted(runtime - package)} (pyproject.toml)"
    assert runtime | {"pytest", "hypothesis"} <= tests, (
        f"flake.nix pythonTestInputs lacks {sorted((runtime | {'pytest', 'hypothesis'}) - tests)} (pyproject.toml)"
    )


def test_the_emulation_has_the_checks_inputs() -> None:
    """The programs put on PATH above are those of the synth-tests check's nativeBuildInputs."""
    flake = (ROOT / "flake.nix").read_text()
    check = flake[flake.index("synth-tests =") :]
    inputs = check[check.index("nativeBuildInputs = [") : check.index("];", check.index("nativeBuildInputs = ["))]
    packages = set(re.findall(r"pkgs\.([\w-]+)", inputs)) - {"python3"}
    assert packages == set(CHECK_INPUTS), f"flake.nix synth-tests has {sorted(packages)}; update CHECK_INPUTS"
