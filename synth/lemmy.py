"""What an admin may set in Lemmy's own config file: `[lemmy.email]` and `[lemmy.settings]`.

Lemmy 0.19 reads one config file (lemmy.hjson). synth writes most of it (the database, pict-rs,
the host name, the listen address, the first admin); `[lemmy.email]` adds the `email` section
and `[lemmy.settings]` passes any other setting through, checked against the settings Lemmy 0.19
knows (crates/utils/src/settings/structs.rs, LemmyNet/lemmy 0.19.4 to 0.19.20): Lemmy ignores an
unknown top-level key without a word and refuses to start on an unknown key inside `pictrs` or
`prometheus`, so a typo here is an error, not a surprise at deploy time.

Pure: no I/O. Problems are located by dotted paths inside cluster.toml.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from synth.errors import Problem, dotted

SECTION = ("lemmy", "settings")

# --------------------------------------------------------------------------- email

# Lemmy 0.19's tls_type: "starttls" (upgrade a plain connection; submission port 587), "tls"
# (TLS from the first byte, "SMTPS"; port 465) and "none". Lemmy treats any other word as "none".
SMTP_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}

# An address, alone or after a display name of plain words (RFC 5322's specials such as ',' or
# ':' would need quoting, which Lemmy's mail library reads but which is easy to get wrong in TOML).
_ADDRESS = r"[^<>()\[\]:;@\\,\"\s]+@[^<>()\[\]:;@\\,\"\s]+\.[^<>()\[\]:;@\\,\"\s]+"
_MAILBOX_RE = re.compile(rf"^(?:[^<>()\[\]:;@\\,\"\r\n]+ <{_ADDRESS}>|{_ADDRESS})\Z")


def valid_mailbox(text: str) -> bool:
    """An address lettre parses as a mailbox: "noreply@example.org" or "Name <noreply@example.org>"."""
    return _MAILBOX_RE.match(text) is not None


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Owned:
    """A key synth writes itself: why, and what to set instead."""

    reason: str


# Keys of lemmy.hjson that synth (or the backend module) writes: a setting given here would
# fight synth's value, so it is refused with the place to change it instead.
OWNED: dict[str, Owned] = {
    "hostname": Owned("synth sets it from [cluster] domain; change the domain there"),
    "bind": Owned("synth sets it to each backend's private address (the frontends and the firewall use it)"),
    "port": Owned("synth sets it (8536): the frontends' nginx and the firewall rules are built for it"),
    "tls_enabled": Owned('synth derives it from [cluster] tls (and behind_https_proxy with tls = "none")'),
    "database.pool_size": Owned("set [backend] pool_size instead (synth checks it against postgres.max_connections)"),
    "database": Owned(
        "synth builds the connection from the cluster's PostgreSQL machines and the password from "
        "secrets/lemmy-db-password; the pool is [backend] pool_size"
    ),
    "pictrs.url": Owned("synth points it at the cluster's pict-rs machine(s) (or each backend's balancer)"),
    "pictrs.api_key": Owned("a secret: synth reads it from secrets/pictrs-api-key when the backend starts"),
    "setup": Owned(
        "synth sets it from [cluster] admin_username, admin_email and site_name, and the password from "
        "secrets/admin-password"
    ),
    "email": Owned("set [lemmy.email] instead (its password goes in secrets/smtp-password)"),
}


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _int_between(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_ip(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def _is_domain_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x and " " not in x for x in v)


def _one_of(*words: str) -> Callable[[Any], bool]:
    return lambda v: v in words


@dataclass(frozen=True)
class Setting:
    valid: Callable[[Any], bool]
    expected: str  # what valid() accepts, for the message
    # Lemmy refuses to start on an unknown key inside pictrs and prometheus: a key added after
    # 0.19.4 needs at least this version (the backend module asserts it against its package).
    since: str | None = None


IMAGE_MODES = ("None", "StoreLinkPreviews", "ProxyAllImages")

# Every setting of Lemmy 0.19 (up to 0.19.20) that synth does not write.
KNOWN: dict[str, Setting] = {
    "pictrs.image_mode": Setting(_one_of(*IMAGE_MODES), "one of " + ", ".join(f'"{m}"' for m in IMAGE_MODES)),
    "pictrs.proxy_bypass_domains": Setting(_is_domain_list, 'a list of host names, e.g. ["i.imgur.com"]', "0.19.8"),
    "pictrs.upload_timeout": Setting(_int_between(1, 86400), "seconds, an integer from 1 to 86400"),
    "pictrs.max_thumbnail_size": Setting(_int_between(1, 2**32 - 1), "pixels, a positive integer", "0.19.6"),
    "federation.concurrent_sends_per_instance": Setting(_int_between(1, 127), "an integer from 1 to 127"),
    "prometheus.bind": Setting(_is_ip, 'an IP address, e.g. "127.0.0.1"'),
    "prometheus.port": Setting(_int_between(1, 65535), "a port number"),
    "cors_origin": Setting(_is_str, 'a string, e.g. "https://lemmy.example.org"'),
    "json_logging": Setting(_is_bool, "true or false"),
}
# Tables of lemmy.hjson that hold settings (a key under them is looked up in KNOWN or OWNED).
TABLES = frozenset(k.split(".")[0] for k in (*KNOWN, *OWNED) if "." in k) | {"database", "setup", "email"}

# Settings an admin may know from older Lemmy or from nixpkgs' services.lemmy that Lemmy 0.19
# no longer reads from its config file.
GONE: dict[str, str] = {
    "captcha": "Lemmy 0.19 keeps the captcha in the site settings: set it in the admin pages (/admin)",
    "rate_limit": "Lemmy 0.19 keeps rate limits in the site settings: set them in the admin pages (/admin)",
    "actor_name_max_length": "Lemmy 0.19 keeps it in the site settings: set it in the admin pages (/admin)",
    "slur_filter": "Lemmy 0.19 keeps the slur filter in the site settings: set it in the admin pages (/admin)",
    "federation.enabled": "removed in Lemmy 0.17: federation is always on (block instances in /admin)",
    "worker_count": "removed in Lemmy 0.19.6 (outgoing federation has its own queue); synth spreads sending "
    "over the backends: see [backend] federation_senders and federation_process",
    "retry_count": "removed in Lemmy 0.19.6 (outgoing federation has its own queue)",
    "pictrs.cache_external_link_previews": 'deprecated since 0.19 and removed in 0.20: use pictrs.image_mode = "None" '
    '(no previews stored) or "StoreLinkPreviews"',
    "opentelemetry_url": "nixpkgs builds Lemmy without its opentelemetry feature: Lemmy 0.19 would only log an error",
}

# A key names a secret when one of its words does (api_key, smtp_password, auth_token, ...):
# settings end up in the Nix store, which every local user can read. The backend module asserts
# the same rule.
SECRET_WORDS = frozenset(
    {"password", "passwd", "pass", "pw", "secret", "secrets", "token", "credential", "credentials"}
)


def looks_secret(key: str) -> bool:
    k = key.lower()
    return any(w in SECRET_WORDS for w in k.replace("-", "_").split("_")) or k.endswith("key")


_URL_WITH_PASSWORD_RE = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@", re.IGNORECASE)

SECRET_HINT = (
    "settings are written into the Nix store, which every local user can read; Lemmy 0.19 takes "
    "secrets only in the keys synth fills from files (database, pict-rs API key, admin and SMTP passwords)"
)


def check_settings(settings: Mapping[str, Any]) -> list[Problem]:
    """Every problem of [lemmy.settings], each with its reason and fix."""
    problems: list[Problem] = []

    def walk(prefix: tuple[str, ...], table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            path = (*prefix, key)
            name = ".".join(path)
            where = dotted((*SECTION, *path))
            if name in OWNED and isinstance(value, dict) and any(f"{name}.{k}" in OWNED for k in value):
                # A table synth owns with a more specific reason for some of its keys (database.pool_size).
                for k in value:
                    reason = OWNED.get(f"{name}.{k}", OWNED[name]).reason
                    problems.append(Problem(dotted((*SECTION, *path, k)), f"synth owns this setting: {reason}"))
            elif name in OWNED:
                problems.append(Problem(where, f"synth owns this setting: {OWNED[name].reason}"))
            elif looks_secret(key):
                problems.append(Problem(where, f"looks like a secret, which cannot go here: {SECRET_HINT}"))
            elif name in GONE:
                problems.append(Problem(where, f"not a Lemmy 0.19 setting: {GONE[name]}"))
            elif name in KNOWN:
                problems.extend(_check_value(where, KNOWN[name], value))
            elif len(path) == 1 and key in TABLES:
                if isinstance(value, dict):
                    walk(path, value)
                else:
                    problems.append(Problem(where, f"must be a table of settings (Lemmy's {key} section)"))
            else:
                problems.append(Problem(where, _unknown(name)))
        if prefix == ("prometheus",):
            missing = [k for k in ("bind", "port") if k not in table]
            if missing:
                problems.append(
                    Problem(
                        dotted((*SECTION, "prometheus")),
                        f"Lemmy 0.19 needs both bind and port here and refuses to start without {missing[0]}; "
                        'add it (e.g. bind = "127.0.0.1", port = 10002)',
                    )
                )

    walk((), settings)
    return problems


def _check_value(where: str, setting: Setting, value: Any) -> list[Problem]:
    if isinstance(value, str) and _URL_WITH_PASSWORD_RE.match(value):
        return [Problem(where, f"holds a password (user:password@ in a URL): {SECRET_HINT}")]
    if not setting.valid(value):
        return [Problem(where, f"must be {setting.expected} (got {value!r})")]
    return []


def _unknown(name: str) -> str:
    choices = [k for k in KNOWN if "." in name or "." not in k] + [t for t in TABLES if "." not in name]
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    known = ", ".join(KNOWN)
    return (
        f"not a Lemmy 0.19 setting (Lemmy would ignore it, or refuse to start); {hint}the settings synth "
        f"does not write itself are: {known}"
    )
