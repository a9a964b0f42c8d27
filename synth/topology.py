"""Who serves what: every derived value of the cluster, computed once, in pure Python.

Nothing here knows Nix syntax or option names; ``render`` maps a HostPlan onto the modules'
options. Everything is deterministic: machines are taken in file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from synth.model import Cluster, federation_senders, scheduled_tasks_machine

# Ports of the services, the same defaults as the role modules in modules/.
BACKEND_PORT = 8536
UI_PORT = 1234
PICTRS_PORT = 8080
POSTGRES_PORT = 5432
HTTP_PORT = 80
HTTPS_PORT = 443

DB_NAME = "lemmy"
DB_USER = "lemmy"
REPLICATION_USER = "replicator"

PICTRS_DB_NAME = "pictrs"
PICTRS_DB_USER = "pictrs"
# Where a backend reaches several pict-rs machines: its own load balancer on loopback.
PICTRS_PROXY_PORT = 8079

SECRET_FILES = {
    "db_password": "lemmy-db-password",
    "replication_password": "replication-password",
    "pictrs_api_key": "pictrs-api-key",
    "admin_password": "admin-password",
    # only with [pictrs] store = "object_storage"
    "pictrs_db_password": "pictrs-db-password",
    "s3_access_key": "s3-access-key",
    "s3_secret_key": "s3-secret-key",
}


# How many other frontends' lemmy-ui a frontend falls back to when its own fails.
UI_BACKUPS = 2


def ui_backups(frontends: Sequence[str]) -> dict[str, list[str]]:
    """Each frontend's backups: the next UI_BACKUPS frontends in file order, wrapping around."""
    n = len(frontends)
    return {f: [frontends[(i + k) % n] for k in range(1, min(UI_BACKUPS, n - 1) + 1)] for i, f in enumerate(frontends)}


def hostport(address: str, port: int) -> str:
    """ADDRESS:PORT, with brackets for IPv6."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def slot_name(machine: str) -> str:
    """The physical replication slot (and application_name) of a PostgreSQL machine."""
    return machine.replace("-", "_")


@dataclass(frozen=True)
class FrontendPlan:
    backends: list[str]
    ui_peers: list[str]
    acme_peers: list[str]
    ui_clients: list[str]


@dataclass(frozen=True)
class BackendPlan:
    database_hosts: list[str]
    pictrs_url: str
    pictrs_upstreams: list[str]  # several pict-rs machines: balanced by nginx on the backend
    clients: list[str]
    scheduled_tasks: bool
    # "inline" (in lemmy_server), "dedicated" (a lemmy-federate process) or "off" (not a sender)
    federation_sending: str
    federation_index: int  # 1..federation_count for a sender, 0 otherwise
    federation_count: int
    pool_size: int


@dataclass(frozen=True)
class PictrsPlan:
    clients: list[str]
    store: str  # "local" | "object_storage"
    # object_storage only: the PostgreSQL primary that holds the repository (pict-rs takes a
    # single URL: after a promotion it follows once the regenerated configuration is deployed)
    repo_host: str | None = None


@dataclass(frozen=True)
class PostgresPlan:
    role: str  # "primary" | "replica"
    primary_address: str
    slot: str
    replication_slots: list[str]
    clients: list[str]
    replication_peers: list[str]
    synchronous_standbys: list[str]
    pictrs_clients: list[str]  # pict-rs machines using the "pictrs" database (object storage)


@dataclass(frozen=True)
class HostPlan:
    name: str
    system: str
    address: str
    private_address: str
    roles: list[str]
    peers: dict[str, str]
    secrets: dict[str, str]
    frontend: FrontendPlan | None = None
    backend: BackendPlan | None = None
    pictrs: PictrsPlan | None = None
    postgres: PostgresPlan | None = None
    public_ports: list[int] = field(default_factory=list)


def plan(c: Cluster) -> dict[str, HostPlan]:
    """One HostPlan per machine, in file order."""
    addr = {name: c.private_address(name) for name in c.machines}
    frontends = c.machines_with("frontend")
    backends = c.machines_with("backend")
    pictrs = c.machines_with("pictrs")
    pgs = c.machines_with("postgres")
    primary = c.postgres.primary
    replicas = [m for m in pgs if m != primary]

    shared_pictrs = c.pictrs.store == "object_storage"
    pictrs_upstreams = [hostport(addr[p], PICTRS_PORT) for p in pictrs] if len(pictrs) > 1 else []
    pictrs_url = (
        f"http://127.0.0.1:{PICTRS_PROXY_PORT}/"
        if pictrs_upstreams
        else f"http://{hostport(addr[pictrs[0]], PICTRS_PORT)}/"
    )

    def secrets_for(roles: Sequence[str]) -> dict[str, str]:
        need: list[str] = []
        if "backend" in roles:
            need += ["db_password", "pictrs_api_key", "admin_password"]
        if "pictrs" in roles:
            need += ["pictrs_api_key"]
            if shared_pictrs:
                need += ["pictrs_db_password", "s3_access_key", "s3_secret_key"]
        if "postgres" in roles:
            need += ["db_password", "replication_password"]
            if shared_pictrs:
                need += ["pictrs_db_password"]
        base = c.secrets.dir.rstrip("/")
        return {k: f"{base}/{SECRET_FILES[k]}" for k in SECRET_FILES if k in need}

    acme = c.cluster.tls == "acme"
    scheduler = scheduled_tasks_machine(c)
    senders = federation_senders(c)
    backups_of = ui_backups(frontends)
    backed_up_by: dict[str, list[str]] = {f: [] for f in frontends}
    for f in frontends:  # file order, so each list is in file order too
        for b in backups_of[f]:
            backed_up_by[b].append(f)
    hosts: dict[str, HostPlan] = {}
    for name, m in c.machines.items():
        roles: list[str] = list(m.roles)
        talks_to: set[str] = set()
        fe = be = pr = pg = None
        if "frontend" in roles:
            backups = backups_of[name]
            backed_up = backed_up_by[name]
            acme_peers = [f for f in frontends if f != name] if acme else []
            fe = FrontendPlan(
                backends=[hostport(addr[b], BACKEND_PORT) for b in backends],
                ui_peers=[hostport(addr[f], UI_PORT) for f in backups],
                acme_peers=[hostport(addr[f], HTTP_PORT) for f in acme_peers],
                ui_clients=[addr[f] for f in backed_up],
            )
            talks_to.update(backends, backups, backed_up, acme_peers)
        if "backend" in roles:
            sender = name in senders
            be = BackendPlan(
                # Every PostgreSQL machine, the primary first: the connection goes to the one that
                # accepts writes, so a promoted replica is found without a redeploy.
                database_hosts=[addr[primary]] + [addr[r] for r in replicas],
                pictrs_url=pictrs_url,
                pictrs_upstreams=pictrs_upstreams,
                clients=[addr[f] for f in frontends if f != name],
                scheduled_tasks=name == scheduler,
                federation_sending=c.backend.federation_process if sender else "off",
                federation_index=senders.index(name) + 1 if sender else 0,
                federation_count=len(senders),
                pool_size=c.backend.pool_size,
            )
            talks_to.update(frontends, pictrs, pgs)
        if "pictrs" in roles:
            pr = PictrsPlan(
                clients=[addr[b] for b in backends if b != name],
                store=c.pictrs.store,
                repo_host=addr[primary] if shared_pictrs else None,
            )
            talks_to.update(backends)
            if shared_pictrs:
                talks_to.add(primary)
        if "postgres" in roles:
            peers = [p for p in pgs if p != name]
            pg = PostgresPlan(
                role="primary" if name == primary else "replica",
                primary_address=addr[primary],
                slot=slot_name(name),
                replication_slots=[slot_name(p) for p in peers],
                # A backend on this very machine still connects over TCP to the private address, so
                # pg_hba must name it too (its firewall rule is harmless: local traffic uses lo).
                clients=[addr[b] for b in backends],
                replication_peers=[addr[p] for p in peers],
                synchronous_standbys=([slot_name(r) for r in replicas] if c.postgres.synchronous else []),
                pictrs_clients=[addr[p] for p in pictrs] if shared_pictrs else [],
            )
            talks_to.update(backends, peers)
            if shared_pictrs:
                talks_to.update(pictrs)
        public = [HTTP_PORT] + ([HTTPS_PORT] if c.cluster.tls != "none" else []) if fe else []
        hosts[name] = HostPlan(
            name=name,
            system=m.system or c.cluster.system,
            address=m.address,
            private_address=addr[name],
            roles=roles,
            # Only the machines this one exchanges traffic with (file order), so every host
            # module stays small however large the cluster grows.
            peers={p: addr[p] for p in c.machines if p in talks_to and p != name},
            secrets=secrets_for(roles),
            frontend=fe,
            backend=be,
            pictrs=pr,
            postgres=pg,
            public_ports=public,
        )
    return hosts
