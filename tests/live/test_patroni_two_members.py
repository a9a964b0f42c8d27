"""Live test: a two-member synchronous Patroni cluster keeps writing when its replica dies.

tests/live/patroni-cluster.toml without db3, moved to 10.240.0.0/24: db1 and db2 run Patroni in
synchronous mode, etcd's third member is fe1 (a machine without a database, as synth places it:
the postgres machines first, then the others in file order), app1 is a backend and a pict-rs
machine (HAProxy). One write load through both clients runs through the whole scenario:

1. kill -9 of the replica (its Patroni and PostgreSQL): synchronous mode is not strict, so the
   leader goes on alone instead of making every commit wait for a standby that is gone (the
   longest pause between acknowledged writes is measured and bounded);
2. the replica returns, streams and is the synchronous standby again;
3. kill -9 of the leader (its etcd too, as a machine crash): the replica takes over and no
   acknowledged commit of the whole run is missing on it; the old leader then rejoins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synth.model import etcd_members
from tests.live import writeload
from tests.live.failover import CLIENTS, Writers, longest_gap, moved_cluster, recovered_at, require_engines, start_lab
from tests.live.netns import Network
from tests.live.patroni import PatroniLab

pytestmark = pytest.mark.live

SUBNET = "10.240.0.0/24"


@pytest.fixture(scope="module")
def lab() -> Iterator[PatroniLab]:
    require_engines()
    workdir = Path(tempfile.mkdtemp(prefix="lcpat2-", dir="/tmp"))
    cluster = moved_cluster(SUBNET, drop=["db3"], synchronous=True)
    try:
        with Network(SUBNET, bridge="lcbr-t1", prefix="lct1-") as net:
            lab = PatroniLab(net, workdir, cluster)
            try:
                yield start_lab(lab)
            finally:
                lab.stop_all()
    finally:
        if not os.environ.get("LC_KEEP_WORKDIR"):
            shutil.rmtree(workdir, ignore_errors=True)


def sync_names(lab: PatroniLab, machine: str) -> str:
    return lab.sql(machine, "SHOW synchronous_standby_names").strip('"')


def test_two_members_the_replica_dies_writes_go_on_then_the_leader_dies_nothing_is_lost(lab: PatroniLab) -> None:
    assert etcd_members(lab.cluster) == ["db1", "db2", "fe1"], "etcd's third member: the first other machine"
    assert lab.wait_leader() == "db1"
    lab.wait_streaming(["db2"])
    assert lab.wait_sync_standby() == "db2"
    assert sync_names(lab, "db1") == "db2"
    figures: dict[str, float] = {}
    writers = Writers(lab, lab.workdir).start()
    try:
        writers.wait_acks(30)

        # 1. The replica crashes: the leader goes on alone.
        replica_killed = lab.kill("db2")
        writers.wait_acks(50, timeout=30, after=replica_killed)
        assert lab.leader() == "db1", "the replica's crash moves no leadership"
        deadline = time.monotonic() + 30
        while sync_names(lab, "db1") != "" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert sync_names(lab, "db1") == "", "with no standby left, the leader commits alone (not strict)"
        replica_down_until = time.time()

        # 2. The replica returns and is the synchronous standby again.
        lab.start_patroni(["db2"], wait=False)
        lab.wait_streaming(["db2"], timeout=90)
        assert lab.wait_sync_standby(timeout=60) == "db2"
        deadline = time.monotonic() + 30
        while sync_names(lab, "db1") != "db2" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert sync_names(lab, "db1") == "db2"
        synced = time.time()
        # Commits wait for db2 again: one acknowledged now is on db2 with every earlier one.
        writers.wait_acks(30, timeout=30, after=synced)

        # 3. The leader's machine crashes (Patroni, PostgreSQL and its etcd member).
        leader_killed = lab.kill("db1")
        lab.stop_etcd("db1")
        assert lab.wait_leader(timeout=90, not_on="db1") == "db2"
        writers.wait_acks(30, timeout=60, after=leader_killed)
    finally:
        logs = writers.stop()

    for kind in CLIENTS:
        attempts = logs[kind]
        pause = longest_gap(attempts, replica_killed, replica_down_until)
        figures[f"replica killed: longest pause ({kind})"] = pause
        # A commit waiting for the dead standby would wait until Patroni takes it out of
        # synchronous_standby_names (its next loops: 2 s each) or forever in strict mode.
        assert pause < 15, f"{kind}: writes stopped for {pause:.1f}s when the replica died"
        first = recovered_at(attempts, leader_killed) or writeload.first_ack_after(attempts, leader_killed)
        assert first is not None, f"{kind}: no write after the leader's crash"
        figures[f"leader killed: seconds without writes ({kind})"] = first - leader_killed
    lost = writers.lost(logs, on="db2")
    assert not any(lost.values()), (
        f"acknowledged commits missing on the new leader: { {k: v[:10] for k, v in lost.items()} }"
    )
    print(f"\ntwo members: {figures}")

    # The old leader's machine returns: a replica of db2 on the new timeline.
    lab.start_etcd(["db1"])
    lab.start_patroni(["db1"], wait=False)
    lab.wait_streaming(["db1"], timeout=120)
    assert lab.leader() == "db2"
    assert lab.sql("db1", "SELECT pg_is_in_recovery()") == "t"
    timelines = {m["name"]: m.get("timeline") for m in lab.cluster_state()["members"]}
    assert timelines["db1"] == timelines["db2"], timelines
