"""The small shell scripts the modules run, tested here with the same tools (bash, jq)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.conftest import ROOT, require_tool

WRITE_CONFIG = ROOT / "modules" / "backend" / "write-config.sh"
WRITE_PGPASS = ROOT / "modules" / "postgres" / "scripts" / "write-pgpass.sh"

NASTY = 'p@ss:w/rd?#&%20 "q" \\ ${x} é'


def secrets(folder: Path, db: str = NASTY) -> Path:
    folder.mkdir()
    (folder / "db-password").write_text(db + "\n")
    (folder / "pictrs-api-key").write_text("api-key-123\n")
    (folder / "admin-password").write_text("admin password 1\n")
    return folder


def run_write_config(
    tmp_path: Path, hosts: str = "10.0.0.30:5432", params: str = ""
) -> subprocess.CompletedProcess[str]:
    require_tool("jq")
    template = tmp_path / "template.json"
    template.write_text(
        json.dumps(
            {
                "hostname": "lemmy.example.org",
                "database": {"pool_size": 30},
                "pictrs": {"url": "http://x/"},
                "setup": {"admin_username": "admin", "site_name": "s"},
            }
        )
    )
    env = dict(
        os.environ,
        LEMMY_CLUSTER_DB_USER="lemmy",
        LEMMY_CLUSTER_DB_HOSTS=hosts,
        LEMMY_CLUSTER_DB_NAME="lemmy",
        LEMMY_CLUSTER_DB_PARAMS=params,
    )
    sec = tmp_path / "creds"
    if not sec.exists():
        secrets(sec)
    return subprocess.run(
        ["bash", str(WRITE_CONFIG), str(template), str(tmp_path / "config.hjson"), str(sec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_write_config_builds_url_and_adds_secrets(tmp_path: Path) -> None:
    out = run_write_config(tmp_path)
    assert out.returncode == 0, out.stderr
    config_file = tmp_path / "config.hjson"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600, "the config holds secrets: owner only"
    config = json.loads(config_file.read_text())
    url = urlsplit(config["database"]["uri"])
    assert url.scheme == "postgresql"
    assert unquote(url.password or "") == NASTY, "the password survives URL encoding exactly"
    assert (url.username, url.hostname, url.port, url.path) == ("lemmy", "10.0.0.30", 5432, "/lemmy")
    assert config["database"]["pool_size"] == 30, "template values are kept"
    assert config["pictrs"]["api_key"] == "api-key-123", "trailing newline stripped"
    assert config["setup"]["admin_password"] == "admin password 1"
    assert config["hostname"] == "lemmy.example.org"


def test_write_config_multi_host_url(tmp_path: Path) -> None:
    out = run_write_config(tmp_path, hosts="10.0.0.30:5432,10.0.0.31:5432", params="target_session_attrs=read-write")
    assert out.returncode == 0, out.stderr
    uri = json.loads((tmp_path / "config.hjson").read_text())["database"]["uri"]
    assert uri.endswith("@10.0.0.30:5432,10.0.0.31:5432/lemmy?target_session_attrs=read-write"), uri


def test_write_config_refuses_missing_secret(tmp_path: Path) -> None:
    sec = secrets(tmp_path / "creds")
    (sec / "pictrs-api-key").unlink()
    out = run_write_config(tmp_path)
    assert out.returncode == 1
    assert "the secret pictrs-api-key is missing or empty" in out.stderr
    assert not (tmp_path / "config.hjson").exists()


def test_write_pgpass_escapes(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("a:b\\c\n")
    out_file = tmp_path / "pgpass"
    out = subprocess.run(
        ["bash", str(WRITE_PGPASS), "repl:user", str(pw), str(out_file)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out_file.read_text() == "*:*:*:repl\\:user:a\\:b\\\\c\n"
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600


def test_write_pgpass_refuses_empty(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("\n")
    out = subprocess.run(
        ["bash", str(WRITE_PGPASS), "u", str(pw), str(tmp_path / "o")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 1 and "is empty" in out.stderr
    assert not (tmp_path / "o").exists()
