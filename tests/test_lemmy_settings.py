"""[lemmy.email] and [lemmy.settings]: what reaches the backends' lemmy.hjson, and every refusal
with its reason and fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synth import lemmy
from synth.errors import SynthError
from synth.model import Cluster, email_from, parse, smtp_port
from synth.render import host_data
from synth.topology import plan
from tests.conftest import EXAMPLES, ROOT
from tests.test_cli import run, snapshot

SMALL = (EXAMPLES / "small.toml").read_text()
BACKEND_MODULE = (ROOT / "modules" / "backend" / "default.nix").read_text()


def with_lemmy(text: str) -> Cluster:
    return parse(SMALL + "\n" + text)


def problems(text: str) -> list[str]:
    with pytest.raises(SynthError) as exc:
        with_lemmy(text)
    return [p.render("cluster.toml") for p in exc.value.problems]


def backend_of(c: Cluster) -> dict[str, object]:
    data: dict[str, object] = host_data(c, plan(c)["app1"])["services"]["lemmy-cluster"]["backend"]
    return data


# --------------------------------------------------------------------------- email


def test_email_reaches_the_backend_module() -> None:
    c = with_lemmy('[lemmy.email]\nserver = "smtp.example.org"\nlogin = "lemmy@example.org"\n')
    assert backend_of(c)["email"] == {
        "enable": True,
        "server": "smtp.example.org",
        "port": 587,
        "tls": "starttls",
        "login": "lemmy@example.org",
        "passwordFile": "/var/lib/lemmy-cluster/secrets/smtp-password",
        "fromAddress": "noreply@lemmy.example.org",
    }
    assert "smtp_password" in plan(c)["app1"].secrets and "smtp_password" not in plan(c)["db1"].secrets


@pytest.mark.parametrize(("tls", "port"), [("starttls", 587), ("tls", 465), ("none", 25)])
def test_smtp_port_follows_the_tls_mode(tls: str, port: int) -> None:
    c = with_lemmy(f'[lemmy.email]\nserver = "mail.internal.example.org"\ntls = "{tls}"\n')
    assert c.lemmy.email is not None and smtp_port(c.lemmy.email) == port
    email = backend_of(c)["email"]
    assert isinstance(email, dict) and "login" not in email and "passwordFile" not in email
    assert "smtp_password" not in plan(c)["app1"].secrets, "no login: no password to push"
    explicit = with_lemmy(f'[lemmy.email]\nserver = "10.0.0.25"\ntls = "{tls}"\nport = 2525\n')
    assert explicit.lemmy.email is not None and smtp_port(explicit.lemmy.email) == 2525


def test_no_email_section_no_email() -> None:
    c = parse(SMALL)
    assert c.lemmy.email is None and email_from(c) is None
    assert "email" not in backend_of(c) and "settings" not in backend_of(c)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'server = "2001:db8::25"',
            "lemmy.email.server: Lemmy 0.19 reads the server as host:port and cannot take an IPv6 address; "
            "give its DNS name",
        ),
        ('server = "smtp example"', "lemmy.email.server: 'smtp example' is not a host name such as 'smtp.example.org'"),
        ('server = "smtp.example.org"\nport = 70000', "lemmy.email.port: must be a port number (1-65535)"),
        (
            'server = "smtp.example.org"\ntls = "none"\nlogin = "me"',
            'lemmy.email.tls: with a login, tls = "none" would send the SMTP password unencrypted; use "starttls" '
            '(port 587) or "tls" (port 465), or remove login for a relay that needs none',
        ),
        (
            'server = "smtp.example.org"\nfrom_address = "Lemmy noreply@example.org"',
            "lemmy.email.from_address: 'Lemmy noreply@example.org' is not an email address; write "
            "'noreply@lemmy.example.org' or 'Example <noreply@lemmy.example.org>' (Lemmy stops sending mail on "
            "an address it cannot read)",
        ),
        (
            'server = "smtp.example.org"\ntls = "ssl"',
            "lemmy.email.tls: invalid value 'ssl'; expected one of 'starttls', 'tls' or 'none'",
        ),
        (
            'server = "smtp.example.org"\npassword = "hunter2"',
            "lemmy.email.password: unknown key; allowed keys here: server, port, tls, login, from_address",
        ),
        (
            'server = "smtp.example.org"\nfrom = "a@example.org"',
            "lemmy.email.from: unknown key; allowed keys here: server, port, tls, login, from_address",
        ),
        (
            'servr = "smtp.example.org"',
            "lemmy.email.servr: unknown key; did you mean 'server'? allowed keys here: server, port, tls, login, "
            "from_address",
        ),
    ],
)
def test_email_refusals(toml: str, expected: str) -> None:
    assert f"cluster.toml: {expected}" in problems(f"[lemmy.email]\n{toml}\n")


@pytest.mark.parametrize(
    "address", ["noreply@lemmy.example.org", "Example Lemmy <noreply@lemmy.example.org>", "a.b+c@x.example"]
)
def test_from_addresses_lettre_reads(address: str) -> None:
    assert lemmy.valid_mailbox(address)
    c = with_lemmy(f'[lemmy.email]\nserver = "smtp.example.org"\nfrom_address = "{address}"\n')
    assert email_from(c) == address


@pytest.mark.parametrize(
    "address",
    [
        "noreply",
        "<noreply@example.org",
        "a@b",
        "x <y@example.org> z",
        "a b@example.org",
        "Example, Inc <a@example.org>",
    ],
)
def test_from_addresses_lettre_would_refuse(address: str) -> None:
    assert not lemmy.valid_mailbox(address)


# --------------------------------------------------------------------------- settings


def test_settings_pass_through_unchanged() -> None:
    c = with_lemmy(
        "[lemmy.settings]\n"
        "json_logging = true\n"
        'cors_origin = "https://lemmy.example.org"\n'
        'pictrs.image_mode = "ProxyAllImages"\n'
        'pictrs.proxy_bypass_domains = ["i.imgur.com", "media.example.org"]\n'
        "pictrs.upload_timeout = 60\n"
        "pictrs.max_thumbnail_size = 256\n"
        "federation.concurrent_sends_per_instance = 4\n"
        'prometheus = { bind = "127.0.0.1", port = 10002 }\n'
    )
    assert backend_of(c)["settings"] == {
        "json_logging": True,
        "cors_origin": "https://lemmy.example.org",
        "pictrs": {
            "image_mode": "ProxyAllImages",
            "proxy_bypass_domains": ["i.imgur.com", "media.example.org"],
            "upload_timeout": 60,
            "max_thumbnail_size": 256,
        },
        "federation": {"concurrent_sends_per_instance": 4},
        "prometheus": {"bind": "127.0.0.1", "port": 10002},
    }


SETTING_REFUSALS = [
    (
        "hostname = 'x.example.org'",
        "lemmy.settings.hostname: synth owns this setting: synth sets it from [cluster] domain; change the domain "
        "there",
    ),
    ("port = 8537", "lemmy.settings.port: synth owns this setting: synth sets it (8536)"),
    ("bind = '0.0.0.0'", "lemmy.settings.bind: synth owns this setting: synth sets it to each backend's private"),
    ("tls_enabled = false", "lemmy.settings.tls_enabled: synth owns this setting: synth derives it from [cluster] tls"),
    (
        "database.pool_size = 10",
        "lemmy.settings.database.pool_size: synth owns this setting: set [backend] pool_size instead",
    ),
    (
        "database.uri = 'postgres://x'",
        "lemmy.settings.database: synth owns this setting: synth builds the connection",
    ),
    ("pictrs.url = 'http://x/'", "lemmy.settings.pictrs.url: synth owns this setting: synth points it at"),
    ("pictrs.api_key = 'k'", "lemmy.settings.pictrs.api_key: synth owns this setting: a secret: synth reads it"),
    ("setup.site_name = 'x'", "lemmy.settings.setup: synth owns this setting: synth sets it from [cluster]"),
    (
        "email.smtp_server = 'x:25'",
        "lemmy.settings.email: synth owns this setting: set [lemmy.email] instead (its password goes in "
        "secrets/smtp-password)",
    ),
    (
        "prometheus = { bind = '127.0.0.1', port = 10002, auth_token = 'x' }",
        "lemmy.settings.prometheus.auth_token: looks like a secret, which cannot go here: settings are written "
        "into the Nix store, which every local user can read",
    ),
    ("smtp_password = 'x'", "lemmy.settings.smtp_password: looks like a secret"),
    ("s3-access-key = 'x'", "lemmy.settings.s3-access-key: looks like a secret"),
    (
        "cors_origin = 'https://user:pw@example.org'",
        "lemmy.settings.cors_origin: holds a password (user:password@ in a URL)",
    ),
    (
        "captcha.enabled = true",
        "lemmy.settings.captcha: not a Lemmy 0.19 setting: Lemmy 0.19 keeps the captcha in the site settings: set "
        "it in the admin pages (/admin)",
    ),
    ("rate_limit.post = 6", "lemmy.settings.rate_limit: not a Lemmy 0.19 setting: Lemmy 0.19 keeps rate limits"),
    ("federation.enabled = true", "lemmy.settings.federation.enabled: not a Lemmy 0.19 setting: removed in Lemmy 0.17"),
    (
        "pictrs.cache_external_link_previews = false",
        "lemmy.settings.pictrs.cache_external_link_previews: not a Lemmy 0.19 setting: deprecated since 0.19 and "
        'removed in 0.20: use pictrs.image_mode = "None"',
    ),
    (
        "opentelemetry_url = 'http://otel:4317'",
        "lemmy.settings.opentelemetry_url: not a Lemmy 0.19 setting: nixpkgs builds Lemmy without its "
        "opentelemetry feature",
    ),
    (
        "pictrs.image_mod = 'None'",
        "lemmy.settings.pictrs.image_mod: not a Lemmy 0.19 setting (Lemmy would ignore it, or refuse to start); "
        "did you mean 'pictrs.image_mode'? the settings synth does not write itself are: pictrs.image_mode, "
        "pictrs.proxy_bypass_domains, pictrs.upload_timeout, pictrs.max_thumbnail_size, "
        "federation.concurrent_sends_per_instance, prometheus.bind, prometheus.port, cors_origin, json_logging",
    ),
    (
        "json_loging = true",
        "lemmy.settings.json_loging: not a Lemmy 0.19 setting (Lemmy would ignore it, or refuse to "
        "start); did you mean 'json_logging'?",
    ),
    ("pictrs = 'none'", "lemmy.settings.pictrs: must be a table of settings (Lemmy's pictrs section)"),
    (
        "pictrs.image_mode = 'proxy'",
        'lemmy.settings.pictrs.image_mode: must be one of "None", "StoreLinkPreviews", "ProxyAllImages" '
        "(got 'proxy')",
    ),
    ("pictrs.upload_timeout = 0", "lemmy.settings.pictrs.upload_timeout: must be seconds, an integer from 1 to 86400"),
    ("pictrs.upload_timeout = 1.5", "lemmy.settings.pictrs.upload_timeout: must be seconds, an integer"),
    ("json_logging = 'yes'", "lemmy.settings.json_logging: must be true or false (got 'yes')"),
    ("json_logging = 1979-05-27", "lemmy.settings.json_logging: must be true or false (got datetime.date"),
    (
        "federation.concurrent_sends_per_instance = 200",
        "lemmy.settings.federation.concurrent_sends_per_instance: must be an integer from 1 to 127 (got 200)",
    ),
    ("prometheus = { bind = 'localhost', port = 1 }", "lemmy.settings.prometheus.bind: must be an IP address"),
    (
        "prometheus.port = 10002",
        "lemmy.settings.prometheus: Lemmy 0.19 needs both bind and port here and refuses to start without bind; "
        'add it (e.g. bind = "127.0.0.1", port = 10002)',
    ),
    ("pictrs.proxy_bypass_domains = 'i.imgur.com'", "lemmy.settings.pictrs.proxy_bypass_domains: must be a list"),
]


@pytest.mark.parametrize(("toml", "expected"), SETTING_REFUSALS, ids=[t for t, _ in SETTING_REFUSALS])
def test_setting_refusals(toml: str, expected: str) -> None:
    found = problems(f"[lemmy.settings]\n{toml}\n")
    assert any(p.startswith(f"cluster.toml: {expected}") for p in found), found
    assert len(found) == 1, found


def test_an_owned_table_names_each_key_with_its_own_fix() -> None:
    found = problems("[lemmy.settings]\ndatabase = { pool_size = 10, uri = 'postgres://x' }\n")
    assert [p.split(": synth owns this setting: ")[0] for p in found] == [
        "cluster.toml: lemmy.settings.database.pool_size",
        "cluster.toml: lemmy.settings.database.uri",
    ]
    assert "set [backend] pool_size instead" in found[0] and "synth builds the connection" in found[1]


def test_every_setting_problem_at_once_and_nothing_written(tmp_path: Path) -> None:
    toml = tmp_path / "cluster.toml"
    toml.write_text(SMALL + '\n[lemmy.settings]\nport = 1\nsecret = "x"\nrate_limit.post = 6\njson_logging = 2\n')
    before = snapshot(tmp_path)
    code, out, err = run("generate", str(toml))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert [re.sub(r":.*", "", line.removeprefix(f"{toml}: ")) for line in lines[:-1]] == [
        "lemmy.settings.json_logging",
        "lemmy.settings.port",
        "lemmy.settings.rate_limit",
        "lemmy.settings.secret",
    ]
    assert lines[-1] == "synth: 4 problems found; nothing was written."
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- the module asserts the same rules


def _nix_list(name: str) -> list[str]:
    m = re.search(rf"^  {name} = \[\n(.*?)\n  \];", BACKEND_MODULE, re.MULTILINE | re.DOTALL)
    assert m, f"{name} not found in modules/backend/default.nix"
    return re.findall(r'"([^"]+)"', m.group(1))


def test_backend_module_refuses_what_synth_refuses() -> None:
    """The module can be used without synth: its assertions on `settings` must match synth's."""
    assert sorted(_nix_list("secretWords")) == sorted(lemmy.SECRET_WORDS)
    owned = re.search(r"^  ownedPaths = \[\n(.*?)\n  \];", BACKEND_MODULE, re.MULTILINE | re.DOTALL)
    assert owned
    paths = {".".join(re.findall(r'"([^"]+)"', p)) for p in re.findall(r"\[[^\[\]]*\]", owned.group(1))}
    assert paths == {k for k in lemmy.OWNED if k != "database.pool_size"}, "database covers its pool_size"
    newer = dict(re.findall(r'^    "([a-z_.]+)" = "(0\.19\.\d+)";$', BACKEND_MODULE, re.MULTILINE))
    assert newer == {k: s.since for k, s in lemmy.KNOWN.items() if s.since}


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("api_key", True),
        ("smtp_password", True),
        ("auth-token", True),
        ("privatekey", True),
        ("secrets", True),
        ("pw", True),
        ("proxy_bypass_domains", False),
        ("passthrough", False),
        ("image_mode", False),
        ("concurrent_sends_per_instance", False),
    ],
)
def test_what_looks_like_a_secret(key: str, secret: bool) -> None:
    assert lemmy.looks_secret(key) is secret


def test_a_misspelt_lemmy_table_gets_a_did_you_mean() -> None:
    assert problems('[lemmy.emial]\nserver = "smtp.example.org"\n') == [
        "cluster.toml: lemmy.emial: unknown key; did you mean 'email'? allowed keys here: email, settings"
    ]
