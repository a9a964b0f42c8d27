"""The WireGuard mesh between the machines ([network] mesh = "wireguard"): addresses, keys, peers.

With the mesh on, every internal connection (PostgreSQL and its replication, nginx to the
backends, the backends to pict-rs, Garage's RPC, etcd and Patroni) goes through one WireGuard
interface per machine. Each machine gets an address in [network] mesh_subnet (recorded in
cluster.toml as mesh_address, like Garage node ids, so that adding a machine never moves
another); that address becomes the machine's internal address in the topology, so every service
binds to it and every firewall rule names peers by it. WireGuard only accepts a packet from a peer
whose key it knows, and only with that peer's mesh address as its source (allowed IPs): the
per-peer firewall rules, limited to the mesh interface, are then rules on authenticated machines.

Each machine's peers are exactly the machines it exchanges traffic with (the topology's peers),
so a frontend has no tunnel to the databases at all. A machine with behind_nat = true has no
endpoint the others could reach: it reaches out to its peers and keeps the NAT mapping open with a
persistent keepalive; the others have no endpoint for it. Two machines behind NAT cannot reach
each other (neither knows where the other is), so the topology must never need that.

Private keys are files only (secrets/wireguard-private-key.<machine> here, pushed by `synth
secrets push`); the public half is recorded in cluster.toml (wireguard_public_key).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from synth.errors import Problem, dotted

if TYPE_CHECKING:
    from synth.model import Cluster

# The interface on every machine (at most 15 characters: a Linux interface name).
INTERFACE = "wg-lemmy"
DEFAULT_SUBNET = "10.100.0.0/24"
DEFAULT_PORT = 51820
# WireGuard's overhead is at most 80 bytes (IPv6 outer header): 1500 - 80.
DEFAULT_MTU = 1420
MIN_MTU = 1280  # the smallest MTU IPv6 allows (the mesh may carry it)
# Seconds between a NAT machine's keepalives (WireGuard's documented value for NAT mappings).
DEFAULT_KEEPALIVE = 25
# The per-machine secret of the mesh (topology.SECRET_FILES).
SECRET_KEY = "wireguard_key"
# A handshake older than this means the tunnel is not working (WireGuard re-handshakes every 2 min
# while traffic flows, and `synth verify` makes traffic first).
HANDSHAKE_MAX_AGE = 180


class MeshKeyError(ValueError):
    """A file that is not a WireGuard private key."""


# --------------------------------------------------------------------------- keys


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def new_private_key() -> str:
    """A fresh private key, base64 as `wg genkey` prints it."""
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return _b64(raw)


def public_key(private: str) -> str:
    """The public key of a base64 private key (as `wg pubkey` computes it); MeshKeyError if invalid."""
    try:
        raw = base64.b64decode(private.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MeshKeyError("not base64") from None
    if len(raw) != 32:
        raise MeshKeyError(f"{len(raw)} bytes instead of 32")
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _b64(pub)


def valid_public_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32 and len(text) == 44
    except (binascii.Error, ValueError):
        return False


# --------------------------------------------------------------------------- addresses


def enabled(c: Cluster) -> bool:
    return c.network.mesh == "wireguard"


def _subnet(c: Cluster) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(c.network.mesh_subnet)
    except ValueError:
        return None


def addresses(c: Cluster) -> dict[str, str]:
    """Every machine's mesh address: the recorded mesh_address, or for a machine without one the
    lowest free address of the subnet (machines in file order), which `synth secrets init` and
    `synth add-machine` then record. Empty without the mesh."""
    net = _subnet(c)
    if not enabled(c) or net is None:
        return {}
    taken: set[str] = set()
    for m in c.machines.values():
        if m.mesh_address is not None:
            with contextlib.suppress(ValueError):
                taken.add(str(ipaddress.ip_address(m.mesh_address)))
    free = (str(a) for a in net.hosts() if str(a) not in taken)
    out: dict[str, str] = {}
    for name, m in c.machines.items():
        out[name] = m.mesh_address if m.mesh_address is not None else next(free, "")
    return out


def free_address(c: Cluster) -> str:
    """The lowest address of the subnet no machine has: the mesh address of a machine added now."""
    net = _subnet(c)
    used = set(addresses(c).values())
    return next((str(a) for a in net.hosts() if str(a) not in used), "") if net is not None else ""


def internal_address(c: Cluster, name: str) -> str:
    """The address the other machines reach NAME's internal services on: its mesh address with the
    mesh, else its private address."""
    if enabled(c):
        return addresses(c)[name]
    return c.private_address(name)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MeshPeer:
    name: str
    public_key: str
    address: str  # its mesh address (the peer's only allowed IP)
    endpoint: str | None  # "<address>:<port>", None for a peer behind NAT
    persistent_keepalive: int | None  # set when THIS machine is behind NAT


@dataclass(frozen=True)
class MeshPlan:
    interface: str
    address: str
    prefix_length: int
    listen_port: int
    mtu: int
    private_key_file: str
    peers: list[MeshPeer]


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def mesh_peers(talks: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each machine's mesh peers: the machines it talks to or that talk to it (the relation made
    symmetric: a tunnel carries both directions), in the order of TALKS' keys (file order)."""
    pairs = {(a, b) for a, bs in talks.items() for b in bs} | {(b, a) for a, bs in talks.items() for b in bs}
    return {a: [b for b in talks if b != a and (a, b) in pairs] for a in talks}


def host_plan(c: Cluster, name: str, peers: Sequence[str], key_file: str) -> MeshPlan:
    """The mesh of machine NAME, whose peers are PEERS (machine names)."""
    addr = addresses(c)
    net = _subnet(c)
    me = c.machines[name]
    n = c.network
    return MeshPlan(
        interface=INTERFACE,
        address=addr[name],
        prefix_length=net.prefixlen if net is not None else 32,
        listen_port=n.mesh_port,
        mtu=n.mesh_mtu,
        private_key_file=key_file,
        peers=[
            MeshPeer(
                name=p,
                public_key=c.machines[p].wireguard_public_key or "",
                address=addr[p],
                endpoint=None if c.machines[p].behind_nat else _endpoint(c.machines[p].address, n.mesh_port),
                persistent_keepalive=n.mesh_keepalive if me.behind_nat else None,
            )
            for p in peers
        ],
    )


# --------------------------------------------------------------------------- validation

MESH_MACHINE_FIELDS = ("mesh_address", "wireguard_public_key", "behind_nat")


def check(c: Cluster, pending: bool) -> list[Problem]:
    """The rules of [network] and of the machines' mesh fields (PENDING: keys and addresses not
    recorded yet are fine, as for `synth secrets init` and `synth add-machine`)."""
    p: list[Problem] = []
    n = c.network
    if not enabled(c):
        for name, m in c.machines.items():
            for key in MESH_MACHINE_FIELDS:
                value = getattr(m, key)
                if value is not None and value is not False:
                    p.append(
                        Problem(
                            dotted(("machines", name, key)),
                            'only used with [network] mesh = "wireguard"; remove it or turn the mesh on',
                        )
                    )
        return p
    net = _subnet(c)
    if net is None:
        p.append(Problem("network.mesh_subnet", f"{n.mesh_subnet!r} is not a network such as {DEFAULT_SUBNET!r}"))
    elif net.version != 4:
        p.append(
            Problem(
                "network.mesh_subnet",
                "must be an IPv4 network: the mesh address is every service's internal address, and "
                "lemmy-ui cannot listen on an IPv6 one (it splits LEMMY_UI_HOST at ':')",
            )
        )
    elif net.num_addresses - 2 < len(c.machines):
        room = net.num_addresses - 2
        p.append(Problem("network.mesh_subnet", f"has room for {room} machines, not {len(c.machines)}"))
    if not 1 <= n.mesh_port <= 65535:
        p.append(Problem("network.mesh_port", "must be a UDP port number (1-65535)"))
    if not MIN_MTU <= n.mesh_mtu <= 9000:
        p.append(
            Problem(
                "network.mesh_mtu",
                f"must be between {MIN_MTU} and 9000; {DEFAULT_MTU} suits a 1500-byte underlay "
                "(WireGuard adds up to 80 bytes), lower it by the difference on a smaller one (PPPoE: 1412)",
            )
        )
    if not 1 <= n.mesh_keepalive <= 3600:
        p.append(Problem("network.mesh_keepalive", "must be between 1 and 3600 seconds (25 keeps most NATs open)"))
    seen_addr: dict[str, str] = {}
    seen_key: dict[str, str] = {}
    for name, m in c.machines.items():
        base = ("machines", name)
        if m.mesh_address is None:
            if not pending:
                p.append(
                    Problem(
                        dotted((*base, "mesh_address")),
                        "missing; run `synth secrets init` on this cluster file: it records each machine's "
                        "mesh address and WireGuard public key",
                    )
                )
        elif net is not None:
            try:
                a = ipaddress.ip_address(m.mesh_address)
            except ValueError:
                p.append(Problem(dotted((*base, "mesh_address")), f"{m.mesh_address!r} is not an IP address"))
            else:
                if a not in net or a in (net.network_address, net.broadcast_address):
                    p.append(
                        Problem(dotted((*base, "mesh_address")), f"{a} is not a host address of mesh_subnet {net}")
                    )
                elif str(a) in seen_addr:
                    owner = seen_addr[str(a)]
                    p.append(Problem(dotted((*base, "mesh_address")), f"{a} is already the mesh address of {owner!r}"))
                seen_addr[str(a)] = name
        pub = m.wireguard_public_key
        if pub is None:
            if not pending:
                p.append(
                    Problem(
                        dotted((*base, "wireguard_public_key")),
                        "missing; run `synth secrets init`: it creates the machine's WireGuard key "
                        f"(secrets/wireguard-private-key.{name}) and records its public key here",
                    )
                )
        elif not valid_public_key(pub):
            p.append(
                Problem(
                    dotted((*base, "wireguard_public_key")),
                    "not a WireGuard public key (44 characters of base64); remove the line and run "
                    "`synth secrets init`, or `synth mesh rotate-key " + name + "`",
                )
            )
        elif pub in seen_key:
            p.append(
                Problem(
                    dotted((*base, "wireguard_public_key")),
                    f"the same key as machine {seen_key[pub]!r}; each machine needs its own "
                    f"(`synth mesh rotate-key {name}`)",
                )
            )
        else:
            seen_key[pub] = name
        for other in (m.address, m.private_address):
            if net is not None and other is not None:
                try:
                    if ipaddress.ip_address(other) in net:
                        p.append(
                            Problem(
                                "network.mesh_subnet",
                                f"{net} contains {name}'s address {other}: the mesh needs a subnet of its own; "
                                "choose one no machine uses (e.g. 10.100.0.0/24)",
                            )
                        )
                except ValueError:
                    pass
    frontends = c.machines_with("frontend")
    if frontends and all(c.machines[f].behind_nat for f in frontends):
        p.append(
            Problem(
                "machines",
                f"every frontend ({', '.join(frontends)}) is behind_nat: the instance needs at least one frontend "
                "that the internet reaches (a machine with a public address); a frontend behind NAT serves "
                "only with 80/443 forwarded to it, and the others' WireGuard cannot reach it",
            )
        )
    if c.machines and all(m.behind_nat for m in c.machines.values()):
        p.append(Problem("machines", "every machine is behind_nat: at least one needs an address the others can reach"))
    return p


def check_nat_pairs(c: Cluster, talks: Mapping[str, Sequence[str]]) -> list[Problem]:
    """Two machines behind NAT that would need to talk: neither can reach the other."""
    if not enabled(c):
        return []
    p: list[Problem] = []
    for a, peers in mesh_peers(talks).items():
        for b in peers:
            if a < b and c.machines[a].behind_nat and c.machines[b].behind_nat:
                p.append(
                    Problem(
                        dotted(("machines", b, "behind_nat")),
                        f"{a} and {b} are both behind NAT but exchange traffic ({', '.join(c.machines[a].roles)} "
                        f"and {', '.join(c.machines[b].roles)}): neither's WireGuard can reach the other. Give one "
                        "of them a public address (remove behind_nat and forward its UDP port "
                        f"{c.network.mesh_port}), or move a role so that they need not talk",
                    )
                )
    return p


def warnings(c: Cluster) -> list[Problem]:
    """Without the mesh: private addresses that are public (internal traffic would cross the internet
    unencrypted)."""
    if enabled(c):
        return []
    out: list[Problem] = []
    for name, m in c.machines.items():
        priv = m.private_address if m.private_address is not None else m.address
        key = "private_address" if m.private_address is not None else "address"
        try:
            a = ipaddress.ip_address(priv)
        except ValueError:
            continue
        if a.is_global:
            out.append(
                Problem(
                    dotted(("machines", name, key)),
                    f"{priv} is a public address, and without the mesh PostgreSQL, the backend, pict-rs "
                    "and lemmy-ui talk over it unencrypted; give the machine a private_address on a private "
                    'network, or turn on [network] mesh = "wireguard"',
                )
            )
    return out


# --------------------------------------------------------------------------- plan

_PEER_RE = re.compile(r'name = "([^"]+)";\s*publicKey = "([^"]+)";')


def _peers_in(text: str | None) -> dict[str, str] | None:
    """Peer name -> public key of the mesh block of a generated host module (None: no mesh)."""
    if text is None or "      mesh = {" not in text:
        return None
    block = text.split("      mesh = {", 1)[1]
    return dict(_PEER_RE.findall(block))


def peer_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """What changes in each machine's WireGuard peers between two sets of generated files
    ({"hosts/<m>/default.nix": text}), one line per machine, for `synth plan`."""
    lines = []
    for rel in sorted(set(old) | set(new)):
        parts = rel.split("/")
        if len(parts) != 3 or parts[0] != "hosts" or parts[2] != "default.nix":
            continue
        before, after = _peers_in(old.get(rel)), _peers_in(new.get(rel))
        if before == after or (before is None and after is None):
            continue
        machine = parts[1]
        if after is None:
            lines.append(f"{machine}: leaves the mesh" if rel in new else f"{machine}: removed")
            continue
        if before is None:
            lines.append(f"{machine}: joins the mesh, peers {', '.join(after) or 'none'}")
            continue
        what = [f"+{p}" for p in after if p not in before]
        what += [f"-{p}" for p in before if p not in after]
        what += [f"{p} has a new key" for p in after if p in before and before[p] != after[p]]
        lines.append(f"{machine}: {', '.join(what)}")
    return lines
