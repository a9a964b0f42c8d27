"""Live tests of the frontend role: the real Debian nginx on modules/frontend/*.conf.

The cluster comes from tests/live/cluster.toml, compiled by synth (model + topology); each
frontend (fe1, fe2) and the backend machine (app1) is a network namespace on a private bridge, and
the root namespace (the bridge's .1 address) is the client. Each frontend's nginx.conf is rendered
from its FrontendPlan the way modules/frontend/default.nix configures nginx, and includes the
module's rule files by absolute path. Two variants of the same file, also compiled by synth, run
beside it: "acme" (frontends ac1, ac2 with tls = "acme": ACME peers, redirect, HTTPS) and "solo"
(a single frontend, acme-no-peers.conf).

Behind nginx run ROUTING FIXTURES, NOT LEMMY: tiny HTTP servers (tests/live/frontend.py) that answer
every request with their own name, so a test sees which upstream nginx chose. "fe1-ui" listens
where fe1's lemmy-ui would (10.231.0.11:1234), "app1-backend" where lemmy_server would
(10.231.0.21:8536). What is tested is nginx's routing, failover and ACME handling, not Lemmy.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from synth.checks import CheckResult, failures
from synth.checks.frontend import backend_reachable, frontend_checks
from synth.model import from_data, load
from synth.topology import BACKEND_PORT, UI_PORT, HostPlan, plan
from tests.conftest import require_root, require_tool
from tests.live.frontend import (
    Answer,
    FrontendPaths,
    Nginx,
    RoutingFixture,
    nginx_test,
    request,
    self_signed_certificate,
    write_nginx_conf,
)
from tests.live.netns import Host, Network
from tests.live.ssh import SshKeys, start_sshd
from tests.live.ssh import testinfra_host as open_testinfra_host  # a test_* name would be collected

pytestmark = [
    pytest.mark.live,
    # testinfra's paramiko backend warns about the test hosts' fresh host keys.
    pytest.mark.filterwarnings("ignore:Unknown ssh-ed25519 host key:UserWarning"),
]

HERE = Path(__file__).resolve().parent
CLUSTER_TOML = HERE / "cluster.toml"
FAIL_TIMEOUT_S = 10  # modules/frontend/default.nix failTimeout default
MB = 1024 * 1024


@dataclass
class Frontends:
    """The running test clusters: hosts, their plans, nginx instances and routing fixtures.

    Three clusters share the bridge and the backend machine, all compiled by synth from
    cluster.toml: the file itself (fe1, fe2; tls = "none"), its "acme" variant (frontends ac1, ac2
    with tls = "acme": port 80 answers challenges and redirects, 443 serves the site with a
    self-signed certificate) and its "solo" variant (one frontend, no ACME peers).
    """

    domain: str
    net: Network
    plans: dict[str, HostPlan]
    tls: dict[str, str]
    variant_of: dict[str, list[str]]
    hosts: dict[str, Host]
    paths: dict[str, FrontendPaths]
    nginx: dict[str, Nginx]
    ui: dict[str, RoutingFixture]
    backend: RoutingFixture
    frontends: list[str]
    tmp: Path
    ssh: dict[str, Any] = field(default_factory=dict)

    def get(self, fe: str, path: str, **kw: Any) -> Answer:
        return self.send(fe, "GET", path, **kw)

    def send(self, fe: str, method: str, path: str, *, host: str | None = None, **kw: Any) -> Answer:
        return request(self.hosts[fe].address, method, path, host=host or self.domain, **kw)

    def peers(self, fe: str) -> list[str]:
        """The other frontends of FE's cluster."""
        return [f for f in self.variant_of[fe] if f != fe]


# Variants of cluster.toml: (frontend names and addresses that replace fe1/fe2, tls mode)
VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "acme": ({"ac1": "10.231.0.14", "ac2": "10.231.0.15"}, "acme"),
    "solo": ({"solo": "10.231.0.13"}, "none"),
}


def _variant(data: dict[str, Any], frontends: dict[str, str], tls: str) -> dict[str, Any]:
    """cluster.toml's data with FRONTENDS (name: address) instead of its own, and tls = TLS."""
    others = {k: v for k, v in data["machines"].items() if "frontend" not in v["roles"]}
    machines = {name: {"address": addr, "roles": ["frontend"]} for name, addr in frontends.items()}
    return {**data, "cluster": {**data["cluster"], "tls": tls}, "machines": {**machines, **others}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontends]:
    require_root()
    for tool in ("ip", "nginx", "sshd", "curl", "ss", "openssl"):
        require_tool(tool)
    c = load(CLUSTER_TOML)
    data = tomllib.loads(CLUSTER_TOML.read_text())
    frontends = c.machines_with("frontend")
    assert frontends == ["fe1", "fe2"], f"expected cluster.toml frontends fe1, fe2, got {frontends}"
    (backend_name,) = c.machines_with("backend")
    plans = plan(c)
    tls: dict[str, str] = dict.fromkeys(frontends, str(c.cluster.tls))
    variant_of = {fe: list(frontends) for fe in frontends}
    for name, (fes, mode) in VARIANTS.items():
        variant = from_data(_variant(data, fes, mode), f"{CLUSTER_TOML} ({name} variant)")
        vplans = plan(variant)
        assert vplans[backend_name].private_address == plans[backend_name].private_address
        plans.update({fe: vplans[fe] for fe in fes})
        tls.update(dict.fromkeys(fes, mode))
        variant_of.update({fe: list(fes) for fe in fes})
    all_frontends = list(tls)
    tmp = tmp_path_factory.mktemp("frontend")
    cert, key = self_signed_certificate(tmp / "tls", c.cluster.domain)
    names = [*all_frontends, backend_name]
    _drop_stale_veths(names)
    with Network("10.231.0.0/24", bridge="lcbr-fe", prefix="lcf-") as net:
        hosts = {n: net.add(n, plans[n].private_address) for n in names}
        backend = RoutingFixture.start(
            hosts[backend_name], f"{backend_name}-backend", hosts[backend_name].address, BACKEND_PORT
        )
        ui: dict[str, RoutingFixture] = {}
        paths: dict[str, FrontendPaths] = {}
        nginx: dict[str, Nginx] = {}
        for fe in all_frontends:
            hp = plans[fe]
            assert hp.frontend is not None
            paths[fe] = write_nginx_conf(
                hp.frontend, c.cluster.domain, hp.private_address, tmp / fe, tls=tls[fe], certificate=cert, key=key
            )
            ui[fe] = RoutingFixture.start(hosts[fe], f"{fe}-ui", hp.private_address, UI_PORT)
            nginx[fe] = Nginx(hosts[fe], paths[fe]).start()
        yield Frontends(
            domain=c.cluster.domain,
            net=net,
            plans=plans,
            tls=tls,
            variant_of=variant_of,
            hosts=hosts,
            paths=paths,
            nginx=nginx,
            ui=ui,
            backend=backend,
            frontends=frontends,
            tmp=tmp,
        )
        for n in nginx.values():
            n.stop()
    _drop_stale_veths(names)


def _drop_stale_veths(names: list[str]) -> None:
    """Delete the root-side veths netns.py names lcv-<host> that outlive their namespace.

    A deleted namespace lingers (with its veth) while the kernel still holds orphaned TCP sockets
    of it, e.g. FINs to peers that are already gone; the next run could not create lcv-<host>.
    """
    for name in names:
        subprocess.run(["ip", "link", "del", f"lcv-{name}"[:15]], check=False, capture_output=True)


def wait_served_by(cluster: Frontends, fe: str, expected: str, timeout: float) -> float:
    """Poll GET / through FE until EXPECTED answers; return the seconds it took."""
    start = time.monotonic()
    last: str | None = None
    while time.monotonic() - start < timeout:
        last = cluster.get(fe, "/").server
        if last == expected:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"GET / through {fe}: expected {expected} within {timeout}s, last answer from {last}")


@pytest.fixture
def healthy(cluster: Frontends) -> Frontends:
    """The cluster with every fixture up and every frontend served by its own lemmy-ui fixture."""
    for fe in cluster.frontends:
        cluster.hosts[fe].link(True)
        if not cluster.ui[fe].alive:
            cluster.ui[fe].restart()
    for fe in cluster.frontends:
        wait_served_by(cluster, fe, f"{fe}-ui", FAIL_TIMEOUT_S + 5)
    return cluster


# --------------------------------------------------------------------------- nginx -t


@pytest.mark.parametrize("fe", ["fe1", "fe2", "ac1", "ac2", "solo"])
def test_nginx_accepts_rendered_config(cluster: Frontends, fe: str) -> None:
    result = nginx_test(cluster.hosts[fe], cluster.paths[fe])
    assert result.returncode == 0, (
        f"nginx -t on {cluster.paths[fe].conf}: expected exit 0, got {result.returncode}: {result.stderr.strip()}"
    )
    conf = cluster.paths[fe].conf.read_text()
    fp = cluster.plans[fe].frontend
    assert fp is not None
    want = "acme-peers.conf" if fp.acme_peers else "acme-no-peers.conf"
    assert f"/{want};" in conf, f"{fe}'s nginx.conf (acme_peers={fp.acme_peers}): expected it to include {want}"
    if cluster.tls[fe] == "acme":
        assert fp.acme_peers, f"{fe} (tls = acme, {len(cluster.variant_of[fe])} frontends): expected ACME peers"


# --------------------------------------------------------------------------- routing matrix

AP_JSON = "application/activity+json"
LD_JSON = 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"'
BACKEND = "backend"
UI = "ui"

ROUTES: list[tuple[str, str, str | None, str]] = [
    # (method, path, Accept, who answers)
    ("GET", "/api/v3/site", None, BACKEND),
    # Lemmy's backend proxies /pictrs to pict-rs itself (checking the login for uploads), so
    # nginx sends /pictrs to the backend, never to pict-rs directly.
    ("GET", "/pictrs/image/x", None, BACKEND),
    ("GET", "/feeds/all.xml", None, BACKEND),
    ("GET", "/nodeinfo/2.1", None, BACKEND),
    ("GET", "/.well-known/webfinger?resource=acct:admin@lemmy.test.example", None, BACKEND),
    ("GET", "/.well-known/nodeinfo", None, BACKEND),
    ("GET", "/version", None, BACKEND),
    ("GET", "/sitemap.xml", None, BACKEND),
    ("GET", "/.well-known/security.txt", None, UI),
    ("GET", "/", None, UI),
    ("GET", "/c/foo", None, UI),
    ("GET", "/post/1", None, UI),
    ("GET", "/c/foo", "text/html,application/xhtml+xml", UI),
    ("GET", "/c/foo", AP_JSON, BACKEND),
    ("HEAD", "/c/foo", AP_JSON, BACKEND),
    ("GET", "/c/foo", LD_JSON, BACKEND),
    ("HEAD", "/c/foo", LD_JSON, BACKEND),
    ("HEAD", "/c/foo", None, UI),
    ("POST", "/inbox", AP_JSON, BACKEND),
    ("PUT", "/inbox", None, BACKEND),
    ("DELETE", "/inbox", None, BACKEND),
    ("POST", "/c/foo/inbox", AP_JSON, BACKEND),
    ("POST", "/", None, BACKEND),
    ("POST", "/pictrs/image", None, BACKEND),
]


@pytest.mark.parametrize("fe", ["fe1", "fe2"])
@pytest.mark.parametrize(("method", "path", "accept", "target"), ROUTES, ids=lambda v: str(v) if v else "-")
def test_routing(cluster: Frontends, fe: str, method: str, path: str, accept: str | None, target: str) -> None:
    headers = {"Accept": accept} if accept else {}
    body = b'{"type": "Follow"}' if method in {"POST", "PUT"} else None
    answer = cluster.send(fe, method, path, headers=headers, body=body)
    expected = cluster.backend.name if target == BACKEND else f"{fe}-ui"
    assert answer.status == 200, f"{method} {path} (Accept: {accept}) via {fe}: expected 200, got {answer.status}"
    assert answer.server == expected, (
        f"{method} {path} (Accept: {accept}) via {fe}: expected {expected}, got {answer.server}"
    )
    if method != "HEAD":
        seen = answer.json
        assert (seen["method"], seen["path"]) == (method, path), (
            f"{fe} passed on {method} {path}: expected it unchanged, fixture saw {seen['method']} {seen['path']}"
        )


# --------------------------------------------------------------------------- upload limit


@pytest.mark.parametrize("fe", ["fe1", "fe2"])
def test_upload_limit(cluster: Frontends, fe: str) -> None:
    small = cluster.send(fe, "POST", "/pictrs/image", body=b"x" * (19 * MB), timeout=30)
    assert small.status == 200, f"19 MB POST /pictrs/image via {fe}: expected 200, got {small.status}"
    assert small.server == cluster.backend.name, f"19 MB upload: expected the backend, got {small.server}"
    got = small.json["body_length"]
    assert got == 19 * MB, f"19 MB upload: expected the backend to receive {19 * MB} bytes, got {got}"
    big = cluster.send(fe, "POST", "/pictrs/image", body=b"x" * (21 * MB), timeout=30)
    assert big.status == 413, f"21 MB POST /pictrs/image via {fe}: expected 413, got {big.status}"


# --------------------------------------------------------------------------- forwarded headers


@pytest.mark.parametrize("fe", ["fe1", "fe2"])
@pytest.mark.parametrize("path", ["/api/v3/site", "/c/foo"])
def test_forwarded_headers(cluster: Frontends, fe: str, path: str) -> None:
    answer = cluster.get(fe, path, headers={"X-Forwarded-For": "198.51.100.66", "X-Real-IP": "198.51.100.67"})
    assert answer.status == 200, f"GET {path} via {fe}: expected 200, got {answer.status}"
    h = answer.json["headers"]
    expected = {
        "host": cluster.domain,
        "x-forwarded-for": cluster.net.gateway,  # the client: the root namespace on the bridge
        "x-real-ip": cluster.net.gateway,
        "x-forwarded-proto": "http",
        "x-forwarded-host": cluster.domain,
    }
    got = {k: h.get(k) for k in expected}
    assert got == expected, f"headers {answer.server} saw for GET {path} via {fe}: expected {expected}, got {got}"


def test_host_header_passes_as_sent(cluster: Frontends) -> None:
    # ActivityPub signatures cover Host: nginx must not rewrite it to an upstream name.
    answer = cluster.get("fe1", "/api/v3/site", host="Lemmy.Test.Example")
    got = answer.json["headers"].get("host")
    assert got == cluster.domain, f"Host seen by the backend: expected {cluster.domain!r} (nginx's $host), got {got!r}"


# --------------------------------------------------------------------------- ACME HTTP-01


def _log_hits(nginx: Nginx, path: str) -> list[str]:
    return [line for line in nginx.access_log_lines() if f" {path} " in line]


def _settle_log_hits(nginx: Nginx, path: str, at_least: int) -> list[str]:
    """Access log lines for PATH, once at least AT_LEAST are written (nginx logs after answering)."""
    deadline = time.monotonic() + 2
    while len(_log_hits(nginx, path)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # room for a looping request to show up
    return _log_hits(nginx, path)


def test_acme_token_from_peer(cluster: Frontends) -> None:
    # tls = "acme": each frontend asks the others for a token it lacks.
    token = "tok-only-on-ac2"
    cluster.paths["ac2"].put_acme_token(token, "ac2-key-authorization")
    path = f"/.well-known/acme-challenge/{token}"
    for fe in ("ac1", "ac2"):
        answer = cluster.get(fe, path)
        assert (answer.status, answer.body) == (200, b"ac2-key-authorization"), (
            f"GET {path} via {fe}: expected 200 with ac2's token, got {answer.status} {answer.body[:80]!r}"
        )
    hop_lines = [line for line in _settle_log_hits(cluster.nginx["ac2"], path, 2) if "hop=1" in line]
    assert len(hop_lines) == 1, f"ac2's access log: expected 1 peer request (hop=1) for {path}, got {hop_lines}"


@pytest.mark.parametrize("fe", ["ac1", "fe1", "solo"])
def test_acme_unknown_token_is_404_without_loop(cluster: Frontends, fe: str) -> None:
    path = f"/.well-known/acme-challenge/tok-nobody-has-{fe}"
    start = time.monotonic()
    answer = cluster.get(fe, path)
    took = time.monotonic() - start
    assert answer.status == 404, f"GET {path} via {fe}: expected 404, got {answer.status} from {answer.server}"
    assert took < 2, f"unknown token via {fe}: expected a quick 404, took {took:.2f}s"
    own = _settle_log_hits(cluster.nginx[fe], path, 1)
    assert len(own) == 1 and "hop=-" in own[0], (
        f"{fe}'s access log for {path}: expected exactly the client's request, got {own}"
    )
    fp = cluster.plans[fe].frontend
    asks_peers = fp is not None and bool(fp.acme_peers)
    for peer in cluster.peers(fe):
        lines = _settle_log_hits(cluster.nginx[peer], path, 1 if asks_peers else 0)
        expected = 1 if asks_peers else 0
        assert len(lines) == expected and all("hop=1" in x and " 404 " in x for x in lines), (
            f"{peer}'s access log for {path}: expected {expected} peer hop(s) answered 404, got {lines}"
        )


def test_acme_single_frontend(cluster: Frontends) -> None:
    plan_ = cluster.plans["solo"].frontend
    assert plan_ is not None and plan_.acme_peers == [], f"solo: expected no ACME peers, got {plan_}"
    cluster.paths["solo"].put_acme_token("tok-solo", "solo-key-authorization")
    own = cluster.get("solo", "/.well-known/acme-challenge/tok-solo")
    assert (own.status, own.body) == (200, b"solo-key-authorization"), (
        f"own token via the only frontend: expected 200 with its content, got {own.status} {own.body[:80]!r}"
    )


# --------------------------------------------------------------------------- tls = "acme": redirect and HTTPS


def test_https_variant_redirects_port_80(cluster: Frontends) -> None:
    answer = cluster.get("ac1", "/c/foo?page=2")
    expected = (301, f"https://{cluster.domain}/c/foo?page=2")
    got = (answer.status, answer.headers.get("location"))
    assert got == expected, f"GET /c/foo?page=2 on port 80 with tls = acme: expected {expected}, got {got}"


@pytest.mark.parametrize(("path", "accept", "target"), [("/", None, UI), ("/api/v3/site", None, BACKEND)])
def test_https_variant_routes(cluster: Frontends, path: str, accept: str | None, target: str) -> None:
    answer = cluster.get("ac1", path, https=True)
    expected = cluster.backend.name if target == BACKEND else "ac1-ui"
    assert (answer.status, answer.server) == (200, expected), (
        f"HTTPS GET {path} via ac1: expected 200 from {expected}, got {answer.status} from {answer.server}"
    )
    proto = answer.json["headers"].get("x-forwarded-proto")
    assert proto == "https", f"X-Forwarded-Proto over HTTPS: expected 'https', got {proto!r}"


# --------------------------------------------------------------------------- failover


@dataclass(frozen=True)
class Sample:
    start: float
    end: float
    status: int
    server: str | None
    error: str = ""


def _get_sample(cluster: Frontends, fe: str, path: str, headers: dict[str, str]) -> Sample:
    start = time.monotonic()
    try:
        answer = cluster.get(fe, path, headers=headers, timeout=10)
    except OSError as exc:
        return Sample(start, time.monotonic(), 0, None, repr(exc))
    return Sample(start, time.monotonic(), answer.status, answer.server)


def _describe(samples: list[Sample]) -> str:
    bad = [s for s in samples if s.status != 200]
    return ", ".join(f"{s.status}{' ' + s.error if s.error else ''}" for s in bad[:5])


def test_failover_local_ui_killed_mid_loop(healthy: Frontends) -> None:
    cluster = healthy
    n, kill_after = 300, 100
    done = threading.Semaphore(0)

    def one(_: int) -> Sample:
        # The fixture holds each request 20 ms, so the kill lands on requests in flight.
        sample = _get_sample(cluster, "fe1", "/", {"X-Fixture-Delay": "0.02"})
        done.release()
        return sample

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        for _ in range(kill_after):
            done.acquire()
        kill_start = time.monotonic()
        cluster.ui["fe1"].kill()
        kill_end = time.monotonic()
        samples = [f.result() for f in futures]

    failed = [s for s in samples if s.status != 200]
    assert not failed, (
        f"GET / via fe1 while fe1's ui died: expected 0 failures of {n}, got {len(failed)}: {_describe(failed)}"
    )
    before = {s.server for s in samples if s.end < kill_start}
    after = [s.server for s in samples if s.start > kill_end]
    assert before == {"fe1-ui"}, f"before the kill: expected only fe1-ui, got {before}"
    assert after, "expected requests that started after the kill"
    assert set(after) == {"fe2-ui"}, f"after the kill: expected only fe2-ui (the backup), got {set(after)}"

    cluster.ui["fe1"].restart()
    took = wait_served_by(cluster, "fe1", "fe1-ui", FAIL_TIMEOUT_S + 5)
    back = [_get_sample(cluster, "fe1", "/", {}) for _ in range(50)]
    servers = {s.server for s in back}
    assert servers == {"fe1-ui"}, f"after restarting fe1's ui ({took:.1f}s): expected only fe1-ui, got {servers}"


def test_whole_frontend_down(healthy: Frontends) -> None:
    cluster = healthy
    mix: list[tuple[str, dict[str, str], str]] = [
        ("/", {}, "fe1-ui"),
        ("/api/v3/site", {}, cluster.backend.name),
        ("/c/foo", {"Accept": AP_JSON}, cluster.backend.name),
    ]
    token = "tok-only-on-fe1"
    cluster.paths["fe1"].put_acme_token(token, "fe1-key-authorization")
    fe2 = cluster.hosts["fe2"]
    results: list[tuple[str, Sample, str]] = []
    try:
        for i in range(300):
            if i == 50:
                fe2.link(False)
            path, headers, expected = mix[i % len(mix)]
            results.append((path, _get_sample(cluster, "fe1", path, headers), expected))
        # The cut is real: fe2 is unreachable from the client.
        with pytest.raises(OSError), socket.create_connection((fe2.address, 80), timeout=1):
            pass
        acme = cluster.get("fe1", f"/.well-known/acme-challenge/{token}")
        assert (acme.status, acme.body) == (200, b"fe1-key-authorization"), (
            f"fe1's own ACME token with fe2 down: expected 200, got {acme.status} {acme.body[:80]!r}"
        )
    finally:
        fe2.link(True)

    failed = [s for _, s, _ in results if s.status != 200]
    assert not failed, f"GETs via fe1 with fe2 down: expected 0 failures of 300, got {len(failed)}: {_describe(failed)}"
    wrong = [(p, s.server, e) for p, s, e in results if s.server != e]
    assert not wrong, f"with fe2 down: expected each path from its usual server, got (path, got, expected) {wrong[:5]}"

    took = wait_served_by(cluster, "fe2", "fe2-ui", 10)
    assert took < 10, f"fe2 back: expected it to serve again, took {took:.1f}s"
    api = cluster.get("fe2", "/api/v3/site")
    assert api.server == cluster.backend.name, f"fe2 back, /api/v3/site: expected the backend, got {api.server}"


# --------------------------------------------------------------------------- role checks over SSH


@pytest.fixture(scope="module")
def ssh_hosts(cluster: Frontends) -> dict[str, Any]:
    keys = SshKeys.create(cluster.tmp / "ssh")
    for fe in cluster.frontends:
        start_sshd(cluster.hosts[fe], keys, cluster.tmp / "ssh")
        cluster.ssh[fe] = open_testinfra_host(cluster.hosts[fe], keys)
    return cluster.ssh


def _fmt(results: list[CheckResult]) -> str:
    return "\n".join(str(r) for r in results)


@pytest.mark.parametrize("fe", ["fe1", "fe2"])
def test_frontend_checks_pass(healthy: Frontends, ssh_hosts: dict[str, Any], fe: str) -> None:
    hp = healthy.plans[fe]
    assert hp.frontend is not None
    results = frontend_checks(ssh_hosts[fe], healthy.domain, hp.private_address, UI_PORT, hp.frontend.backends)
    assert len(results) == 4 + len(hp.frontend.backends), f"expected one result per check, got:\n{_fmt(results)}"
    assert not failures(results), f"frontend checks on {fe}: expected all ok, got:\n{_fmt(results)}"


def test_frontend_checks_catch_problems(healthy: Frontends, ssh_hosts: dict[str, Any]) -> None:
    cluster = healthy
    ti = ssh_hosts["fe2"]
    dead = backend_reachable(ti, "10.231.0.99:8536")
    assert not dead.ok, f"a backend address nobody has: expected the check to fail, got {dead}"
    hp = cluster.plans["fe2"]
    assert hp.frontend is not None
    cluster.ui["fe2"].kill()
    try:
        results = frontend_checks(ti, cluster.domain, hp.private_address, UI_PORT, hp.frontend.backends)
    finally:
        cluster.ui["fe2"].restart()
    failed = [r.name for r in failures(results)]
    expected = [f"lemmy-ui listening on {hp.private_address}:{UI_PORT}"]
    # GET / still answers: fe2's nginx falls back to fe1's lemmy-ui.
    assert failed == expected, f"checks with fe2's ui down: expected only {expected} to fail, got:\n{_fmt(results)}"

    cluster.nginx["fe2"].stop()
    try:
        results = frontend_checks(ti, cluster.domain, hp.private_address, UI_PORT, hp.frontend.backends)
    finally:
        cluster.nginx["fe2"].start()
    failed = [r.name for r in failures(results)]
    # The process check still passes: the namespaces share one PID namespace, so fe1's nginx counts.
    expected = ["nginx listening on port 80", f"GET / via local nginx (Host: {cluster.domain})"]
    assert failed == expected, f"checks with fe2's nginx stopped: expected {expected} to fail, got:\n{_fmt(results)}"
