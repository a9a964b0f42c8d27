"""The WireGuard mesh in network-namespace hosts: wireguard-go interfaces set up from the module's data.

The chain is the one NixOS runs: a cluster TOML → synth's plan → services.lemmy-cluster.mesh as
synth renders it into the host module → modules/mesh/wireguard-settings.nix (evaluated with
nix-instantiate: tests/live/nixeval.py), the very attribute set the mesh module hands to nixpkgs'
networking.wireguard.interfaces.<name>. ``up`` then does what nixpkgs' wireguard-<name> and
wireguard-<name>-peer-* units do with it (`ip link set mtu`, `ip address add`, `wg set ...
private-key ... listen-port`, `ip link set up`, per peer `wg set ... peer ... endpoint
persistent-keepalive allowed-ips` and a route per allowed IP), with one difference: the kernel here
has no WireGuard module, so the interface is a userspace wireguard-go TUN device (kernel WireGuard
on NixOS).

    lab = MeshLab(cluster, workdir)
    lab.up(host, "db1")           # host: a tests.live.netns.Host on the underlay
    lab.run_checks(host, "db1")   # synth.checks.mesh: what `synth verify` runs
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.model import Cluster
from synth.render import host_data
from synth.topology import plan
from tests.live import nixeval
from tests.live.netns import Host

WIREGUARD_GO = "/usr/bin/wireguard-go"
WG = "/usr/bin/wg"
TCPDUMP = "/usr/bin/tcpdump"


def mesh_options(c: Cluster, machine: str) -> dict[str, Any]:
    """services.lemmy-cluster.mesh of MACHINE, as synth renders it into hosts/<machine>/default.nix."""
    lc = host_data(c, plan(c)[machine])["services"]["lemmy-cluster"]
    opts: dict[str, Any] = dict(lc["mesh"])
    return opts


def interface_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """networking.wireguard.interfaces.<name> of the mesh module (modules/mesh/wireguard-settings.nix)."""
    settings: dict[str, Any] = nixeval.evaluate(nixeval.MODULES / "mesh" / "wireguard-settings.nix", opts)
    return settings


@dataclass
class Result:
    """What testinfra's host.run returns, for the role checks."""

    rc: int
    stdout: str
    stderr: str


# wireguard-go and wg find each other through a socket in /run/wireguard/<interface>.sock, a path
# every namespace shares: each test host gets a folder of its own bound there, in a mount namespace
# of the command's own.
RUN_DIR = Path("/run/wireguard")


def in_own_run_dir(run_dir: Path, args: Sequence[str]) -> list[str]:
    """ARGS with RUN_DIR bound to the host's RUN_DIR folder (unshare's private mount namespace)."""
    script = 'mount --bind "$0" /run/wireguard && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(run_dir), *args]


class NsInfra:
    """The part of a testinfra Host the checks use (run), for a namespace host: `cmd % quoted args`."""

    def __init__(self, host: Host, run_dir: Path) -> None:
        self.host = host
        self.run_dir = run_dir

    def run(self, command: str, *args: str) -> Result:
        cmd = command % tuple(shlex.quote(a) for a in args) if args else command
        r = self.host.run(in_own_run_dir(self.run_dir, ["bash", "-c", cmd]), check=False, timeout=30)
        return Result(r.returncode, r.stdout, r.stderr)


class MeshLab:
    """The mesh interfaces of a cluster's machines; private keys as files under WORKDIR/keys."""

    def __init__(self, cluster: Cluster, workdir: Path, keys: dict[str, str]) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.keys_dir = workdir / "keys"
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keys = dict(keys)
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        RUN_DIR.mkdir(exist_ok=True)  # a mount point only: each host binds its own folder there

    def run_dir(self, machine: str) -> Path:
        path = self.workdir / "run" / machine
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def wg(self, host: Host, machine: str, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """`wg ARGS` in HOST, talking to MACHINE's wireguard-go."""
        return host.run(in_own_run_dir(self.run_dir(machine), [WG, *args]), check=check)

    def start_daemon(self, host: Host, machine: str, dev: str) -> subprocess.Popen[Any]:
        """wireguard-go in the foreground: its TUN device DEV appears in HOST's namespace."""
        # Its log beside the keys (LC_WG_LOG=debug for every handshake).
        with (self.workdir / f"wg-{machine}.log").open("ab") as log:
            proc = host.popen(
                in_own_run_dir(self.run_dir(machine), [WIREGUARD_GO, "-f", dev]),
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LOG_LEVEL": os.environ.get("LC_WG_LOG", "error")},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while host.run(["ip", "link", "show", dev], check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go made no {dev} in {host.name} (exit {proc.poll()})")
            time.sleep(0.05)
        return proc

    def key_file(self, machine: str) -> Path:
        path = self.keys_dir / f"wireguard-private-key.{machine}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.keys[machine] + "\n")
        return path

    def up(self, host: Host, machine: str, cluster: Cluster | None = None) -> dict[str, Any]:
        """Create MACHINE's interface in HOST's namespace and configure it as nixpkgs' units would."""
        c = cluster or self.cluster
        opts = mesh_options(c, machine)
        opts["privateKeyFile"] = str(self.key_file(machine))  # the lab's file instead of /var/lib/…
        s = interface_settings(opts)
        dev = opts["interface"]
        self.down(host, machine)
        self.procs[machine] = self.start_daemon(host, machine, dev)
        # nixpkgs' wireguard-<name>.service script, in its order.
        host.run(["ip", "link", "set", dev, "mtu", str(s["mtu"])])
        for ip in s["ips"]:
            host.run(["ip", "address", "add", ip, "dev", dev])
        self.wg(host, machine, ["set", dev, "private-key", s["privateKeyFile"], "listen-port", str(s["listenPort"])])
        host.run(["ip", "link", "set", "up", "dev", dev])
        # wireguard-<name>-peer-<peer>.service, each (its refresh loop, dynamicEndpointRefreshSeconds,
        # is for endpoints by host name: the test hosts have addresses).
        for peer in s["peers"]:
            self.set_peer(host, machine, dev, peer)
        return s

    def set_peer(self, host: Host, machine: str, dev: str, peer: dict[str, Any]) -> None:
        args = ["set", dev, "peer", peer["publicKey"]]
        if peer.get("endpoint"):
            args += ["endpoint", peer["endpoint"]]
        if peer.get("persistentKeepalive"):
            args += ["persistent-keepalive", str(peer["persistentKeepalive"])]
        args += ["allowed-ips", ",".join(peer["allowedIPs"])]
        self.wg(host, machine, args)
        for ip in peer["allowedIPs"]:
            host.run(["ip", "route", "replace", ip, "dev", dev, "table", "main"])

    def reconfigure(self, host: Host, machine: str, cluster: Cluster) -> dict[str, Any]:
        """A deploy of a changed host module: the interface is set up again from CLUSTER's plan."""
        return self.up(host, machine, cluster)

    def down(self, host: Host, machine: str) -> None:
        proc = self.procs.pop(machine, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        host.run(["ip", "link", "del", "wg-lemmy"], check=False)

    def run_checks(self, host: Host, machine: str, cluster: Cluster | None = None) -> list[Any]:
        from synth.checks.mesh import mesh_checks

        mp = plan(cluster or self.cluster)[machine].mesh
        assert mp is not None
        return mesh_checks(NsInfra(host, self.run_dir(machine)), mp)


class Capture:
    """tcpdump on one interface of the root namespace (an underlay veth), raw packets to a file."""

    def __init__(self, interface: str, path: Path, filter_expr: str = "", host: Host | None = None) -> None:
        self.path = path
        args = [TCPDUMP, "-i", interface, "-n", "-U", "--immediate-mode", "-s", "0", "-w", str(path)]
        if filter_expr:
            args += shlex.split(filter_expr)
        full = host.cmd(args) if host is not None else args
        self.proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # tcpdump says "listening on ..." once it captures (immediate mode: without it, the ring
        # buffer of this kernel handed tcpdump nothing before it was stopped).
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "listening" not in line:
            raise RuntimeError(f"tcpdump on {interface} did not start: {line}")

    def stop(self) -> bytes:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        return self.path.read_bytes()

    def packets(self, expr: str = "") -> list[str]:
        r = subprocess.run(
            [TCPDUMP, "-n", "-r", str(self.path), *shlex.split(expr)], text=True, capture_output=True, check=False
        )
        return r.stdout.splitlines()


def wait_listening(host: Host, address: str, port: int, timeout: float = 15) -> None:
    """Wait until ADDRESS:PORT accepts TCP connections from inside HOST's namespace."""
    code = (
        "import socket,sys,time\n"
        f"d=time.monotonic()+{timeout}\n"
        "while time.monotonic()<d:\n"
        "    try:\n"
        f"        socket.create_connection(({address!r},{port}),timeout=0.5).close();sys.exit(0)\n"
        "    except OSError: time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    r = host.run(["python3", "-c", code], check=False, timeout=timeout + 5)
    if r.returncode != 0:
        raise RuntimeError(f"nothing listening on {address}:{port} in {host.name} after {timeout}s")
