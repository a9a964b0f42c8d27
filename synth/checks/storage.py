"""Checks of a storage machine (Garage 2), through a testinfra Host.

    from synth.checks.storage import storage_checks
    for result in storage_checks(host, "10.0.0.41", node_id):
        print(result)

The host needs ``ss``, ``curl`` and the ``garage`` command (nixpkgs' services.garage installs it);
the layout check runs ``garage status`` as the SSH user, which must be root to read Garage's RPC
secret (given as RPC_SECRET_FILE, the file that `synth secrets push` installs, or else the one that
/etc/garage.toml names).
"""

from __future__ import annotations

import shlex
from typing import Any

from synth.checks import CheckResult
from synth.checks.frontend import _hostport, _run, http_status, port_listening

S3_PORT = 3900
RPC_PORT = 3901
ADMIN_PORT = 3903


def health(host: Any, port: int = ADMIN_PORT) -> CheckResult:
    """Garage's /health answers 200: every partition of the data has its quorum of machines up
    (503 means reads and writes fail somewhere). Before any layout exists it answers 200 too."""
    url = f"http://127.0.0.1:{port}/health"
    code, err = http_status(host, url)
    got = str(code) if code else f"no answer ({err})" if err else "no answer"
    return CheckResult(
        "storage: Garage quorum (GET /health)",
        code == 200,
        f"expected 200 from {url}, got {got}" + ("; some objects cannot be read or written" if code == 503 else ""),
    )


def role_assigned(host: Any, node_id: str, rpc_secret_file: str | None = None) -> CheckResult:
    """`garage status` lists this machine (its id's first 16 hex digits) with a role in the layout."""
    name = "storage: this machine holds data (garage status)"
    env = f"GARAGE_RPC_SECRET_FILE={shlex.quote(rpc_secret_file)} " if rpc_secret_file else ""
    rc, out, err = _run(host, f"{env}garage status")
    if rc != 0:
        return CheckResult(name, False, f"`garage status` failed with exit code {rc}: {err.strip() or out.strip()}")
    rows = [line for line in out.splitlines() if line.split()[:1] == [node_id[:16]]]
    if not rows:
        return CheckResult(name, False, f"node {node_id[:16]} is not among the nodes that `garage status` lists")
    row = rows[0]
    if "NO ROLE ASSIGNED" in row or "pending" in row:
        return CheckResult(
            name,
            False,
            f"node {node_id[:16]} has no role in the applied layout yet ({' '.join(row.split()[1:])}); "
            "lemmy-cluster-garage-setup on the first storage machine assigns it once every storage machine "
            "is connected (journalctl -u lemmy-cluster-garage-setup)",
        )
    return CheckResult(name, True, f"node {node_id[:16]} has a role: {' '.join(row.split()[3:])}")


def storage_checks(
    host: Any,
    address: str,
    node_id: str,
    *,
    rollout: bool = False,
    rpc_secret_file: str | None = None,
    s3_port: int = S3_PORT,
    rpc_port: int = RPC_PORT,
    admin_port: int = ADMIN_PORT,
) -> list[CheckResult]:
    """Garage listens for S3 and RPC on the private ADDRESS, has its quorum, and (unless ROLLOUT:
    during a first deployment the layout is applied only once every storage machine runs) holds
    data in the layout."""
    results = [
        port_listening(host, address, s3_port, what=f"storage: S3 API on {_hostport(address, s3_port)}"),
        port_listening(host, address, rpc_port, what=f"storage: RPC on {_hostport(address, rpc_port)}"),
    ]
    if not all(r.ok for r in results):
        return results
    results.append(health(host, admin_port))
    if not rollout:
        results.append(role_assigned(host, node_id, rpc_secret_file))
    return results
