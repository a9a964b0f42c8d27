"""`make bench` section "mesh": what the WireGuard mesh costs against the bare underlay.

Two namespace hosts on a bridge (10.253.0.0/24, lcbr-w3, lcw3-): a frontend and a machine with
the other roles, whose mesh interfaces are set up exactly as in the live tests (tests/live/mesh.py:
the module's wireguard-settings.nix, then wg/ip as nixpkgs' units run them). The implementation
measured is userspace **wireguard-go** (Debian's 0.0.20220316; the kernel here has no WireGuard
module); NixOS runs the kernel's WireGuard, which is faster: these figures are an upper bound of
the cost. The same Python client and server run over both paths, so the difference is the mesh.

- latency: a 64-byte request answered by a 64-byte response on one TCP connection, N round trips;
- throughput: one TCP connection sending 256 MiB in 1 MiB writes, from the frontend to the other.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synth import mesh
from synth.model import from_data
from synth.topology import plan
from tests.live.mesh import MeshLab, wait_listening
from tests.live.netns import Host, Network

Row = tuple[str, str, str]
SUBNET = "10.253.0.0/24"
BRIDGE = "lcbr-w3"
PREFIX = "lcw3-"
PORT = 9500
ROUND_TRIPS = 3000
MEGABYTES = 256

SERVER = r"""
import socket, sys
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, port)); s.listen(4)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "echo":
        while True:
            d = c.recv(64)
            if not d: break
            c.sendall(d)
    else:
        n = 0
        while True:
            d = c.recv(1 << 20)
            if not d: break
            n += len(d)
        c.sendall(str(n).encode())
    c.close()
"""

CLIENT = r"""
import socket, sys, time, json
mode, addr, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = socket.create_connection((addr, port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if mode == "echo":
    msg = b"x" * 64; out = []
    for _ in range(n):
        t = time.perf_counter(); c.sendall(msg); got = 0
        while got < 64: got += len(c.recv(64))
        out.append(time.perf_counter() - t)
    print(json.dumps(out))
else:
    buf = b"y" * (1 << 20); t = time.perf_counter()
    for _ in range(n): c.sendall(buf)
    c.shutdown(socket.SHUT_WR); total = int(c.recv(64)); dt = time.perf_counter() - t
    print(json.dumps({"bytes": total, "seconds": dt}))
"""


def cluster_data(keys: dict[str, str]) -> dict[str, Any]:
    return {
        "cluster": {"name": "bench-mesh", "domain": "lemmy.bench.example", "admin_email": "a@bench.example"},
        "postgres": {"primary": "b", "version": 15, "failover": "manual"},
        "network": {"mesh": "wireguard", "mesh_subnet": "10.252.0.0/24"},
        "machines": {
            "a": {
                "address": "10.253.0.11",
                "roles": ["frontend"],
                "mesh_address": "10.252.0.1",
                "wireguard_public_key": mesh.public_key(keys["a"]),
            },
            "b": {
                "address": "10.253.0.12",
                "roles": ["backend", "pictrs", "postgres"],
                "mesh_address": "10.252.0.2",
                "wireguard_public_key": mesh.public_key(keys["b"]),
            },
        },
    }


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def measure(client: Host, server: Host, address: str, mode: str, n: int) -> Any:
    import json

    proc = server.popen([sys.executable, "-c", SERVER, mode, address, str(PORT)], stdout=subprocess.DEVNULL)
    try:
        wait_listening(client, address, PORT)
        r = client.run([sys.executable, "-c", CLIENT, mode, address, str(PORT), str(n)], timeout=600)
        return json.loads(r.stdout)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def bench_mesh(results: dict[str, Any]) -> list[Row]:
    import os

    if os.geteuid() != 0 or shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        return [("mesh: not measured", "needs root, wireguard-go and wg (scripts/install-system-deps.sh)", "")]
    keys = {n: mesh.new_private_key() for n in ("a", "b")}
    c = from_data(cluster_data(keys), "bench-mesh")
    workdir = Path(tempfile.mkdtemp(prefix="lcmesh-bench-", dir="/tmp"))
    out: dict[str, Any] = {"implementation": "wireguard-go (userspace), Debian 0.0.20220316"}
    try:
        with Network(SUBNET, bridge=BRIDGE, prefix=PREFIX) as net:
            hosts = {n: net.add(n, m.address) for n, m in c.machines.items()}
            lab = MeshLab(c, workdir, keys)
            for n in c.machines:
                lab.up(hosts[n], n)
            plans = plan(c)
            paths = {"underlay": c.machines["b"].address, "mesh": plans["b"].private_address}
            for label, addr in paths.items():
                rtts = measure(hosts["a"], hosts["b"], addr, "echo", ROUND_TRIPS)
                bulk = measure(hosts["a"], hosts["b"], addr, "bulk", MEGABYTES)
                out[label] = {
                    "rtt_median_ms": statistics.median(rtts) * 1000,
                    "rtt_p99_ms": pct(rtts, 99) * 1000,
                    "throughput_mbit_s": bulk["bytes"] * 8 / bulk["seconds"] / 1e6,
                }
            for n in list(lab.procs):
                lab.down(hosts[n], n)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["mesh"] = out
    u, w = out["underlay"], out["mesh"]
    impl = "wireguard-go"
    return [
        (
            f"mesh: TCP round trip, 64 B, median (underlay -> {impl})",
            f"{u['rtt_median_ms']:.3f} -> {w['rtt_median_ms']:.3f} ms (+{w['rtt_median_ms'] - u['rtt_median_ms']:.3f})",
            "",
        ),
        (
            f"mesh: TCP round trip, 64 B, p99 (underlay -> {impl})",
            f"{u['rtt_p99_ms']:.3f} -> {w['rtt_p99_ms']:.3f} ms",
            "",
        ),
        (
            f"mesh: TCP throughput, one connection (underlay -> {impl})",
            f"{u['throughput_mbit_s']:.0f} -> {w['throughput_mbit_s']:.0f} Mbit/s",
            "",
        ),
    ]


SECTIONS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {"mesh": bench_mesh}


def main() -> None:  # python -m tests.live.bench_mesh
    results: dict[str, Any] = {}
    started = time.monotonic()
    for row in bench_mesh(results):
        print(" | ".join(row))
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
