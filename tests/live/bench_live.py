"""Live figures for scripts/bench.py: real nginx and real PostgreSQL in network namespaces.

scripts/bench.py merges ``SECTIONS`` ("frontend", "postgres") into its own table. Each section builds
its own hosts on 10.234.0.0/24 (bridge lcbr-bn, namespaces lcb-*), apart from the live tests'
10.231/10.232 networks so both can run at once, and tears them down whatever happens. The hosts are
the live tests' clusters (tests/live/cluster.toml, tests/live/pg-cluster.toml) moved to that subnet
and compiled by synth; nginx and PostgreSQL are configured by tests/live/frontend.py and
tests/live/pg.py exactly as for the tests, with the module's own routing files and scripts.

These are measurements, not tests: nothing here asserts a timing. Behind nginx answer ROUTING
FIXTURES, NOT LEMMY (tiny Python HTTP servers that answer at once), so the frontend figures are
nginx's own cost and behaviour, not lemmy-ui's. Needs root, iproute2, nginx, PostgreSQL (pgbench);
wrk for the throughput figure if installed (else a Python load generator, reported as such).

frontend (fe1, fe2, app1; the client is the root namespace):
  1. latency of GET / through fe1's nginx vs straight to fe1's ui fixture: one Python client,
     sequential, one keep-alive connection per path, the two paths interleaved in blocks of 250;
     the client's own CPU per request is reported beside the difference.
  2. requests/s through one frontend vs two (the same connections split over fe1 and fe2), with
     the rate straight to one fixture as the ceiling; the load generator's CPU share is reported.
  3. failed GETs: 4 looping clients through fe1 while its ui fixture is SIGKILLed; 4 clients
     round-robin over fe1 and fe2 while fe2's link is cut (2 s client timeout), without and with
     one retry on the other frontend.
postgres (db1 primary, db2 replica, pgbench and writers on app1 over TCP as the Lemmy role):
  4. replication lag under pgbench's TPC-B-like load: PL/pgSQL probes, a row stamped with
     clock_timestamp() committed on the primary every 100 ms and watched for on the replica every
     5 ms (all namespaces share one clock), and replay_lag from pg_stat_replication every 100 ms.
  5. acknowledged rows lost: one psql session commits rows one by one and records every acked id
     (beside a 4-client insert load), the primary is killed with SIGKILL, promote.sh promotes db2;
     asynchronous, then a fresh cluster with synchronous_standby_names = 'ANY 1 (db2, db3)'.
  6. promote.sh's start to the first INSERT the new primary accepts (both promotions of 5).
  7. bootstrap-replica.sh against a pgbench -s 70 primary (about 1 GB): seconds and MB/s.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.model import Cluster, from_data
from synth.topology import BACKEND_PORT, UI_PORT, plan
from tests.live import pg
from tests.live.frontend import NGINX, Nginx, RoutingFixture, write_nginx_conf
from tests.live.netns import Host, Network
from tests.live.pg import PgLab, PgServer

Row = tuple[str, str, str]  # figure, measured, target

SUBNET = "10.234.0.0/24"
BRIDGE = "lcbr-bn"
PREFIX = "lcb-"
HERE = Path(__file__).resolve().parent
MB = 1024 * 1024

# frontend
LATENCY_REQUESTS = 2000  # sequential GETs per path (nginx hop, direct)
LOAD_SECONDS = 10  # each throughput run
LOAD_CONNECTIONS = 32  # concurrent keep-alive connections, split over the frontends
FAILOVER_SECONDS = 8.0  # each failover run; the failure happens FAILOVER_AT seconds in
FAILOVER_AT = 3.0
FAILOVER_CLIENTS = 4
CLIENT_TIMEOUT = 2.0  # the failover clients' connect/read timeout

# postgres
BOOTSTRAP_SCALE = int(os.environ.get("LC_BENCH_PG_SCALE", "70"))  # pgbench -i -s 70: about 1 GB
LAG_SECONDS = 20
PGBENCH_CLIENTS = 8
RPO_ACKS_BEFORE_CRASH = 2000


# --------------------------------------------------------------------------- helpers


def _retargeted(toml: Path, old: str) -> dict[str, Any]:
    """TOML's data with every address OLD.x moved to 10.234.0.x (the benchmark's own subnet)."""
    return tomllib.loads(toml.read_text(encoding="utf-8").replace(old, "10.234.0."))


def pct(values: Sequence[float], p: float) -> float:
    """The P-th percentile (nearest rank) of VALUES."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def guarded(name: str, fn: Callable[[], list[Row]]) -> list[Row]:
    """FN's rows; if it fails, one row saying why (the section's other figures still run)."""
    try:
        return fn()
    except Exception as exc:
        why = " | ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
        return [(f"{name}: not measured", f"{type(exc).__name__}: {why[:200]}", "")]


def need(condition: bool, why: str) -> None:
    if not condition:
        raise RuntimeError(why)


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Processes started inside inherit PATH as their stderr (the routing fixtures print a traceback
    for every client that hangs up mid-answer, which a load run's end does by the thousand)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- frontend


@dataclass
class FrontendLab:
    domain: str
    hosts: dict[str, Host]
    ui: dict[str, RoutingFixture]
    nginx: dict[str, Nginx]
    frontends: list[str]
    fixture_log: Path

    def addr(self, fe: str) -> str:
        return self.hosts[fe].address

    def restart_ui(self, fe: str) -> None:
        with stderr_to(self.fixture_log):
            self.ui[fe].restart()


def _get(conn: http.client.HTTPConnection, domain: str) -> tuple[int, str | None]:
    conn.request("GET", "/", headers={"Host": domain})
    resp = conn.getresponse()
    resp.read()
    return resp.status, resp.getheader("X-Fixture-Server")


def _sequential(address: str, port: int, domain: str, n: int) -> tuple[list[float], int, float]:
    """N sequential GET / on one keep-alive connection: (latencies, non-200 answers, client CPU s)."""
    conn = http.client.HTTPConnection(address, port, timeout=10)
    lat: list[float] = []
    bad = 0
    cpu0 = time.thread_time()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, _server = _get(conn, domain)
            lat.append(time.perf_counter() - t0)
            bad += status != 200
    finally:
        conn.close()
    return lat, bad, time.thread_time() - cpu0


def fe_latency(lab: FrontendLab, results: dict[str, Any]) -> list[Row]:
    """Figure 1: p50/p99 of GET / through fe1's nginx vs straight to fe1's ui fixture."""
    fe = lab.frontends[0]
    targets = {"nginx": (lab.addr(fe), 80), "direct": (lab.addr(fe), UI_PORT)}
    for address, port in targets.values():  # warm up connections, caches, nginx's upstream keepalive
        _sequential(address, port, lab.domain, 200)
    lat: dict[str, list[float]] = {k: [] for k in targets}
    bad: Counter[str] = Counter()
    cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
    block = 250  # interleave the two paths in blocks, so drift in machine load hits both alike
    for _ in range(LATENCY_REQUESTS // block):
        for name, (address, port) in targets.items():
            got, b, c = _sequential(address, port, lab.domain, block)
            lat[name] += got
            bad[name] += b
            cpu[name] += c
    fig: dict[str, Any] = {
        name: {
            "requests": len(v),
            "p50_ms": pct(v, 50) * 1000,
            "p99_ms": pct(v, 99) * 1000,
            "non_200": bad[name],
            "client_cpu_per_request_ms": cpu[name] / len(v) * 1000,
        }
        for name, v in lat.items()
    }
    add50 = fig["nginx"]["p50_ms"] - fig["direct"]["p50_ms"]
    add99 = fig["nginx"]["p99_ms"] - fig["direct"]["p99_ms"]
    fig["added_p50_ms"], fig["added_p99_ms"] = add50, add99
    results.setdefault("frontend", {})["latency"] = fig
    n, d = fig["nginx"], fig["direct"]
    client = (n["client_cpu_per_request_ms"] + d["client_cpu_per_request_ms"]) / 2
    what = f"{LATENCY_REQUESTS} sequential, keep-alive"
    return [
        (
            f"GET / through nginx, p50 / p99 ({what})",
            f"{n['p50_ms']:.2f} / {n['p99_ms']:.2f} ms ({n['non_200']} non-200)",
            "",
        ),
        ("GET / direct to the ui fixture, p50 / p99 (same)", f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f} ms", ""),
        (
            "latency added by the nginx hop, p50 / p99",
            f"+{add50:.2f} / +{add99:.2f} ms (client's own CPU {client:.2f} ms/request)",
            "none (report)",
        ),
    ]


# -- load generators


@dataclass
class LoadRun:
    tool: str
    seconds: float
    requests: int = 0
    errors: int = 0  # non-2xx answers and socket errors
    p50_ms: float | None = None
    p99_ms: float | None = None
    client_cpu_s: float = 0.0
    detail: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk_load(urls: list[str], domain: str, connections: int, seconds: int) -> LoadRun:
    """One wrk per URL at once (CONNECTIONS split evenly, one thread each); summed."""
    per = max(1, connections // len(urls))
    cpu0 = children_cpu()
    procs = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{per}", f"-d{seconds}s", "--latency", "-H", f"Host: {domain}", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for url in urls
    ]
    outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    run = LoadRun("wrk", float(seconds), client_cpu_s=children_cpu() - cpu0)
    p50s, p99s = [], []
    for out in outs:
        m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
        if not m:
            raise RuntimeError(f"unexpected wrk output: {out[-300:]}")
        run.requests += int(m.group(1))
        for pat in (
            r"Non-2xx or 3xx responses: (\d+)",
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
        ):
            e = re.search(pat, out)
            if e:
                run.errors += sum(int(x) for x in e.groups())
        lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
        if lat:
            p50s.append(_wrk_ms(lat["50"]))
            p99s.append(_wrk_ms(lat["99"]))
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        run.detail.append(f"{rps.group(1) if rps else '?'} rps")
    # Requests are not re-counted by wrk's own (slightly longer) elapsed time: seconds is the run length.
    run.p50_ms = max(p50s) if p50s else None
    run.p99_ms = max(p99s) if p99s else None
    return run


def _pyload_worker(targets: list[tuple[str, int]], threads: int, seconds: float, domain: str) -> tuple[int, int]:
    ok = bad = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(i: int) -> None:
        nonlocal ok, bad
        address, port = targets[i % len(targets)]
        conn = http.client.HTTPConnection(address, port, timeout=10)
        o = b = 0
        while time.monotonic() < deadline:
            try:
                status, _ = _get(conn, domain)
                o, b = (o + 1, b) if status == 200 else (o, b + 1)
            except (OSError, http.client.HTTPException):
                b += 1
                conn.close()
                conn = http.client.HTTPConnection(address, port, timeout=10)
        conn.close()
        with lock:
            ok += o
            bad += b

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return ok, bad


def python_load(targets: list[tuple[str, int]], domain: str, connections: int, seconds: int) -> LoadRun:
    """The fallback without wrk: one process per CPU, threads with keep-alive connections (GIL-bound)."""
    procs = os.cpu_count() or 1
    cpu0 = children_cpu()
    with ProcessPoolExecutor(procs) as ex:
        futs = [
            ex.submit(_pyload_worker, targets, max(1, connections // procs), float(seconds), domain)
            for _ in range(procs)
        ]
        counts = [f.result() for f in futs]
    run = LoadRun(f"python ({procs} processes)", float(seconds), client_cpu_s=children_cpu() - cpu0)
    run.requests = sum(o + b for o, b in counts)
    run.errors = sum(b for _, b in counts)
    return run


def fe_throughput(lab: FrontendLab, results: dict[str, Any]) -> list[Row]:
    """Figure 2: requests per second through one frontend vs two (the client splits its connections)."""
    fe1, fe2 = lab.frontends[:2]
    have_wrk = shutil.which("wrk") is not None

    def load(targets: list[tuple[str, int]]) -> LoadRun:
        if have_wrk:
            return wrk_load([f"http://{a}:{p}/" for a, p in targets], lab.domain, LOAD_CONNECTIONS, LOAD_SECONDS)
        return python_load(targets, lab.domain, LOAD_CONNECTIONS, LOAD_SECONDS)

    runs = {
        "direct_one_fixture": load([(lab.addr(fe1), UI_PORT)]),
        "one_frontend": load([(lab.addr(fe1), 80)]),
        "two_frontends": load([(lab.addr(fe1), 80), (lab.addr(fe2), 80)]),
    }
    cpus = os.cpu_count() or 1
    fig = {
        k: {
            "tool": r.tool,
            "seconds": r.seconds,
            "connections": LOAD_CONNECTIONS,
            "requests": r.requests,
            "rps": r.rps,
            "errors": r.errors,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "client_cpu_share": r.client_cpu_s / (r.seconds * cpus),
            "per_process": r.detail,
        }
        for k, r in runs.items()
    }
    results.setdefault("frontend", {})["throughput"] = fig

    def value(r: LoadRun) -> str:
        lat = f", p99 {r.p99_ms:.1f} ms" if r.p99_ms is not None else ""
        share = r.client_cpu_s / (r.seconds * cpus) * 100
        return f"{r.rps:,.0f} req/s ({r.errors} errors{lat}; load generator {share:.0f}% of the CPUs)"

    how = f"{LOAD_CONNECTIONS} conns, {LOAD_SECONDS} s, {runs['one_frontend'].tool}"
    one, two = runs["one_frontend"], runs["two_frontends"]
    return [
        (f"GET / req/s direct to one ui fixture ({how})", value(runs["direct_one_fixture"]), ""),
        ("GET / req/s through one frontend (same load)", value(one), ""),
        ("GET / req/s through two frontends (conns split)", value(two), ""),
        ("two frontends vs one", f"x{two.rps / one.rps:.2f} on {cpus} CPUs shared by everything", "none (report)"),
    ]


# -- failover under load


@dataclass
class Outcome:
    at: float  # seconds since the run started
    ok: bool
    seconds: float
    server: str | None
    retried: bool = False


def loop_clients(
    lab: FrontendLab,
    targets: list[str],
    event: Callable[[], None],
    *,
    retry: bool = False,
) -> tuple[list[Outcome], float]:
    """FAILOVER_CLIENTS threads loop GET / over TARGETS (frontends, round robin per request) for
    FAILOVER_SECONDS, each with a keep-alive connection per frontend; EVENT runs FAILOVER_AT seconds in.
    With RETRY a failed GET is sent once more to the next frontend. Returns (outcomes, event time)."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + FAILOVER_SECONDS

    def client(i: int) -> None:
        conns: dict[str, http.client.HTTPConnection] = {}

        def attempt(fe: str) -> tuple[bool, str | None]:
            conn = conns.get(fe) or http.client.HTTPConnection(lab.addr(fe), 80, timeout=CLIENT_TIMEOUT)
            conns[fe] = conn
            try:
                status, server = _get(conn, lab.domain)
                return status == 200, server
            except (OSError, http.client.HTTPException):
                conn.close()
                del conns[fe]
                return False, None

        k = i
        mine: list[Outcome] = []
        while time.monotonic() < deadline:
            fe = targets[k % len(targets)]
            k += 1
            t0 = time.monotonic()
            ok, server = attempt(fe)
            retried = False
            if not ok and retry and len(targets) > 1:
                retried = True
                ok, server = attempt(targets[k % len(targets)])
            mine.append(Outcome(t0 - start, ok, time.monotonic() - t0, server, retried))
        for c in conns.values():
            c.close()
        with lock:
            outcomes.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(FAILOVER_CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start + FAILOVER_AT - time.monotonic()))
    event_at = time.monotonic() - start
    event()
    for t in threads:
        t.join()
    return sorted(outcomes, key=lambda o: o.at), event_at


def summarize(outcomes: list[Outcome], event_at: float) -> dict[str, Any]:
    after = [o for o in outcomes if o.at + o.seconds >= event_at]
    return {
        "requests": len(outcomes),
        "failed": sum(not o.ok for o in outcomes),
        "retried": sum(o.retried for o in outcomes),
        "requests_after_event": len(after),
        "answered_by_after_event": dict(Counter(o.server or "failed" for o in after)),
        "slowest_s": max((o.seconds for o in outcomes), default=0.0),
        "event_at_s": event_at,
    }


def wait_served_by(lab: FrontendLab, fe: str, expected: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(lab.addr(fe), 80, timeout=2)
        try:
            if _get(conn, lab.domain)[1] == expected:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"GET / through {fe} not answered by {expected} within {timeout}s")


def fe_failover(lab: FrontendLab, results: dict[str, Any]) -> list[Row]:
    """Figure 3: failed GETs while fe1's ui dies (clients through fe1), and while fe2's link is cut
    (clients round-robin over fe1 and fe2, without and with one retry on the other frontend)."""
    fe1, fe2 = lab.frontends[:2]
    fig: dict[str, Any] = {}
    rows: list[Row] = []
    load = f"{FAILOVER_CLIENTS} clients, {FAILOVER_SECONDS:.0f} s"

    outcomes, at = loop_clients(lab, [fe1], lab.ui[fe1].kill)
    fig["ui_killed_through_fe1"] = s = summarize(outcomes, at)
    lab.restart_ui(fe1)
    served = ", ".join(f"{k} {v}" for k, v in sorted(s["answered_by_after_event"].items()))
    rows.append(
        (
            f"failed GETs through fe1, its ui killed ({load})",
            f"{s['failed']} of {s['requests']} (after the kill: {served}; slowest {ms(s['slowest_s'])})",
            "0 failed GETs",
        )
    )
    wait_served_by(lab, fe1, f"{fe1}-ui")

    for retry in (False, True):
        outcomes, at = loop_clients(lab, [fe1, fe2], lambda: lab.hosts[fe2].link(False), retry=retry)
        lab.hosts[fe2].link(True)
        key = "fe2_cut_round_robin" + ("_retry" if retry else "")
        fig[key] = s = summarize(outcomes, at)
        how = "1 retry on the other" if retry else "no retry"
        value = f"{s['failed']} of {s['requests']}"
        value += f", {s['retried']} retried" if retry else f" (each a {CLIENT_TIMEOUT:.0f} s client timeout)"
        value += f"; slowest {ms(s['slowest_s'])}"
        rows.append(
            (
                f"failed GETs round-robin fe1+fe2, fe2 cut, {how}",
                value,
                "none (a dead frontend fails its clients)" if not retry else "none (report)",
            )
        )
        wait_served_by(lab, fe2, f"{fe2}-ui")
    results.setdefault("frontend", {})["failover"] = fig
    return rows


def bench_frontend(results: dict[str, Any]) -> list[Row]:
    need(os.geteuid() == 0, "needs root (network namespaces)")
    need(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    need(Path(NGINX).exists(), f"nginx is not installed ({NGINX})")
    c: Cluster = from_data(_retargeted(HERE / "cluster.toml", "10.231.0."), "tests/live/cluster.toml (bench subnet)")
    plans = plan(c)
    frontends = c.machines_with("frontend")
    (backend,) = c.machines_with("backend")
    need(len(frontends) >= 2, f"expected two frontends in cluster.toml, got {frontends}")
    tmp = Path(tempfile.mkdtemp(prefix="lcbench-fe-"))
    fixture_log = tmp / "fixtures.log"
    nginx: dict[str, Nginx] = {}
    rows: list[Row] = []
    try:
        with Network(SUBNET, bridge=BRIDGE, prefix=PREFIX) as net:
            try:
                hosts = {n: net.add(n, plans[n].private_address) for n in [*frontends, backend]}
                ui: dict[str, RoutingFixture] = {}
                with stderr_to(fixture_log):
                    RoutingFixture.start(hosts[backend], f"{backend}-backend", hosts[backend].address, BACKEND_PORT)
                    for fe in frontends:
                        ui[fe] = RoutingFixture.start(hosts[fe], f"{fe}-ui", plans[fe].private_address, UI_PORT)
                for fe in frontends:
                    hp = plans[fe]
                    assert hp.frontend is not None
                    paths = write_nginx_conf(hp.frontend, c.cluster.domain, hp.private_address, tmp / fe)
                    nginx[fe] = Nginx(hosts[fe], paths).start()
                lab = FrontendLab(c.cluster.domain, hosts, ui, nginx, frontends, fixture_log)
                for fe in frontends:
                    wait_served_by(lab, fe, f"{fe}-ui")
                rows += guarded("frontend latency", lambda: fe_latency(lab, results))
                rows += guarded("frontend throughput", lambda: fe_throughput(lab, results))
                rows += guarded("frontend failover", lambda: fe_failover(lab, results))
            finally:
                for n in nginx.values():
                    n.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------- postgres

# Server-side probes (PL/pgSQL, so that sampling does not pay a psql start per sample): a writer
# that commits a timestamped row every EVERY seconds on the primary, a watcher that polls a replica
# every 5 ms and returns, for every row it sees appear, (seen - written) in seconds; and a sampler of
# pg_stat_replication.replay_lag every 100 ms. All hosts share one kernel clock.
PROBES_SQL = """
CREATE TABLE lag_probe (id bigserial PRIMARY KEY, t timestamptz NOT NULL);
CREATE PROCEDURE lag_probe_write(seconds float8, every float8) LANGUAGE plpgsql AS $$
DECLARE stop timestamptz := clock_timestamp() + make_interval(secs => seconds);
BEGIN
    WHILE clock_timestamp() < stop LOOP
        INSERT INTO lag_probe (t) VALUES (clock_timestamp());
        COMMIT;
        PERFORM pg_sleep(every);
    END LOOP;
END $$;
CREATE FUNCTION lag_probe_watch(seconds float8) RETURNS SETOF float8 LANGUAGE plpgsql AS $$
DECLARE
    stop timestamptz := clock_timestamp() + make_interval(secs => seconds);
    last bigint := coalesce((SELECT max(id) FROM lag_probe), 0);
    r record;
BEGIN
    WHILE clock_timestamp() < stop LOOP
        FOR r IN SELECT id, t FROM lag_probe WHERE id > last ORDER BY id LOOP
            RETURN NEXT extract(epoch FROM clock_timestamp() - r.t);
            last := r.id;
        END LOOP;
        PERFORM pg_sleep(0.005);
    END LOOP;
END $$;
CREATE FUNCTION replay_lag_samples(seconds float8, standby text) RETURNS SETOF float8 LANGUAGE plpgsql AS $$
DECLARE stop timestamptz := clock_timestamp() + make_interval(secs => seconds); v float8;
BEGIN
    WHILE clock_timestamp() < stop LOOP
        SELECT extract(epoch FROM replay_lag) INTO v FROM pg_stat_replication WHERE application_name = standby;
        IF v IS NOT NULL THEN RETURN NEXT v; END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
"""

RPO_TABLES_SQL = """
SET ROLE lemmy;
CREATE TABLE items (id int PRIMARY KEY, note text);
CREATE TABLE background (id bigserial PRIMARY KEY, client int, at timestamptz DEFAULT now());
"""


@dataclass
class PgBench:
    lab: PgLab
    client: Host  # the namespace pgbench and the writers run in (app1, a backend)
    rows: list[tuple[int, Row]] = field(default_factory=list)  # (figure number, row)
    promotions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, figure: int, row: Row) -> None:
        self.rows.append((figure, row))

    def env(self) -> dict[str, str]:
        return {"PATH": pg.SYS_PATH, "LANG": "C.UTF-8", "PGPASSFILE": str(self.lab.client_pgpass)}

    def pgbench_args(self, srv: PgServer, args: Sequence[str]) -> list[str]:
        return pg.as_pg([str(pg.PG_BIN / "pgbench"), "-h", srv.address, "-p", "5432", "-U", "lemmy", *args, "lemmy"])

    def pgbench(self, srv: PgServer, args: Sequence[str], timeout: float) -> str:
        r = self.client.run(self.pgbench_args(srv, args), check=False, timeout=timeout, env=self.env())
        if r.returncode != 0:
            raise RuntimeError(f"pgbench {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return r.stdout + r.stderr

    def background_load(self, srv: PgServer, seconds: int) -> subprocess.Popen[Any]:
        """pgbench inserting rows (4 clients) against SRV, in the background."""
        script = self.lab.workdir / "insert.sql"
        script.write_text("INSERT INTO background (client) VALUES (:client_id);\n")
        script.chmod(0o644)
        args = ["-n", "-c", "4", "-j", "2", "-T", str(seconds), "-f", str(script)]
        return self.client.popen(
            self.pgbench_args(srv, args), env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )


def wait_streaming(primary: PgServer, standbys: list[str], mode: str) -> None:
    sql = "SELECT string_agg(application_name || ':' || sync_state, ',' ORDER BY 1) FROM pg_stat_replication"
    want = ",".join(f"{s}:{mode}" for s in sorted(standbys))
    got = primary.wait_for(sql, want, timeout=30)
    if got != want:
        raise RuntimeError(f"{primary.name}: standbys not streaming as {want}: {got}")


def start_replica(lab: PgLab, name: str, timeout: float = 900) -> tuple[PgServer, float]:
    """bootstrap-replica.sh (as lemmy-cluster-pg-bootstrap runs it), then start; (server, bootstrap s)."""
    srv = lab.server(name)
    args = [*lab.bootstrap_args(srv), "--password-file", str(lab.replication_password_file), "--wait-for-primary"]
    t0 = time.monotonic()
    r = lab.script(srv.host, "bootstrap-replica.sh", args, timeout=timeout)
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"bootstrap-replica.sh on {name} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    srv.write_config(lab.cluster)
    srv.start()
    return srv, seconds


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a file that went away meanwhile
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def pg_bootstrap_and_lag(b: PgBench, results: dict[str, Any]) -> PgServer:
    """Figures 7 and 4 on the asynchronous cluster: a ~1 GB primary, a replica bootstrapped from it,
    then replication lag under pgbench's TPC-B-like load. Returns the running replica."""
    lab = b.lab
    db1 = lab.servers["db1"]
    out = results.setdefault("postgres", {})
    t0 = time.monotonic()
    # Server-side data generation (G): the rows are made in the primary, not sent over the network.
    b.pgbench(db1, ["-i", "-q", "-I", "dtGvp", "-s", str(BOOTSTRAP_SCALE)], timeout=1200)
    init_s = time.monotonic() - t0
    db_bytes = int(db1.sql("SELECT pg_database_size('lemmy')"))
    cluster_bytes = int(db1.sql("SELECT sum(pg_database_size(datname)) FROM pg_database"))
    db1.psql_run(PROBES_SQL, db="lemmy")

    db2, seconds = start_replica(lab, "db2")
    copied = dir_bytes(db2.data)
    fig7 = {
        "pgbench_scale": BOOTSTRAP_SCALE,
        "pgbench_init_s": init_s,
        "lemmy_db_bytes": db_bytes,
        "all_databases_bytes": cluster_bytes,
        "replica_data_dir_bytes": copied,
        "bootstrap_s": seconds,
        "mb_per_s": copied / MB / seconds,
    }
    out["bootstrap"] = fig7
    b.add(
        7,
        (
            f"replica bootstrap, {db_bytes / MB:,.0f} MB database (pgbench -s {BOOTSTRAP_SCALE})",
            f"{seconds:.1f} s, {copied / MB / seconds:.0f} MB/s ({copied / MB:,.0f} MB data dir copied)",
            "none (report)",
        ),
    )
    wait_streaming(db1, ["db2"], "async")

    # Figure 4: lag under a TPC-B-like write load from app1.
    results_box: dict[str, Any] = {}

    def run(key: str, fn: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                results_box[key] = fn()
            except Exception as exc:
                results_box[key] = exc

        t = threading.Thread(target=target)
        t.start()
        return t

    watch_s = LAG_SECONDS + 4
    threads = [
        run("watch", lambda: db2.psql_run(f"SELECT * FROM lag_probe_watch({watch_s})", db="lemmy", timeout=120)),
        run(
            "replay",
            lambda: db1.psql_run(f"SELECT * FROM replay_lag_samples({watch_s}, 'db2')", db="lemmy", timeout=120),
        ),
    ]
    time.sleep(0.5)
    threads.append(
        run("write", lambda: db1.psql_run(f"CALL lag_probe_write({LAG_SECONDS}, 0.1)", db="lemmy", timeout=120))
    )
    threads.append(
        run(
            "pgbench",
            lambda: b.pgbench(
                db1, ["-n", "-c", str(PGBENCH_CLIENTS), "-j", "2", "-T", str(LAG_SECONDS)], timeout=LAG_SECONDS + 120
            ),
        )
    )
    for t in threads:
        t.join()
    for key, value in results_box.items():
        if isinstance(value, Exception):
            raise RuntimeError(f"lag run, {key}: {value}")
    tps_m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", results_box["pgbench"])
    tps = float(tps_m.group(1)) if tps_m else float("nan")
    lat_m = re.search(r"latency average = ([\d.]+) ms", results_box["pgbench"])
    probe = [float(x) for x in results_box["watch"].stdout.split()]
    replay = [float(x) for x in results_box["replay"].stdout.split()]
    written = int(db1.sql("SELECT count(*) FROM lag_probe", db="lemmy"))
    fig4: dict[str, Any] = {
        "pgbench": f"TPC-B-like, -c {PGBENCH_CLIENTS} -j 2 -T {LAG_SECONDS}, scale {BOOTSTRAP_SCALE}, from app1",
        "tps": tps,
        "pgbench_latency_avg_ms": float(lat_m.group(1)) if lat_m else None,
        "probe_rows_written": written,
        "probe_rows_seen": len(probe),
        "probe_lag_p50_s": pct(probe, 50),
        "probe_lag_p99_s": pct(probe, 99),
        "probe_lag_max_s": max(probe, default=float("nan")),
        "replay_lag_samples": len(replay),
        "replay_lag_p50_s": pct(replay, 50),
        "replay_lag_p99_s": pct(replay, 99),
    }
    out["replication_lag"] = fig4
    b.add(
        4,
        (
            f"replication lag p50 / p99, probe rows ({len(probe)})",
            f"{ms(fig4['probe_lag_p50_s'])} / {ms(fig4['probe_lag_p99_s'])} at {tps:,.0f} tps "
            f"(TPC-B-like, {PGBENCH_CLIENTS} clients)",
            "p99 < 1 s at >= 500 tps",
        ),
    )
    b.add(
        4,
        (
            f"replication lag p50 / p99, replay_lag ({len(replay)} samples)",
            f"{ms(fig4['replay_lag_p50_s'])} / {ms(fig4['replay_lag_p99_s'])} (same run)",
            "p99 < 1 s at >= 500 tps",
        ),
    )
    return db2


class AckWriter(threading.Thread):
    """One psql session from the client host inserting rows one by one (autocommit) and recording
    every id whose commit the server acknowledged, until the server goes away."""

    def __init__(self, b: PgBench, srv: PgServer) -> None:
        super().__init__(daemon=True)
        self.acked: list[int] = []
        conninfo = b.lab.lemmy_conninfo(srv.name)
        args = pg.as_pg([str(pg.PG_BIN / "psql"), "-w", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
        self.proc = b.client.popen(
            args,
            env=b.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def run(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        i = 0
        try:
            while True:
                i += 1
                self.proc.stdin.write(f"INSERT INTO items VALUES ({i}, 'rpo') RETURNING id;\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
                if line.strip() != str(i):
                    return
                self.acked.append(i)
        except (BrokenPipeError, OSError):
            return

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def pg_rpo_and_promote(b: PgBench, primary: PgServer, replica: PgServer, mode: str, results: dict[str, Any]) -> None:
    """Figures 5 and 6 in MODE: a writer commits rows one by one (beside a background insert load),
    the primary is killed with SIGKILL, promote.sh promotes the replica; count acknowledged rows
    missing there, and time promote.sh's start to the first write accepted by the new primary."""
    lab = b.lab
    primary.psql_run(RPO_TABLES_SQL, db="lemmy")
    load = b.background_load(primary, 120)
    writer = AckWriter(b, primary)
    started = time.monotonic()
    writer.start()
    deadline = time.monotonic() + 30
    while len(writer.acked) < RPO_ACKS_BEFORE_CRASH and time.monotonic() < deadline and writer.is_alive():
        time.sleep(0.01)
    background_rows = int(primary.sql("SELECT count(*) FROM background", db="lemmy"))
    writer_s = time.monotonic() - started
    primary.kill9()
    writer.join(timeout=30)
    writer.close()
    load.kill()
    load.wait(timeout=10)
    acked = list(writer.acked)

    t0 = time.monotonic()
    r = lab.script(replica.host, "promote.sh", ["--host", str(replica.run_dir), "--port", "5432", "--timeout", "30"])
    promote_s = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"promote.sh on {replica.name} failed ({r.returncode}): {r.stderr.strip()}")
    first_write = None
    attempts = 0
    while time.monotonic() - t0 < 30:
        attempts += 1
        w = lab.client_psql(b.client, lab.lemmy_conninfo(replica.name), "INSERT INTO items VALUES (-1, 'first')")
        if w.returncode == 0:
            first_write = time.monotonic() - t0
            break
        time.sleep(0.02)
    present = {int(x) for x in replica.sql("SELECT id FROM items WHERE id > 0", db="lemmy").split()}
    lost = sorted(set(acked) - present)
    unacked_present = sorted(present - set(acked))
    fig5 = {
        "acknowledged": len(acked),
        "present_after_promotion": len(present),
        "lost": len(lost),
        "lost_ids_sample": lost[:20],
        "committed_not_acknowledged": len(unacked_present),
        "writer_commits_per_s": len(acked) / writer_s,
        "background_rows_before_crash": background_rows,
    }
    out = results.setdefault("postgres", {})
    out.setdefault("rpo", {})[mode] = fig5
    what = "sync ANY 1" if mode == "synchronous" else "async"
    b.add(
        5,
        (
            f"acked rows lost, primary kill -9 + promote, {what}",
            f"{len(lost)} of {len(acked)} acknowledged (writer {len(acked) / writer_s:,.0f} commits/s)",
            "0 lost in synchronous mode" if mode == "synchronous" else "none (report)",
        ),
    )
    b.promotions[mode] = {
        "promote_sh_s": promote_s,
        "promote_sh_output": r.stdout.strip(),
        "first_write_s": first_write,
        "write_attempts": attempts,
    }


def bench_postgres(results: dict[str, Any]) -> list[Row]:
    need(os.geteuid() == 0, "needs root (network namespaces)")
    need((pg.PG_BIN / "pgbench").exists(), f"pgbench is not installed in {pg.PG_BIN}")
    workdir = Path(tempfile.mkdtemp(prefix="lcbench-pg-", dir="/tmp"))
    workdir.chmod(0o755)
    toml = workdir / "cluster.toml"
    toml.write_text(
        (HERE / "pg-cluster.toml").read_text(encoding="utf-8").replace("10.232.0.", "10.234.0."), encoding="utf-8"
    )
    rows: list[Row] = []
    try:
        with Network(SUBNET, bridge=BRIDGE, prefix=PREFIX) as net:
            lab = PgLab(net, workdir / "lab", pg.load_cluster(toml, synchronous=False))
            b = PgBench(lab, lab.host("app1"))
            try:
                db1 = lab.server("db1")
                lab.init_primary(db1)

                def asynchronous() -> list[Row]:
                    db2 = pg_bootstrap_and_lag(b, results)
                    pg_rpo_and_promote(b, db1, db2, "asynchronous", results)
                    return []

                rows += guarded("postgres asynchronous (bootstrap, lag, RPO)", asynchronous)

                def synchronous() -> list[Row]:
                    lab.reset(pg.load_cluster(toml, synchronous=True))
                    p = lab.server("db1")
                    lab.init_primary(p)
                    r, _ = start_replica(lab, "db2")
                    wait_streaming(p, ["db2"], "quorum")
                    pg_rpo_and_promote(b, p, r, "synchronous", results)
                    return []

                rows += guarded("postgres synchronous (RPO)", synchronous)
            finally:
                lab.stop_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if b.promotions:
        results.setdefault("postgres", {})["promotion"] = b.promotions
        parts = [
            f"{p['first_write_s']:.2f} s ({mode} run; promote.sh itself {p['promote_sh_s']:.2f} s)"
            if p["first_write_s"] is not None
            else f"no write within 30 s ({mode} run)"
            for mode, p in b.promotions.items()
        ]
        b.add(6, ("promote.sh -> first write on the new primary", "; ".join(parts), "< 5 s"))
    # In the order: lag (4), lost rows (5), promotion (6), bootstrap (7); then what failed.
    return [row for _, row in sorted(b.rows, key=lambda r: r[0])] + rows


SECTIONS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "frontend": bench_frontend,
    "postgres": bench_postgres,
}
