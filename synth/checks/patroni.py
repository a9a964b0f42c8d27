"""Checks of a Patroni member and of the etcd member beside it, through a testinfra Host.

Patroni's REST API (GET /cluster, /patroni: no authentication needed) tells the member's role and
state and the whole cluster's: the leader, every member's state, lag and timeline. `synth verify`
prints them, so one command shows where the database is.

    results = patroni_checks(host, "db1", "10.0.0.30", members=["db1", "db2"], api_port=8008)
    results = etcd_checks(host, "10.0.0.30", members={"db1": "10.0.0.30", "db2": ..., "fe1": ...})

During a rollout (`synth deploy`) the first members of a new cluster are deployed before etcd has
a quorum: Patroni then waits, and a member whose REST API does not answer yet passes, saying so,
when etcd answers nowhere; a replica that is still cloning passes too. The host needs curl and,
for the etcd checks, etcdctl (both on every cluster machine).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from synth.checks import CheckResult
from synth.topology import hostport

# Lag a healthy replica stays below on a quiet or lightly loaded cluster.
DEFAULT_MAX_LAG_BYTES = 16 * 1024 * 1024
RUNNING = {"running", "streaming"}


def rest_get(host: Any, url: str) -> tuple[int, Any]:
    """GET URL from HOST with curl: (HTTP status or 0, parsed JSON body or None)."""
    r = host.run(f"curl -s --max-time 3 -w '\\n%{{http_code}}' {shlex.quote(url)}")
    lines = str(r.stdout).rsplit("\n", 1)
    if r.rc != 0 or len(lines) != 2 or not lines[1].strip().isdigit():
        return 0, None
    try:
        body = json.loads(lines[0]) if lines[0].strip() else None
    except json.JSONDecodeError:
        body = None
    return int(lines[1]), body


def describe(state: Mapping[str, Any]) -> str:
    """One line per member of GET /cluster: name, role, state, timeline, lag."""
    out = []
    for m in state.get("members", []):
        lag = m.get("lag")
        extra = f", lag {lag} B" if isinstance(lag, int) else f", lag {lag}" if lag not in (None, "") else ""
        timeline = f", timeline {m['timeline']}" if "timeline" in m else ""
        out.append(f"{m.get('name')}: {m.get('role')} ({m.get('state')}{timeline}{extra})")
    return "; ".join(out) or "no members"


def etcd_has_quorum(host: Any, endpoints: Sequence[str]) -> bool:
    """Whether any of ENDPOINTS answers as a healthy etcd member (which needs a quorum)."""
    if not endpoints:
        return False
    r = host.run(
        "ETCDCTL_API=3 etcdctl --dial-timeout=2s --command-timeout=3s "
        f"--endpoints={shlex.quote(','.join(endpoints))} endpoint health"
    )
    return r.rc == 0 or " is healthy" in str(r.stdout)


def patroni_checks(
    host: Any,
    name: str,
    address: str,
    *,
    members: Sequence[str],
    api_port: int = 8008,
    etcd_endpoints: Sequence[str] = (),
    synchronous: bool = False,
    rollout: bool = False,
    max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES,
) -> list[CheckResult]:
    """Every check of Patroni member NAME; MEMBERS: every postgres machine of the cluster."""
    api = f"http://{hostport(address, api_port)}"
    code, me = rest_get(host, f"{api}/patroni")
    if code == 0 or not isinstance(me, dict):
        if rollout and not etcd_has_quorum(host, etcd_endpoints):
            return [
                CheckResult(
                    "patroni: member",
                    True,
                    f"waiting for etcd's quorum (no member answers at {', '.join(etcd_endpoints)}): the other "
                    "members are not deployed yet; Patroni starts once a majority of them runs",
                )
            ]
        return [
            CheckResult("patroni: member", False, f"expected Patroni's REST API to answer at {api}/patroni, got none")
        ]
    role, state = me.get("role"), me.get("state")
    cloning = role == "replica" and state == "creating replica"
    member_ok = (role in ("primary", "replica") and state in RUNNING) or (rollout and cloning)
    results = [
        CheckResult(
            "patroni: member",
            member_ok,
            f"expected a running leader or replica, got {role} ({state})"
            + (" (cloning the leader)" if cloning else ""),
        )
    ]
    code, cluster = rest_get(host, f"{api}/cluster")
    if not isinstance(cluster, dict):
        results.append(CheckResult("patroni: leader", False, f"expected {api}/cluster to answer, got status {code}"))
        return results
    summary = describe(cluster)
    listed = {m.get("name"): m for m in cluster.get("members", [])}
    leaders = [n for n, m in listed.items() if m.get("role") in ("leader", "standby_leader")]
    leader_ok = len(leaders) == 1 and listed[leaders[0]].get("state") in RUNNING
    results.append(CheckResult("patroni: leader", leader_ok, f"expected one running leader; cluster: {summary}"))
    if not leaders:
        return results
    leader = listed[leaders[0]]
    timeline = leader.get("timeline")
    for member in members:
        if member == leaders[0]:
            continue
        m = listed.get(member)
        check = f"patroni: replica {member}"
        if m is None:
            results.append(CheckResult(check, rollout, f"{member} is not in the cluster yet; cluster: {summary}"))
            continue
        lag = m.get("lag")
        good = (
            m.get("state") in RUNNING
            and m.get("timeline") == timeline
            and isinstance(lag, int)
            and 0 <= lag <= max_lag_bytes
        )
        if rollout and m.get("state") == "creating replica":
            good = True
        detail = (
            f"expected streaming on the leader's timeline {timeline} with lag <= {max_lag_bytes} B, got "
            f"{m.get('state')}, timeline {m.get('timeline')}, lag {lag}"
        )
        results.append(CheckResult(check, good, detail))
    if synchronous and not rollout:
        sync = [n for n, m in listed.items() if m.get("role") == "sync_standby"]
        others_running = [n for n, m in listed.items() if n != leaders[0] and m.get("state") in RUNNING]
        results.append(
            CheckResult(
                "patroni: synchronous standby",
                bool(sync) or not others_running,
                f"expected a synchronous standby while a replica runs, got {sync or 'none'}; cluster: {summary}",
            )
        )
    return results


def etcd_checks(
    host: Any,
    address: str,
    *,
    members: Mapping[str, str],
    client_port: int = 2379,
    peer_port: int = 2380,
    rollout: bool = False,
) -> list[CheckResult]:
    """This etcd member is healthy (part of a quorum) and the cluster has exactly MEMBERS, started."""
    endpoint = f"http://{hostport(address, client_port)}"
    r = host.run(f"ETCDCTL_API=3 etcdctl --dial-timeout=2s --command-timeout=3s --endpoints={endpoint} endpoint health")
    healthy = r.rc == 0
    results = [
        CheckResult(
            "etcd: healthy",
            healthy or rollout,
            f"{endpoint}: "
            + (str(r.stdout).strip() or str(r.stderr).strip() or f"exit {r.rc}")
            + ("" if healthy or not rollout else " (a new cluster gets its quorum once more members are deployed)"),
        )
    ]
    if not healthy:
        return results
    r = host.run(f"ETCDCTL_API=3 etcdctl --dial-timeout=2s --command-timeout=3s --endpoints={endpoint} member list")
    # "ID, STATUS, NAME, PEER URLS, CLIENT URLS, IS LEARNER"; a member that never ran has no client URLs.
    rows = [[f.strip() for f in line.split(",")] for line in str(r.stdout).splitlines() if line.strip()]
    peers = {row[3]: row for row in rows if len(row) >= 5}
    expected = {f"http://{hostport(a, peer_port)}": n for n, a in members.items()}
    missing = [n for url, n in expected.items() if url not in peers]
    extra = [row[2] or row[0] for url, row in peers.items() if url not in expected]
    not_started = [n for url, n in expected.items() if url in peers and not peers[url][4]]
    good = not missing and not extra and (rollout or not not_started)
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        named = [row[2] for url, row in peers.items() if url not in expected and row[2]]
        how = f"`lemmy-cluster-etcd-remove-member {named[0]}` on a member" if named else "`etcdctl member remove ID`"
        parts.append(f"not in the cluster file: {', '.join(extra)} (remove with {how})")
    if not_started:
        parts.append(f"never started: {', '.join(not_started)}")
    results.append(
        CheckResult(
            "etcd: members",
            good,
            f"expected exactly {', '.join(sorted(members))}, started" + (f"; {'; '.join(parts)}" if parts else ""),
        )
    )
    return results
