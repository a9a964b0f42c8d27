"""Every role check of one machine, chosen from its HostPlan: what `synth verify` and `synth deploy` run.

    results = checks_for(cluster, plans["db1"], testinfra_host)

ROLLOUT relaxes what cannot hold yet in the middle of a deployment: the first Patroni and etcd
members of a new cluster wait for etcd's quorum, and a new Patroni replica may still be cloning;
a PostgreSQL primary (manual failover) is deployed before its replicas, so during a rollout it is
not required to have its standbys streaming (each replica's own checks then prove that it streams
from the primary); a storage machine is not required to hold data yet (the layout is applied once
every storage machine runs; the pict-rs machines, deployed next, prove that the object storage
works).
"""

from __future__ import annotations

from typing import Any

from synth.checks import CheckResult
from synth.checks.backend import backend_checks
from synth.checks.backup import backup_checks, repository_checks
from synth.checks.frontend import frontend_checks
from synth.checks.patroni import etcd_checks, patroni_checks
from synth.checks.pictrs import pictrs_checks
from synth.checks.postgres import DEFAULT_ACCESS, PsqlAccess, check_postgres
from synth.checks.storage import storage_checks
from synth.model import Cluster
from synth.topology import (
    BACKEND_PORT,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    GARAGE_ADMIN_PORT,
    GARAGE_RPC_PORT,
    GARAGE_S3_PORT,
    PATRONI_API_PORT,
    PICTRS_PORT,
    UI_PORT,
    HostPlan,
)


def checks_for(
    cluster: Cluster,
    plan: HostPlan,
    host: Any,
    *,
    rollout: bool = False,
    access: PsqlAccess = DEFAULT_ACCESS,
) -> list[CheckResult]:
    """The checks of every role of PLAN's machine, run through the testinfra HOST, in role order."""
    results: list[CheckResult] = []
    if plan.mesh is not None:
        from synth.checks.mesh import mesh_checks

        results += mesh_checks(host, plan.mesh)
    if plan.postgres is not None:
        pg = plan.postgres
        if pg.patroni is not None:
            results += patroni_checks(
                host,
                plan.name,
                plan.private_address,
                members=cluster.machines_with("postgres"),
                api_port=PATRONI_API_PORT,
                etcd_endpoints=[f"http://{h}" for h in pg.patroni.etcd_hosts],
                synchronous=pg.patroni.synchronous,
                rollout=rollout,
            )
        elif pg.role == "primary":
            standbys = [] if rollout else pg.replication_slots
            results += check_postgres(
                host, "primary", plan.private_address, standbys=standbys, slots=standbys, access=access
            )
        else:
            results += check_postgres(
                host, "replica", plan.private_address, primary_address=pg.primary_address, access=access
            )
    if plan.postgres is not None and cluster.backup is not None:
        results += backup_checks(host, access=access, rollout=rollout)
    if plan.backup_repository is not None:
        results += repository_checks(host, rollout=rollout, images=plan.backup_repository.images_endpoint is not None)
    if plan.etcd is not None:
        results += etcd_checks(
            host,
            plan.private_address,
            members=plan.etcd.members,
            client_port=ETCD_CLIENT_PORT,
            peer_port=ETCD_PEER_PORT,
            rollout=rollout,
        )
    if plan.storage is not None:
        results += storage_checks(
            host,
            plan.private_address,
            plan.storage.node_id,
            rollout=rollout,
            rpc_secret_file=plan.secrets.get("garage_rpc_secret"),
            s3_port=GARAGE_S3_PORT,
            rpc_port=GARAGE_RPC_PORT,
            admin_port=GARAGE_ADMIN_PORT,
        )
    if plan.pictrs is not None:
        results += pictrs_checks(host, plan.private_address, PICTRS_PORT)
    if plan.backend is not None:
        results += backend_checks(host, plan.private_address, BACKEND_PORT)
    if plan.frontend is not None:
        results += frontend_checks(host, cluster.cluster.domain, plan.private_address, UI_PORT, plan.frontend.backends)
    return results
