"""`synth secrets init` (here) and the script behind `synth secrets push` (run locally with sh, as root).

Over real SSH, push is tested in tests/live/test_operations.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from synth.remote import SshOptions, parse_push_output, push_script, ssh_argv
from synth.topology import SECRET_FILES
from tests.conftest import EXAMPLES, require_root, require_tool
from tests.test_cli import run


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "small.toml", tmp_path / "cluster.toml")
    return tmp_path / "cluster.toml"


def test_init_creates_every_secret_private_and_random(cluster: Path) -> None:
    code, out, err = run("secrets", "init", str(cluster))
    assert code == 0, err
    folder = cluster.parent / "secrets"
    assert mode(folder) == 0o700
    # small.toml keeps pict-rs's storage local: no database password or S3 keys for it; its two
    # postgres machines run under Patroni: the superuser's, pg_rewind's and the REST API's passwords.
    patroni = ("postgres_superuser_password", "rewind_password", "patroni_api_password")
    keys = ("db_password", "replication_password", "pictrs_api_key", "admin_password", *patroni)
    expected = [SECRET_FILES[k] for k in keys]
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    values = set()
    for name in expected:
        path = folder / name
        assert mode(path) == 0o600, name
        value = path.read_text()
        assert value.endswith("\n") and value.count("\n") == 1
        assert 10 <= len(value.strip()) <= 60, "Lemmy's admin password is 10-60 characters"
        values.add(value)
        assert f"created: {path}" in out
    assert len(values) == len(expected), "every secret is different"
    assert "7 created, 0 kept" in out


def test_init_never_overwrites(cluster: Path) -> None:
    folder = cluster.parent / "secrets"
    folder.mkdir(mode=0o755)
    mine = folder / "pictrs-api-key"
    mine.write_text("my own key\n")
    mine.chmod(0o644)
    code, out, err = run("secrets", "init", str(cluster))
    assert code == 0, err
    assert mine.read_text() == "my own key\n"
    assert mode(mine) == 0o600, "a readable secret is tightened"
    assert mode(folder) == 0o700
    assert f"kept: {mine} (mode 0644 tightened to 0600)" in out
    before = {p.name: p.read_text() for p in folder.iterdir()}
    code, out, _ = run("secrets", "init", str(cluster))
    assert code == 0
    assert {p.name: p.read_text() for p in folder.iterdir()} == before
    assert "0 created, 7 kept" in out


def test_init_warns_when_git_does_not_ignore_secrets(cluster: Path) -> None:
    git = require_tool("git")
    subprocess.run([git, "init", "-q", str(cluster.parent)], check=True)
    code, _, err = run("secrets", "init", str(cluster))
    assert code == 0
    assert "is not ignored by git; add `/secrets/` to the repository's .gitignore" in err
    (cluster.parent / ".gitignore").write_text("/secrets/\n")
    code, _, err = run("secrets", "init", str(cluster))
    assert code == 0
    assert "not ignored" not in err


def test_push_refuses_missing_secrets(cluster: Path) -> None:
    code, out, err = run("secrets", "push", str(cluster))
    assert code == 1
    assert f"{cluster.parent / 'secrets' / 'lemmy-db-password'} is missing; create it with `synth secrets init" in err
    assert out == ""


def test_push_script_never_carries_secrets_in_argv() -> None:
    secret = b"s3cret value\n"
    script = push_script({"/var/lib/lemmy-cluster/secrets/a": secret})
    argv = ssh_argv("root", "10.0.0.1", "sh -s", SshOptions(("StrictHostKeyChecking=no",), "/k"))
    assert argv == [
        "ssh", "-o", "StrictHostKeyChecking=no", "-i", "/k", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
        "root@10.0.0.1", "sh -s",
    ]  # fmt: skip
    assert b"s3cret" not in " ".join(argv).encode()
    assert "s3cret" not in script, "the content is base64-encoded in the script"


def test_push_script_installs_compares_and_reports(tmp_path: Path) -> None:
    require_root()  # the script chowns to root:root, as on the machines
    folder = tmp_path / "var" / "lib" / "lemmy-cluster" / "secrets"
    a, b = str(folder / "lemmy-db-password"), str(folder / "pictrs-api-key")
    binary = bytes(range(256)) * 3  # any bytes survive, including newlines and NULs

    def push(files: dict[str, bytes]) -> dict[str, str]:
        r = subprocess.run(["sh", "-s"], input=push_script(files).encode(), capture_output=True, check=False)
        assert r.returncode == 0, r.stderr
        return parse_push_output(r.stdout.decode())

    assert push({a: b"one\n", b: binary}) == {a: "created", b: "created"}
    assert Path(a).read_bytes() == b"one\n" and Path(b).read_bytes() == binary
    assert mode(folder) == 0o700
    assert mode(folder.parent) == 0o755, "only the secrets folder itself is private"
    for p in (a, b):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o400)
    inode = os.stat(b).st_ino
    Path(a).chmod(0o644)
    assert push({a: b"one\n", b: binary}) == {a: "unchanged", b: "unchanged"}
    assert mode(Path(a)) == 0o400, "an unchanged file still gets its mode back"
    assert os.stat(b).st_ino == inode, "an unchanged file is not rewritten"
    assert push({a: b"two\n", b: binary}) == {a: "changed", b: "unchanged"}
    assert Path(a).read_bytes() == b"two\n"
    assert sorted(p.name for p in folder.iterdir()) == ["lemmy-db-password", "pictrs-api-key"], "no temporary left"


def test_init_never_invents_the_provided_secrets(tmp_path: Path) -> None:
    """Shared pict-rs storage and an SMTP login: the S3 keys come from the provider, the SMTP
    password from the mail provider; init says so and makes none of them."""
    toml = tmp_path / "cluster.toml"
    toml.write_text((EXAMPLES / "large.toml").read_text())
    code, out, err = run("secrets", "init", str(toml))
    assert code == 0, err
    folder = tmp_path / "secrets"
    assert (folder / "pictrs-db-password").is_file(), "pict-rs's database password is ours to make"
    # pict-rs's key, and the backups' key ([backup] repository = "external-s3")
    for name in ("s3-access-key", "s3-secret-key", "backup-s3-access-key", "backup-s3-secret-key"):
        assert not (folder / name).exists(), f"{name} must come from the S3 provider"
        assert f"missing: {folder / name}: put the key your S3 provider gave you there" in out
    assert not (folder / "smtp-password").exists()
    assert (
        f"missing: {folder / 'smtp-password'}: put the password of the SMTP login 'lemmy@example.net' there "
        "(one line, mode 0600)" in out
    )
    assert ", 5 to provide in " in out
    assert (folder / "backup-cipher-pass").is_file(), "the backups' passphrase is ours to make"


def test_push_asks_for_the_smtp_password(tmp_path: Path) -> None:
    toml = tmp_path / "cluster.toml"
    toml.write_text((EXAMPLES / "large.toml").read_text())
    assert run("secrets", "init", str(toml))[0] == 0
    code, out, err = run("secrets", "push", str(toml), "--host", "api1")
    assert code == 1 and out == ""
    assert err.splitlines()[0] == (
        f"{toml}: {tmp_path / 'secrets' / 'smtp-password'} is missing; put the password of [lemmy.email] login "
        "there (your mail provider's; init never makes it up)"
    )


def test_smtp_password_goes_to_the_backends_only() -> None:
    from synth.model import load
    from synth.topology import plan

    plans = plan(load(EXAMPLES / "large.toml"))
    having = sorted(name for name, hp in plans.items() if "smtp_password" in hp.secrets)
    assert having == ["api1", "api2"]
    assert plans["api1"].secrets["smtp_password"] == "/var/lib/lemmy-cluster/secrets/smtp-password"
    small = plan(load(EXAMPLES / "small.toml"))
    assert not any("smtp_password" in hp.secrets for hp in small.values()), "no [lemmy.email]: no password"


def test_init_and_push_catch_an_empty_secret_and_an_admin_password_lemmy_refuses(tmp_path: Path) -> None:
    import shutil

    from tests.conftest import EXAMPLES
    from tests.test_cli import run as cli

    cluster = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLES / "small.toml", cluster)
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "admin-password").write_text("short\n")
    (secrets / "pictrs-api-key").write_text("\n")
    code, _, err = cli("secrets", "init", str(cluster))
    assert code == 1
    assert (
        f"problem: {secrets / 'admin-password'} has 5 characters, and Lemmy refuses an admin password outside 10-60"
        in err
    )
    assert f"problem: {secrets / 'pictrs-api-key'} is empty" in err
    assert (secrets / "admin-password").read_text() == "short\n", "init never overwrites"
    code, _, err = cli("secrets", "push", str(cluster), "-o", "ConnectTimeout=1")
    assert code == 1 and "has 5 characters" in err and "is empty" in err


def test_gitignore_advice_names_the_path_from_the_repository_root(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from tests.conftest import EXAMPLES, require_tool
    from tests.test_cli import run as cli

    require_tool("git")
    sub = tmp_path / "infra" / "lemmy"
    sub.mkdir(parents=True)
    shutil.copy(EXAMPLES / "small.toml", sub / "cluster.toml")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    code, _, err = cli("secrets", "init", str(sub / "cluster.toml"))
    assert code == 0, err
    assert "add `/infra/lemmy/secrets/` to the repository's .gitignore" in err
