"""Checks of a machine's WireGuard mesh interface, through a testinfra Host.

    from synth.checks.mesh import mesh_checks
    for result in mesh_checks(host, plan.mesh):
        print(result)

The host needs ``ip`` (iproute2), ``wg`` (wireguard-tools) and ``ping``.
"""

from __future__ import annotations

from typing import Any

from synth.checks import CheckResult
from synth.mesh import HANDSHAKE_MAX_AGE, MeshPlan


def interface_up(host: Any, mesh: MeshPlan) -> CheckResult:
    """The interface exists, is up and holds the machine's mesh address."""
    name = f"mesh: {mesh.interface} up with {mesh.address}"
    r = host.run("ip -o addr show dev %s", mesh.interface)
    if r.rc != 0:
        return CheckResult(name, False, f"no interface {mesh.interface}: {(r.stderr or r.stdout).strip()}")
    link = host.run("ip -o link show dev %s", mesh.interface)
    flags = link.stdout.split("<", 1)[-1].split(">", 1)[0].split(",")
    if "UP" not in flags:
        return CheckResult(name, False, f"{mesh.interface} is down (flags {','.join(flags)})")
    if f"inet {mesh.address}/" not in r.stdout:
        return CheckResult(name, False, f"expected address {mesh.address}/{mesh.prefix_length}, got {r.stdout.strip()}")
    return CheckResult(name, True, f"{mesh.address}/{mesh.prefix_length}")


# How long a handshake may take: WireGuard retries an unanswered initiation after 5 s (REKEY_TIMEOUT).
HANDSHAKE_WAIT = 7.0


def _latest(host: Any, interface: str) -> dict[str, int] | str:
    r = host.run("wg show %s latest-handshakes", interface)
    if r.rc != 0:
        return f"`wg show {interface}` failed: {(r.stderr or r.stdout).strip()}"
    seen: dict[str, int] = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            seen[parts[0]] = int(parts[1])
    return seen


def handshakes(host: Any, mesh: MeshPlan, wait: float = HANDSHAKE_WAIT) -> list[CheckResult]:
    """A recent handshake with every peer: a ping through the tunnel first makes one (WireGuard
    shakes hands only when there is traffic), then `wg show latest-handshakes` tells its age; a
    peer without one is pinged again for up to WAIT seconds (a lost initiation is retried after 5 s)."""
    import time

    def now() -> int:
        return int(host.run("date +%s").stdout.strip() or 0)

    def fresh(seen: dict[str, int], key: str, t: int) -> bool:
        return seen.get(key, 0) > 0 and t - seen[key] <= HANDSHAKE_MAX_AGE

    pending = list(mesh.peers)
    answered: set[str] = set()  # peers that answered a ping through the tunnel
    deadline = time.monotonic() + wait
    while True:
        for p in pending:
            rc = host.run("ping -c 1 -W 1 %s", p.address).rc
            if rc == 127:
                return [CheckResult("mesh: handshakes", False, "no `ping` on the machine (iputils) to make traffic")]
            if rc == 0:
                answered.add(p.name)
        got = _latest(host, mesh.interface)
        if isinstance(got, str):
            return [CheckResult(f"mesh: handshake with {p.name}", False, got) for p in mesh.peers]
        seen, t = got, now()
        pending = [p for p in mesh.peers if not (fresh(seen, p.public_key, t) and p.name in answered)]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out = []
    for p in mesh.peers:
        name = f"mesh: handshake with {p.name}"
        where = f"{p.endpoint}" if p.endpoint else "behind NAT: it must reach out to this machine"
        if p.public_key not in seen:
            out.append(
                CheckResult(name, False, f"{p.name}'s key {p.public_key} is not a peer of {mesh.interface}; deploy")
            )
        elif seen[p.public_key] == 0:
            out.append(
                CheckResult(
                    name,
                    False,
                    f"never ({where}): a wrong key on one side (cluster.toml's wireguard_public_key against "
                    f"the key file there), or UDP {mesh.listen_port} blocked",
                )
            )
        elif t - seen[p.public_key] > HANDSHAKE_MAX_AGE:
            out.append(
                CheckResult(name, False, f"last {t - seen[p.public_key]} s ago (expected < {HANDSHAKE_MAX_AGE} s)")
            )
        elif p.name not in answered:
            # A session that the peer no longer has (it restarted): WireGuard here shakes hands
            # again only after 15 s of unanswered traffic.
            out.append(
                CheckResult(
                    name,
                    False,
                    f"last {t - seen[p.public_key]} s ago, but {p.address} does not answer through the tunnel "
                    "(a peer that restarted: a new handshake follows 15 s of traffic; run verify again)",
                )
            )
        else:
            out.append(CheckResult(name, True, f"{t - seen[p.public_key]} s ago, answers through the tunnel"))
    return out


def mesh_checks(host: Any, mesh: MeshPlan) -> list[CheckResult]:
    up = interface_up(host, mesh)
    if not up.ok:
        return [up]
    return [up, *handshakes(host, mesh)]
