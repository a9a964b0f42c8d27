"""One way in: every command that reaches a machine goes through the system OpenSSH client, with
the admin's ssh_config (or --ssh-config) and -o options; an option OpenSSH does not know is refused
before anything runs (`ssh -G`), and paramiko is gone."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from synth import remote
from synth.remote import SshOptions, check_options
from tests.conftest import EXAMPLES, ROOT, require
from tests.test_cli import run


def _ssh() -> None:
    require(shutil.which("ssh") is not None, "OpenSSH's ssh client is not installed")


@pytest.mark.parametrize("command", ["verify", "deploy", "secrets push", "promote"])
def test_an_unknown_ssh_option_is_refused_by_every_command(command: str, tmp_path: Path) -> None:
    _ssh()
    args = command.split()
    if command == "promote":
        args += ["db2"]
    cluster = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLES / "small.toml", cluster)
    code, out, err = run(*args, "--cluster" if command == "promote" else str(cluster), *(
        [str(cluster)] if command == "promote" else []
    ), "-o", "Bogus=1", "-o", "ConnectTimeout=1")  # fmt: skip
    assert code == 1, out + err
    assert "--ssh-option: OpenSSH refuses the SSH options:" in err
    assert "bogus" in err.lower()
    assert "Traceback" not in err


def test_check_options_accepts_known_and_refuses_bad_values() -> None:
    _ssh()
    assert check_options(SshOptions(("ProxyJump=root@10.0.0.1", "StrictHostKeyChecking=accept-new"))) == []
    said = check_options(SshOptions(("BatchMode=maybe",)))
    assert said == ['-o BatchMode=maybe: unsupported option "maybe".']


def test_check_options_reads_the_given_config_file(tmp_path: Path) -> None:
    _ssh()
    good = tmp_path / "good"
    good.write_text("Host *\n  ProxyJump root@10.0.0.1\n")
    assert check_options(SshOptions(config_file=str(good))) == []
    bad = tmp_path / "bad"
    bad.write_text("Host *\n  NoSuchThing yes\n")
    said = check_options(SshOptions(config_file=str(bad)))
    assert said and "nosuchthing" in " ".join(said).lower()


def test_the_checks_use_the_ssh_backend_with_the_same_options() -> None:
    opts = SshOptions(("ProxyJump=admin@bastion",), identity="/k/id", config_file="/c/config")
    host = remote.testinfra_host("root", "10.0.0.30", opts)
    backend = host.backend
    assert type(backend).__name__ == "SshBackend"
    cmd, args = backend._build_ssh_command("true")
    line = " ".join(cmd) % tuple(shlex.quote(a) for a in args)
    argv = shlex.split(line)
    assert argv[0] == "ssh"
    assert argv[argv.index("-F") + 1] == "/c/config"
    assert "ProxyJump=admin@bastion" in argv and "BatchMode=yes" in argv
    assert argv[argv.index("-i") + 1] == "/k/id"
    assert argv[-2:] == ["10.0.0.30", "true"] and "User=root" in argv
    assert not any(a.startswith("ControlMaster") for a in argv), "connection sharing is the ssh_config's"


def test_paramiko_is_gone() -> None:
    for path in [*ROOT.joinpath("synth").rglob("*.py"), ROOT / "pyproject.toml", ROOT / "flake.nix"]:
        assert "import paramiko" not in path.read_text() and '"paramiko' not in path.read_text(), path
    assert "paramiko" not in (ROOT / "flake.nix").read_text()
