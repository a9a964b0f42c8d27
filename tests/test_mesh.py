"""The WireGuard mesh: validation, keys made and recorded, peers, the module's data, rotation, checks.

Live (wireguard-go, PostgreSQL and nginx crossing the mesh): tests/live/test_mesh.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from synth import mesh
from synth.checks.mesh import handshakes, interface_up
from synth.errors import SynthError
from synth.model import parse
from synth.render import host_data
from synth.topology import plan
from tests.conftest import require_tool
from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]
LIVE_TOML = ROOT / "tests" / "live" / "mesh-cluster.toml"

BASE = """
[cluster]
name = "m"
domain = "lemmy.m.example"
admin_email = "a@m.example"
tls = "none"

[postgres]
primary = "db1"
version = 17
failover = "manual"

[network]
mesh = "wireguard"  # keep this comment
{network}

[machines.fe1]
address = "203.0.113.11"
roles = ["frontend"]
{fe1}

[machines.app1]
address = "192.168.1.21"
roles = ["backend", "pictrs"]
{app1}

[machines.db1]
address = "203.0.113.31"
roles = ["postgres"]
{db1}
"""


def text(network: str = "", fe1: str = "", app1: str = "", db1: str = "") -> str:
    return BASE.format(network=network, fe1=fe1, app1=app1, db1=db1)


def problems(toml: str, pending: bool = True) -> list[str]:
    try:
        parse(toml, pending_node_ids=pending)
    except SynthError as exc:
        return [f"{p.path}: {p.message}" for p in exc.problems]
    return []


def initialised(tmp_path: Path, toml: str) -> Path:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(toml)
    code, out, err = run("secrets", "init", str(cluster))
    assert code == 0, out + err
    return cluster


# --------------------------------------------------------------------------- validation


def test_a_complete_mesh_needs_recorded_addresses_and_keys() -> None:
    got = problems(text(), pending=False)
    for m in ("fe1", "app1", "db1"):
        assert any(p.startswith(f"machines.{m}.mesh_address: missing; run `synth secrets init`") for p in got), got
        assert any(p.startswith(f"machines.{m}.wireguard_public_key: missing") for p in got), got
    assert problems(text()) == [], "secrets init and add-machine accept a mesh whose keys are pending"


@pytest.mark.parametrize(
    ("network", "where", "says"),
    [
        ('mesh_subnet = "10.100.0.0/33"', "network.mesh_subnet", "is not a network"),
        ('mesh_subnet = "fd00::/64"', "network.mesh_subnet", "must be an IPv4 network"),
        ('mesh_subnet = "10.100.0.0/31"', "network.mesh_subnet", "has room for 0 machines"),
        ('mesh_subnet = "203.0.113.0/24"', "network.mesh_subnet", "contains fe1's address 203.0.113.11"),
        ("mesh_mtu = 1000", "network.mesh_mtu", "between 1280 and 9000"),
        ("mesh_port = 0", "network.mesh_port", "UDP port"),
        ("mesh_keepalive = 0", "network.mesh_keepalive", "between 1 and 3600"),
    ],
)
def test_network_section_rules(network: str, where: str, says: str) -> None:
    got = problems(text(network=network))
    assert any(p.startswith(f"{where}: ") and says in p for p in got), got


def test_machine_mesh_fields() -> None:
    key = mesh.public_key(mesh.new_private_key())
    got = problems(
        text(
            fe1=f'mesh_address = "10.100.0.1"\nwireguard_public_key = "{key}"',
            app1=f'mesh_address = "10.100.0.1"\nwireguard_public_key = "{key}"',
            db1='mesh_address = "10.200.0.1"\nwireguard_public_key = "not-a-key"',
        )
    )
    assert "machines.app1.mesh_address: 10.100.0.1 is already the mesh address of 'fe1'" in got, got
    assert any(p.startswith("machines.app1.wireguard_public_key: the same key as machine 'fe1'") for p in got), got
    assert "machines.db1.mesh_address: 10.200.0.1 is not a host address of mesh_subnet 10.100.0.0/24" in got, got
    assert any(p.startswith("machines.db1.wireguard_public_key: not a WireGuard public key") for p in got), got


def test_mesh_fields_without_the_mesh_are_refused() -> None:
    toml = text(fe1="behind_nat = true").replace('mesh = "wireguard"', 'mesh = "none"')
    got = problems(toml)
    assert any(p.startswith("machines.fe1.behind_nat: only used with [network] mesh") for p in got), got


def test_the_only_frontend_cannot_be_behind_nat() -> None:
    got = problems(text(fe1="behind_nat = true"))
    assert any(p.startswith("machines: every frontend (fe1) is behind_nat") for p in got), got


def test_two_machines_behind_nat_that_talk_are_refused() -> None:
    # app1 (backend) and db1 (its database) both at home: neither could reach the other.
    got = problems(text(app1="behind_nat = true", db1="behind_nat = true"))
    assert any(p.startswith("machines.db1.behind_nat: app1 and db1 are both behind NAT") for p in got), got
    # app1 behind NAT alone is fine: it reaches out to fe1 and db1.
    assert problems(text(app1="behind_nat = true")) == []


def test_without_the_mesh_a_public_private_address_is_a_warning(tmp_path: Path) -> None:
    # 203.0.113.0/24 is a documentation network (not global): a real public address here.
    public = text().replace("203.0.113.11", "95.216.10.11")
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(public.replace('mesh = "wireguard"', 'mesh = "none"'))
    code, _out, err = run("validate", str(cluster))
    assert code == 0, err
    assert "warning: " in err and "machines.fe1.address: 95.216.10.11 is a public address" in err, err
    assert "machines.app1" not in err, "192.168.1.21 is a private address"
    cluster.write_text(public)
    code, _out, err = run("secrets", "init", str(cluster))
    assert code == 0
    code, _out, err = run("validate", str(cluster))
    assert code == 0 and "warning" not in err, "with the mesh the traffic is encrypted: no warning"


# --------------------------------------------------------------------------- keys and the plan


def test_secrets_init_makes_keys_and_records_addresses_keeping_comments(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, text(app1="behind_nat = true"))
    after = cluster.read_text()
    assert "# keep this comment" in after
    c = parse(after)
    for i, name in enumerate(("fe1", "app1", "db1"), 1):
        m = c.machines[name]
        key_file = tmp_path / "secrets" / f"wireguard-private-key.{name}"
        assert key_file.stat().st_mode & 0o077 == 0
        assert m.mesh_address == f"10.100.0.{i}"
        assert m.wireguard_public_key == mesh.public_key(key_file.read_text()), name
    # A second run keeps everything.
    code, out, _err = run("secrets", "init", str(cluster))
    assert code == 0 and cluster.read_text() == after and "recorded" not in out


def test_secrets_init_refuses_a_key_file_that_is_not_the_recorded_one(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, text())
    (tmp_path / "secrets" / "wireguard-private-key.db1").write_text(mesh.new_private_key() + "\n")
    code, _out, err = run("secrets", "init", str(cluster))
    assert code == 1
    assert "machines.db1.wireguard_public_key:" in err and "is not the public key of" in err, err
    assert "Traceback" not in err


def test_wg_pubkey_agrees_with_synth() -> None:
    wg = require_tool("wg")
    private = mesh.new_private_key()
    r = subprocess.run([wg, "pubkey"], input=private + "\n", capture_output=True, text=True, check=True)
    assert r.stdout.strip() == mesh.public_key(private)


def test_peers_are_the_machines_each_talks_to(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, text(app1="behind_nat = true"))
    c = parse(cluster.read_text())
    plans = plan(c)
    peers = {n: [p.name for p in (h.mesh.peers if h.mesh else [])] for n, h in plans.items()}
    assert peers == {"fe1": ["app1"], "app1": ["fe1", "db1"], "db1": ["app1"]}, peers
    # Every internal address is the mesh address.
    assert plans["app1"].backend is not None and plans["app1"].backend.database_hosts == ["10.100.0.3"]
    assert plans["fe1"].frontend is not None and plans["fe1"].frontend.backends == ["10.100.0.2:8536"]
    assert plans["db1"].peers == {"app1": "10.100.0.2"}
    fe1 = plans["fe1"].mesh
    app1 = plans["app1"].mesh
    assert fe1 is not None and app1 is not None
    # Nobody has an endpoint for app1 (behind NAT); app1 keeps its NAT open toward everyone.
    assert fe1.peers[0].endpoint is None and fe1.peers[0].persistent_keepalive is None
    assert [(p.endpoint, p.persistent_keepalive) for p in app1.peers] == [
        ("203.0.113.11:51820", 25),
        ("203.0.113.31:51820", 25),
    ]
    assert app1.private_key_file == "/var/lib/lemmy-cluster/secrets/wireguard-private-key"
    assert "wireguard_key" in plans["fe1"].secrets


def evaluate(file: Path, argument: Any) -> Any:
    require_tool("nix-instantiate")
    expr = f"import {file} (builtins.fromJSON {json.dumps(json.dumps(argument))})"
    r = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout)


def test_the_module_data_is_what_nixpkgs_wireguard_takes(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, text(app1="behind_nat = true"))
    c = parse(cluster.read_text())
    opts = host_data(c, plan(c)["app1"])["services"]["lemmy-cluster"]["mesh"]
    s = evaluate(ROOT / "modules" / "mesh" / "wireguard-settings.nix", opts)
    assert s["ips"] == ["10.100.0.2/24"] and s["listenPort"] == 51820 and s["mtu"] == 1420
    assert s["privateKeyFile"] == "/var/lib/lemmy-cluster/secrets/wireguard-private-key"
    assert s["dynamicEndpointRefreshSeconds"] == 0, "every endpoint is an address: nothing to resolve again"
    assert [p["name"] for p in s["peers"]] == ["fe1", "db1"]
    assert s["peers"][1] == {
        "name": "db1",
        "publicKey": c.machines["db1"].wireguard_public_key,
        "allowedIPs": ["10.100.0.3/32"],
        "endpoint": "203.0.113.31:51820",
        "persistentKeepalive": 25,
    }
    opts_fe1 = host_data(c, plan(c)["fe1"])["services"]["lemmy-cluster"]["mesh"]
    s_fe1 = evaluate(ROOT / "modules" / "mesh" / "wireguard-settings.nix", opts_fe1)
    assert s_fe1["peers"] == [
        {"name": "app1", "publicKey": c.machines["app1"].wireguard_public_key, "allowedIPs": ["10.100.0.2/32"]}
    ], "a NAT peer has no endpoint, and a public machine sends no keepalives"


def test_an_endpoint_by_name_is_resolved_again(tmp_path: Path) -> None:
    """WireGuard resolves a host name once: with a peer known by name, nixpkgs' peer units refresh.
    (With the mesh a DNS-named machine needs no private_address: its internal address is the mesh's.)"""
    toml = text().replace('address = "203.0.113.31"', 'address = "db.example.org"')
    assert any("required because address is a DNS name" in p for p in problems(toml.replace("wireguard", "none")))
    cluster = initialised(tmp_path, toml)
    c = parse(cluster.read_text())
    opts = host_data(c, plan(c)["app1"])["services"]["lemmy-cluster"]["mesh"]
    s = evaluate(ROOT / "modules" / "mesh" / "wireguard-settings.nix", opts)
    assert s["peers"][1]["endpoint"] == "db.example.org:51820"
    assert s["dynamicEndpointRefreshSeconds"] == 300


def test_mtu_is_settable(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, text(network="mesh_mtu = 1380"))
    c = parse(cluster.read_text())
    mp = plan(c)["db1"].mesh
    assert mp is not None and mp.mtu == 1380


def test_add_machine_joins_the_mesh_and_the_plan_shows_every_peer_change(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, text())
    code, out, err = run("generate", str(cluster))
    assert code == 0, err
    require_tool("git")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "hosts"], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "hosts"], check=True
    )
    code, out, err = run(
        "add-machine",
        "app2",
        "--role",
        "backend",
        "--address",
        "192.168.1.22",
        "--behind-nat",
        "--cluster",
        str(cluster),
    )
    assert code == 0, out + err
    assert "created: " in out and "wireguard-private-key.app2" in out
    c = parse(cluster.read_text())
    m = c.machines["app2"]
    assert m.behind_nat and m.mesh_address == "10.100.0.4"
    key_file = tmp_path / "secrets" / "wireguard-private-key.app2"
    assert m.wireguard_public_key == mesh.public_key(key_file.read_text())
    code, out, err = run("plan", str(cluster), "--since", "HEAD")
    assert code in (0, 3), err  # 3: "there are changes", where plan says so by its exit code
    # fe1 and db1 get app2 as a peer (no endpoint: it is behind NAT); nothing else changes for them.
    for host in ("fe1", "db1"):
        assert f"== changed: hosts/{host}/default.nix" in out, out
    assert f'+            publicKey = "{m.wireguard_public_key}";' in out
    assert "== added: hosts/app2/default.nix" in out
    assert "WireGuard peers that change (deploy both ends of each):" in out
    assert "  fe1: +app2\n" in out and "  db1: +app2\n" in out, out
    assert "  app2: joins the mesh, peers fe1, app1, db1\n" in out, out


def test_rotate_key_keeps_the_old_key_and_updates_every_peer(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, text())
    code, out, err = run("generate", str(cluster))
    old_file = tmp_path / "secrets" / "wireguard-private-key.db1"
    old_private = old_file.read_text()
    old_public = parse(cluster.read_text()).machines["db1"].wireguard_public_key
    code, out, err = run("mesh", "rotate-key", "db1", "--cluster", str(cluster))
    assert code == 0, out + err
    after = cluster.read_text()
    assert "# keep this comment" in after
    new_public = parse(after).machines["db1"].wireguard_public_key
    assert new_public != old_public and new_public == mesh.public_key(old_file.read_text())
    kept = list((tmp_path / "secrets").glob("wireguard-private-key.db1.replaced-*"))
    assert len(kept) == 1 and kept[0].read_text() == old_private, "the old key is kept"
    assert "peers whose host modules now name the new key: app1" in out, out
    assert new_public in (tmp_path / "hosts" / "app1" / "default.nix").read_text()
    code, out, err = run("plan", str(cluster))
    assert code == 0 and "No changes" in out, "rotate-key regenerated hosts/ itself"
    assert old_public not in (tmp_path / "hosts" / "app1" / "default.nix").read_text()


def test_rotate_key_refuses_without_the_mesh(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(text().replace('mesh = "wireguard"', 'mesh = "none"'))
    before = cluster.read_text()
    code, _out, err = run("mesh", "rotate-key", "db1", "--cluster", str(cluster))
    assert code == 1 and "network.mesh: the mesh is off" in err and "Traceback" not in err
    assert cluster.read_text() == before and not (tmp_path / "secrets").exists()


# --------------------------------------------------------------------------- the verify checks


class FakeHost:
    """Answers the commands the mesh checks run."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.ran: list[str] = []

    def run(self, command: str, *args: str) -> Any:
        cmd = command % args if args else command
        self.ran.append(cmd)
        for prefix, (rc, out) in self.answers.items():
            if cmd.startswith(prefix):
                return type("R", (), {"rc": rc, "stdout": out, "stderr": ""})()
        return type("R", (), {"rc": 0, "stdout": "", "stderr": ""})()


def test_handshake_check_tells_never_stale_and_fresh(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, text())
    c = parse(cluster.read_text())
    mp = plan(c)["app1"].mesh
    assert mp is not None
    fe1, db1 = (p.public_key for p in mp.peers)
    host = FakeHost({"wg show": (0, f"{fe1}\t0\n{db1}\t1000\n"), "date": (0, "1100\n")})
    results = {r.name: r for r in handshakes(host, mp, wait=0)}
    assert not results["mesh: handshake with fe1"].ok and "wrong key" in results["mesh: handshake with fe1"].detail
    assert results["mesh: handshake with db1"].ok, results
    assert any(cmd.startswith("ping -c 1 -W 1 10.100.0.1") for cmd in host.ran), "the check makes traffic first"
    host = FakeHost({"wg show": (0, f"{fe1}\t100\n{db1}\t1000\n"), "date": (0, "1100\n")})
    stale = {r.name: r for r in handshakes(host, mp, wait=0)}["mesh: handshake with fe1"]
    assert not stale.ok and "1000 s ago" in stale.detail
    # A recent handshake but no answer through the tunnel: a session the peer no longer has.
    host = FakeHost(
        {"ping -c 1 -W 1 10.100.0.3": (1, ""), "wg show": (0, f"{fe1}\t1090\n{db1}\t1090\n"), "date": (0, "1100\n")}
    )
    gone = {r.name: r for r in handshakes(host, mp, wait=0)}
    assert gone["mesh: handshake with fe1"].ok
    assert (
        not gone["mesh: handshake with db1"].ok
        and "does not answer through the tunnel" in gone["mesh: handshake with db1"].detail
    )
    down = interface_up(FakeHost({"ip -o addr": (1, 'Device "wg-lemmy" does not exist.')}), mp)
    assert not down.ok and "no interface wg-lemmy" in down.detail


def test_the_live_cluster_file_is_valid_once_initialised(tmp_path: Path) -> None:
    cluster = initialised(tmp_path, LIVE_TOML.read_text())
    c = parse(cluster.read_text())
    assert mesh.enabled(c) and c.machines["app1"].behind_nat


def test_remove_machine_drops_it_from_every_peer_list(tmp_path: Path) -> None:
    toml = text() + '\n[machines.app2]\naddress = "203.0.113.22"\nroles = ["backend"]\n'
    cluster = initialised(tmp_path, toml)
    assert any(p.name == "app2" for p in (plan(parse(cluster.read_text()))["db1"].mesh or _none()).peers)
    code, out, err = run("remove-machine", "app2", "--cluster", str(cluster))
    assert code == 0, out + err
    plans = plan(parse(cluster.read_text()))
    for name, h in plans.items():
        assert all(p.name != "app2" for p in (h.mesh or _none()).peers), name
    assert "app2" not in (tmp_path / "hosts" / "db1" / "default.nix").read_text()


def _none() -> Any:
    raise AssertionError("no mesh plan")


def test_plan_names_each_peer_change(tmp_path: Path) -> None:
    from synth.render import render_files

    cluster = initialised(tmp_path, text())
    before = parse(cluster.read_text())
    new_key = mesh.public_key(mesh.new_private_key())
    old_key = before.machines["db1"].wireguard_public_key
    assert old_key is not None
    after = parse(cluster.read_text().replace(old_key, new_key))
    lines = mesh.peer_changes(render_files(before, "c"), render_files(after, "c"))
    assert lines == ["app1: db1 has a new key"], lines
    off = parse(text().replace('mesh = "wireguard"', 'mesh = "none"'))
    lines = mesh.peer_changes(render_files(before, "c"), render_files(off, "c"))
    assert lines == ["app1: leaves the mesh", "db1: leaves the mesh", "fe1: leaves the mesh"], lines
