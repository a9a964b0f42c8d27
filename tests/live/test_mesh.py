"""Live tests: the WireGuard mesh ([network] mesh = "wireguard") carries the cluster's traffic.

tests/live/mesh-cluster.toml, copied and given keys by the real `synth secrets init`: fe1, db1
and db2 on an underlay (10.250.0.0/24), app1 (backend and pict-rs) at "home" behind a NAT router
(masquerade) on 10.251.0.0/24, the mesh on 10.252.0.0/24. Each machine's interface is wireguard-go
(the kernel here has no WireGuard module) configured with the attribute set modules/mesh hands to
nixpkgs (tests/live/mesh.py); PostgreSQL is configured from the same plan (tests/live/pg.py), so it
listens on and replicates to mesh addresses; fe1's nginx runs the frontend module's own files and
proxies to a routing fixture (a TEST FIXTURE, NOT LEMMY) on app1's mesh address. Captures on the
underlay veths prove the traffic is encrypted; synth.checks.mesh (what `synth verify` runs) must
pass, and must fail clearly with a wrong or missing key.

The tests share one cluster and run in file order.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth.checks import CheckResult, failures
from synth.cli import main
from synth.mesh import new_private_key
from synth.model import Cluster, load
from synth.topology import BACKEND_PORT, UI_PORT, plan
from tests.conftest import require, require_root
from tests.live import pg, writeload
from tests.live.frontend import Nginx, RoutingFixture, request, write_nginx_conf
from tests.live.mesh import Capture, MeshLab, wait_listening
from tests.live.netns import Host, Network, sh
from tests.live.pg import PgLab, PgServer

pytestmark = [pytest.mark.live]

CLUSTER_TOML = Path(__file__).with_name("mesh-cluster.toml")
ROOT = Path(__file__).resolve().parents[2]
UNDERLAY = "10.250.0.0/24"
HOME = "10.251.0.0/24"
NAT_OUTSIDE = "10.250.0.254"
NAT_INSIDE = "10.251.0.254"
MARKER = "mesh-cleartext-marker-7f3a"


@dataclass
class Mesh:
    workdir: Path
    cluster_file: Path
    cluster: Cluster
    underlay: Network
    home: Network
    hosts: dict[str, Host]
    lab: MeshLab
    pglab: PgLab
    nginx: Nginx
    backend: RoutingFixture

    def reload(self) -> Cluster:
        self.cluster = load(self.cluster_file)
        self.lab.cluster = self.cluster
        for name in self.cluster.machines:
            if name not in self.lab.keys:
                self.lab.keys[name] = self.key_text(name)
        return self.cluster

    def key_text(self, name: str) -> str:
        return (self.cluster_file.parent / "secrets" / f"wireguard-private-key.{name}").read_text().strip()

    def checks(self, name: str) -> list[CheckResult]:
        return self.lab.run_checks(self.hosts[name], name, self.cluster)


def nat_router(underlay: Network, home: Network) -> Host:
    """A namespace on both networks that masquerades the home network onto the underlay."""
    router = underlay.add("nat", NAT_OUTSIDE)
    inner = f"{home.prefix}natin"
    sh(["ip", "link", "add", inner, "type", "veth", "peer", "name", "eth1", "netns", router.ns])
    sh(["ip", "link", "set", inner, "master", home.bridge])
    sh(["ip", "link", "set", inner, "up"])
    router.run(["ip", "addr", "add", f"{NAT_INSIDE}/24", "dev", "eth1"])
    router.run(["ip", "link", "set", "eth1", "up"])
    router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    rules = (
        'table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n  oifname "eth0" masquerade\n }\n}\n'
    )
    router.run(["nft", "-f", "-"], input=rules)
    return router


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    require_root()
    require(Path("/dev/net/tun").exists(), "/dev/net/tun is missing (wireguard-go needs a TUN device)")
    for tool in ("ip", "wireguard-go", "wg", "tcpdump", "nft", "nginx", "setpriv"):
        require(
            shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists(),
            f"{tool} is not installed (scripts/install-system-deps.sh installs it)",
        )
    require((pg.PG_BIN / "postgres").exists(), f"PostgreSQL is not installed in {pg.PG_BIN}")
    workdir = Path(tempfile.mkdtemp(prefix="lcmesh-", dir="/tmp"))
    workdir.chmod(0o755)
    cluster_file = workdir / "cluster" / "cluster.toml"
    cluster_file.parent.mkdir()
    shutil.copy(CLUSTER_TOML, cluster_file)
    r = CliRunner().invoke(main, ["secrets", "init", str(cluster_file)])
    assert r.exit_code == 0, f"synth secrets init: {r.output}"
    c = load(cluster_file)
    try:
        with (
            Network(UNDERLAY, bridge="lcbr-w1", prefix="lcw1-") as underlay,
            Network(HOME, bridge="lcbr-w2", prefix="lcw2-") as home,
        ):
            nat_router(underlay, home)
            hosts: dict[str, Host] = {}
            for name, m in c.machines.items():
                net = home if m.behind_nat else underlay
                hosts[name] = net.add(name, m.address)
                if m.behind_nat:
                    hosts[name].run(["ip", "route", "replace", "default", "via", NAT_INSIDE])
                    hosts[name].gateway = NAT_INSIDE
            keys = {
                name: (cluster_file.parent / "secrets" / f"wireguard-private-key.{name}").read_text().strip()
                for name in c.machines
            }
            lab = MeshLab(c, workdir / "mesh", keys)
            for name in c.machines:
                lab.up(hosts[name], name)
            pglab = PgLab(underlay, workdir / "pg", c)
            pglab.hosts.update(hosts)
            pglab.init_primary(pglab.server("db1"))
            db2 = pglab.server("db2")
            db2.write_config(c)
            r2 = pglab.bootstrap(db2)
            assert r2.returncode == 0, f"bootstrap-replica.sh on db2 over the mesh: {r2.stdout}{r2.stderr}"
            db2.start()
            plans = plan(c)
            fe = plans["fe1"]
            assert fe.frontend is not None
            app1 = plans["app1"]
            backend = RoutingFixture(hosts["app1"], "app1-backend", app1.private_address, BACKEND_PORT)
            start_fixture(backend)
            ui = RoutingFixture(hosts["fe1"], "fe1-ui", fe.private_address, UI_PORT)
            start_fixture(ui)
            paths = write_nginx_conf(fe.frontend, c.cluster.domain, fe.private_address, workdir / "fe1-nginx")
            nginx = Nginx(hosts["fe1"], paths).start()
            yield Mesh(workdir, cluster_file, c, underlay, home, hosts, lab, pglab, nginx, backend)
            nginx.stop()
            pglab.stop_all()
            for name in list(lab.procs):
                lab.down(hosts[name], name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def start_fixture(fx: RoutingFixture) -> None:
    """RoutingFixture.restart, waiting from inside its namespace (the root one cannot reach the mesh)."""
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["serve", fx.name, fx.address, str(fx.port), "--status", str(fx.status)]
    fx.proc = fx.host.popen(
        [sys.executable, "-m", "tests.live.frontend", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    wait_listening(fx.host, fx.address, fx.port)


def assert_all_pass(results: list[CheckResult], who: str) -> None:
    for r in results:
        print(f"{who}: {r}")
    bad = failures(results)
    assert not bad, f"{who}: expected every mesh check to pass, got: " + "; ".join(map(str, bad))


def wait_all_pass(mesh: Mesh, names: list[str], timeout: float) -> None:
    """Run the checks of NAMES (their pings are traffic) until all pass, or TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        results = {name: mesh.checks(name) for name in names}
        if not any(failures(r) for r in results.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for name, r in results.items():
        assert_all_pass(r, name)


def insert_marker(db1: PgServer, n: int) -> None:
    db1.psql_run("CREATE TABLE IF NOT EXISTS mesh_items (id int PRIMARY KEY, note text)", db="lemmy")
    db1.psql_run(f"INSERT INTO mesh_items SELECT g, '{MARKER} ' || g FROM generate_series({n}, {n + 49}) g", db="lemmy")


def count(srv: PgServer) -> str:
    return srv.sql("SELECT count(*) FROM mesh_items WHERE note LIKE 'mesh-%'", db="lemmy")


# --------------------------------------------------------------------------- tests


def test_every_machine_passes_the_mesh_checks(mesh: Mesh) -> None:
    """What `synth verify` checks: the interface is up with its address, and a handshake with every
    peer, including app1 behind NAT (the others have no endpoint for it: app1 reached out)."""
    for name in mesh.cluster.machines:
        assert_all_pass(mesh.checks(name), name)
    out = mesh.lab.wg(mesh.hosts["db1"], "db1", ["show", "wg-lemmy", "endpoints"]).stdout
    app1_key = mesh.cluster.machines["app1"].wireguard_public_key
    assert app1_key is not None
    line = next(ln for ln in out.splitlines() if ln.startswith(app1_key))
    assert line.split()[1].startswith(f"{NAT_OUTSIDE}:"), (
        f"expected db1 to know app1 by its NAT router's address {NAT_OUTSIDE}, got {line}"
    )


def test_replication_crosses_the_mesh_encrypted(mesh: Mesh) -> None:
    """Rows written on db1 reach db2 by streaming replication over the mesh; the underlay capture at
    db2's veth has WireGuard packets and no cleartext row, a capture on db2's wg-lemmy has them."""
    db1, db2 = mesh.pglab.servers["db1"], mesh.pglab.servers["db2"]
    assert db2.in_recovery(), "db2 should be a standby"
    conninfo = db2.sql("SELECT conninfo FROM pg_stat_wal_receiver")
    db1_mesh = plan(mesh.cluster)["db1"].private_address
    assert f"host={db1_mesh}" in conninfo, f"expected db2 to stream from db1's mesh address {db1_mesh}, got {conninfo}"
    underlay = Capture(mesh.underlay.veth("db2"), mesh.workdir / "db2-underlay.pcap")
    inner = Capture("wg-lemmy", mesh.workdir / "db2-wg.pcap", host=mesh.hosts["db2"])
    insert_marker(db1, 1)
    got = db2.wait_for("SELECT count(*) FROM mesh_items", "50", timeout=20, db="lemmy")
    assert got == "50", f"db2: expected the 50 rows replicated over the mesh, got {got}"
    time.sleep(0.5)
    outside, inside = underlay.stop(), inner.stop()
    assert MARKER.encode() in inside, "the capture on db2's wg-lemmy should see the replicated rows in clear"
    assert MARKER.encode() not in outside, "the rows crossed the underlay in clear text"
    wg_packets = underlay.packets("udp port 51820")
    tcp_packets = underlay.packets("tcp port 5432")
    assert len(wg_packets) >= 2, f"expected WireGuard packets on the underlay, got {len(wg_packets)}"
    assert not tcp_packets, f"expected no PostgreSQL packets on the underlay, got {tcp_packets[:3]}"


def test_nginx_reaches_the_backend_behind_nat_over_the_mesh(mesh: Mesh) -> None:
    """A request to fe1's public port 80 is proxied to app1's backend (behind NAT) through the
    mesh; the NAT router's underlay veth sees only WireGuard."""
    capture = Capture(mesh.underlay.veth("nat"), mesh.workdir / "nat-underlay.pcap")
    answer = request(mesh.hosts["fe1"].address, "GET", "/api/v3/site", host=mesh.cluster.cluster.domain)
    raw = capture.stop()
    assert answer.status == 200 and answer.server == "app1-backend", (
        f"expected app1's backend to answer through fe1, got {answer.status} {answer.headers}"
    )
    assert b"/api/v3/site" not in raw, "the proxied request crossed the underlay in clear text"
    assert capture.packets("udp port 51820"), "expected the request to cross the NAT router as WireGuard packets"
    assert not capture.packets(f"tcp port {BACKEND_PORT}"), "expected no backend TCP on the underlay"


def test_internal_ports_are_not_on_the_underlay_and_not_for_non_peers(mesh: Mesh) -> None:
    """PostgreSQL listens on db1's mesh address only (the underlay address refuses), and fe1, which
    is not a peer of db1 (a frontend never talks to a database), has no tunnel to it at all."""
    fe1 = mesh.hosts["fe1"]
    code = (
        "import socket,sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], 5432), timeout=2).close(); print('open')\n"
        "except OSError as e: print(type(e).__name__, e)\n"
    )
    db1 = mesh.cluster.machines["db1"]
    under = fe1.run(["python3", "-c", code, db1.address]).stdout.strip()
    assert under.startswith("ConnectionRefusedError"), f"expected db1's underlay :5432 refused, got {under}"
    over = fe1.run(["python3", "-c", code, plan(mesh.cluster)["db1"].private_address]).stdout.strip()
    assert over != "open", f"expected fe1 (not db1's peer) unable to reach db1's mesh :5432, got {over}"
    peers = [p.name for p in (plan(mesh.cluster)["fe1"].mesh or _no()).peers]
    assert peers == ["app1"], f"expected fe1's only mesh peer to be its backend app1, got {peers}"


def _no() -> object:
    raise AssertionError("fe1 has no mesh plan")


def test_a_wrong_key_carries_nothing_and_verify_says_so(mesh: Mesh) -> None:
    """db2 comes up with a key that is not the one in cluster.toml: no replication, and the check
    names the peer and the likely cause; with its right key back, db2 catches up."""
    db1, db2 = mesh.pglab.servers["db1"], mesh.pglab.servers["db2"]
    right = mesh.lab.keys["db2"]
    mesh.lab.keys["db2"] = new_private_key()
    mesh.lab.up(mesh.hosts["db2"], "db2")
    try:
        insert_marker(db1, 1001)
        time.sleep(3)
        assert count(db2) == "50", "db2 received rows through a tunnel with a wrong key"
        results = mesh.checks("db2")
        bad = {r.name: r.detail for r in failures(results)}
        assert "mesh: handshake with db1" in bad, f"expected the handshake check with db1 to fail, got {results}"
        assert "wrong key" in bad["mesh: handshake with db1"], bad
    finally:
        mesh.lab.keys["db2"] = right
        mesh.lab.up(mesh.hosts["db2"], "db2")
        restored = time.monotonic()
    got = db2.wait_for("SELECT count(*) FROM mesh_items", "100", timeout=30, db="lemmy")
    assert got == "100", f"db2: expected to catch up to 100 rows with its right key, got {got}"
    # app1 (behind NAT) still has its session with db2's previous interface, and db2 has no
    # endpoint for app1: until app1 shakes hands again nothing flows between them. app1 does once
    # 15 s of its data met no answer (REKEY_TIMEOUT + KEEPALIVE_TIMEOUT; keepalives do not count):
    # here its check's pings, in a cluster the backend's own connections.
    wait_all_pass(mesh, ["app1", "db2"], timeout=60)
    print(f"MEASURED db2: every handshake back {time.monotonic() - restored:.1f} s after its right key")


def test_a_missing_key_leaves_no_interface_and_verify_says_so(mesh: Mesh) -> None:
    """Without its key file the interface unit fails (nixpkgs: `wg set ... private-key` errs, the
    unit's postStop deletes the link): verify reports the interface missing."""
    host = mesh.hosts["fe1"]
    mesh.lab.down(host, "fe1")
    try:
        proc = mesh.lab.start_daemon(host, "fe1", "wg-lemmy")
        missing = mesh.workdir / "no-such-key"
        r = mesh.lab.wg(host, "fe1", ["set", "wg-lemmy", "private-key", str(missing)], check=False)
        assert r.returncode != 0, "wg set with a missing key file should fail"
        proc.terminate()
        proc.wait(timeout=10)
        host.run(["ip", "link", "del", "wg-lemmy"], check=False)  # the unit's postStop
        results = mesh.checks("fe1")
        assert len(results) == 1 and not results[0].ok and "no interface wg-lemmy" in results[0].detail, results
        try:
            server = request(host.address, "GET", "/api/v3/site", host=mesh.cluster.cluster.domain, timeout=20).server
        except OSError as exc:
            server = f"no answer: {exc}"
        assert server != "app1-backend", "fe1 reached the backend without its mesh"
    finally:
        mesh.lab.up(host, "fe1")
    wait_all_pass(mesh, ["app1", "fe1"], timeout=60)  # app1 behind NAT: as in the wrong-key test


def test_adding_a_machine_updates_its_peers(mesh: Mesh) -> None:
    """`synth add-machine db3` records its mesh address and public key; the machines it talks to
    (the other databases, the backend) get it as a peer, and it streams from db1 over the mesh.
    A write load from app1 (the backend, behind NAT) to db1 runs all along, through every
    interface's reconfiguration: every acknowledged row is on db1, and on db3."""
    before = plan(mesh.cluster)
    db1 = mesh.pglab.servers["db1"]
    db1.psql_run("CREATE TABLE lc_writes (n bigint PRIMARY KEY)", db="lemmy")
    db1.psql_run("ALTER TABLE lc_writes OWNER TO lemmy", db="lemmy")
    log = mesh.workdir / "writes.log"
    dsn = f"host={before['db1'].private_address} port=5432 user=lemmy dbname=lemmy connect_timeout=3"
    writer = mesh.hosts["app1"].popen(
        [sys.executable, "-m", "tests.live.writeload", "--dsn", dsn, "--out", str(log), "--pause", "0.01"],
        env={"PATH": "/usr/bin:/bin", "PGPASSFILE": str(mesh.pglab.client_pgpass), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not writeload.acknowledged(writeload.read_log(log)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert writeload.acknowledged(writeload.read_log(log)), "the write load never committed a row over the mesh"
    args = ["add-machine", "db3", "--role", "postgres", "--address", "10.250.0.33"]
    r = CliRunner().invoke(main, [*args, "--cluster", str(mesh.cluster_file)])
    assert r.exit_code == 0, r.output
    c = mesh.reload()
    after = plan(c)
    m = c.machines["db3"]
    assert m.mesh_address == "10.252.0.5" and m.wireguard_public_key, (m.mesh_address, m.wireguard_public_key)
    for name in ("db1", "db2", "app1"):
        got = [p.name for p in (after[name].mesh or _no()).peers]
        assert "db3" in got, f"{name}: expected db3 among its mesh peers, got {got}"
    assert [p.name for p in (after["fe1"].mesh or _no()).peers] == [p.name for p in (before["fe1"].mesh or _no()).peers]
    mesh.hosts["db3"] = mesh.underlay.add("db3", m.address)
    mesh.pglab.hosts["db3"] = mesh.hosts["db3"]
    mesh.pglab.cluster = c
    for name in ("db1", "db2", "app1", "db3"):
        mesh.lab.up(mesh.hosts[name], name, c)
    opts = db1.write_config(c)
    db1.reload()
    mesh.pglab.setup(db1, opts)
    db3 = mesh.pglab.server("db3")
    db3.write_config(c)
    r3 = mesh.pglab.bootstrap(db3)
    assert r3.returncode == 0, f"bootstrap-replica.sh on db3 over the mesh: {r3.stdout}{r3.stderr}"
    db3.start()
    insert_marker(db1, 2001)
    got = db3.wait_for("SELECT count(*) FROM mesh_items", "150", timeout=30, db="lemmy")
    assert got == "150", f"db3: expected 150 rows streamed over the mesh, got {got}"
    writer.terminate()
    writer.wait(timeout=10)
    attempts = writeload.read_log(log)
    acked = writeload.acknowledged(attempts)
    failed = sum(1 for a in attempts if not a.ok)
    print(f"MEASURED write load over the mesh: {len(acked)} acknowledged, {failed} failed attempts")
    on_db1 = {int(n) for n in db1.sql("SELECT n FROM lc_writes", db="lemmy").split()}
    lost = [n for n in acked if n not in on_db1]
    assert not lost, f"db1: {len(lost)} acknowledged rows missing, e.g. {lost[:5]}"
    want = str(len(on_db1))
    got = db3.wait_for("SELECT count(*) FROM lc_writes", want, timeout=30, db="lemmy")
    assert got == want, f"db3: expected db1's {want} rows streamed over the mesh, got {got}"
    for name in ("app1", "db3", "db1"):
        assert_all_pass(mesh.checks(name), name)
