"""The small shell scripts the modules run, tested here with the same tools (bash, jq)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any
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


TEMPLATE: dict[str, Any] = {
    "hostname": "lemmy.example.org",
    "database": {"pool_size": 30},
    "pictrs": {"url": "http://x/"},
    "setup": {"admin_username": "admin", "site_name": "s"},
}

# What the backend module writes for [lemmy.email] with a login and for [lemmy.settings].
EMAIL = {
    "smtp_server": "smtp.example.org:587",
    "smtp_login": "lemmy@example.org",
    "smtp_from_address": "Example <noreply@lemmy.example.org>",
    "tls_type": "starttls",
}
SETTINGS = {"pictrs": {"image_mode": "ProxyAllImages"}, "json_logging": True}


def run_write_config(
    tmp_path: Path,
    hosts: str = "10.0.0.30:5432",
    params: str = "",
    template: dict[str, Any] = TEMPLATE,
    path_prefix: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    require_tool("jq")
    template_file = tmp_path / "template.json"
    template_file.write_text(json.dumps(template))
    env = dict(
        os.environ,
        LEMMY_CLUSTER_DB_USER="lemmy",
        LEMMY_CLUSTER_DB_HOSTS=hosts,
        LEMMY_CLUSTER_DB_NAME="lemmy",
        LEMMY_CLUSTER_DB_PARAMS=params,
    )
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    sec = tmp_path / "creds"
    if not sec.exists():
        secrets(sec)
    return subprocess.run(
        ["bash", str(WRITE_CONFIG), str(template_file), str(tmp_path / "config.hjson"), str(sec)],
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


SMTP_NASTY = 'smtp "pw" \\ $(id) ${HOME} é\ttab'


def with_email(template: dict[str, Any], email: dict[str, str] = EMAIL) -> dict[str, Any]:
    return template | {"email": dict(email)} | {"pictrs": template["pictrs"] | SETTINGS["pictrs"], "json_logging": True}


def test_write_config_adds_the_smtp_password_from_its_credential(tmp_path: Path) -> None:
    sec = secrets(tmp_path / "creds")
    (sec / "smtp-password").write_text(SMTP_NASTY + "\n")
    out = run_write_config(tmp_path, template=with_email(TEMPLATE))
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "config.hjson").read_text())
    assert config["email"] == EMAIL | {"smtp_password": SMTP_NASTY}, "the password exactly, one trailing newline off"
    assert config["pictrs"] == {"url": "http://x/", "image_mode": "ProxyAllImages", "api_key": "api-key-123"}
    assert config["json_logging"] is True, "the admin's own settings are kept"


def test_write_config_keeps_every_secret_off_argv_and_environment(tmp_path: Path) -> None:
    """jq reads the secrets from the credential files itself: a stand-in jq on PATH records the
    command line and environment it was given, and no secret may be in them."""
    real_jq = require_tool("jq")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "jq").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >>"{tmp_path}/jq-argv"\nenv >>"{tmp_path}/jq-env"\nexec {real_jq} "$@"\n'
    )
    (shim / "jq").chmod(0o755)
    sec = secrets(tmp_path / "creds")
    (sec / "smtp-password").write_text(SMTP_NASTY + "\n")
    out = run_write_config(tmp_path, template=with_email(TEMPLATE), path_prefix=shim)
    assert out.returncode == 0, out.stderr
    seen = (tmp_path / "jq-argv").read_text() + (tmp_path / "jq-env").read_text()
    assert "--rawfile" in seen, "the stand-in jq was the one run"
    for value in (SMTP_NASTY, NASTY, "api-key-123", "admin password 1"):
        assert value not in seen
    assert json.loads((tmp_path / "config.hjson").read_text())["email"]["smtp_password"] == SMTP_NASTY


def test_write_config_refuses_a_login_without_its_password(tmp_path: Path) -> None:
    secrets(tmp_path / "creds")
    out = run_write_config(tmp_path, template=with_email(TEMPLATE))
    assert out.returncode == 1
    assert "the secret smtp-password is missing or empty" in out.stderr
    assert not (tmp_path / "config.hjson").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("config.hjson")] == [], "no temporary left"


def test_write_config_email_without_login_needs_no_password(tmp_path: Path) -> None:
    relay = {k: v for k, v in EMAIL.items() if k != "smtp_login"} | {"smtp_server": "localhost:25", "tls_type": "none"}
    out = run_write_config(tmp_path, template=with_email(TEMPLATE, relay))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "config.hjson").read_text())["email"] == relay, "no smtp_password at all"


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
