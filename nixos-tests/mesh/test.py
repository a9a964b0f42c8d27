# VM test `mesh`: three machines whose only inter-machine traffic is the WireGuard mesh
# (nixos-tests/mesh/test.nix).
from driver_globals import (
    BACKEND_PORT,
    DOMAIN,
    MESH_ADDRESSES,
    MESH_INTERFACE,
    MESH_PEERS,
    MESH_PORT,
    PG_PORT,
    PICTRS_PORT,
    SITE_NAME,
    UI_PORT,
    UNDERLAY_ADDRESSES,
    app1,
    db1,
    fe1,
    start_all,
    subtest,
)
from lib import expect, expect_equal, expect_port, http, journal_on_failure, quote, wait_for_http

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----
by_name = {"fe1": fe1, "app1": app1, "db1": db1}
start_all()

with subtest("every machine's WireGuard interface and services start"):
    for m in by_name.values():
        with journal_on_failure(m, f"wireguard-{MESH_INTERFACE}.service"):
            m.wait_for_unit(f"wireguard-{MESH_INTERFACE}.service")
    with journal_on_failure(db1, "postgresql.service", "lemmy-cluster-pg-setup.service"):
        db1.wait_for_unit("postgresql.service")
        db1.wait_for_unit("lemmy-cluster-pg-setup.service")
    for unit in ("pict-rs.service", "lemmy.service"):
        app1.wait_for_unit(unit)
    for unit in ("lemmy-ui.service", "nginx.service"):
        fe1.wait_for_unit(unit)

with subtest("every machine has a handshake with each of its peers, and only with them"):
    for name, m in by_name.items():
        peers = MESH_PEERS[name].split(",")
        for peer in peers:
            # Traffic makes the handshake (WireGuard is silent without it).
            m.wait_until_succeeds(quote("ping", "-c", "1", "-W", "2", MESH_ADDRESSES[peer]), timeout=60)
        out = m.succeed(quote("wg", "show", MESH_INTERFACE, "latest-handshakes"))
        stamps = [line.split() for line in out.strip().splitlines()]
        expect_equal(len(peers), len(stamps), f"{name}: peers of {MESH_INTERFACE}")
        expect(all(int(s[1]) > 0 for s in stamps), f"{name}: a handshake with every peer", out)

with subtest("Lemmy answers through fe1: fe1 -> app1 -> db1, all over the mesh"):
    with journal_on_failure(app1, "lemmy.service"):
        wait_for_http(fe1, "http://127.0.0.1/api/v3/site", DOMAIN)
    site = http(fe1, "http://127.0.0.1/api/v3/site", host=DOMAIN).json()
    expect_equal(SITE_NAME, site["site_view"]["site"]["name"], "site name read from db1 through app1")

with subtest("internal ports are closed on the underlay, and on the mesh open only to the peers that need them"):
    u, w = UNDERLAY_ADDRESSES, MESH_ADDRESSES
    expect_port(app1, w["db1"], PG_PORT, True, "PostgreSQL over the mesh, from its backend")
    expect_port(app1, u["db1"], PG_PORT, False, "PostgreSQL on the underlay, from its backend")
    expect_port(fe1, u["db1"], PG_PORT, False, "PostgreSQL on the underlay, from the frontend")
    expect_port(fe1, w["db1"], PG_PORT, False, "PostgreSQL over the mesh, from the frontend (not db1's peer)")
    expect_port(fe1, w["app1"], BACKEND_PORT, True, "the backend over the mesh, from the frontend")
    expect_port(fe1, u["app1"], BACKEND_PORT, False, "the backend on the underlay, from the frontend")
    expect_port(db1, u["app1"], PICTRS_PORT, False, "pict-rs on the underlay, from the database machine")
    expect_port(db1, u["fe1"], UI_PORT, False, "lemmy-ui on the underlay, from the database machine")
    expect_port(app1, u["fe1"], 80, True, "the frontend's public HTTP port")
    rules = db1.succeed("iptables -S nixos-fw")
    expect(
        f"-A nixos-fw -s {w['app1']}/32 -i {MESH_INTERFACE} -p tcp -m tcp --dport {PG_PORT}" in rules,
        "db1's PostgreSQL rule names app1's mesh address on the mesh interface only",
        rules,
    )

with subtest("the underlay carries WireGuard and no PostgreSQL"):
    db1.succeed(
        "tcpdump -i eth1 -n -U --immediate-mode -w /tmp/underlay.pcap 'not tcp port 22' >/dev/null 2>&1 & "
        "echo $! >/tmp/tcpdump.pid; sleep 2"
    )
    for _ in range(5):
        http(fe1, "http://127.0.0.1/api/v3/site", host=DOMAIN)
    db1.succeed("kill $(cat /tmp/tcpdump.pid); sleep 1")
    pg_packets = db1.succeed(f"tcpdump -n -r /tmp/underlay.pcap 'tcp port {PG_PORT}' 2>/dev/null | wc -l").strip()
    wg_packets = db1.succeed(f"tcpdump -n -r /tmp/underlay.pcap 'udp port {MESH_PORT}' 2>/dev/null | wc -l").strip()
    expect_equal("0", pg_packets, "PostgreSQL packets on db1's underlay while Lemmy served")
    expect(int(wg_packets) > 0, "WireGuard packets on db1's underlay while Lemmy served", wg_packets)
