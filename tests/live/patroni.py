"""Real Patroni, etcd, PostgreSQL and HAProxy in network namespaces, configured as the modules do.

The chain is the same as on NixOS: a cluster TOML → synth's plan → the host module's options
(`synth.render.host_data`) → the settings that the modules' pure Nix files make of those options
(modules/postgres/patroni-settings.nix, modules/etcd/settings.nix, modules/pg-proxy/haproxy.nix,
evaluated here with nix-instantiate: tests/live/nixeval.py) → the real programs. What nixpkgs'
own modules add to those settings (services.patroni: name, scope, listen and connect addresses,
bin_dir, data_dir, pgpass; services.etcd: the ETCD_* environment; services.haproxy: its `global`
line) is added here the way those modules add it; only paths differ (a per-machine folder plays
/var/lib, /run and the store). The start-up steps the modules run around Patroni are the modules'
own scripts (patroni-prepare.sh, patroni-config.sh, patroni-setup.sh, etcd's join.sh), run as the
same users.

    lab = PatroniLab(net, workdir, cluster)
    lab.start_etcd()                    # every etcd member of the plan
    lab.start_patroni()                 # every postgres machine; returns when there is a leader
    lab.leader()                        # "db1"
    lab.kill("db1")                     # kill -9 of Patroni and of its PostgreSQL

Patroni runs from a venv made from Debian's python3 (scripts/install-system-deps.sh), since the
postgres user cannot run a Python that lives under root's home. Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.model import Cluster, etcd_members
from synth.render import host_data
from synth.topology import SECRET_FILES, plan
from tests.live import nixeval, staged
from tests.live.netns import Host, Network
from tests.live.pg import PG_BIN, SYS_PATH, _pg_ids, as_pg, children, chown_pg, random_password

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "modules"
# Run as the postgres user: from the store-like copy of modules/ (tests/live/staged.py).
PG_SCRIPTS = staged.MODULES / "postgres" / "scripts"
PATRONI_VERSION = "4.1.4"  # nixpkgs' patroni on the pinned NixOS
PATRONI_VENV = Path(os.environ.get("LC_PATRONI_VENV", f"/opt/lemmy-cluster-test/patroni-{PATRONI_VERSION}"))
PATRONI = PATRONI_VENV / "bin" / "patroni"
PATRONICTL = PATRONI_VENV / "bin" / "patronictl"
ETCD = Path("/usr/bin/etcd")
ETCDCTL = Path("/usr/bin/etcdctl")
HAPROXY = Path("/usr/sbin/haproxy")

# The secrets a postgres machine gets under Patroni, and the PATRONI_* variables nixpkgs'
# services.patroni exports from them (modules/postgres: services.patroni.environmentFiles).
PATRONI_ENV = {
    "PATRONI_SUPERUSER_PASSWORD": "postgres_superuser_password",
    "PATRONI_REPLICATION_PASSWORD": "replication_password",
    "PATRONI_REWIND_PASSWORD": "rewind_password",
    "PATRONI_RESTAPI_PASSWORD": "patroni_api_password",
}


# The credential names of the module's units and the secrets they hold (modules/postgres/patroni.nix).
CREDENTIALS = {
    "db-password": "db_password",
    "replication-password": "replication_password",
    "superuser-password": "postgres_superuser_password",
    "rewind-password": "rewind_password",
    "pictrs-db-password": "pictrs_db_password",
    "restapi-password": "patroni_api_password",
}


def options(c: Cluster, machine: str) -> dict[str, Any]:
    """services.lemmy-cluster of MACHINE, as synth renders it into hosts/<machine>/default.nix."""
    lc: dict[str, Any] = host_data(c, plan(c)[machine])["services"]["lemmy-cluster"]
    return lc


def etcd_environment(etcd: Mapping[str, Any], data_dir: Path) -> dict[str, str]:
    """The environment nixpkgs' services.etcd gives etcd.service for these services.etcd options."""
    env = {
        "ETCD_ADVERTISE_CLIENT_URLS": ",".join(etcd["advertiseClientUrls"]),
        "ETCD_CLIENT_CERT_AUTH": "",  # toString false
        "ETCD_DATA_DIR": str(data_dir),
        "ETCD_DISCOVERY": "",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": ",".join(etcd["initialAdvertisePeerUrls"]),
        "ETCD_LISTEN_CLIENT_URLS": ",".join(etcd["listenClientUrls"]),
        "ETCD_LISTEN_PEER_URLS": ",".join(etcd["listenPeerUrls"]),
        "ETCD_NAME": etcd["name"],
        "ETCD_PEER_CLIENT_CERT_AUTH": "",
        "ETCD_INITIAL_CLUSTER": ",".join(etcd["initialCluster"]),
        "ETCD_INITIAL_CLUSTER_STATE": etcd["initialClusterState"],
        "ETCD_INITIAL_CLUSTER_TOKEN": etcd["initialClusterToken"],
    }
    env |= {f"ETCD_{k}": v for k, v in etcd["extraConf"].items()}
    return env


def read_env_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile (KEY=VALUE lines), as the etcd join step writes it."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


@dataclass
class Member:
    """One machine of the lab: its namespace host and folders, and the processes it runs."""

    name: str
    host: Host
    base: Path
    patroni: subprocess.Popen[Any] | None = None
    etcd: subprocess.Popen[Any] | None = None
    haproxy: subprocess.Popen[Any] | None = None
    helpers: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.base / "data"  # /var/lib/postgresql/<major>

    @property
    def run_dir(self) -> Path:
        return self.base / "run"  # /run/postgresql

    @property
    def store(self) -> Path:
        return self.base / "store"  # the files the modules put in the Nix store

    @property
    def address(self) -> str:
        return self.host.address

    def log(self, what: str) -> Path:
        return self.base / f"{what}.log"

    def log_tail(self, what: str, lines: int = 40) -> str:
        try:
            return "\n".join(self.log(what).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {what} log)"


class PatroniLab:
    """The machines of a Patroni cluster in one Network, with their secrets, under WORKDIR."""

    def __init__(
        self,
        net: Network,
        workdir: Path,
        cluster: Cluster,
        host_prefix: str = "",
        hosts: Mapping[str, Host] | None = None,
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        """HOSTS: namespace hosts that exist already (by machine), e.g. a PgLab's whose plain
        PostgreSQL moves to Patroni; PASSWORDS: secrets (by SECRET_FILES key) that are kept rather
        than made up, as `synth secrets init` keeps the existing ones."""
        self.net = net
        self.workdir = workdir
        self.cluster = cluster
        self.host_prefix = host_prefix
        self.hosts = dict(hosts or {})
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        self.members: dict[str, Member] = {}
        # Options other role modules set on a machine's postgres role (the backup role's archiveCommand).
        self.extra_postgres_options: dict[str, dict[str, Any]] = {}
        # The secret files, readable by postgres as LoadCredential makes them for its units.
        self.secret_dir = workdir / "secrets"
        self.secret_dir.mkdir(mode=0o700, exist_ok=True)
        chown_pg(self.secret_dir)
        self.secrets: dict[str, Path] = {}
        self.passwords: dict[str, str] = {}
        for key in SECRET_FILES:
            if key in ("garage_node_key",):
                continue
            value = (passwords or {}).get(key) or random_password()
            self.passwords[key] = value
            path = self.secret_dir / SECRET_FILES[key]
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value + "\n")
            chown_pg(path)
            self.secrets[key] = path
        # The same secrets under the names of the units' credentials (LoadCredential).
        self.credentials = workdir / "credentials"
        self.credentials.mkdir(mode=0o700, exist_ok=True)
        chown_pg(self.credentials)
        for name, key in CREDENTIALS.items():
            target = self.credentials / name
            shutil.copy(self.secrets[key], target)
            chown_pg(target)
        self.client_pgpass = workdir / "client.pgpass"
        self.write_pgpass(self.client_pgpass, "lemmy", self.passwords["db_password"])
        self.pictrs_pgpass = workdir / "pictrs.pgpass"
        self.write_pgpass(self.pictrs_pgpass, "pictrs", self.passwords["pictrs_db_password"])

    @staticmethod
    def write_pgpass(path: Path, user: str, password: str) -> None:
        esc = password.replace("\\", "\\\\").replace(":", "\\:")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:{user}:{esc}\n")
        chown_pg(path)

    # -- machines

    def member(self, machine: str) -> Member:
        if machine not in self.members:
            base = self.workdir / machine
            host = self.hosts.get(machine) or self.net.add(
                f"{self.host_prefix}{machine}", self.cluster.private_address(machine)
            )
            m = Member(machine, host, base)
            for d in (base, m.run_dir, m.store, base / "patroni"):
                d.mkdir(mode=0o700, exist_ok=True)
                chown_pg(d)
            base.chmod(0o755)
            m.store.chmod(0o755)
            self.members[machine] = m
        return self.members[machine]

    def postgres_machines(self) -> list[str]:
        return self.cluster.machines_with("postgres")

    # -- etcd

    def etcd_settings(self, machine: str) -> dict[str, Any]:
        """modules/etcd/settings.nix on the machine's etcd options: the services.etcd options."""
        settings: dict[str, Any] = nixeval.evaluate(
            MODULES / "etcd" / "settings.nix", options(self.cluster, machine)["etcd"]
        )
        return settings

    def start_etcd(self, machines: Sequence[str] | None = None, join: bool = True) -> None:
        """Start etcd on MACHINES (default: every member of the plan), with the module's join step."""
        for name in machines if machines is not None else etcd_members(self.cluster):
            m = self.member(name)
            assert m.etcd is None or m.etcd.poll() is not None, f"{name}: etcd already runs"
            settings = self.etcd_settings(name)
            data = m.base / "etcd"
            data.mkdir(mode=0o700, exist_ok=True)
            env = etcd_environment(settings, data)
            if join:
                env |= self.etcd_join(name, settings, data)
            log = m.log("etcd").open("ab")
            m.etcd = m.host.popen([str(ETCD)], stdout=log, stderr=subprocess.STDOUT, env={"PATH": SYS_PATH, **env})
            log.close()

    def wait_etcd(self, machines: Sequence[str] | None = None, timeout: float = 30) -> None:
        """Wait until etcd on MACHINES answers with its final cluster version. (A new cluster says
        3.0 for its first seconds, and a Patroni started then picks the old v3alpha API and retries
        for some 15 s; on NixOS etcd runs long before Patroni's first start.)"""
        names = list(machines) if machines is not None else etcd_members(self.cluster)
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                try:
                    url = f"http://{self.cluster.private_address(name)}:2379/version"
                    with urllib.request.urlopen(url, timeout=1) as r:
                        version = json.loads(r.read())
                    if version.get("etcdcluster", "3.0.0") != "3.0.0":
                        pending.discard(name)
                except (OSError, json.JSONDecodeError):
                    pass
            time.sleep(0.2)
        assert not pending, f"etcd not ready within {timeout}s on {sorted(pending)}"

    def etcd_join(self, name: str, settings: Mapping[str, Any], data: Path) -> dict[str, str]:
        """lemmy-cluster-etcd-join (modules/etcd/join.sh) before etcd.service: its EnvironmentFile."""
        m = self.members[name]
        etcd_opts = options(self.cluster, name)["etcd"]
        others = [f"http://{addr}:{etcd_opts['clientPort']}" for n, addr in etcd_opts["members"].items() if n != name]
        envfile = m.base / "etcd-join.env"
        r = m.host.run(
            [
                "bash",
                str(MODULES / "etcd" / "join.sh"),
                "--name",
                name,
                "--data-dir",
                str(data),
                "--peer-url",
                settings["initialAdvertisePeerUrls"][0],
                "--initial-cluster",
                ",".join(settings["initialCluster"]),
                "--endpoints",
                ",".join(others),
                "--env-file",
                str(envfile),
            ],
            check=False,
            timeout=60,
            env={"PATH": SYS_PATH},
        )
        with m.log("etcd-join").open("a") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"{name}: etcd join step failed ({r.returncode}): {r.stdout}{r.stderr}")
        return read_env_file(envfile)

    def stop_etcd(self, machine: str, kill: bool = True) -> None:
        m = self.members[machine]
        if m.etcd is not None and m.etcd.poll() is None:
            m.etcd.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            m.etcd.wait(timeout=20)
        m.etcd = None

    def etcdctl(self, machine: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """etcdctl on MACHINE against its local member."""
        m = self.members[machine]
        return m.host.run(
            [str(ETCDCTL), "--endpoints=http://127.0.0.1:2379", "--dial-timeout=2s", "--command-timeout=5s", *args],
            check=check,
            timeout=30,
            env={"PATH": SYS_PATH, "ETCDCTL_API": "3"},
        )

    # -- Patroni

    def patroni_settings(self, machine: str) -> dict[str, Any]:
        """modules/postgres/patroni-settings.nix on the machine's options → Patroni's YAML, with
        what nixpkgs' services.patroni adds itself (paths: this lab's)."""
        m = self.member(machine)
        lc = options(self.cluster, machine)
        pgo = lc["postgres"] | self.extra_postgres_options.get(machine, {})
        base_conf = m.store / "postgresql.base.conf"
        base_conf.write_text("# lemmy-cluster: every setting comes from Patroni\n")
        base_conf.chmod(0o644)
        # The module's callback: patroni-callback.sh with setup-args.nix's arguments, whose
        # credentials are patroni.service's (here: the lab's credentials folder).
        setup = nixeval.evaluate(
            MODULES / "postgres" / "setup-args.nix", {"cfg": pgo, "credentials": str(self.credentials)}
        )
        callback = shlex.join(["bash", str(PG_SCRIPTS / "patroni-callback.sh"), *setup])
        result: dict[str, Any] = nixeval.evaluate(
            MODULES / "postgres" / "patroni-settings.nix",
            {"cfg": pgo, "paths": {"socketDir": str(m.run_dir), "baseConf": str(base_conf), "callback": callback}},
        )
        settings: dict[str, Any] = result["settings"]
        node = lc["privateAddress"]
        # nixpkgs' services.patroni: settings it sets from its options (nodeIp = privateAddress).
        settings |= {"name": machine, "namespace": "/service", "scope": lc["clusterName"]}
        settings["postgresql"] |= {
            "bin_dir": str(PG_BIN),
            "connect_address": f"{node}:{pgo['port']}",
            "data_dir": str(m.data),
            "listen": f"{node}:{pgo['port']}",
            "pgpass": str(m.base / "patroni" / "pgpass"),
        }
        settings["restapi"] |= {
            "connect_address": f"{node}:{pgo['patroni']['restApiPort']}",
            "listen": f"{node}:{pgo['patroni']['restApiPort']}",
        }
        return {"settings": settings, "dcs": result["dcs"]}

    def write_patroni_config(self, machine: str) -> Path:
        """/etc/patroni-<scope>-<name>.yaml (JSON is YAML) and the dynamic configuration file."""
        m = self.member(machine)
        evaluated = self.patroni_settings(machine)
        path = m.store / "patroni.yaml"
        path.write_text(json.dumps(evaluated["settings"], indent=2))
        (m.store / "patroni-dcs.json").write_text(json.dumps(evaluated["dcs"]))
        for f in (path, m.store / "patroni-dcs.json"):
            f.chmod(0o644)
        return path

    def patroni_env(self) -> dict[str, str]:
        """The unit's environment: nixpkgs' `export NAME="$(< file)"` of every environmentFiles entry."""
        return {name: self.passwords[key] for name, key in PATRONI_ENV.items()}

    def start_patroni(self, machines: Sequence[str] | None = None, wait: bool = True, timeout: float = 90) -> None:
        """Start Patroni on MACHINES (default: every postgres machine) with the module's steps
        around it; by default wait until the cluster has a leader."""
        names = list(machines) if machines is not None else self.postgres_machines()
        for name in names:
            m = self.member(name)
            assert m.patroni is None or m.patroni.poll() is not None, f"{name}: Patroni already runs"
            config = self.write_patroni_config(name)
            if m.data.exists():
                args = nixeval.evaluate(
                    MODULES / "postgres" / "patroni-prepare-args.nix",
                    {
                        "cfg": options(self.cluster, name)["postgres"],
                        "scope": self.cluster.cluster.name,
                        "dataDir": str(m.data),
                    },
                )
                self.pg_script(m, "patroni-prepare.sh", args)
            uid, gid = _pg_ids()
            log = m.log("patroni").open("ab")
            m.patroni = m.host.popen(
                ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", str(PATRONI), str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    "PATH": f"{PG_BIN}:{SYS_PATH}",
                    "LANG": "C.UTF-8",
                    "HOME": str(m.base / "patroni"),
                    # patroni.service's environment (the callback's psql)
                    "PGHOST": str(m.run_dir),
                    "PGPORT": str(options(self.cluster, name)["postgres"]["port"]),
                    **self.patroni_env(),
                },
            )
            log.close()
            self.start_units(name)
        if wait:
            self.wait_leader(timeout=timeout)

    def start_units(self, machine: str) -> None:
        """lemmy-cluster-patroni-config and lemmy-cluster-patroni-setup, started after patroni.service."""
        m = self.members[machine]
        lc = options(self.cluster, machine)
        pgo = lc["postgres"]
        pt = pgo["patroni"]
        api = self.api_url(machine)
        config_args = [
            "--api",
            api,
            "--user",
            pt["restApiUser"],
            "--password-file",
            str(self.secrets["patroni_api_password"]),
            "--config",
            str(m.store / "patroni-dcs.json"),
            "--timeout",
            "120",
        ]
        setup_args = ["--api", api, "--timeout", "90", "--", *self.setup_roles_args(pgo)]
        for script, args in (("patroni-config.sh", config_args), ("patroni-setup.sh", setup_args)):
            log = m.log(script.removesuffix(".sh")).open("ab")
            m.helpers.append(
                m.host.popen(
                    as_pg(["bash", str(PG_SCRIPTS / script), *args]),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={"PATH": f"{PG_BIN}:{SYS_PATH}", "LANG": "C.UTF-8", "PGHOST": str(m.run_dir), "PGPORT": "5432"},
                )
            )
            log.close()

    def setup_roles_args(self, pgo: Mapping[str, Any]) -> list[str]:
        """setup-roles.sh's arguments as the module gives them (modules/postgres/setup-args.nix)."""
        args: list[str] = nixeval.evaluate(
            MODULES / "postgres" / "setup-args.nix", {"cfg": dict(pgo), "credentials": str(self.credentials)}
        )
        return args

    def wait_units(self, machine: str, timeout: float = 120) -> None:
        """Wait for the set-up steps started with Patroni on MACHINE; fail if one failed."""
        m = self.members[machine]
        for proc in m.helpers:
            rc = proc.wait(timeout=timeout)
            logs = f"{m.log_tail('patroni-config')}\n{m.log_tail('patroni-setup')}"
            assert rc == 0, f"{machine}: a set-up step failed ({rc}):\n{logs}"
        m.helpers.clear()

    def pg_script(self, m: Member, name: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        r = m.host.run(as_pg(["bash", str(PG_SCRIPTS / name), *args]), check=False, timeout=60, env={"PATH": SYS_PATH})
        if r.returncode != 0:
            raise RuntimeError(f"{m.name}: {name} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def postmaster_pid(self, machine: str) -> int | None:
        pidfile = self.members[machine].data / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self, machine: str) -> float:
        """Crash MACHINE's database: SIGKILL Patroni and every PostgreSQL process at once. Returns
        the time (time.time()) right after the last signal was sent: the moment of the crash."""
        m = self.members[machine]
        pids: list[int] = []
        if m.patroni is not None and m.patroni.poll() is None:
            pids.append(m.patroni.pid)
        pm = self.postmaster_pid(machine)
        if pm is not None and Path(f"/proc/{pm}").exists():
            pids += [pm, *children(pm)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        if m.patroni is not None:
            m.patroni.wait(timeout=10)
        m.patroni = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)
        self.stop_helpers(machine)
        return killed_at

    def kill_postgres(self, machine: str) -> None:
        """SIGKILL only the postmaster and its children (Patroni stays)."""
        pm = self.postmaster_pid(machine)
        assert pm is not None, f"{machine}: no postmaster"
        for pid in (pm, *children(pm)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_patroni(self, machine: str, timeout: float = 60) -> None:
        """systemctl stop patroni: SIGTERM (Patroni stops PostgreSQL and releases its leader lock)."""
        m = self.members[machine]
        if m.patroni is not None and m.patroni.poll() is None:
            m.patroni.send_signal(signal.SIGTERM)
            m.patroni.wait(timeout=timeout)
        m.patroni = None
        self.stop_helpers(machine)

    def reload_patroni(self, machine: str) -> None:
        """systemctl reload patroni (the module's reloadTriggers): the new YAML, then SIGHUP."""
        m = self.members[machine]
        assert m.patroni is not None and m.patroni.poll() is None, f"{machine}: Patroni is not running"
        self.write_patroni_config(machine)
        m.patroni.send_signal(signal.SIGHUP)

    def switchover(self, candidate: str, via: str | None = None) -> subprocess.CompletedProcess[str]:
        """lemmy-cluster-pg-switchover CANDIDATE on VIA (default: CANDIDATE), as the module wraps
        scripts/switchover.sh (its REST API and password file: the lab's)."""
        machine = via or candidate
        pt = options(self.cluster, machine)["postgres"]["patroni"]
        return self.member(machine).host.run(
            [
                "bash", str(PG_SCRIPTS / "switchover.sh"),
                "--api", self.api_url(machine),
                "--user", pt["restApiUser"],
                "--password-file", str(self.secrets["patroni_api_password"]),
                "--candidate", candidate,
            ],
            check=False,
            timeout=90,
            env={"PATH": SYS_PATH},
        )  # fmt: skip

    def stop_helpers(self, machine: str) -> None:
        m = self.members[machine]
        for proc in m.helpers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        m.helpers.clear()

    # -- HAProxy (the pg-proxy module, on pict-rs machines)

    def start_proxy(self, machine: str) -> None:
        m = self.member(machine)
        cfg = options(self.cluster, machine)["pgProxy"]
        text = nixeval.evaluate(MODULES / "pg-proxy" / "haproxy.nix", cfg)
        # nixpkgs' services.haproxy: its own `global` line (and a stats socket, left out here).
        conf = m.store / "haproxy.cfg"
        conf.write_text("global\n" + text)
        conf.chmod(0o644)
        log = m.log("haproxy").open("ab")
        m.haproxy = m.host.popen([str(HAPROXY), "-W", "-db", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    # -- clients

    def backend_dsn(self, machine: str, **extra: str) -> str:
        """The libpq string of MACHINE's Lemmy backend (its hosts, modules/backend/database-params.nix)."""
        db = options(self.cluster, machine)["backend"]["database"]
        evaluated = nixeval.evaluate(MODULES / "backend" / "database-params.nix", db)
        hosts = ",".join(db["hosts"])
        params = " ".join([*evaluated["params"], *(f"{k}={v}" for k, v in extra.items())])
        return f"host={hosts} port=5432 user={db['user']} dbname={db['name']} {params}"

    def backend_sysctl(self, machine: str) -> None:
        """The backend module's net.ipv4.tcp_retries2 in MACHINE's namespace (a per-namespace setting)."""
        db = options(self.cluster, machine)["backend"]["database"]
        value = nixeval.evaluate(MODULES / "backend" / "database-params.nix", db)["tcpRetries2"]
        self.member(machine).host.run(["sysctl", "-qw", f"net.ipv4.tcp_retries2={value}"])

    def proxy_dsn(self, machine: str) -> str:
        """pict-rs's repository through MACHINE's local HAProxy (the pictrs module's repo options)."""
        repo = options(self.cluster, machine)["pictrs"]["repo"]
        return f"host={repo['host']} port={repo['port']} user={repo['user']} dbname={repo['name']} connect_timeout=3"

    def start_writer(
        self, machine: str, dsn: str, out: Path, pgpass: Path | None = None, run: str | None = None
    ) -> subprocess.Popen[Any]:
        """tests/live/writeload.py in MACHINE's namespace, with DSN (the password from a pgpass file);
        RUN: the writer's name in a table keyed by (run, n)."""
        import sys

        m = self.member(machine)
        env = {"PATH": SYS_PATH, "PGPASSFILE": str(pgpass or self.client_pgpass), "PYTHONPATH": str(ROOT)}
        log = m.log("writer").open("ab")
        proc = m.host.popen(
            [
                sys.executable,
                "-m",
                "tests.live.writeload",
                "--dsn",
                dsn,
                "--out",
                str(out),
                *(["--run", run] if run else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        log.close()
        return proc

    # -- REST API and state

    def api_url(self, machine: str) -> str:
        pgo = options(self.cluster, machine)["postgres"]
        return f"http://{self.cluster.private_address(machine)}:{pgo['patroni']['restApiPort']}"

    def rest(self, machine: str, path: str, timeout: float = 2) -> tuple[int, Any]:
        """GET PATH on MACHINE's Patroni REST API from the root namespace: (status, JSON or None)."""
        try:
            with urllib.request.urlopen(self.api_url(machine) + path, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body or b"null")
            except json.JSONDecodeError:
                return e.code, None
        except (OSError, json.JSONDecodeError):
            return 0, None

    def running(self, machine: str) -> bool:
        m = self.members.get(machine)
        return m is not None and m.patroni is not None and m.patroni.poll() is None

    def leader(self) -> str | None:
        """The member whose REST API answers /primary with 200 (it holds the lock, its server
        accepts writes), or None."""
        leaders = [n for n in self.postgres_machines() if self.running(n) and self.rest(n, "/primary")[0] == 200]
        assert len(leaders) <= 1, f"two leaders at once: {leaders}"
        return leaders[0] if leaders else None

    def wait_leader(self, timeout: float = 60, not_on: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name = self.leader()
            if name is not None and name != not_on:
                return name
            time.sleep(0.2)
        logs = "\n".join(
            f"--- {n}\n{m.log_tail('patroni', 15)}" for n, m in self.members.items() if n in self.postgres_machines()
        )
        raise AssertionError(f"no leader (other than {not_on}) within {timeout}s\n{logs}")

    def cluster_state(self, machine: str | None = None) -> dict[str, Any]:
        """GET /cluster: the members with role, state, timeline and lag."""
        names = [machine] if machine else [n for n in self.postgres_machines() if self.running(n)]
        for n in names:
            code, body = self.rest(n, "/cluster")
            if code == 200 and body:
                return dict(body)
        return {"members": []}

    def wait_streaming(self, machines: Sequence[str], timeout: float = 90) -> None:
        """Wait until every one of MACHINES is a replica that streams from the leader."""
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = self.cluster_state()
            members = {mm["name"]: mm for mm in state.get("members", [])}
            if all(members.get(n, {}).get("state") == "streaming" for n in machines):
                return
            time.sleep(0.3)
        raise AssertionError(f"not all of {list(machines)} stream within {timeout}s: {state}")

    def wait_sync_standby(self, timeout: float = 30) -> str:
        """Wait until Patroni names a synchronous standby (synchronous mode); return it."""
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = self.cluster_state()
            sync = [mm["name"] for mm in state.get("members", []) if mm.get("role") == "sync_standby"]
            if sync:
                return str(sync[0])
            time.sleep(0.2)
        raise AssertionError(f"no synchronous standby within {timeout}s: {state}")

    def psql(
        self, machine: str, sql: str, db: str = "postgres", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """psql as the superuser over MACHINE's socket (peer authentication)."""
        m = self.members[machine]
        r = m.host.run(
            as_pg([str(PG_BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(m.run_dir), "-d", db, "-c", sql]),
            check=False,
            timeout=30,
            env={"PATH": SYS_PATH, "LANG": "C.UTF-8"},
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"{machine}: psql failed: {sql}\n{r.stderr}")
        return r

    def sql(self, machine: str, sql: str, db: str = "postgres") -> str:
        return self.psql(machine, sql, db).stdout.strip()

    def stop_all(self) -> None:
        for name, m in self.members.items():
            self.stop_helpers(name)
            if m.patroni is not None:
                self.kill(name)
            for proc in (m.etcd, m.haproxy):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            m.etcd = m.haproxy = None
            m.host.stop_all()
        # PostgreSQL servers whose Patroni died before them.
        for name in self.members:
            pm = self.postmaster_pid(name)
            if pm is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pm, signal.SIGKILL)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
