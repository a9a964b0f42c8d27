"""synth's command line: exit codes, messages, atomicity, --check, and what it never touches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth.cli import main
from tests.conftest import EXAMPLES, require


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "small.toml", tmp_path / "cluster.toml")
    return tmp_path


def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    runner = CliRunner()
    old = Path.cwd()
    try:
        if cwd:
            os.chdir(cwd)
        result = runner.invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.stdout, result.stderr


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_validate_ok(workdir: Path) -> None:
    code, out, _ = run("validate", cwd=workdir)
    assert code == 0
    assert out == "cluster.toml: OK: cluster 'small', 5 machines (1 backend, 2 frontend, 1 pictrs, 2 postgres)\n"


def test_validate_reports_every_problem_and_exits_1(workdir: Path) -> None:
    text = (workdir / "cluster.toml").read_text()
    text = text.replace('roles = ["backend", "pictrs"]', 'roles = ["backnd", "pictrs"]').replace(
        'primary = "db1"', 'primary = "db9"'
    )
    (workdir / "cluster.toml").write_text(text)
    code, out, err = run("validate", cwd=workdir)
    assert code == 1
    assert out == ""
    assert "cluster.toml: machines.app1.roles[0]: unknown role 'backnd'; did you mean 'backend'?" in err
    assert "synth: 1 problem found; nothing was written." in err
    assert "Traceback" not in err


def test_missing_file(tmp_path: Path) -> None:
    code, _, err = run("validate", str(tmp_path / "nope.toml"))
    assert code == 1
    assert f"{tmp_path / 'nope.toml'}: file not found" in err


def test_debug_shows_traceback(tmp_path: Path) -> None:
    from synth.errors import SynthError

    with pytest.raises(SynthError):
        CliRunner().invoke(main, ["--debug", "validate", str(tmp_path / "nope.toml")], catch_exceptions=False)


def test_generate_writes_hosts_beside_the_cluster_file(workdir: Path) -> None:
    code, out, _ = run("generate", str(workdir / "cluster.toml"))
    assert code == 0, out
    hosts = sorted(p.relative_to(workdir).as_posix() for p in (workdir / "hosts").rglob("*.nix"))
    assert hosts == [
        "hosts/app1/default.nix",
        "hosts/db1/default.nix",
        "hosts/db2/default.nix",
        "hosts/fe1/default.nix",
        "hosts/fe2/default.nix",
        "hosts/machines.nix",
    ]
    assert out.endswith("6 added, 0 changed, 0 removed, 0 unchanged\n")


def test_generate_again_touches_nothing(workdir: Path) -> None:
    run("generate", str(workdir / "cluster.toml"))
    before = snapshot(workdir / "hosts")
    code, out, _ = run("generate", str(workdir / "cluster.toml"))
    assert code == 0
    assert out.endswith("0 added, 0 changed, 0 removed, 6 unchanged\n")
    assert snapshot(workdir / "hosts") == before, "unchanged files must not even be rewritten"


def test_generate_out_option(workdir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "elsewhere"
    code, _, _ = run("generate", str(workdir / "cluster.toml"), "--out", str(out_dir))
    assert code == 0
    assert (out_dir / "hosts" / "fe1" / "default.nix").is_file()
    assert not (workdir / "hosts").exists()


def test_failed_generate_leaves_hosts_untouched(workdir: Path) -> None:
    run("generate", str(workdir / "cluster.toml"))
    before = snapshot(workdir)
    toml = workdir / "cluster.toml"
    toml.write_text(
        toml.read_text().replace('[machines.fe2]\naddress = "203.0.113.11"', '[machines.fe2]\naddress = "203.0.113.10"')
    )
    code, out, err = run("generate", str(toml))
    assert code == 1
    assert out == ""
    assert "machines.fe2.address: 203.0.113.10 is already the address of machine 'fe1'" in err
    after = snapshot(workdir)
    before.pop("cluster.toml")
    after.pop("cluster.toml")
    assert after == before, "a failed generate must leave hosts/ exactly as it was"


def test_removed_machine_loses_generated_file_but_keeps_user_files(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    run("generate", str(toml))
    hw = workdir / "hosts" / "fe2" / "hardware-configuration.nix"
    hw.write_text("{ }\n")
    text = toml.read_text()
    start = text.index("[machines.fe2]")
    end = text.index("[machines.app1]")
    toml.write_text(text[:start] + text[end:])
    code, out, err = run("generate", str(toml))
    assert code == 0, err
    assert "removed: " in out and "hosts/fe2/default.nix" in out
    assert not (workdir / "hosts" / "fe2" / "default.nix").exists()
    assert hw.read_text() == "{ }\n", "the user's hardware-configuration.nix survives"
    assert "still holds files synth did not write" in err
    # fe1 no longer lists fe2 as a peer
    assert "10.0.0.11" not in (workdir / "hosts" / "fe1" / "default.nix").read_text()


def test_removed_machine_folder_disappears_when_empty(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    run("generate", str(toml))
    text = toml.read_text()
    toml.write_text(text[: text.index("[machines.fe2]")] + text[text.index("[machines.app1]") :])
    assert run("generate", str(toml))[0] == 0
    assert not (workdir / "hosts" / "fe2").exists()


def test_never_overwrites_a_file_synth_did_not_write(workdir: Path) -> None:
    mine = workdir / "hosts" / "fe1" / "default.nix"
    mine.parent.mkdir(parents=True)
    mine.write_text("{ my = 1; }\n")
    code, out, err = run("generate", str(workdir / "cluster.toml"))
    assert code == 1
    assert out == ""
    assert "was not written by synth" in err and str(mine) in err
    assert mine.read_text() == "{ my = 1; }\n"
    assert not (workdir / "hosts" / "fe2").exists(), "nothing at all is written when one file conflicts"


def test_check_mode(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    code, out, err = run("generate", str(toml), "--check")
    assert code == 1
    assert f"would be added: {workdir / 'hosts/fe1/default.nix'}" in out
    assert "is out of date" in err
    assert not (workdir / "hosts").exists(), "--check writes nothing"
    run("generate", str(toml))
    code, out, _ = run("generate", str(toml), "--check")
    assert code == 0
    assert "up to date (6 files)" in out
    toml.write_text(toml.read_text().replace("version = 17", "version = 16"))
    before = snapshot(workdir / "hosts")
    code, out, _ = run("generate", str(toml), "--check")
    assert code == 1
    assert out.count("would be changed: ") == 2  # db1, db2
    assert snapshot(workdir / "hosts") == before


def test_console_script_help_is_fast_to_import() -> None:
    """`synth --help` must not import pydantic (it is what makes startup slow)."""
    code = "import sys, synth.cli; sys.exit(1 if 'pydantic' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_console_script_runs(workdir: Path) -> None:
    # The script pip installed beside this interpreter (make test runs `.venv/bin/python -m pytest`
    # without activating the venv, so it need not be on PATH).
    beside = Path(sys.executable).with_name("synth")
    exe = str(beside) if beside.is_file() else shutil.which("synth")
    require(exe is not None, "synth is not installed as a console script (make test runs pip install -e .)")
    assert exe is not None
    out = subprocess.run([exe, "validate"], cwd=workdir, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([exe, "validate", "missing.toml"], cwd=workdir, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr


def test_cli_house_one_module_per_command_and_no_cycle() -> None:
    """Every command lives in synth/commands/<command>.py; cli.py only registers them; no command
    module imports synth.cli (the import cycle of old)."""
    import ast

    root = Path(__file__).resolve().parent.parent / "synth"
    cli_tree = ast.parse((root / "cli.py").read_text())
    defined = [n.name for n in cli_tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert defined == ["main"], f"cli.py defines only the group, got {defined}"
    for path in sorted((root / "commands").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            assert "synth.cli" not in names, f"{path.name} imports synth.cli"
    for name, cmd in main.commands.items():
        assert cmd.callback is not None
        assert cmd.callback.__module__ == f"synth.commands.{name.replace('-', '_')}", name
