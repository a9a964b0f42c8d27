"""Live figures of automatic failover (issue 10) for scripts/bench.py: real Patroni, etcd,
PostgreSQL and HAProxy in network namespaces, through tests/live/patroni.py's lab.

scripts/bench.py merges ``SECTIONS`` ("patroni") into its table. The cluster is the live tests'
tests/live/patroni-cluster.toml (db1, db2, db3 under Patroni, each an etcd member; app1 a backend
and a pict-rs machine with its local HAProxy) moved to 10.245.0.0/24 (bridge lcbr-pb, namespaces
lcy-*), apart from the live tests' networks so both can run at once. Every program runs with the
settings the modules' pure Nix files make of synth's options, as in the live tests; Patroni's
timings printed beside the figures are read from modules/postgres/patroni-settings.nix through the
lab (and compared with the running cluster's /config), never copied.

These are measurements, not tests: nothing here asserts a target. The section runs two clusters,
one after the other: synchronous mode (`[postgres] synchronous = true`), then asynchronous (the
default). On each, two clients on app1 commit numbered rows all along (tests/live/writeload.py):
one with the backends' multi-host connection string, one through pict-rs's HAProxy.

  1. commit latency p50 / p99: pgbench (Debian's PostgreSQL 15) on app1, a one-INSERT script at a
     fixed rate (-R) through the backends' connection string to the leader; the per-transaction log
     (-l) gives each commit's time, the schedule lag that -R adds taken out. Before the writers
     start, so it measures the commit path, not contention with them.
  2. kill -9 of the leader (Patroni and every PostgreSQL process at once; lab.kill returns the
     moment the signals went out) → the first write each client had acknowledged after its first
     error following the kill (an answer already on its way when the server died is no recovery);
     KILLS (ASYNC_KILLS) times, each once the cluster is whole again (a leader, both replicas
     streaming, a synchronous standby in synchronous mode, both clients writing). Beside it: when
     the new leader's REST API first answered /primary (polled every 0.1 s), and how long the old
     leader took to come back as a streaming replica (Patroni started again, the module's
     patroni-prepare.sh first; crash recovery and pg_rewind by Patroni).
  3. planned switchover (lab.switchover: scripts/switchover.sh, what `synth promote` runs) → the
     longest pause between two acknowledged writes of each client, from the request until both
     clients have written again; SWITCHOVERS (ASYNC_SWITCHOVERS) times, each once whole again.
  4. acknowledged commits lost: rows a client saw acknowledged that the final leader does not
     have, over all the failures of the cluster.
  5. extras: the leader's link cut (CUTS times, synchronous cluster; the backend module's
     net.ipv4.tcp_retries2 on app1) → first acknowledged write, and the cut-off leader streaming
     again after its link is back; a new replica: a streaming replica's Patroni stopped, its data
     directory deleted, Patroni started again → streaming (Patroni clones with pg_basebackup),
     after pgbench -i -s CLONE_SCALE filled the lemmy database (asynchronous cluster).

The namespaces have no DNS: each gets an `unreachable` route to the resolver (resolver_fails_fast),
or every Patroni start would wait 10 s for the name of its REST API address. The LC_BENCH_PATRONI_*
variables below change the counts and durations (the defaults take some 9 minutes on 2 busy CPUs).
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.model import from_data
from tests.live import pg, writeload
from tests.live.bench_live import dir_bytes, guarded, need, pct
from tests.live.netns import Network
from tests.live.patroni import ETCD, HAPROXY, PATRONI, PatroniLab

Row = tuple[str, str, str]  # figure, measured, target

SUBNET = "10.245.0.0/24"
BRIDGE = "lcbr-pb"
PREFIX = "lcy-"
HERE = Path(__file__).resolve().parent
MB = 1024 * 1024
DBS = ("db1", "db2", "db3")

KILLS = int(os.environ.get("LC_BENCH_PATRONI_KILLS", "5"))  # kill -9 runs, synchronous cluster
ASYNC_KILLS = int(os.environ.get("LC_BENCH_PATRONI_ASYNC_KILLS", "2"))  # ... asynchronous cluster
SWITCHOVERS = int(os.environ.get("LC_BENCH_PATRONI_SWITCHOVERS", "5"))  # synchronous cluster
ASYNC_SWITCHOVERS = int(os.environ.get("LC_BENCH_PATRONI_ASYNC_SWITCHOVERS", "2"))
CUTS = int(os.environ.get("LC_BENCH_PATRONI_CUTS", "1"))  # the leader's link cut, synchronous cluster
LATENCY_SECONDS = int(os.environ.get("LC_BENCH_PATRONI_LATENCY_S", "15"))
LATENCY_RATE = int(os.environ.get("LC_BENCH_PATRONI_RATE", "200"))  # commits/s, all pgbench clients
LATENCY_CLIENTS = 4
CLONE_SCALE = int(os.environ.get("LC_BENCH_PATRONI_SCALE", "10"))  # pgbench -i -s 10: about 160 MB

KILL_TARGET = "<= 25 s"
SWITCHOVER_TARGET = "<= 3 s"
CLIENTS = ("backend", "proxy")
CLIENT_NAMES = {"backend": "backends' string", "proxy": "pict-rs's HAProxy"}


# --------------------------------------------------------------------------- helpers


def load_cluster(synchronous: bool) -> Any:
    """tests/live/patroni-cluster.toml with every machine moved to the benchmark's own subnet (the
    same host number), whichever subnet the live tests give it."""
    data = tomllib.loads((HERE / "patroni-cluster.toml").read_text(encoding="utf-8"))
    net = ipaddress.ip_network(SUBNET)
    for machine in data["machines"].values():
        old = ipaddress.ip_address(machine["address"])
        host = int(old) & int(net.hostmask)
        machine["address"] = str(net.network_address + host)
    data["postgres"]["synchronous"] = synchronous
    return from_data(data, "patroni-cluster.toml (bench)")


def ack_times(attempts: Sequence[writeload.Attempt]) -> list[float]:
    return [a.at for a in attempts if a.ok]


def longest_gap(attempts: Sequence[writeload.Attempt], start: float, end: float) -> float:
    """The longest time between two acknowledged writes in (START, END], the first counted from the
    last one acknowledged at or before START."""
    oks = ack_times(attempts)
    before = [t for t in oks if t <= start]
    times = ([before[-1]] if before else [start]) + [t for t in oks if start < t <= end]
    return max((b - a for a, b in itertools.pairwise(times)), default=float("nan"))


def recovered_at(attempts: Sequence[writeload.Attempt], crash: float) -> float | None:
    """When the client's first write after the crash was acknowledged: the first acknowledgement
    after the first error that follows the client's last acknowledgement before CRASH (an answer
    already on its way when the server died is not a recovery)."""
    oks_before = [a.at for a in attempts if a.ok and a.at <= crash]
    base = oks_before[-1] if oks_before else 0.0
    failed = next((a.at for a in attempts if not a.ok and a.at > base), None)
    if failed is None:
        return None
    return next((a.at for a in attempts if a.ok and a.at > failed), None)


def spread(values: Sequence[float]) -> str:
    if not values:
        return "no run"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


def each(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


@dataclass
class Timings:
    """Patroni's failure-detection timings, from modules/postgres/patroni-settings.nix via the lab."""

    ttl: int
    loop_wait: int
    retry_timeout: int
    running_agrees: bool
    connect_timeout: str  # the backends' libpq connect_timeout (modules/backend/database-params.nix)

    def short(self) -> str:
        return f"ttl {self.ttl} s, loop_wait {self.loop_wait} s, retry_timeout {self.retry_timeout} s"


def read_timings(lab: PatroniLab) -> Timings:
    leader = lab.wait_leader()
    dcs = lab.patroni_settings(leader)["dcs"]
    code, running = lab.rest(leader, "/config")
    keys = ("ttl", "loop_wait", "retry_timeout")
    agrees = code == 200 and all(running.get(k) == dcs[k] for k in keys)
    dsn = lab.backend_dsn("app1")
    connect_timeout = next((p.split("=", 1)[1] for p in dsn.split() if p.startswith("connect_timeout=")), "?")
    return Timings(dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"], agrees, connect_timeout)


@dataclass
class Clients:
    """The two writers on app1, running through all the failures of one cluster."""

    lab: PatroniLab
    folder: Path
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self) -> None:
        for kind in CLIENTS:
            self.logs[kind] = self.folder / f"writer-{kind}.log"
        self.procs["backend"] = self.lab.start_writer("app1", self.lab.backend_dsn("app1"), self.logs["backend"])
        self.procs["proxy"] = self.lab.start_writer(
            "app1", self.lab.proxy_dsn("app1"), self.logs["proxy"], pgpass=self.lab.pictrs_pgpass
        )

    def read(self) -> dict[str, list[writeload.Attempt]]:
        return {kind: writeload.read_log(path) for kind, path in self.logs.items()}

    def stop(self) -> dict[str, list[writeload.Attempt]]:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(timeout=30)
        self.procs.clear()
        return self.read()

    def wait_acks_after(self, t: float, count: int = 1, timeout: float = 90) -> dict[str, float]:
        """Wait until each client has COUNT writes acknowledged after T; when each got its first."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.read()
            after = {k: [x for x in ack_times(v) if x > t] for k, v in logs.items()}
            if all(len(v) >= count for v in after.values()):
                return {k: v[0] for k, v in after.items()}
            if time.monotonic() > deadline:
                tails = {k: v[-2:] for k, v in logs.items()}
                raise RuntimeError(f"the clients did not write {count} rows within {timeout} s: {tails}")
            time.sleep(0.05)


def wait_whole(lab: PatroniLab, synchronous: bool, clients: Clients | None, timeout: float = 120) -> str:
    """Wait until the cluster is whole: a leader, every other member streaming, a synchronous
    standby (synchronous mode), and both clients writing. Returns the leader."""
    leader = lab.wait_leader(timeout=timeout)
    lab.wait_streaming([n for n in DBS if n != leader], timeout=timeout)
    if synchronous:
        lab.wait_sync_standby(timeout=timeout)
    if clients is not None:
        clients.wait_acks_after(time.time(), count=20, timeout=timeout)
    return leader


def nameservers() -> list[str]:
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver ") and len(ln.split()) > 1]


def resolver_fails_fast(lab: PatroniLab, machines: Sequence[str]) -> None:
    """The namespaces have no DNS: the machine's resolver is not reachable from them, and a query
    waits for glibc's timeout (2 attempts x 5 s). Patroni's REST API start asks for the name of its
    address (Python's HTTPServer.server_bind: socket.getfqdn), which would add 10 s to every
    Patroni start here; a machine whose resolver answers (NXDOMAIN) does not wait. So each
    namespace gets an `unreachable` route to the resolver's addresses: the query fails at once."""
    for name in machines:
        host = lab.member(name).host
        for ns in nameservers():
            family = "-6" if ":" in ns else "-4"
            host.run(["ip", family, "route", "replace", "unreachable", ns], check=False)


def start_lab(net: Network, workdir: Path, synchronous: bool) -> PatroniLab:
    lab = PatroniLab(net, workdir, load_cluster(synchronous))
    resolver_fails_fast(lab, [*DBS, "app1"])
    lab.start_etcd()
    lab.wait_etcd()
    lab.start_patroni(timeout=120)
    lab.start_proxy("app1")
    lab.backend_sysctl("app1")  # the backend module's net.ipv4.tcp_retries2 (matters when a link is cut)
    leader = lab.wait_leader()
    lab.wait_units(leader)  # the databases and roles exist
    for db, owner in (("lemmy", "lemmy"), ("pictrs", "pictrs")):
        lab.sql(leader, "CREATE TABLE lc_writes (n bigint PRIMARY KEY, at timestamptz DEFAULT now())", db=db)
        lab.sql(leader, f"ALTER TABLE lc_writes OWNER TO {owner}", db=db)
    lab.sql(leader, "CREATE TABLE lc_latency (id bigserial PRIMARY KEY, client int, at timestamptz)", db="lemmy")
    lab.sql(leader, "ALTER TABLE lc_latency OWNER TO lemmy", db="lemmy")
    return lab


# --------------------------------------------------------------------------- figures


def commit_latency(lab: PatroniLab, folder: Path) -> dict[str, Any]:
    """pgbench on app1 through the backends' connection string: p50/p99 of each commit."""
    folder.mkdir(exist_ok=True)
    script = folder / "insert.sql"
    script.write_text("INSERT INTO lc_latency (client, at) VALUES (:client_id, now());\n")
    prefix = folder / "tx"
    args = [
        str(pg.PG_BIN / "pgbench"), "-n", "-c", str(LATENCY_CLIENTS), "-j", "2",
        "-R", str(LATENCY_RATE), "-T", str(LATENCY_SECONDS), "-f", str(script),
        "-l", f"--log-prefix={prefix}", lab.backend_dsn("app1"),
    ]  # fmt: skip
    env = {"PATH": pg.SYS_PATH, "LANG": "C.UTF-8", "PGPASSFILE": str(lab.client_pgpass)}
    load0 = os.getloadavg()[0]
    r = lab.member("app1").host.run(args, check=False, timeout=LATENCY_SECONDS + 120, env=env, cwd=folder)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    # Per transaction: client_id transaction_no time script_no time_epoch time_us schedule_lag
    # (microseconds). With -R, `time` counts from the scheduled start: the lag is taken out.
    latencies: list[float] = []
    for log in folder.glob("tx.*"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 7 and parts[2].isdigit():
                latencies.append((int(parts[2]) - int(parts[6])) / 1e6)
    need(bool(latencies), f"pgbench wrote no per-transaction log in {folder}")
    return {
        "tool": f"pgbench -n -c {LATENCY_CLIENTS} -j 2 -R {LATENCY_RATE} -T {LATENCY_SECONDS}, one INSERT a commit",
        "commits": len(latencies),
        "p50_s": pct(latencies, 50),
        "p99_s": pct(latencies, 99),
        "max_s": max(latencies),
        "load_avg_1min_before": load0,
        "load_avg_1min_after": os.getloadavg()[0],
    }


def wait_new_leader(lab: PatroniLab, old: str, since: float, timeout: float = 120) -> tuple[str, float]:
    """Poll the other members' /primary every 0.1 s (0.5 s timeout, so a cut member does not slow
    the polling): the new leader and the seconds from SINCE until it answered 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in DBS:
            if n != old and lab.running(n) and lab.rest(n, "/primary", timeout=0.5)[0] == 200:
                return n, time.time() - since
        time.sleep(0.1)
    raise RuntimeError(f"no new leader within {timeout} s of losing {old}")


def failover_runs(lab: PatroniLab, clients: Clients, synchronous: bool, runs: int, how: str) -> list[dict[str, Any]]:
    """RUNS failures of the leader, HOW = "kill" (kill -9 of Patroni and PostgreSQL; Patroni
    started again afterwards) or "cut" (its network link down, as if the machine vanished; the
    link restored afterwards, Patroni kept running)."""
    out: list[dict[str, Any]] = []
    for _ in range(runs):
        old = wait_whole(lab, synchronous, clients)
        if how == "kill":
            crash = lab.kill(old)
        else:
            lab.member(old).host.link(False)
            crash = time.time()
        new, leader_seen = wait_new_leader(lab, old, crash)
        first: dict[str, float | None] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            first = {k: recovered_at(v, crash) for k, v in clients.read().items()}
            if all(v is not None for v in first.values()):
                break
            time.sleep(0.1)
        need(all(v is not None for v in first.values()), f"a client did not write after the {how}: {first}")
        run: dict[str, Any] = {
            "lost_leader": old,
            "new_leader": new,
            "new_leader_on_rest_s": leader_seen,
            "first_ack_s": {k: (v or 0.0) - crash for k, v in first.items()},
        }
        if how == "kill":
            run["old_leader_rest_api_up_s"], run["old_leader_streaming_again_s"] = restart_member(lab, old)
        else:
            t0 = time.monotonic()
            lab.member(old).host.link(True)
            lab.wait_streaming([old], timeout=300)
            run["old_leader_streaming_after_link_up_s"] = time.monotonic() - t0
        run["load_avg_1min"] = os.getloadavg()[0]
        out.append(run)
    return out


def restart_member(lab: PatroniLab, machine: str, timeout: float = 600) -> tuple[float, float]:
    """Start Patroni on MACHINE (the module's steps first); (seconds until its REST API answers,
    seconds until it streams from the leader)."""
    t0 = time.monotonic()
    lab.start_patroni([machine], wait=False)
    while lab.rest(machine, "/patroni", timeout=1)[0] == 0:
        need(time.monotonic() - t0 < 120, f"{machine}: Patroni's REST API does not answer")
        time.sleep(0.1)
    rest_up = time.monotonic() - t0
    lab.wait_streaming([machine], timeout=timeout)
    return rest_up, time.monotonic() - t0


def switchover_runs(lab: PatroniLab, clients: Clients, synchronous: bool, runs: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(runs):
        old = wait_whole(lab, synchronous, clients)
        # In synchronous mode Patroni only hands the leadership to the synchronous standby.
        candidate = lab.wait_sync_standby() if synchronous else next(n for n in DBS if n != old)
        asked = time.time()
        r = lab.switchover(candidate)
        done = time.time()
        if r.returncode != 0:
            raise RuntimeError(f"switchover to {candidate} failed: {r.stdout}{r.stderr}")
        clients.wait_acks_after(done, count=20, timeout=60)
        end = time.time()
        logs = clients.read()
        out.append(
            {
                "from": old,
                "to": candidate,
                "switchover_sh_s": done - asked,
                "longest_pause_s": {k: longest_gap(v, asked, end) for k, v in logs.items()},
                "load_avg_1min": os.getloadavg()[0],
            }
        )
    return out


def lost_commits(lab: PatroniLab, logs: dict[str, list[writeload.Attempt]]) -> dict[str, dict[str, int]]:
    leader = lab.wait_leader()
    out = {}
    for kind, db in (("backend", "lemmy"), ("proxy", "pictrs")):
        present = {int(x) for x in lab.sql(leader, "SELECT n FROM lc_writes", db=db).split()}
        acked = set(writeload.acknowledged(logs[kind]))
        out[kind] = {"acknowledged": len(acked), "lost": len(acked - present)}
    return out


def clone_replica(lab: PatroniLab) -> dict[str, Any]:
    leader = wait_whole(lab, False, None)
    env = {"PATH": pg.SYS_PATH, "LANG": "C.UTF-8", "PGPASSFILE": str(lab.client_pgpass)}
    t0 = time.monotonic()
    r = lab.member("app1").host.run(
        [str(pg.PG_BIN / "pgbench"), "-i", "-q", "-I", "dtGvp", "-s", str(CLONE_SCALE), lab.backend_dsn("app1")],
        check=False, timeout=900, env=env,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"pgbench -i failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    init_s = time.monotonic() - t0
    db_bytes = int(lab.sql(leader, "SELECT sum(pg_database_size(datname)) FROM pg_database"))
    target = next(n for n in DBS if n != leader and n != "db1") if leader != "db1" else "db3"
    lab.wait_streaming([n for n in DBS if n != leader], timeout=300)
    lab.stop_patroni(target)
    shutil.rmtree(lab.members[target].data)
    rest_up, seconds = restart_member(lab, target)
    copied = dir_bytes(lab.members[target].data)
    return {
        "member": target,
        "pgbench_scale": CLONE_SCALE,
        "pgbench_init_s": init_s,
        "all_databases_bytes": db_bytes,
        "data_dir_bytes": copied,
        "patroni_rest_api_up_s": rest_up,
        "patroni_start_to_streaming_s": seconds,
        "mb_per_s": copied / MB / seconds,
    }


# --------------------------------------------------------------------------- the section


def run_cluster(synchronous: bool, results: dict[str, Any]) -> None:
    mode = "synchronous" if synchronous else "asynchronous"
    out: dict[str, Any] = results.setdefault("patroni", {}).setdefault(mode, {})
    workdir = Path(tempfile.mkdtemp(prefix=f"lcbench-patroni-{mode[:4]}-", dir="/tmp"))
    workdir.chmod(0o755)
    try:
        with Network(SUBNET, bridge=BRIDGE, prefix=PREFIX) as net:
            t_start = time.monotonic()
            lab = start_lab(net, workdir / "lab", synchronous)
            try:
                wait_whole(lab, synchronous, None)
                timings = read_timings(lab)
                out["timings"] = timings.__dict__
                out["latency"] = commit_latency(lab, workdir / "latency")
                phases = out.setdefault("phase_s", {})
                phases["start"] = time.monotonic() - t_start
                t0 = time.monotonic()
                out["latency"] = commit_latency(lab, workdir / "latency")
                phases["latency"] = time.monotonic() - t0
                clients = Clients(lab, workdir)
                clients.start()
                try:
                    t0 = time.monotonic()
                    kills = KILLS if synchronous else ASYNC_KILLS
                    out["kills"] = failover_runs(lab, clients, synchronous, kills, "kill")
                    phases["kills"] = time.monotonic() - t0
                    t0 = time.monotonic()
                    switchovers = SWITCHOVERS if synchronous else ASYNC_SWITCHOVERS
                    out["switchovers"] = switchover_runs(lab, clients, synchronous, switchovers)
                    phases["switchovers"] = time.monotonic() - t0
                    if synchronous and CUTS:
                        t0 = time.monotonic()
                        out["cuts"] = failover_runs(lab, clients, synchronous, CUTS, "cut")
                        phases["cuts"] = time.monotonic() - t0
                    wait_whole(lab, synchronous, clients)
                finally:
                    logs = clients.stop()
                out["lost"] = lost_commits(lab, logs)
                if not synchronous:
                    t0 = time.monotonic()
                    out["clone"] = clone_replica(lab)
                    phases["clone"] = time.monotonic() - t0
            finally:
                lab.stop_all()
    finally:
        if not os.environ.get("LC_KEEP_WORKDIR"):
            shutil.rmtree(workdir, ignore_errors=True)


def rows_for(results: dict[str, Any]) -> list[Row]:
    """The table rows, in the issue's order (then the extra figures), from the results dict."""
    rows: list[Row] = []
    section = results.get("patroni", {})
    modes = {k: section[k] for k in ("synchronous", "asynchronous") if k in section}
    first = next((m["timings"] for m in modes.values() if "timings" in m), None)
    if first is not None:
        t = Timings(**first)
        rows.append(
            (
                "Patroni timings (modules/postgres/patroni-settings.nix)",
                f"{t.short()}"
                + ("; the running cluster's /config agrees" if t.running_agrees else "; /config DIFFERS")
                + f"; backends' connect_timeout={t.connect_timeout} s",
                "",
            )
        )

    def tags() -> list[tuple[str, dict[str, Any], str]]:
        return [
            (
                "sync" if mode == "synchronous" else "async",
                m,
                Timings(**m["timings"]).short() if "timings" in m else "?",
            )
            for mode, m in modes.items()
        ]

    def outage_rows(what: str, runs: list[dict[str, Any]], tag: str, timing: str, target: str) -> None:
        for kind in CLIENTS:
            values = [r["first_ack_s"][kind] for r in runs]
            rows.append(
                (
                    f"{what} -> first acked write, {CLIENT_NAMES[kind]} ({tag}, {len(values)}x)",
                    f"{spread(values)} (each: {each(values)} s) [{timing}]",
                    target,
                )
            )
        seen = [r["new_leader_on_rest_s"] for r in runs]
        rows.append((f"  of which: until the new leader answers /primary ({tag})", spread(seen), "none (report)"))

    for tag, m, timing in tags():  # 1. kill -9
        if m.get("kills"):
            outage_rows("kill -9 of the leader", m["kills"], tag, timing, KILL_TARGET)
    for tag, m, timing in tags():  # 2. switchover
        sws = m.get("switchovers", [])
        if not sws:
            continue
        for kind in CLIENTS:
            values = [x["longest_pause_s"][kind] for x in sws]
            rows.append(
                (
                    f"switchover -> longest pause in acked writes, {CLIENT_NAMES[kind]} ({tag}, {len(values)}x)",
                    f"{spread(values)} (each: {each(values)} s) [{timing}]",
                    SWITCHOVER_TARGET,
                )
            )
        took = [x["switchover_sh_s"] for x in sws]
        rows.append((f"  switchover.sh, request to 'leads now' ({tag})", spread(took), "none (report)"))
    for tag, m, _ in tags():  # 3. lost commits
        lost = m.get("lost")
        if not lost:
            continue
        counts = [(len(m.get(k, [])), k) for k in ("kills", "switchovers", "cuts")]
        events = " + ".join(f"{n} {k}" for n, k in counts if n) or "no failover"
        value = "; ".join(f"{CLIENT_NAMES[k]} {v['lost']} of {v['acknowledged']:,}" for k, v in lost.items())
        target = "0" if tag == "sync" else "none (async: may be > 0)"
        rows.append((f"acked commits lost across {events} ({tag})", value, target))
    lat = {tag: m["latency"] for tag, m, _ in tags() if "latency" in m}  # 4. commit latency
    if lat:
        parts = [
            f"{tag} {v['p50_s'] * 1000:.2f} / {v['p99_s'] * 1000:.2f} ms ({v['commits']:,} commits, "
            f"load avg {v['load_avg_1min_before']:.1f})"
            for tag, v in lat.items()
        ]
        rows.append(
            (
                f"commit latency p50 / p99 (pgbench, {LATENCY_CLIENTS} clients, {LATENCY_RATE} commits/s, "
                "backends' string)",
                "; ".join(parts),
                "none (report)",
            )
        )
    for tag, m, timing in tags():  # 5. extras
        if m.get("cuts"):
            outage_rows("leader's link cut", m["cuts"], tag, timing, "none (report)")
    for tag, m, _ in tags():
        kills = m.get("kills", [])
        if kills:
            rejoin = [k["old_leader_streaming_again_s"] for k in kills]
            rest = [k["old_leader_rest_api_up_s"] for k in kills]
            rows.append(
                (
                    f"killed leader back as a streaming replica, from Patroni's start ({tag})",
                    f"{spread(rejoin)} (its REST API up after median {statistics.median(rest):.2f} s)",
                    "none (report)",
                )
            )
        cuts = m.get("cuts", [])
        if cuts:
            back = [c["old_leader_streaming_after_link_up_s"] for c in cuts]
            rows.append((f"cut-off leader streaming again, from link up ({tag})", spread(back), "none (report)"))
    clone = modes.get("asynchronous", {}).get("clone")
    if clone:
        rows.append(
            (
                f"new replica cloned by Patroni, {clone['all_databases_bytes'] / MB:,.0f} MB cluster "
                "(start -> streaming)",
                f"{clone['patroni_start_to_streaming_s']:.1f} s, {clone['mb_per_s']:.0f} MB/s "
                f"({clone['data_dir_bytes'] / MB:,.0f} MB data dir; REST API up after "
                f"{clone['patroni_rest_api_up_s']:.1f} s)",
                "none (report)",
            )
        )
    if "section_s" in section:
        phases = "; ".join(
            f"{tag}: " + ", ".join(f"{k} {v:.0f} s" for k, v in m.get("phase_s", {}).items()) for tag, m, _ in tags()
        )
        rows.append(("patroni section wall time", f"{section['section_s']:.0f} s ({phases})", ""))
    return rows


def bench_patroni(results: dict[str, Any]) -> list[Row]:
    need(os.geteuid() == 0, "needs root (network namespaces)")
    need((pg.PG_BIN / "pgbench").exists(), f"pgbench is not installed in {pg.PG_BIN}")
    for path, what in ((ETCD, "etcd"), (HAPROXY, "HAProxy"), (PATRONI, "Patroni's venv")):
        need(path.exists(), f"{what} is not installed at {path} (scripts/install-system-deps.sh)")
    need(shutil.which("nix-instantiate") is not None, "nix-instantiate is not installed")
    started = time.monotonic()
    failed: list[Row] = []
    for synchronous in (True, False):
        mode = "synchronous" if synchronous else "asynchronous"
        failed += guarded(f"patroni {mode}", functools.partial(run_once, synchronous, results))
    results.setdefault("patroni", {})["section_s"] = time.monotonic() - started
    return rows_for(results) + failed


def run_once(synchronous: bool, results: dict[str, Any]) -> list[Row]:
    run_cluster(synchronous, results)
    return []


SECTIONS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {"patroni": bench_patroni}
