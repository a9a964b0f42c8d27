"""cluster.toml: the pydantic model, its loading, and every validation rule.

Loading never stops at the first problem: structural problems come from pydantic (all of them),
then the cross-field rules run on whatever parsed, and every problem is reported together.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synth.backup import BackupSection
from synth.errors import Problem, SynthError, dotted

Role = Literal["frontend", "backend", "pictrs", "postgres", "storage", "backup"]
ROLES: tuple[str, ...] = get_args(Role)
TlsMode = Literal["acme", "none", "manual"]
TLS_MODES: tuple[str, ...] = get_args(TlsMode)

# Let's Encrypt's limit of identical certificates per week (each frontend requests its own).
ACME_MAX_FRONTENDS = 5

# PostgreSQL majors that nixpkgs 26.05 packages and Lemmy 0.19 runs on (it needs >= 13).
POSTGRES_VERSIONS = (14, 15, 16, 17, 18)

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_SYSTEM_RE = re.compile(r"^[a-z0-9_]+-[a-z0-9_]+\Z")
_STATE_VERSION_RE = re.compile(r"^\d\d\.\d\d\Z")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ClusterSection(_Strict):
    name: str
    domain: str
    admin_email: str
    system: str = "x86_64-linux"
    state_version: str = "26.05"
    site_name: str | None = None
    admin_username: str = "admin"
    tls: TlsMode = "acme"
    tls_certificate: str | None = None
    tls_key: str | None = None
    behind_https_proxy: bool = False


class PostgresSection(_Strict):
    # failover = "automatic": the machine whose database the Patroni cluster is created from (or
    # takes over); Patroni then elects the leader by itself. failover = "manual": the primary.
    primary: str
    version: int
    synchronous: bool = False
    max_connections: int = Field(default=200, ge=20, le=10000)
    # With several postgres machines: "automatic" runs them under Patroni with etcd (a new leader
    # without anyone acting); "manual" keeps plain streaming replication and `synth promote`.
    failover: Literal["automatic", "manual"] = "automatic"


class EtcdSection(_Strict):
    # The machines that run etcd, Patroni's consensus store (default: chosen by etcd_members()).
    members: list[str] | None = None
    # How many members: 3 keep a quorum with one machine down, 5 with two.
    size: int | None = None


class BackendSection(_Strict):
    pool_size: int = Field(default=30, ge=2, le=1000)
    # The one backend whose lemmy_server runs the scheduled tasks (default: the first backend).
    # A list is accepted only to explain that exactly one process may run them.
    scheduled_tasks: str | list[str] | None = None
    # Backends that send outgoing federation, one shard each (default: every backend).
    federation_senders: list[str] | None = None
    # "inline": the sender shard runs inside the backend's lemmy_server; "dedicated": in a second
    # process (lemmy-federate) on the same machine, so sending never competes with the API.
    federation_process: Literal["inline", "dedicated"] = "inline"


class PictrsSection(_Strict):
    # "local": sled repository and files on the one pict-rs machine (pict-rs 0.5's default).
    # "object_storage": a Postgres repository (database "pictrs" on the cluster's PostgreSQL) and
    # an S3-compatible bucket, shared by any number of pict-rs machines.
    store: Literal["local", "object_storage"] = "local"
    endpoint: str | None = None
    bucket: str | None = None
    region: str = "us-east-1"
    path_style: bool = False
    # store = "object_storage" only: the CPUs pict-rs sees on each pict-rs machine (default
    # PICTRS_DEFAULT_CPUS). pict-rs 0.5 sizes its Postgres pools from them (pictrs_db_connections),
    # and synth cannot see the machines, so it counts with this number.
    cpus: int | None = Field(default=None, ge=1, le=1024)


class StorageSection(_Strict):
    # The storage machines run Garage 2 (nixpkgs' garage_2), pinned by the storage module.
    # How many storage machines hold each object (Garage's replication_factor). Required with
    # storage machines and never derived from their number: Garage refuses to start when it
    # differs from the factor its stored layout was made with.
    replication_factor: int | None = None


SmtpTls = Literal["starttls", "tls", "none"]


class EmailSection(_Strict):
    # Lemmy 0.19's email section: sign-up verification, password resets, notifications.
    server: str  # the SMTP server's host name (Lemmy cannot take an IPv6 address)
    port: int | None = None  # default: 587 with starttls, 465 with tls, 25 with none
    tls: SmtpTls = "starttls"
    login: str | None = None  # its password: secrets/smtp-password
    from_address: str | None = None  # default: noreply@<cluster.domain>


class LemmySection(_Strict):
    email: EmailSection | None = None
    # Any other setting of lemmy.hjson (checked against Lemmy 0.19's settings: synth.lemmy).
    settings: dict[str, Any] = Field(default_factory=dict)


class NetworkSection(_Strict):
    # "wireguard": every internal connection goes through a WireGuard mesh (synth.mesh).
    mesh: Literal["none", "wireguard"] = "none"
    mesh_subnet: str = "10.100.0.0/24"  # the machines' mesh addresses (IPv4)
    mesh_port: int = 51820  # UDP, on every machine's underlay address
    mesh_mtu: int = 1420  # the WireGuard interface's MTU: 1500 minus WireGuard's 80 bytes
    mesh_keepalive: int = 25  # seconds between a NAT machine's keepalives


class SecretsSection(_Strict):
    dir: str = "/var/lib/lemmy-cluster/secrets"


class SshSection(_Strict):
    # The admins' OpenSSH public keys: every machine authorises them for its ssh_user.
    keys: list[str] = Field(default_factory=list)
    # Networks allowed to reach sshd (port 22); empty: everywhere.
    allow_from: list[str] = Field(default_factory=list)


class Machine(_Strict):
    address: str
    private_address: str | None = None
    roles: list[Role]
    system: str | None = None
    ssh_user: str = "root"
    # system.stateVersion of this machine, recorded when it was added; never changed afterwards
    # (default: [cluster] state_version, meant for machines added later).
    state_version: str | None = None
    # role "storage" only: the disk space Garage may use here (e.g. "500G"), its zone (default:
    # the machine's name) and its Garage node id (recorded by `synth secrets init`).
    storage_capacity: str | None = None
    storage_zone: str | None = None
    garage_node_id: str | None = None
    # [network] mesh = "wireguard" only: its mesh address and WireGuard public key (both recorded
    # by `synth secrets init` / `synth add-machine`), and whether it has no address the others
    # can reach (at home behind NAT: it reaches out to them, with a persistent keepalive).
    mesh_address: str | None = None
    wireguard_public_key: str | None = None
    behind_nat: bool = False


class Cluster(_Strict):
    cluster: ClusterSection
    postgres: PostgresSection
    backend: BackendSection = BackendSection()
    pictrs: PictrsSection = PictrsSection()
    storage: StorageSection = StorageSection()
    lemmy: LemmySection = LemmySection()
    etcd: EtcdSection = EtcdSection()
    network: NetworkSection = NetworkSection()
    secrets: SecretsSection = SecretsSection()
    ssh: SshSection = SshSection()
    backup: BackupSection | None = None
    machines: dict[str, Machine]

    def machines_with(self, role: str) -> list[str]:
        """Names of the machines that have ROLE, in file order."""
        return [name for name, m in self.machines.items() if role in m.roles]

    def state_version(self, name: str) -> str:
        sv = self.machines[name].state_version
        return sv if sv is not None else self.cluster.state_version

    def private_address(self, name: str) -> str:
        m = self.machines[name]
        return m.private_address if m.private_address is not None else m.address


# --------------------------------------------------------------------------- loading


def load(path: Path, *, pending_node_ids: bool = False) -> Cluster:
    """Read and validate PATH; raise SynthError with every problem found."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SynthError.single(
            file, "", "file not found; create it (see examples/ or the README's reference)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SynthError.single(file, "", f"cannot read: {exc}") from None
    return parse(text, file, pending_node_ids=pending_node_ids)


def parse(text: str, file: str = "cluster.toml", *, pending_node_ids: bool = False) -> Cluster:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SynthError.single(file, "", f"TOML syntax error: {_toml_message(exc)}") from None
    return from_data(data, file, pending_node_ids=pending_node_ids)


def from_data(data: dict[str, Any], file: str = "cluster.toml", *, pending_node_ids: bool = False) -> Cluster:
    try:
        cluster = Cluster.model_validate(data)
    except ValidationError as exc:
        problems = [_translate(err) for err in exc.errors()]
        problems += _check_raw(data)
        raise SynthError(file, sorted(set(problems))) from None
    problems = check(cluster, pending_node_ids=pending_node_ids)
    if problems:
        raise SynthError(file, problems)
    return cluster


def _toml_message(exc: tomllib.TOMLDecodeError) -> str:
    msg = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if m:
        head = msg[: m.start()].strip()
        return f"line {m.group(1)}, column {m.group(2)}: {head}"
    return msg


# --------------------------------------------------------------------------- pydantic errors


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that owns the last element of LOC (for did-you-mean on unknown keys)."""
    model: type[BaseModel] | None = Cluster
    i = 0
    while i < len(loc) - 1 and model is not None:
        field = model.model_fields.get(str(loc[i]))
        if field is None:
            return None
        ann = field.annotation
        if ann is Machine or (getattr(ann, "__origin__", None) is dict):
            # dict[str, Machine]: skip the machine name
            model = Machine
            i += 2
            continue
        inner = [a for a in (get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = inner[0] if inner else None  # a model, or a model | None
        i += 1
    return model


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
}


def _translate(err: Any) -> Problem:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind: str = err["type"]
    where = dotted(loc)
    if kind == "extra_forbidden":
        model = _model_at(loc)
        known = list(model.model_fields) if model else []
        hint = _did_you_mean(str(loc[-1]), known)
        allowed = ", ".join(known)
        return Problem(where, f"unknown key; {hint}allowed keys here: {allowed}")
    if kind == "missing":
        if len(loc) == 1:
            return Problem(where, f"missing table [{loc[0]}]; add it (see the README's reference)")
        return Problem(where, "required key missing; add it")
    if kind == "literal_error":
        value = err.get("input")
        if len(loc) >= 2 and loc[-2] == "roles":
            hint = _did_you_mean(str(value), ROLES)
            return Problem(where, f"unknown role {value!r}; {hint}roles are: {', '.join(ROLES)}")
        expected = err.get("ctx", {}).get("expected", "")
        return Problem(where, f"invalid value {value!r}; expected one of {expected}")
    if kind in _TYPE_NAMES:
        got = type(err.get("input")).__name__
        return Problem(where, f"must be {_TYPE_NAMES[kind]} (got {got})")
    return Problem(where, err["msg"])


def _check_raw(data: dict[str, Any]) -> list[Problem]:
    """The machine rules, run on raw data when some other part did not parse, so that one typo
    does not hide the rest: every machine whose fields have the right types is checked."""
    machines = data.get("machines")
    if not isinstance(machines, dict):
        return []
    well_typed: dict[str, Machine] = {}
    problems = []
    for name, raw in machines.items():
        if not _LABEL_RE.match(name):
            problems.append(_machine_name_problem(name))
        if not isinstance(raw, dict):
            continue
        address, private, roles = raw.get("address"), raw.get("private_address"), raw.get("roles", [])
        if not (isinstance(address, str) and (private is None or isinstance(private, str)) and isinstance(roles, list)):
            continue
        well_typed[name] = Machine.model_construct(
            address=address,
            private_address=private,
            roles=[r for r in roles if isinstance(r, str)],  # type: ignore[misc]  # unknown ones: pydantic reports them
            system=None,
            ssh_user="root",
            storage_capacity=_text(raw, "storage_capacity"),
            storage_zone=_text(raw, "storage_zone"),
            garage_node_id=_text(raw, "garage_node_id"),
            mesh_address=None,
            wireguard_public_key=None,
            behind_nat=False,
        )
    return problems + _check_machines(well_typed)


def _text(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def _machine_name_problem(name: str) -> Problem:
    return Problem(
        dotted(("machines", name)),
        "invalid machine name; use a hostname label: lowercase letters, digits and '-', "
        "1-63 characters, not starting or ending with '-'",
    )


# --------------------------------------------------------------------------- cross-field rules


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def valid_dns_name(text: str) -> bool:
    if not text or len(text) > 253 or text.endswith("."):
        return False
    labels = text.split(".")
    # A top-level label is never all digits (that would be a malformed IP address).
    return all(_LABEL_RE.match(label) for label in labels) and not labels[-1].isdigit()


def _not_linux(path: str, system: str) -> Problem:
    return Problem(path, f"{system!r} is not a Linux system: NixOS machines are 'x86_64-linux' or 'aarch64-linux'")


def check(c: Cluster, *, pending_node_ids: bool = False) -> list[Problem]:
    """Every rule that involves more than one field. Returns all problems, sorted by path.

    PENDING_NODE_IDS accepts storage machines without a garage_node_id yet: `synth secrets init`
    (which records them) and `synth add-machine` (which tells the admin to run it next).
    """
    p: list[Problem] = []
    cl = c.cluster
    if not _NAME_RE.match(cl.name):
        p.append(Problem("cluster.name", "use lowercase letters, digits and '-' only (e.g. 'my-lemmy')"))
    if not (valid_dns_name(cl.domain) and "." in cl.domain) or _is_ip(cl.domain):
        p.append(
            Problem(
                "cluster.domain",
                f"{cl.domain!r} is not a valid domain name; give the instance's public hostname "
                "in lowercase, such as 'lemmy.example.org'",
            )
        )
    if not _EMAIL_RE.match(cl.admin_email):
        p.append(Problem("cluster.admin_email", f"{cl.admin_email!r} is not an email address"))
    if not _SYSTEM_RE.match(cl.system):
        p.append(Problem("cluster.system", f"{cl.system!r} is not a Nix system such as 'x86_64-linux'"))
    elif not cl.system.endswith("-linux"):
        p.append(_not_linux("cluster.system", cl.system))
    if not _STATE_VERSION_RE.match(cl.state_version):
        p.append(Problem("cluster.state_version", "must look like '26.05'"))
    if cl.site_name is not None and not 1 <= len(cl.site_name) <= 20:
        p.append(Problem("cluster.site_name", "Lemmy allows 1 to 20 characters"))
    if not re.match(r"^[A-Za-z0-9_]{3,20}\Z", cl.admin_username):
        p.append(Problem("cluster.admin_username", "Lemmy user names are 3-20 letters, digits or '_'"))
    if cl.tls == "manual":
        for key in ("tls_certificate", "tls_key"):
            value = getattr(cl, key)
            if value is None:
                p.append(Problem(f"cluster.{key}", 'required when tls = "manual": the file\'s path on every frontend'))
            elif not value.startswith("/") or value.startswith("/nix/store"):
                p.append(Problem(f"cluster.{key}", "must be an absolute path outside /nix/store"))
    else:
        for key in ("tls_certificate", "tls_key"):
            if getattr(cl, key) is not None:
                p.append(Problem(f"cluster.{key}", 'only used with tls = "manual"; remove it or set tls = "manual"'))
    if cl.behind_https_proxy and cl.tls != "none":
        p.append(
            Problem("cluster.behind_https_proxy", 'only meaningful with tls = "none" (TLS ends at your own proxy)')
        )

    sd = c.secrets.dir
    if not sd.startswith("/") or sd.startswith("/nix/store"):
        p.append(Problem("secrets.dir", "must be an absolute path on the hosts, outside /nix/store"))

    p += _check_ssh(c.ssh)
    p += _check_machines(c.machines)
    p += _check_roles(c)
    p += _check_failover(c)
    p += _check_storage(c, pending_node_ids)
    p += _check_lemmy(c)
    p += _check_backup(c)
    from synth import mesh

    if mesh.enabled(c):
        # With the mesh the internal address is the mesh address (IPv4): a DNS-named machine needs
        # no private_address, and a frontend's private address may be IPv6.
        p = [
            q
            for q in p
            if not q.message.startswith("required because address is a DNS name")
            and "lemmy-ui (role frontend) listens on the private address" not in q.message
        ]
    p += mesh.check(c, pending_node_ids)
    if not p and mesh.enabled(c):
        from synth.topology import plan

        p += mesh.check_nat_pairs(c, {n: list(h.peers) for n, h in plan(c).items()})
    return sorted(p)


SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def ssh_key_problem(key: str) -> str | None:
    """Why KEY is not an OpenSSH public key line (`TYPE BASE64 [COMMENT]`), or None."""
    import base64
    import binascii

    if "\n" in key or "\r" in key:
        return "one key per string, on one line"
    parts = key.split(None, 2)
    if len(parts) < 2:
        return "expected 'TYPE BASE64 [COMMENT]', as in ~/.ssh/id_ed25519.pub"
    kind, blob = parts[0], parts[1]
    if kind not in SSH_KEY_TYPES:
        hint = " (this is a private key: give the .pub file's line)" if "PRIVATE" in key else ""
        return f"unknown key type {kind!r}{hint}; expected one of {', '.join(SSH_KEY_TYPES)}"
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "the key's base64 part does not decode; copy the whole line of the .pub file"
    n = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if raw[4 : 4 + n] != kind.encode():
        return f"the key's data is not a {kind} key; copy the whole line of the .pub file"
    return None


def _check_ssh(s: SshSection) -> list[Problem]:
    p: list[Problem] = []
    for i, key in enumerate(s.keys):
        why = ssh_key_problem(key)
        if why is not None:
            p.append(Problem(dotted(("ssh", "keys", i)), why))
    for i, net in enumerate(s.allow_from):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            p.append(
                Problem(
                    dotted(("ssh", "allow_from", i)),
                    f"{net!r} is not an IP address or network such as '198.51.100.0/24'",
                )
            )
    return p


def _check_backup(c: Cluster) -> list[Problem]:
    from synth import backup

    return backup.check(c)


def smtp_port(e: EmailSection) -> int:
    from synth.lemmy import SMTP_DEFAULT_PORTS

    return e.port if e.port is not None else SMTP_DEFAULT_PORTS[e.tls]


def email_from(c: Cluster) -> str | None:
    """The sender of Lemmy's mail ([lemmy.email] from_address, default noreply@<domain>)."""
    e = c.lemmy.email
    if e is None:
        return None
    return e.from_address if e.from_address is not None else f"noreply@{c.cluster.domain}"


def _check_lemmy(c: Cluster) -> list[Problem]:
    from synth import lemmy

    p = lemmy.check_settings(c.lemmy.settings)
    e = c.lemmy.email
    if e is None:
        return p
    if _is_ip(e.server) and ":" in e.server:
        p.append(
            Problem(
                "lemmy.email.server",
                "Lemmy 0.19 reads the server as host:port and cannot take an IPv6 address; give its DNS name",
            )
        )
    elif not (valid_dns_name(e.server) or _is_ip(e.server)):
        p.append(Problem("lemmy.email.server", f"{e.server!r} is not a host name such as 'smtp.example.org'"))
    if e.port is not None and not 1 <= e.port <= 65535:
        p.append(Problem("lemmy.email.port", "must be a port number (1-65535)"))
    if e.login is not None:
        if not e.login or any(ch in e.login for ch in "\r\n\0"):
            p.append(Problem("lemmy.email.login", "must be a non-empty single line"))
        if e.tls == "none":
            p.append(
                Problem(
                    "lemmy.email.tls",
                    'with a login, tls = "none" would send the SMTP password unencrypted; use "starttls" '
                    '(port 587) or "tls" (port 465), or remove login for a relay that needs none',
                )
            )
    sender = email_from(c)
    if sender is not None and not lemmy.valid_mailbox(sender):
        p.append(
            Problem(
                "lemmy.email.from_address",
                f"{sender!r} is not an email address; write 'noreply@{c.cluster.domain}' or "
                f"'Example <noreply@{c.cluster.domain}>' (Lemmy stops sending mail on an address it cannot read)",
            )
        )
    return p


# etcd, Patroni's consensus store: an odd number of members; 3 keep a quorum with one down, 5 with two.
ETCD_SIZES = (3, 5)
DEFAULT_ETCD_SIZE = 3


def automatic_failover(c: Cluster) -> bool:
    """Whether the postgres machines run under Patroni (several of them, failover = "automatic")."""
    return c.postgres.failover == "automatic" and len(c.machines_with("postgres")) >= 2


def etcd_members(c: Cluster) -> list[str]:
    """The machines that run etcd, in the order they are listed (empty without automatic failover).

    Named by [etcd] members, or chosen: the postgres machines in file order, then the other
    machines in file order, the first [etcd] size (default 3) of them. Machines are added at the
    end of the file, so adding one never changes the choice, except a postgres machine added while
    a member is not a postgres machine: `synth add-machine` then records the current members first.
    """
    if not automatic_failover(c):
        return []
    if c.etcd.members is not None:
        return list(c.etcd.members)
    size = c.etcd.size or DEFAULT_ETCD_SIZE
    pgs = c.machines_with("postgres")
    return (pgs + [m for m in c.machines if m not in pgs])[:size]


def _check_failover(c: Cluster) -> list[Problem]:
    p: list[Problem] = []
    pgs = c.machines_with("postgres")
    e = c.etcd
    given = e.members is not None or e.size is not None
    if not automatic_failover(c):
        if given:
            why = (
                'failover = "manual"'
                if c.postgres.failover == "manual"
                else f"{len(pgs)} postgres machine{'s' if len(pgs) != 1 else ''} (etcd serves Patroni, "
                "which needs two or more)"
            )
            key = "etcd.members" if e.members is not None else "etcd.size"
            p.append(Problem(key, f"etcd runs only with automatic failover, and this cluster has {why}; remove [etcd]"))
        return p
    if e.size is not None and e.size not in ETCD_SIZES:
        p.append(
            Problem(
                "etcd.size",
                f"{e.size} etcd members: use 3 (a quorum survives one machine down) or 5 (two down); "
                "an even number tolerates no more failures than one member fewer",
            )
        )
    if e.members is not None:
        seen: set[str] = set()
        for i, name in enumerate(e.members):
            where = dotted(("etcd", "members", i))
            if name in seen:
                p.append(Problem(where, f"{name!r} is listed twice; each etcd member runs on its own machine"))
            elif name not in c.machines:
                hint = _did_you_mean(name, list(c.machines))
                p.append(Problem(where, f"no machine named {name!r} in this cluster; {hint}".rstrip("; ")))
            seen.add(name)
        if len(e.members) not in ETCD_SIZES:
            p.append(
                Problem(
                    "etcd.members",
                    f"{len(e.members)} members: name 3 machines (a quorum survives one down) or 5 (two down)",
                )
            )
        elif e.size is not None and e.size != len(e.members):
            p.append(Problem("etcd.size", f"{e.size}, but etcd.members names {len(e.members)}; remove size"))
        return p
    size = e.size if e.size in ETCD_SIZES else DEFAULT_ETCD_SIZE
    if len(c.machines) < size:
        p.append(
            Problem(
                "postgres.failover",
                f"automatic failover needs {size} etcd members on {size} different machines (Patroni's "
                f"consensus store: a majority of them must agree on the leader), and this cluster has "
                f"{len(c.machines)} machine{'s' if len(c.machines) != 1 else ''}. Add a machine (any role: an etcd "
                'member is small), or set [postgres] failover = "manual" (a standby promoted by '
                "`synth promote`)",
            )
        )
    return p


def scheduled_tasks_machine(c: Cluster) -> str | None:
    """The backend that runs Lemmy's scheduled tasks (exactly one process of the cluster)."""
    chosen = c.backend.scheduled_tasks
    if isinstance(chosen, str):
        return chosen
    backends = c.machines_with("backend")
    return backends[0] if chosen is None and backends else None


def federation_senders(c: Cluster) -> list[str]:
    """The backends that send outgoing federation, in file order: shard i is the i-th of them."""
    chosen = c.backend.federation_senders
    backends = c.machines_with("backend")
    if chosen is None:
        return backends
    return [b for b in backends if b in chosen]


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


def _check_pictrs_section(c: Cluster) -> list[Problem]:
    p: list[Problem] = []
    s = c.pictrs
    if s.store == "object_storage":
        if s.endpoint is None and not c.machines_with("storage"):
            p.append(
                Problem(
                    "pictrs.endpoint",
                    'required with store = "object_storage": the S3 URL, e.g. "https://s3.example.org"; '
                    "or give machines the role 'storage' to run the object storage (Garage) in the cluster",
                )
            )
        elif s.endpoint is not None and not re.match(r"^https?://[^\s/]+(/[^\s]*)?\Z", s.endpoint):
            p.append(
                Problem("pictrs.endpoint", f"{s.endpoint!r} is not an http(s) URL such as 'https://s3.example.org'")
            )
        if s.bucket is None and not c.machines_with("storage"):
            p.append(
                Problem("pictrs.bucket", 'required with store = "object_storage": the bucket that holds the images')
            )
        elif s.bucket is not None and not _BUCKET_RE.match(s.bucket):
            p.append(
                Problem(
                    "pictrs.bucket",
                    f"{s.bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')",
                )
            )
    else:
        for key in ("endpoint", "bucket", "cpus"):
            if getattr(s, key) is not None:
                p.append(
                    Problem(f"pictrs.{key}", 'only used with store = "object_storage"; remove it or set that store')
                )
    return p


def _check_backend_section(c: Cluster) -> list[Problem]:
    p: list[Problem] = []
    backends = c.machines_with("backend")
    chosen = c.backend.scheduled_tasks
    if isinstance(chosen, list):
        p.append(
            Problem(
                "backend.scheduled_tasks",
                "exactly one Lemmy process may run the scheduled tasks (Lemmy has no lock: two would "
                "run every task twice); name one backend, e.g. scheduled_tasks = "
                f"{(chosen[0] if chosen else (backends[0] if backends else 'app1'))!r}",
            )
        )
    elif chosen is not None and chosen not in backends:
        hint = _did_you_mean(chosen, backends)
        p.append(
            Problem(
                "backend.scheduled_tasks",
                f"{chosen!r} is not a machine with role 'backend'; {hint}backends: {', '.join(backends) or 'none'}",
            )
        )
    senders = c.backend.federation_senders
    if senders is not None:
        if not senders:
            p.append(
                Problem(
                    "backend.federation_senders",
                    "empty: nobody would send outgoing federation; name at least one backend, or remove the key "
                    "(every backend sends a shard)",
                )
            )
        seen: set[str] = set()
        for i, name in enumerate(senders):
            where = dotted(("backend", "federation_senders", i))
            if name in seen:
                p.append(Problem(where, f"{name!r} is listed twice: each federation shard must run exactly once"))
            elif name not in backends:
                hint = _did_you_mean(name, backends)
                p.append(Problem(where, f"{name!r} is not a machine with role 'backend'; {hint}".rstrip("; ")))
            seen.add(name)
    return p


# What modules/postgres/{streaming,patroni}-settings.nix give PostgreSQL: one WAL sender and one
# slot per replica, and one sender to spare for a new replica's clone (pg_basebackup).
# Connections each pict-rs machine may hold open through its local proxy to the PostgreSQL leader
# (HAProxy's maxconn; with Patroni and store = "object_storage").
PG_PROXY_MAX_CONNECTIONS = 100
# Connections PostgreSQL keeps out of the clients' pools (superuser and replication sessions, psql).
RESERVED_CONNECTIONS = 10
# CPUs assumed for each pict-rs machine when [pictrs] cpus is not set.
PICTRS_DEFAULT_CPUS = 4


def pictrs_db_connections(c: Cluster) -> int:
    """At most how many PostgreSQL connections one pict-rs machine opens (0 with store = "local").

    pict-rs 0.5's Postgres repository (src/repo/postgres.rs, PostgresRepo::connect, read at
    v0.5.17-pre.2) builds two bb8 pools whose sizes nothing in its configuration sets: 8 per CPU
    for queries and min(CPUs, 4) for LISTEN, CPUs being std::thread::available_parallelism().
    Behind the local HAProxy (Patroni), its maxconn bounds them too: one server connection per
    client connection.
    """
    if c.pictrs.store != "object_storage":
        return 0
    cpus = c.pictrs.cpus or PICTRS_DEFAULT_CPUS
    pools = 8 * cpus + min(cpus, 4)
    return min(pools, PG_PROXY_MAX_CONNECTIONS) if automatic_failover(c) else pools


PG_MAX_WAL_SENDERS = 10
PG_MAX_REPLICATION_SLOTS = 10
MAX_POSTGRES_MACHINES = min(PG_MAX_WAL_SENDERS - 1, PG_MAX_REPLICATION_SLOTS) + 1


def _address_problems(path: str, addr: str, several: bool) -> list[Problem]:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return []
    if ip.is_unspecified:
        return [
            Problem(path, f"{addr} is the unspecified address (any interface), not a machine's: give its own address")
        ]
    if ip.is_loopback and several:
        return [
            Problem(
                path,
                f"{addr} is a loopback address: the other machines of the cluster cannot reach it; give the "
                "machine's address on the network they share",
            )
        ]
    return []


def _check_machines(machines: dict[str, Machine]) -> list[Problem]:
    p: list[Problem] = []
    public: dict[str, str] = {}
    private: dict[str, str] = {}
    several = len(machines) > 1
    for name, m in machines.items():
        base = ("machines", name)
        p += _address_problems(dotted((*base, "address")), m.address, several and m.private_address is None)
        if m.private_address is not None:
            p += _address_problems(dotted((*base, "private_address")), m.private_address, several)
        if not _LABEL_RE.match(name):
            p.append(_machine_name_problem(name))
        if not (_is_ip(m.address) or valid_dns_name(m.address)):
            p.append(Problem(dotted((*base, "address")), f"{m.address!r} is neither an IP address nor a DNS name"))
        if m.private_address is None:
            if valid_dns_name(m.address) and not _is_ip(m.address):
                p.append(
                    Problem(
                        dotted((*base, "private_address")),
                        "required because address is a DNS name: the cluster-internal IP address "
                        "that the other machines use",
                    )
                )
        elif not _is_ip(m.private_address):
            p.append(Problem(dotted((*base, "private_address")), f"{m.private_address!r} is not an IP address"))
        p += _check_frontend_ipv4(name, m)
        if not m.roles:
            p.append(Problem(dotted((*base, "roles")), f"give at least one role: {', '.join(ROLES)}"))
        seen: set[str] = set()
        for i, role in enumerate(m.roles):
            if role in seen:
                p.append(Problem(dotted((*base, "roles", i)), f"role {role!r} is listed twice"))
            seen.add(role)
        if m.system is not None and not _SYSTEM_RE.match(m.system):
            p.append(Problem(dotted((*base, "system")), f"{m.system!r} is not a Nix system such as 'x86_64-linux'"))
        elif m.system is not None and not m.system.endswith("-linux"):
            p.append(_not_linux(dotted((*base, "system")), m.system))
        if m.state_version is not None and not _STATE_VERSION_RE.match(m.state_version):
            p.append(Problem(dotted((*base, "state_version")), "must look like '26.05'"))
        if not re.match(r"^[a-z_][a-z0-9_-]*\Z", m.ssh_user):
            p.append(Problem(dotted((*base, "ssh_user")), "not a valid user name"))
        p += _check_storage_fields(name, m)

        addr = _norm(m.address)
        if addr in public:
            p.append(
                Problem(dotted((*base, "address")), f"{m.address} is already the address of machine {public[addr]!r}")
            )
        else:
            public[addr] = name
        if m.private_address is not None or _is_ip(m.address):
            priv = _norm(_private(m))
            if priv in private:
                p.append(
                    Problem(
                        dotted((*base, "private_address" if m.private_address else "address")),
                        f"private address {_private(m)} is already used by machine {private[priv]!r}",
                    )
                )
            else:
                private[priv] = name
    return p


def _check_frontend_ipv4(name: str, m: Machine) -> list[Problem]:
    """A frontend's lemmy-ui listens on the machine's private address, which it reads from
    LEMMY_UI_HOST with `.split(":")` (lemmy-ui's server): an IPv6 address cannot be given to it."""
    priv = _private(m)
    if "frontend" not in m.roles or not _is_ip(priv) or ipaddress.ip_address(priv).version != 6:
        return []
    why = (
        "but lemmy-ui (role frontend) listens on the private address and cannot take an IPv6 one "
        "(it splits LEMMY_UI_HOST at ':'): give the machine an IPv4 private_address"
    )
    if m.private_address is not None:
        return [Problem(dotted(("machines", name, "private_address")), f"{priv} is an IPv6 address, {why}")]
    return [
        Problem(
            dotted(("machines", name, "address")),
            f"{priv} is the private address (no private_address is given) and an IPv6 address, {why}",
        )
    ]


# Garage's capacity syntax (the bytesize crate), restricted to what reads unambiguously:
# a whole number and a unit, e.g. "500G", "2T", "750GB", "1TiB".
_CAPACITY_RE = re.compile(r"^[1-9][0-9]*(M|G|T|P)(B|iB)?\Z")
_NODE_ID_RE = re.compile(r"^[0-9a-f]{64}\Z")
_ZONE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_STORAGE_FIELDS = ("storage_capacity", "storage_zone", "garage_node_id")


def _check_storage_fields(name: str, m: Machine) -> list[Problem]:
    p: list[Problem] = []
    base = ("machines", name)
    if "storage" not in m.roles:
        for key in _STORAGE_FIELDS:
            if getattr(m, key) is not None:
                p.append(
                    Problem(
                        dotted((*base, key)), "only used on machines with role 'storage'; remove it or add the role"
                    )
                )
        return p
    if m.storage_capacity is None:
        p.append(
            Problem(
                dotted((*base, "storage_capacity")),
                "required for role 'storage': the disk space Garage may use on this machine, e.g. "
                'storage_capacity = "500G" (Garage spreads objects in proportion to it)',
            )
        )
    elif not _CAPACITY_RE.match(m.storage_capacity):
        p.append(
            Problem(
                dotted((*base, "storage_capacity")),
                f'{m.storage_capacity!r} is not a size; write a whole number and a unit, e.g. "500G" or "2T"',
            )
        )
    if m.storage_zone is not None and not _ZONE_RE.match(m.storage_zone):
        p.append(
            Problem(
                dotted((*base, "storage_zone")),
                f"{m.storage_zone!r} is not a zone name; use letters, digits, '-', '_' or '.' (e.g. \"rack-a\")",
            )
        )
    if m.garage_node_id is not None and not _NODE_ID_RE.match(m.garage_node_id):
        p.append(
            Problem(
                dotted((*base, "garage_node_id")),
                "not a Garage node id (64 lowercase hex digits); remove the line and run `synth secrets init`, "
                "which creates the machine's node key and records its id here",
            )
        )
    return p


def replication_factor(c: Cluster) -> int:
    """Garage's replication_factor ([storage] replication_factor, required with storage machines)."""
    return c.storage.replication_factor or 1


# The bucket pict-rs uses on the cluster's own storage machines when [pictrs] bucket is not given.
DEFAULT_GARAGE_BUCKET = "pictrs"


def pictrs_bucket(c: Cluster) -> str | None:
    if c.pictrs.bucket is None and c.machines_with("storage"):
        return DEFAULT_GARAGE_BUCKET
    return c.pictrs.bucket


def _check_storage(c: Cluster, pending_node_ids: bool) -> list[Problem]:
    p: list[Problem] = []
    storage = c.machines_with("storage")
    rf = c.storage.replication_factor
    if not storage:
        if rf is not None:
            p.append(
                Problem(
                    "storage.replication_factor",
                    "only used with machines of role 'storage' (Garage); remove it or add storage machines",
                )
            )
        return p
    if c.pictrs.store != "object_storage":
        p.append(
            Problem(
                "pictrs.store",
                f"machines {', '.join(storage)} have role 'storage', which holds pict-rs's images in object "
                'storage; set [pictrs] store = "object_storage", or remove the role',
            )
        )
    if c.pictrs.endpoint is not None:
        p.append(
            Problem(
                "pictrs.endpoint",
                "the machines with role 'storage' are pict-rs's object storage; remove endpoint, or remove the "
                "'storage' role to use the external S3 service at this endpoint",
            )
        )
    if rf is None:
        p.append(
            Problem(
                "storage.replication_factor",
                "required with machines of role 'storage': on how many of them Garage keeps each object. "
                "Add [storage] replication_factor = 3 (reads and writes go on while one machine is down; "
                "needs 3 storage machines), or 2 or 1 with fewer machines. It cannot change once images "
                "are stored",
            )
        )
    elif not 1 <= rf <= len(storage):
        p.append(
            Problem(
                "storage.replication_factor",
                f"must be between 1 and the number of storage machines ({len(storage)}); 3 keeps every object "
                "readable and writable while one machine is down",
            )
        )
    seen: dict[str, str] = {}
    for name in storage:
        node_id = c.machines[name].garage_node_id
        where = dotted(("machines", name, "garage_node_id"))
        if node_id is None:
            if not pending_node_ids:
                p.append(
                    Problem(
                        where,
                        "missing; run `synth secrets init` on this cluster file: it creates the machine's Garage "
                        "node key (secrets/garage-node-key." + name + ") and records the key's public id here",
                    )
                )
        elif node_id in seen:
            p.append(Problem(where, f"the same node id as machine {seen[node_id]!r}; each machine needs its own key"))
        else:
            seen[node_id] = name
    return p


def _private(m: Machine) -> str:
    return m.private_address if m.private_address is not None else m.address


def _norm(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr.lower()


def _check_roles(c: Cluster) -> list[Problem]:
    p: list[Problem] = []
    pg_machines = c.machines_with("postgres")
    if len(pg_machines) > MAX_POSTGRES_MACHINES:
        p.append(
            Problem(
                "machines",
                f"{len(pg_machines)} postgres machines, but the postgres module allows {PG_MAX_WAL_SENDERS} "
                f"WAL senders and {PG_MAX_REPLICATION_SLOTS} replication slots: one per replica and one sender "
                f"spare for a new replica's clone, so at most {MAX_POSTGRES_MACHINES} postgres machines",
            )
        )
    pg = c.postgres
    if pg.version not in POSTGRES_VERSIONS:
        p.append(
            Problem(
                "postgres.version",
                f"PostgreSQL {pg.version} is not supported; choose one of "
                f"{', '.join(map(str, POSTGRES_VERSIONS))} (17 is nixpkgs 26.05's default)",
            )
        )
    if pg.primary not in c.machines:
        hint = _did_you_mean(pg.primary, list(c.machines))
        p.append(
            Problem(
                "postgres.primary",
                f"no machine named {pg.primary!r}; {hint}it must name a machine with role 'postgres'",
            )
        )
    elif "postgres" not in c.machines[pg.primary].roles:
        p.append(
            Problem(
                "postgres.primary",
                f"machine {pg.primary!r} has no 'postgres' role; add it to its roles or name another machine",
            )
        )
    n_frontends = len(c.machines_with("frontend"))
    if c.cluster.tls == "acme" and n_frontends > ACME_MAX_FRONTENDS:
        p.append(
            Problem(
                "cluster.tls",
                f'tls = "acme" gets one certificate per frontend, and Let\'s Encrypt issues at most '
                f"{ACME_MAX_FRONTENDS} identical certificates per week; with {n_frontends} frontends use "
                'tls = "manual" (one certificate on every frontend, e.g. from a DNS-01 client) or '
                'tls = "none" behind a TLS-terminating load balancer',
            )
        )
    if not c.machines_with("frontend"):
        p.append(Problem("machines", "no machine has role 'frontend'; give at least one machine the frontend role"))
    if not c.machines_with("backend"):
        p.append(Problem("machines", "no machine has role 'backend'; give at least one machine the backend role"))
    pictrs = c.machines_with("pictrs")
    if not pictrs:
        p.append(Problem("machines", "no machine has role 'pictrs'; give one machine the pictrs role"))
    elif len(pictrs) > 1 and c.pictrs.store == "local":
        p.append(
            Problem(
                "machines",
                f"{len(pictrs)} machines have role 'pictrs' ({', '.join(pictrs)}), but [pictrs] store = \"local\" "
                "keeps images and pict-rs's database on one machine; keep one pict-rs machine, or share the "
                'storage: [pictrs] store = "object_storage" with an S3 endpoint and bucket',
            )
        )
    p += _check_pictrs_section(c)
    p += _check_backend_section(c)
    if pg.synchronous and len(c.machines_with("postgres")) < 2:
        p.append(
            Problem(
                "postgres.synchronous",
                "needs at least one replica (a second 'postgres' machine); with none, every commit would wait forever",
            )
        )
    processes = len(c.machines_with("backend")) + (
        len(federation_senders(c)) if c.backend.federation_process == "dedicated" else 0
    )
    pools = processes * c.backend.pool_size
    per_pictrs = pictrs_db_connections(c)
    n_pictrs = len(pictrs) if per_pictrs else 0
    total = pools + n_pictrs * per_pictrs + RESERVED_CONNECTIONS
    lemmy = (
        f"{processes} Lemmy process{'es' if processes != 1 else ''} with pool_size = {c.backend.pool_size} "
        f"need {pools} connections"
    )
    if total > pg.max_connections and not n_pictrs:
        p.append(
            Problem(
                "backend.pool_size",
                f"{lemmy} plus {RESERVED_CONNECTIONS} reserved, more than postgres.max_connections = "
                f"{pg.max_connections}; lower pool_size or raise max_connections",
            )
        )
    elif total > pg.max_connections:
        cpus = c.pictrs.cpus or PICTRS_DEFAULT_CPUS
        how = f"pict-rs 0.5 opens 8 per CPU plus {min(cpus, 4)} for LISTEN: " + (
            f"[pictrs] cpus = {cpus}" if c.pictrs.cpus else f"{cpus} CPUs assumed"
        )
        if automatic_failover(c) and per_pictrs == PG_PROXY_MAX_CONNECTIONS:
            how += f", at most {PG_PROXY_MAX_CONNECTIONS} through the local proxy"
        p.append(
            Problem(
                "postgres.max_connections",
                f"{lemmy}, {n_pictrs} pict-rs machine{'s' if n_pictrs != 1 else ''} up to {per_pictrs} each "
                f"({how}) for their Postgres repository, plus "
                f"{RESERVED_CONNECTIONS} reserved: {total}, more than max_connections = {pg.max_connections}; "
                f"raise max_connections to at least {total}, lower backend.pool_size or run fewer pict-rs "
                "machines" + ("" if c.pictrs.cpus else ", or set [pictrs] cpus to the CPUs of the pict-rs machines"),
            )
        )
    return p
