"""Live test of a pict-rs machine's S3 balancer (modules/pictrs/s3-balancer.conf) on real nginx.

With machines of role "storage" (Garage) each pict-rs machine runs nginx on 127.0.0.1:3909 in front
of every storage machine's S3 API, and pict-rs uses that as its S3 endpoint. Here: the pict-rs
machine web1 and the storage machines store1..store3 of tests/golden/storage.toml (moved onto
NETWORK, compiled by synth) are network namespaces; on each storage machine a routing fixture
(tests/live/frontend.py: a tiny HTTP server answering with JSON that names itself and echoes the
method, request target, headers and body length it received) stands in for Garage's S3 API. They
test nginx, not Garage: nothing checks a signature here; the tests check that nginx hands over
what a signature covers (Host header, x-amz-* headers, request target) untouched.

nginx is rendered as modules/pictrs/default.nix configures it, except that it listens on web1's
private address (port 3909) instead of 127.0.0.1, so that the test reaches it from the root
namespace with its own HTTP client. The client still sends the Host header pict-rs sends
("127.0.0.1:3909", the endpoint it signs for): the Host header is whatever the client puts in it,
independent of the address it connects to. Each test gets a freshly started nginx (so a storage
machine marked failed by one test does not skew the next) and healthy storage fixtures.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from synth.model import parse
from synth.topology import GARAGE_S3_PORT, PICTRS_S3_PROXY_PORT, plan
from tests.conftest import ROOT, require_root, require_tool
from tests.live.frontend import Answer, FrontendPaths, Nginx, RoutingFixture, nginx_test, render_balancer_conf, request
from tests.live.netns import Host, Network

pytestmark = pytest.mark.live

BALANCER = ROOT / "modules" / "pictrs" / "s3-balancer.conf"
NETWORK = "10.236.0.0/24"
STORAGE = ("store1", "store2", "store3")
# The Host header pict-rs signs for (its endpoint http://127.0.0.1:3909).
PICTRS_HOST = f"127.0.0.1:{PICTRS_S3_PROXY_PORT}"
OBJECT = "/lemmy-images/abc.png"


def cluster_text() -> str:
    """tests/golden/storage.toml (two pict-rs machines, three storage machines) moved onto NETWORK."""
    text = (ROOT / "tests" / "golden" / "storage.toml").read_text()
    return text.replace("10.2.0.", "10.236.0.")


def render(paths: FrontendPaths, listen: str, upstreams: list[str]) -> str:
    """nginx.conf with the S3 balancer as modules/pictrs/default.nix configures it (but listening on
    the pict-rs machine's address instead of 127.0.0.1, so that the test reaches it)."""
    return render_balancer_conf(
        paths,
        upstream="lemmy_garage_s3",
        servers=upstreams,
        upstream_extra="zone lemmy_garage_s3 64k;\nkeepalive 16;\nkeepalive_timeout 4s;",
        listen=f"{listen}:{PICTRS_S3_PROXY_PORT}",
        server_name="lemmy-cluster-s3",
        include=BALANCER,
    )


@dataclass
class Lab:
    web: Host
    paths: FrontendPaths
    upstreams: list[str]
    storage: dict[str, RoutingFixture]

    def address_of(self, name: str) -> str:
        return self.storage[name].address


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    require_tool("nginx")
    plans = plan(parse(cluster_text()))
    pictrs = plans["web1"].pictrs
    assert pictrs is not None and pictrs.endpoint == f"http://{PICTRS_HOST}", "pict-rs uses its local balancer"
    upstreams = pictrs.s3_upstreams
    expected = [f"{plans[s].private_address}:{GARAGE_S3_PORT}" for s in STORAGE]
    assert upstreams == expected, f"web1 balances the three storage machines' S3 APIs: {upstreams}"
    workdir = Path(tempfile.mkdtemp(prefix="lcs3-"))
    try:
        with Network(NETWORK, bridge="lcbr-s3", prefix="lcs-") as net:
            web = net.add("web1", plans["web1"].private_address)
            storage = {}
            for name in STORAGE:
                host = net.add(name, plans[name].private_address)
                storage[name] = RoutingFixture.start(host, name, host.address, GARAGE_S3_PORT)
            paths = FrontendPaths(workdir / "nginx").create()
            paths.conf.write_text(render(paths, web.address, upstreams))
            yield Lab(web, paths, upstreams, storage)
            for f in storage.values():
                f.kill()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def balancer(lab: Lab) -> Iterator[Lab]:
    """LAB with every storage fixture answering 200 and a fresh nginx (empty logs, no failed upstream)."""
    for f in lab.storage.values():
        if not f.alive or f.status != 200:
            f.status = 200
            f.restart()
    for log in (lab.paths.access_log, lab.paths.error_log):
        log.write_text("")
    nginx = Nginx(lab.web, lab.paths).start(port=PICTRS_S3_PROXY_PORT)
    try:
        yield lab
    finally:
        nginx.stop()


def s3(
    lab: Lab,
    method: str = "GET",
    path: str = OBJECT,
    *,
    host: str = PICTRS_HOST,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
) -> Answer:
    return request(
        lab.web.address,
        method,
        path,
        host=host,
        headers=headers,
        body=body,
        port=PICTRS_S3_PROXY_PORT,
        timeout=timeout,
    )


def access_log(lab: Lab) -> list[tuple[str, str, list[str], list[str]]]:
    """(method, status, upstream addresses tried, their statuses) per request, in order."""
    out = []
    pattern = re.compile(r"^(\S+) \S+ (\d+) upstream=\[(.*)\] upstream_status=\[(.*)\]$")
    for line in lab.paths.access_log.read_text().splitlines():
        m = pattern.match(line)
        assert m, f"unexpected access log line: {line!r}"
        method, status, addrs, statuses = m.groups()
        out.append((method, status, addrs.split(", "), statuses.split(", ")))
    return out


def test_nginx_accepts_the_config(lab: Lab) -> None:
    checked = nginx_test(lab.web, lab.paths)
    assert checked.returncode == 0, f"nginx -t refuses the rendered config: {checked.stderr}"
    conf = lab.paths.conf.read_text()
    assert f"include {BALANCER};" in conf
    for u in lab.upstreams:
        assert f"server {u} " in conf


def test_every_storage_machine_serves(balancer: Lab) -> None:
    answers = [s3(balancer) for _ in range(30)]
    assert [a.status for a in answers] == [200] * 30, "every GET succeeds"
    counts = Counter(a.server for a in answers)
    assert set(counts) == set(STORAGE), f"round robin over the three storage machines: {dict(counts)}"
    assert min(counts.values()) >= 5, f"the GETs are spread over the storage machines: {dict(counts)}"


def test_signed_parts_of_a_request_arrive_unchanged(balancer: Lab) -> None:
    # What AWS signature v4 covers: the Host header, the signed x-amz-* headers, the path (as sent,
    # percent-encoding and all) and the query string. nginx must not rewrite any of them.
    signed = {
        "x-amz-date": "20250101T000000Z",
        "x-amz-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "authorization": (
            "AWS4-HMAC-SHA256 Credential=GK0123456789abcdef01234567/20250101/garage/s3/aws4_request, "
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
            "Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
        ),
    }
    target = "/lemmy-images/dir//a%20b%2Fc+%25.png?partNumber=2&uploadId=AbC%2Bd%3D&x-id=UploadPart"
    # pict-rs's own Host header, and the address:port a client on another address would use.
    for host in (PICTRS_HOST, f"{balancer.web.address}:{PICTRS_S3_PROXY_PORT}"):
        seen = set()
        for _ in range(6):  # twice per storage machine: the second goes over a kept-alive connection
            answer = s3(balancer, "GET", target, host=host, headers=signed)
            assert answer.status == 200, f"GET with Host {host}: {answer.status}"
            got = answer.json
            server, received = got["server"], got["headers"]
            seen.add(server)
            assert received.get("host") == host, (
                f"Host header must reach {server} as the client sent it ({host!r}), got {received.get('host')!r}"
            )
            for k, v in signed.items():
                assert received.get(k) == v, f"{k} must pass unchanged, {server} got {received.get(k)!r}"
            assert got["path"] == target, f"request target must pass unchanged, {got['server']} got {got['path']!r}"
        assert seen == set(STORAGE)


def test_a_large_put_goes_through_whole(balancer: Lab) -> None:
    size = 50 << 20  # far above nginx's default client_max_body_size of 1 MB
    answer = s3(balancer, "PUT", "/lemmy-images/big.png", body=b"x" * size, timeout=60)
    assert answer.status == 200, f"50 MB PUT: expected 200 from a storage machine, got {answer.status}"
    got = answer.json
    assert got["server"] in STORAGE and got["method"] == "PUT"
    assert got["body_length"] == size, f"{got['server']} received {got['body_length']} of {size} bytes"
    assert got["headers"].get("content-length") == str(size)


def test_a_stopped_storage_machine_costs_no_get(balancer: Lab) -> None:
    dead = balancer.address_of("store1")
    before = [s3(balancer) for _ in range(30)]
    balancer.storage["store1"].kill()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dead, GARAGE_S3_PORT), timeout=2).close()
    after = [s3(balancer) for _ in range(200)]
    assert "store1" in {a.server for a in before}, "store1 served before it was stopped"
    failed = [a.status for a in after if a.status != 200 or a.server is None]
    assert not failed, f"expected 0 failed GETs of 200 with store1 stopped, got {len(failed)}: {failed[:10]}"
    assert {a.server for a in after} == {"store2", "store3"}, "the other two storage machines answer"
    retried = [e for e in access_log(balancer)[30:] if e[2][0] == f"{dead}:{GARAGE_S3_PORT}"]
    assert retried, "nginx tried store1 after it stopped and passed those GETs on (else the test proves nothing)"
    for _method, status, addrs, _statuses in retried:
        assert status == "200" and len(addrs) == 2, f"a GET that found store1 stopped went on to another: {addrs}"


def test_a_storage_machine_answering_503_is_skipped(balancer: Lab) -> None:
    # Garage answers 503 when the machines it asks for an object do not reach quorum.
    failing = balancer.storage["store2"]
    failing.status = 503
    failing.restart()
    direct = request(failing.address, "GET", OBJECT, host=PICTRS_HOST, port=GARAGE_S3_PORT)
    assert direct.status == 503, "store2 answers 503 itself"
    answers = [s3(balancer) for _ in range(60)]
    failed = [a.status for a in answers if a.status != 200 or a.server is None]
    assert not failed, f"expected 0 failed GETs of 60 with store2 answering 503, got {len(failed)}: {failed[:10]}"
    assert {a.server for a in answers} == {"store1", "store3"}
    store2 = f"{failing.address}:{GARAGE_S3_PORT}"
    retried = [e for e in access_log(balancer) if store2 in e[2]]
    assert retried, "nginx asked store2 (else the test proves nothing)"
    for _method, status, addrs, statuses in retried:
        i = addrs.index(store2)
        assert statuses[i] == "503" and status == "200", f"a 503 from store2 was retried: {addrs} {statuses}"
        assert len(addrs) > i + 1, f"the GET went on to another storage machine: {addrs}"


def test_a_put_answered_503_is_sent_again_to_another_machine(balancer: Lab) -> None:
    # The body is buffered (client_body_buffer_size, proxy_request_buffering on), so nginx can send
    # an upload again; a streamed one would reach the client as the 503.
    failing = balancer.storage["store2"]
    failing.status = 503
    failing.restart()
    size = 1 << 20
    answers = [s3(balancer, "PUT", f"/lemmy-images/up{i}.png", body=b"y" * size) for i in range(30)]
    failed = [a.status for a in answers if a.status != 200]
    assert not failed, f"expected 0 failed PUTs of 30 with store2 answering 503, got {len(failed)}: {failed[:10]}"
    assert all(a.json["body_length"] == size for a in answers), "every retried PUT carried its whole body"
    store2 = f"{failing.address}:{GARAGE_S3_PORT}"
    retried = [e for e in access_log(balancer) if store2 in e[2]]
    assert retried, "nginx asked store2 (else the test proves nothing)"
    for method, status, addrs, statuses in retried:
        assert method == "PUT" and status == "200", (method, status)
        assert statuses[addrs.index(store2)] == "503" and len(addrs) > addrs.index(store2) + 1, (addrs, statuses)
