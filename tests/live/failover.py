"""What the live failure-scenario modules share (tests/live/test_patroni_*.py, test_etcd_membership.py).

    cluster = moved_cluster(SUBNET, drop=["db3"], synchronous=True)  # patroni-cluster.toml, moved
    lab = start_lab(PatroniLab(net, workdir, cluster))  # etcd, Patroni, app1's HAProxy, the lc_writes tables
    writers = Writers(lab, workdir); writers.start()    # both clients on app1 write all along
    ...; logs = writers.stop()
    lost = writers.lost(logs)                  # acknowledged rows the leader does not have

Each module runs on a subnet, bridge and namespace prefix of its own (tests/live/netns.Network).
"""

from __future__ import annotations

import ipaddress
import itertools
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.model import Cluster, from_data
from tests.conftest import require, require_root, require_tool
from tests.live import writeload
from tests.live.patroni import ETCD, HAPROXY, PATRONI, PatroniLab
from tests.live.pg import PG_BIN

HERE = Path(__file__).resolve().parent
# The two clients on app1 and the database each writes to.
CLIENTS = {"backend": "lemmy", "proxy": "pictrs"}


def require_engines() -> None:
    require_root()
    require_tool("nix-instantiate")
    require((PG_BIN / "postgres").exists(), f"PostgreSQL server binaries not found in {PG_BIN}")
    require(ETCD.exists(), "etcd is not installed (Debian package etcd-server; make test installs it)")
    require(HAPROXY.exists(), "HAProxy is not installed (make test installs it)")
    require(PATRONI.exists(), f"Patroni is not installed at {PATRONI} (scripts/install-system-deps.sh makes its venv)")


def moved_data(subnet: str, toml: str = "patroni-cluster.toml", drop: Iterable[str] = ()) -> dict[str, Any]:
    """The cluster file TOML (tests/live/) as data, every machine moved to SUBNET (same host
    number), the machines DROP left out."""
    data: dict[str, Any] = tomllib.loads((HERE / toml).read_text(encoding="utf-8"))
    net = ipaddress.ip_network(subnet)
    for name in list(drop):
        del data["machines"][name]
    for machine in data["machines"].values():
        host = int(ipaddress.ip_address(machine["address"])) & int(net.hostmask)
        machine["address"] = str(net.network_address + host)
    return data


def moved_cluster(subnet: str, drop: Iterable[str] = (), synchronous: bool = True) -> Cluster:
    data = moved_data(subnet, drop=drop)
    data["postgres"]["synchronous"] = synchronous
    return from_data(data, f"patroni-cluster.toml (on {subnet})")


def create_tables(lab: PatroniLab, leader: str) -> None:
    """The writers' table in Lemmy's and pict-rs's databases, owned by their roles."""
    lab.wait_units(leader)  # the databases and roles exist
    for db, owner in (("lemmy", "lemmy"), ("pictrs", "pictrs")):
        lab.sql(
            leader,
            "CREATE TABLE IF NOT EXISTS lc_writes (run text, n bigint, at timestamptz DEFAULT now(),"
            " PRIMARY KEY (run, n))",
            db=db,
        )
        lab.sql(leader, f"ALTER TABLE lc_writes OWNER TO {owner}", db=db)


def start_lab(lab: PatroniLab, timeout: float = 120) -> PatroniLab:
    """Every etcd member and postgres machine of the lab's cluster, and app1 (a backend with the
    backend module's TCP settings, a pict-rs machine with its HAProxy); returns once there is a
    leader with its roles, databases and the writers' tables."""
    lab.start_etcd()
    lab.wait_etcd()
    lab.start_patroni(timeout=timeout)
    lab.start_proxy("app1")
    lab.backend_sysctl("app1")
    create_tables(lab, lab.wait_leader())
    return lab


@dataclass
class Writers:
    """The two clients on app1: the backends' multi-host string and pict-rs's proxy."""

    lab: PatroniLab
    folder: Path
    procs: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)

    def start(self) -> Writers:
        for kind in CLIENTS:
            self.runs[kind] = f"{kind}-{time.monotonic_ns()}"
            self.logs[kind] = self.folder / f"{self.runs[kind]}.log"
        self.procs["backend"] = self.lab.start_writer(
            "app1", self.lab.backend_dsn("app1"), self.logs["backend"], run=self.runs["backend"]
        )
        self.procs["proxy"] = self.lab.start_writer(
            "app1",
            self.lab.proxy_dsn("app1"),
            self.logs["proxy"],
            pgpass=self.lab.pictrs_pgpass,
            run=self.runs["proxy"],
        )
        return self

    def read(self) -> dict[str, list[writeload.Attempt]]:
        return {kind: writeload.read_log(path) for kind, path in self.logs.items()}

    def stop(self) -> dict[str, list[writeload.Attempt]]:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(timeout=30)
        self.procs.clear()
        return self.read()

    def wait_acks(self, count: int = 20, timeout: float = 30, after: float | None = None) -> None:
        """Wait until each client has COUNT more acknowledged writes than now (or than at AFTER)."""

        def acks(kind: str) -> int:
            attempts = writeload.read_log(self.logs[kind])
            return sum(1 for a in attempts if a.ok and (after is None or a.at > after))

        base = {k: (0 if after is not None else acks(k)) for k in self.logs}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(acks(k) - base[k] >= count for k in self.logs):
                return
            time.sleep(0.1)
        tails = {k: writeload.read_log(p)[-3:] for k, p in self.logs.items()}
        raise AssertionError(f"the clients did not write {count} more rows within {timeout}s: {tails}")

    def rows(self, kind: str, on: str | None = None) -> set[int]:
        """The rows client KIND wrote, as ON (default: the leader) has them."""
        machine = on or self.lab.wait_leader()
        out = self.lab.sql(machine, f"SELECT n FROM lc_writes WHERE run = '{self.runs[kind]}'", db=CLIENTS[kind])
        return {int(x) for x in out.split()}

    def lost(self, logs: Mapping[str, list[writeload.Attempt]], on: str | None = None) -> dict[str, list[int]]:
        """Per client: the acknowledged rows that the leader (or ON) does not have."""
        return {kind: sorted(set(writeload.acknowledged(logs[kind])) - self.rows(kind, on)) for kind in CLIENTS}


def longest_gap(attempts: list[writeload.Attempt], start: float, end: float) -> float:
    """The longest time without an acknowledged write between START and END (from the last
    acknowledgement before START, to the first after END if none came in between)."""
    oks = sorted(a.at for a in attempts if a.ok)
    before = [t for t in oks if t <= start]
    inside = [t for t in oks if start < t <= end]
    after = [t for t in oks if t > end]
    times = ([before[-1]] if before else [start]) + inside + (after[:1] if after else [end])
    return max(b - a for a, b in itertools.pairwise(times)) if len(times) > 1 else end - start


def recovered_at(attempts: list[writeload.Attempt], crash: float) -> float | None:
    """When a client's first write after a crash was acknowledged: the first acknowledgement after
    its first error following its last acknowledgement before CRASH (an answer on its way when the
    server died is no recovery); None if it saw no error (or never recovered)."""
    before = [a.at for a in attempts if a.ok and a.at <= crash]
    base = before[-1] if before else 0.0
    failed = next((a.at for a in attempts if not a.ok and a.at > base), None)
    if failed is None:
        return None
    return next((a.at for a in attempts if a.ok and a.at > failed), None)
