"""Test hosts as Linux network namespaces on one bridge.

Each host is a namespace named ``lc-<name>`` with one veth interface holding its private address
(a /24 on the bridge ``lcbr0``); the root namespace gets ``.1`` on the bridge, so tests can reach
every host. Nothing leaves the machine. Needs root and iproute2.

    with Network("10.231.0.0/24") as net:
        fe1 = net.add("fe1", "10.231.0.11")
        fe1.run(["ip", "addr"])            # runs inside the namespace
        proc = fe1.popen(["nginx", ...])   # long-running process inside the namespace
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def sh(args: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, text=True, capture_output=True, **kw)


@dataclass
class Host:
    name: str
    address: str
    ns: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def cmd(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, args: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return sh(self.cmd(args), check=check, **kw)

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(self.cmd(args), **kw)
        self.procs.append(proc)
        return proc

    gateway: str = ""

    def link(self, up: bool) -> None:
        """Cut or restore the host's network (like pulling its cable)."""
        self.run(["ip", "link", "set", "eth0", "up" if up else "down"])
        if up and self.gateway:
            # The kernel drops the default route with the link; put it back.
            self.run(["ip", "route", "replace", "default", "via", self.gateway])

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()


class NetworkInUse(RuntimeError):
    """Another live test (another pytest worker) has a Network with the same subnet, bridge or prefix."""


class Network:
    def __init__(self, cidr: str, bridge: str = "lcbr0", prefix: str = "lc-") -> None:
        self.net = ipaddress.ip_network(cidr)
        self.bridge = bridge
        self.prefix = prefix
        self.hosts: dict[str, Host] = {}
        self.gateway = str(next(self.net.hosts()))
        self._locks: list[Any] = []

    def _lock(self) -> None:
        """Hold a lock per subnet, bridge and namespace prefix while the Network exists: two live
        test modules that share one (make test runs them in parallel) would tear down each other's
        hosts, so the second one fails at once, saying with what."""
        import fcntl
        import tempfile

        # Per network namespace of the test run (runs in separate namespaces do not collide).
        here = os.readlink("/proc/self/ns/net").strip("net:[]")
        folder = Path(tempfile.gettempdir()) / f"lemmy-cluster-netns-locks-{here}"
        folder.mkdir(exist_ok=True)
        for kind, value in (("subnet", str(self.net)), ("bridge", self.bridge), ("prefix", self.prefix)):
            f = (folder / f"{kind}-{value.replace('/', '_')}").open("w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                self._unlock()
                raise NetworkInUse(
                    f"another live test uses the {kind} {value} right now; give each test module a subnet, "
                    "bridge and namespace prefix of its own"
                ) from None
            self._locks.append(f)

    def _unlock(self) -> None:
        for f in self._locks:
            f.close()
        self._locks.clear()

    def __enter__(self) -> Network:
        self._lock()
        self.cleanup()
        sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        sh(["ip", "addr", "add", f"{self.gateway}/{self.net.prefixlen}", "dev", self.bridge])
        sh(["ip", "link", "set", self.bridge, "up"])
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.cleanup()
        finally:
            self._unlock()

    def add(self, name: str, address: str) -> Host:
        ns = f"{self.prefix}{name}"
        veth = self.veth(name)
        sh(["ip", "netns", "add", ns])
        self.no_resolver(ns)
        sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        sh(["ip", "link", "set", veth, "master", self.bridge])
        sh(["ip", "link", "set", veth, "up"])
        host = Host(name, address, ns, gateway=self.gateway)
        host.run(["ip", "addr", "add", f"{address}/{self.net.prefixlen}", "dev", "eth0"])
        host.run(["ip", "link", "set", "eth0", "up"])
        host.run(["ip", "link", "set", "lo", "up"])
        host.run(["ip", "route", "add", "default", "via", self.gateway])
        self.hosts[name] = host
        return host

    @staticmethod
    def no_resolver(ns: str) -> None:
        """A resolv.conf without nameserver for namespace NS (`ip netns exec` bind-mounts
        /etc/netns/NS/resolv.conf over /etc/resolv.conf): a DNS query then goes to 127.0.0.1 of
        the namespace, where nothing listens, and fails at once, instead of waiting 2 x 5 s for
        the machine's resolver, which the namespace cannot reach (Patroni's REST API asks for the
        name of its address at every start; libpq for a host name)."""
        folder = Path("/etc/netns") / ns
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resolv.conf").write_text("# lemmy-cluster live test: no DNS in this namespace\noptions attempts:1\n")

    @staticmethod
    def drop_resolver(ns: str) -> None:
        folder = Path("/etc/netns") / ns
        (folder / "resolv.conf").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()

    def veth(self, name: str) -> str:
        """The root-side interface of host NAME (unique per Network prefix; at most 15 characters)."""
        return f"{self.prefix}{name}"[:15]

    def cleanup(self) -> None:
        for host in self.hosts.values():
            host.stop_all()
        # A namespace can outlive `ip netns del` while the kernel still holds its closed TCP
        # connections, and its root-side veth with it: delete the veths explicitly.
        for name in self.hosts:
            sh(["ip", "link", "del", self.veth(name)], check=False)
        self.hosts.clear()
        out = sh(["ip", "netns", "list"], check=False).stdout
        for line in out.splitlines():
            ns = line.split()[0] if line.strip() else ""
            if ns.startswith(self.prefix):
                # Kill whatever still runs in the namespace, then delete it.
                pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
                for pid in pids:
                    sh(["kill", "-9", pid], check=False)
                sh(["ip", "netns", "del", ns], check=False)
                self.drop_resolver(ns)
        sh(["ip", "link", "del", self.bridge], check=False)
