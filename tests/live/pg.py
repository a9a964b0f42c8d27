"""Real PostgreSQL servers in network namespaces, configured the way modules/postgres/default.nix would.

The chain is the same as on NixOS: a cluster TOML → synth's plan → the host's module options
(``synth.render.host_data``) → the settings and pg_hba lines that the postgres role module
derives from those options, computed by the module's own pure Nix files
(modules/postgres/streaming-settings.nix, hba.nix, setup-args.nix, evaluated with nix-instantiate:
tests/live/nixeval.py), and its scripts. Only what systemd and the Nix store provide differently is replaced:
the config files live in a per-host folder instead of the store, the socket and the replication
password file live in a per-host ``run`` folder instead of /run, and servers are started as the
postgres OS user inside the host's namespace instead of by postgresql.service.

    lab = PgLab(net, workdir, load_cluster())      # secrets, per-host folders
    db1 = lab.server("db1"); lab.init_primary(db1) # initdb, config, start, roles, passwords, slots
    db2 = lab.server("db2"); lab.bootstrap(db2)    # modules/postgres/scripts/bootstrap-replica.sh
    db2.start()

Reused by the live tests (tests/live/test_postgres.py) and benchmark scripts. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import string
import subprocess
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.model import Cluster, from_data
from synth.render import host_data
from synth.topology import REPLICATION_USER, plan
from tests.live import nixeval
from tests.live.netns import Host, Network
from tests.live.staged import MODULES

ROOT = Path(__file__).resolve().parents[2]
# Run as the postgres user: from the store-like copy of modules/ (tests/live/staged.py).
SCRIPTS = MODULES / "postgres" / "scripts"
CLUSTER_TOML = Path(__file__).with_name("pg-cluster.toml")
PG_BIN = Path(os.environ.get("LC_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
NETWORK = "10.232.0.0/24"
BRIDGE = "lcbr-pg"
NS_PREFIX = "lcp-"
# Namespace host names: prefixed, so that veth names (lcv-<name>) never collide with other live tests.
HOST_PREFIX = "pg"
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Settings = Mapping[str, str | int | bool]

# The primary's own set-up sessions commit locally. In synchronous mode a commit waits for a
# standby, and on a first start no standby can be there yet: replicas need the replication password
# and slots that this set-up writes. Without it, CREATE DATABASE and ALTER ROLE wait forever (the
# NixOS module needs the same, PGOPTIONS for postgresql.service's postStart and lemmy-cluster-pg-setup).
LOCAL_COMMIT = {"PGOPTIONS": "-c synchronous_commit=local"}


# --------------------------------------------------------------------------- the cluster


def load_cluster(path: Path = CLUSTER_TOML, *, primary: str | None = None, synchronous: bool | None = None) -> Cluster:
    """The cluster of PATH, optionally with another primary (after a promotion) or synchronous mode."""
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    if primary is not None:
        data["postgres"]["primary"] = primary
    if synchronous is not None:
        data["postgres"]["synchronous"] = synchronous
    return from_data(data, str(path))


def module_options(c: Cluster, machine: str) -> dict[str, Any]:
    """services.lemmy-cluster.postgres of MACHINE, as synth renders it into hosts/<machine>/default.nix."""
    h = plan(c)[machine]
    data = host_data(c, h)
    lc = data["services"]["lemmy-cluster"]
    opts: dict[str, Any] = dict(lc["postgres"])
    return opts


# nixpkgs' services.postgresql: the default of `authentication`, after the module's lines.
NIXPKGS_HBA_DEFAULTS = [
    "# default value of services.postgresql.authentication",
    "local all postgres         peer map=postgres",
    "local all all              peer",
    "host  all all 127.0.0.1/32 md5",
    "host  all all ::1/128      md5",
]


def hba_conf(opts: Mapping[str, Any]) -> str:
    """pg_hba.conf: the module's lines (modules/postgres/hba.nix), then nixpkgs' defaults (first match wins)."""
    lines: list[str] = nixeval.evaluate(nixeval.MODULES / "postgres" / "hba.nix", dict(opts))
    return "\n".join(["# Generated file; do not edit!", *lines, *NIXPKGS_HBA_DEFAULTS]) + "\n"


def module_settings(opts: Mapping[str, Any], passfile: str) -> dict[str, str | int | bool]:
    """services.postgresql.settings of modules/postgres/streaming.nix (PASSFILE: its /run file)."""
    settings: dict[str, str | int | bool] = nixeval.evaluate(
        nixeval.MODULES / "postgres" / "streaming-settings.nix", {"cfg": dict(opts), "passfile": passfile}
    )
    return settings


def _to_str(value: str | int | bool) -> str:
    """nixpkgs' postgresql.nix `toStr`."""
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def render_conf(settings: Settings) -> str:
    """postgresql.conf as nixpkgs writes it (attribute names in sorted order)."""
    return "\n".join(f"{k} = {_to_str(v)}" for k, v in sorted(settings.items())) + "\n"


# --------------------------------------------------------------------------- processes


def _pg_ids() -> tuple[int, int]:
    pw = pwd.getpwnam(OS_USER)
    return pw.pw_uid, pw.pw_gid


def chown_pg(path: Path) -> None:
    uid, gid = _pg_ids()
    os.chown(path, uid, gid)


def as_pg(args: Sequence[str]) -> list[str]:
    """ARGS run as the postgres OS user (runuser: like systemd's User=postgres)."""
    return ["runuser", "-u", OS_USER, "--", *args]


def children(pid: int) -> list[int]:
    """Direct children of PID (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


class StartRefused(RuntimeError):
    """The start step before PostgreSQL (check-no-other-primary.sh) refused to start it."""

    def __init__(self, name: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{name}: start refused (exit {result.returncode}): {result.stderr.strip()}")
        self.result = result


@dataclass
class PgServer:
    """One PostgreSQL machine: a namespace host and its folders under the lab's work dir."""

    name: str
    host: Host
    base: Path
    proc: subprocess.Popen[Any] | None = None
    settings: dict[str, str | int | bool] = field(default_factory=dict)
    opts: dict[str, Any] = field(default_factory=dict)
    # Options another role module sets on the postgres role (the backup role's archiveCommand).
    extra_opts: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def conf_dir(self) -> Path:
        return self.base / "conf"  # plays the Nix store

    @property
    def run_dir(self) -> Path:
        return self.base / "run"  # plays /run/postgresql and /run/lemmy-cluster-pg

    @property
    def passfile(self) -> Path:
        return self.run_dir / "replication.pgpass"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    @property
    def address(self) -> str:
        return self.host.address

    def tool(self, name: str) -> str:
        return str(PG_BIN / name)

    # -- configuration

    def write_config(self, c: Cluster, **extra: str | int | bool) -> dict[str, Any]:
        """Render this machine's postgresql.conf and pg_hba.conf from cluster C; return the module options."""
        opts = module_options(c, self.name) | self.extra_opts
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        hba = self.conf_dir / "pg_hba.conf"
        ident = self.conf_dir / "pg_ident.conf"
        hba.write_text(hba_conf(opts))
        ident.write_text("postgres postgres postgres\n")
        settings = module_settings(opts, str(self.passfile))
        # What nixpkgs' postgresql module adds, and where the test layout differs from NixOS.
        settings |= {
            "hba_file": str(hba),
            "ident_file": str(ident),
            "jit": "off",
            "log_destination": "stderr",
            "unix_socket_directories": str(self.run_dir),
        }
        settings |= extra
        self.settings = settings
        self.opts = opts
        conf = self.conf_dir / "postgresql.conf"
        conf.write_text(render_conf(settings))
        for f in (hba, ident, conf):
            f.chmod(0o644)
        return opts

    # -- lifecycle

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fencing_check(self) -> subprocess.CompletedProcess[str] | None:
        """postgresql.service's ExecStartPre on a machine configured as primary with peers:
        check-no-other-primary.sh. None where the module has no such step."""
        opts = self.opts
        if opts.get("role") != "primary" or not opts.get("replicationPeers"):
            return None
        args = ["--peers", ",".join(opts["replicationPeers"]), "--port", str(opts["port"])]
        args += ["--user", opts["replicationUser"], "--passfile", str(self.passfile), "--bin-dir", str(PG_BIN)]
        return self.host.run(
            as_pg(["bash", str(SCRIPTS / "check-no-other-primary.sh"), *args]),
            check=False,
            timeout=60,
            env={"PATH": SYS_PATH, "LANG": "C.UTF-8"},
        )

    def start(self, timeout: float = 30) -> None:
        """Start the server as postgres in the host's namespace, as postgresql.service would (with the
        fencing ExecStartPre on a primary; StartRefused if it refuses); wait until it answers queries."""
        assert not self.running(), f"{self.name}: already running"
        pre = self.fencing_check()
        if pre is not None and pre.returncode != 0:
            raise StartRefused(self.name, pre)
        # nixpkgs' preStart: the configuration is a link from the data directory into the store.
        link = self.data / "postgresql.conf"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(self.conf_dir / "postgresql.conf")
        log = self.log.open("ab")
        uid, gid = _pg_ids()
        # setpriv execs (runuser would fork), so the Popen is the postmaster itself.
        self.proc = self.host.popen(
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                "--init-groups",
                "--",
                self.tool("postgres"),
                "-D",
                str(self.data),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": SYS_PATH, "LANG": "C.UTF-8"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
            r = self.psql_run("SELECT 1", check=False)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: postgres did not accept connections within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        """Clean shutdown (pg_ctl stop -m fast)."""
        if not self.running():
            return
        subprocess.run(
            as_pg([self.tool("pg_ctl"), "stop", "-m", "fast", "-w", "-t", str(int(timeout)), "-D", str(self.data)]),
            check=False,
            capture_output=True,
        )
        assert self.proc is not None
        self.proc.wait(timeout=timeout)
        self.proc = None

    def kill9(self) -> None:
        """Crash: SIGKILL the postmaster and every one of its processes at once (like a power cut)."""
        if not self.running():
            return
        assert self.proc is not None
        pids = [self.proc.pid, *children(self.proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids[1:]):
            time.sleep(0.05)

    def reload(self) -> None:
        assert self.proc is not None and self.running(), f"{self.name}: not running"
        os.kill(self.proc.pid, signal.SIGHUP)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- queries

    def psql_run(
        self,
        sql: str,
        db: str = "postgres",
        check: bool = True,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """psql as the postgres superuser over this server's Unix socket (peer authentication)."""
        args = [self.tool("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(self.run_dir), "-d", db]
        args += ["-f", "-"] if stdin is not None else ["-c", sql]
        r = subprocess.run(
            as_pg(args),
            text=True,
            capture_output=True,
            input=stdin,
            check=False,
            timeout=timeout,
            env={"PATH": SYS_PATH, "LANG": "C.UTF-8", **(env or {})},
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.name}: psql failed ({r.returncode}): {sql or stdin}\n{r.stderr}")
        return r

    def sql(self, sql: str, db: str = "postgres") -> str:
        return self.psql_run(sql, db).stdout.strip()

    def in_recovery(self) -> bool:
        return self.sql("SELECT pg_is_in_recovery()") == "t"

    def system_identifier(self) -> str:
        return self.sql("SELECT system_identifier FROM pg_control_system()")

    def wait_for(self, sql: str, expected: str, timeout: float = 20, db: str = "postgres") -> str:
        """Poll SQL until it returns EXPECTED; return the last value (the caller asserts)."""
        deadline = time.monotonic() + timeout
        got = ""
        while True:
            r = self.psql_run(sql, db, check=False)
            got = r.stdout.strip() if r.returncode == 0 else f"error: {r.stderr.strip()}"
            if got == expected or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


# --------------------------------------------------------------------------- the lab


_ALPHABET = string.ascii_letters + string.digits + ":\\'@#%"


def random_password() -> str:
    """A random password that also exercises the escaping of pgpass files and psql (: \\ ')."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(24)) + ":\\'"


class PgLab:
    """The PostgreSQL machines of a cluster in one Network, with their secrets, under WORKDIR."""

    def __init__(self, net: Network, workdir: Path, cluster: Cluster) -> None:
        self.net = net
        self.workdir = workdir
        self.cluster = cluster
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        chown_pg(workdir)
        self.hosts: dict[str, Host] = {}
        self.servers: dict[str, PgServer] = {}
        # Secret files like /var/lib/lemmy-cluster/secrets: owned by postgres, mode 0600.
        self.secret_dir = workdir / "secrets"
        self.secret_dir.mkdir(mode=0o700, exist_ok=True)
        chown_pg(self.secret_dir)
        self.db_password = random_password()
        self.replication_password = random_password()
        self.db_password_file = self._secret("lemmy-db-password", self.db_password)
        self.replication_password_file = self._secret("replication-password", self.replication_password)
        self.pictrs_password_file = self._secret("pictrs-db-password", random_password())
        # The same values under the names of the setup unit's credentials (LoadCredential).
        self.credentials = workdir / "credentials"
        self.credentials.mkdir(mode=0o700, exist_ok=True)
        chown_pg(self.credentials)
        for name, source in (
            ("db-password", self.db_password_file),
            ("replication-password", self.replication_password_file),
            ("pictrs-db-password", self.pictrs_password_file),
        ):
            target = self.credentials / name
            shutil.copy(source, target)
            chown_pg(target)
        self.client_dir = workdir / "client"
        self.client_dir.mkdir(mode=0o700, exist_ok=True)
        chown_pg(self.client_dir)
        self.client_pgpass = self.client_dir / "lemmy.pgpass"
        self.write_pgpass("lemmy", self.db_password_file, self.client_pgpass)

    def _secret(self, name: str, value: str) -> Path:
        path = self.secret_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        chown_pg(path)
        return path

    def write_pgpass(self, user: str, password_file: Path, output: Path) -> None:
        """modules/postgres/scripts/write-pgpass.sh, as postgres (lemmy-cluster-pg-passfile)."""
        r = subprocess.run(
            as_pg(["bash", str(SCRIPTS / "write-pgpass.sh"), user, str(password_file), str(output)]),
            text=True,
            capture_output=True,
            check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"write-pgpass.sh failed: {r.stderr}")

    def host(self, machine: str) -> Host:
        """The namespace host of MACHINE (any role), created on first use."""
        if machine not in self.hosts:
            address = self.cluster.private_address(machine)
            self.hosts[machine] = self.net.add(f"{HOST_PREFIX}{machine}", address)
        return self.hosts[machine]

    def server(self, machine: str) -> PgServer:
        """The PostgreSQL server of MACHINE: folders, run dir and replication password file."""
        if machine not in self.servers:
            base = self.workdir / machine
            srv = PgServer(machine, self.host(machine), base)
            for d in (base, srv.run_dir, srv.conf_dir):
                d.mkdir(mode=0o700, exist_ok=True)
                chown_pg(d)
            base.chmod(0o755)  # like /var/lib/postgresql: the data dir inside is 0700
            self.write_pgpass(REPLICATION_USER, self.replication_password_file, srv.passfile)
            self.servers[machine] = srv
        return self.servers[machine]

    def init_primary(self, srv: PgServer, cluster: Cluster | None = None, **extra: str | int | bool) -> None:
        """What NixOS does on the primary: initdb (preStart), start, ensure* (postStart), lemmy-cluster-pg-setup."""
        c = cluster or self.cluster
        opts = srv.write_config(c, **extra)
        assert opts["role"] == "primary", f"{srv.name} is not the primary of the cluster: {opts['role']}"
        r = subprocess.run(
            as_pg([srv.tool("initdb"), "-U", OS_USER, "-D", str(srv.data)]),
            text=True,
            capture_output=True,
            check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"{srv.name}: initdb failed: {r.stderr}")
        srv.start()
        # nixpkgs' postStart: ensureDatabases, ensureUsers (ensureDBOwnership, ensureClauses).
        db, user, repl = opts["database"], opts["user"], opts["replicationUser"]
        statements = [f'CREATE DATABASE "{db}"', f'CREATE ROLE "{user}" WITH LOGIN']
        statements.append(f'ALTER DATABASE "{db}" OWNER TO "{user}"')
        pictrs = opts.get("pictrsDatabase", {})
        if pictrs.get("enable"):
            statements += [f'CREATE DATABASE "{pictrs["name"]}"', f'CREATE ROLE "{pictrs["user"]}" WITH LOGIN']
            if pictrs["name"] == pictrs["user"]:
                statements.append(f'ALTER DATABASE "{pictrs["name"]}" OWNER TO "{pictrs["user"]}"')
        statements.append(f'CREATE ROLE "{repl}" WITH LOGIN REPLICATION')
        for sql in statements:
            srv.psql_run(sql, env=LOCAL_COMMIT)
        self.setup(srv, opts)

    def setup(self, srv: PgServer, opts: Mapping[str, Any]) -> None:
        """lemmy-cluster-pg-setup: scripts/setup-roles.sh with the module's arguments
        (modules/postgres/setup-args.nix), the credentials being this lab's secret files."""
        args: list[str] = nixeval.evaluate(
            nixeval.MODULES / "postgres" / "setup-args.nix", {"cfg": dict(opts), "credentials": str(self.credentials)}
        )
        r = srv.host.run(
            as_pg(["bash", str(SCRIPTS / "setup-roles.sh"), *args]),
            check=False,
            timeout=60,
            env={"PATH": f"{PG_BIN}:{SYS_PATH}", "LANG": "C.UTF-8", "PGHOST": str(srv.run_dir), "PGPORT": "5432"},
        )
        if r.returncode != 0:
            raise RuntimeError(f"{srv.name}: setup-roles.sh failed ({r.returncode}): {r.stdout}{r.stderr}")
        if opts["role"] == "primary":
            # The configuration says primary: promote.sh's marker has done its job.
            (srv.data / "lemmy-cluster-promoted").unlink(missing_ok=True)

    def script(
        self,
        host: Host,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run modules/postgres/scripts/NAME as postgres inside HOST's namespace, as the module does."""
        return host.run(
            as_pg(["bash", str(SCRIPTS / name), *args, "--bin-dir", str(PG_BIN)]),
            check=False,
            timeout=timeout,
            env={"PATH": SYS_PATH, "LANG": "C.UTF-8", **(env or {})},
        )

    def bootstrap_args(self, srv: PgServer, cluster: Cluster | None = None) -> list[str]:
        """The module's bootstrapArgs for SRV (as a replica of the cluster's primary)."""
        opts = module_options(cluster or self.cluster, srv.name)
        return [
            "--pgdata",
            str(srv.data),
            "--primary-host",
            opts["primaryAddress"],
            "--primary-port",
            str(opts["port"]),
            "--user",
            opts["replicationUser"],
            "--slot",
            opts["slotName"],
            "--application-name",
            opts["slotName"],
        ]

    def bootstrap(self, srv: PgServer, cluster: Cluster | None = None) -> subprocess.CompletedProcess[str]:
        """lemmy-cluster-pg-bootstrap: bootstrap-replica.sh with the replication password file.

        Like the unit, with --wait-for-primary (retry every 10 s while the primary is not ready).
        """
        args = [*self.bootstrap_args(srv, cluster), "--password-file", str(self.replication_password_file)]
        args.append("--wait-for-primary")
        return self.script(srv.host, "bootstrap-replica.sh", args)

    def client_psql(self, host: Host, conninfo: str, sql: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """psql as a client of the cluster from HOST's namespace, the Lemmy password from a pgpass file."""
        return host.run(
            as_pg([str(PG_BIN / "psql"), "-w", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql]),
            check=False,
            timeout=timeout,
            env={"PATH": SYS_PATH, "PGPASSFILE": str(self.client_pgpass), "PGCONNECT_TIMEOUT": "3"},
        )

    def lemmy_conninfo(self, *machines: str, **params: str) -> str:
        """libpq connection string for the Lemmy role (several hosts: a multi-host string)."""
        hosts = ",".join(self.cluster.private_address(m) for m in machines)
        extra = "".join(f" {k}={v}" for k, v in params.items())
        return f"host={hosts} port=5432 user=lemmy dbname=lemmy{extra}"

    def stop_all(self) -> None:
        for srv in self.servers.values():
            srv.kill9()

    def reset(self, cluster: Cluster) -> None:
        """Crash every server, delete their folders and start over with CLUSTER (the hosts stay)."""
        self.stop_all()
        for srv in self.servers.values():
            shutil.rmtree(srv.base, ignore_errors=True)
        self.servers.clear()
        self.cluster = cluster
