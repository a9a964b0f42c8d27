"""Live test of a backend's pict-rs balancer (modules/backend/pictrs-balancer.conf) on real nginx.

With [pictrs] store = "object_storage" each backend reaches every pict-rs machine through its own
nginx. Here: the backend app1 and two pict-rs machines (media1, media2) of a cluster compiled by
synth are network namespaces; behind nginx, routing fixtures (tests/live/frontend.py: tiny HTTP
servers answering with their own name) stand in for pict-rs. They test nginx, not pict-rs.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from synth.model import parse
from synth.topology import PICTRS_PORT, plan
from tests.conftest import EXAMPLES, ROOT, require_root, require_tool
from tests.live.frontend import FrontendPaths, Nginx, RoutingFixture, nginx_test, render_balancer_conf, request
from tests.live.netns import Network

pytestmark = pytest.mark.live

BALANCER = ROOT / "modules" / "backend" / "pictrs-balancer.conf"
NETWORK = "10.235.0.0/24"


def cluster_text() -> str:
    """examples/large.toml (two pict-rs machines sharing object storage) moved onto NETWORK."""
    text = (EXAMPLES / "large.toml").read_text()
    return text.replace("10.1.0.", "10.235.0.")


def render(paths: FrontendPaths, listen: str, upstreams: list[str]) -> str:
    """nginx.conf with the balancer as modules/backend/default.nix configures it (but listening on
    the backend's address instead of 127.0.0.1, so that the test reaches it)."""
    return render_balancer_conf(
        paths,
        upstream="lemmy_pictrs",
        servers=upstreams,
        upstream_extra="zone lemmy_pictrs 64k;",
        listen=f"{listen}:80",
        server_name="lemmy-cluster-pictrs",
        include=BALANCER,
    )


@dataclass
class Lab:
    nginx: Nginx
    address: str
    fixtures: dict[str, RoutingFixture]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    require_tool("nginx")
    c = parse(cluster_text())
    plans = plan(c)
    be = plans["api1"].backend
    assert be is not None and len(be.pictrs_upstreams) == 2, "large.toml balances two pict-rs machines"
    workdir = Path(tempfile.mkdtemp(prefix="lcpictrs-"))
    try:
        with Network(NETWORK, bridge="lcbr-px", prefix="lcx-") as net:
            app = net.add("api1", plans["api1"].private_address)
            fixtures = {}
            for name in ("media1", "media2"):
                host = net.add(name, plans[name].private_address)
                fixtures[name] = RoutingFixture.start(host, name, host.address, PICTRS_PORT)
            paths = FrontendPaths(workdir / "nginx").create()
            paths.conf.write_text(render(paths, app.address, be.pictrs_upstreams))
            checked = nginx_test(app, paths)
            assert checked.returncode == 0, checked.stderr
            nginx = Nginx(app, paths).start()
            yield Lab(nginx, app.address, fixtures)
            nginx.stop()
            for f in fixtures.values():
                f.kill()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def get(lab: Lab, path: str = "/image/original/abc.png") -> str | None:
    return request(lab.address, "GET", path, host="lemmy-cluster-pictrs").server


def test_both_pict_rs_machines_serve(lab: Lab) -> None:
    seen = {get(lab) for _ in range(20)}
    assert seen == {"media1", "media2"}, f"round robin over both pict-rs machines: expected both, got {seen}"


def test_upload_limit(lab: Lab) -> None:
    ok = request(lab.address, "POST", "/image", host="lemmy-cluster-pictrs", body=b"x" * (19 << 20), timeout=60)
    assert ok.status == 200 and ok.server in {"media1", "media2"}, f"19 MB upload: expected 200, got {ok.status}"
    big = request(lab.address, "POST", "/image", host="lemmy-cluster-pictrs", body=b"x" * (21 << 20), timeout=60)
    assert big.status == 413, f"21 MB upload: expected 413, got {big.status}"


def test_a_dead_pict_rs_costs_no_request(lab: Lab) -> None:
    answers: list[str | None] = []
    failures: list[str] = []
    killed = threading.Event()

    def loop() -> None:
        for i in range(300):
            if i == 60:
                lab.fixtures["media1"].kill()
                killed.set()
            try:
                answers.append(get(lab))
            except OSError as exc:
                failures.append(str(exc))

    worker = threading.Thread(target=loop)
    worker.start()
    worker.join(timeout=120)
    assert killed.is_set()
    bad = [a for a in answers if a is None]
    assert not failures and not bad, f"expected 0 failed GETs with media1 dead, got {len(failures) + len(bad)}"
    assert set(answers[70:]) == {"media2"}, f"after the kill only media2 answers: {set(answers[70:])}"
    lab.fixtures["media1"].restart()
    # Back in rotation once fail_timeout (10 s) has passed.
    deadline = time.monotonic() + 20
    seen: set[str | None] = set()
    while time.monotonic() < deadline and "media1" not in seen:
        seen.add(get(lab))
        time.sleep(0.2)
    assert "media1" in seen, "media1 serves again after it comes back"
