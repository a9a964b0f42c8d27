"""Live tests: the leader cut off the network, then isolated by a partition: no two leaders.

tests/live/patroni-cluster.toml moved to 10.241.0.0/24, in synchronous mode: db1-db3 run Patroni
and are the etcd members; app1 runs both clients (the backends' multi-host string with
target_session_attrs=read-write, pict-rs's HAProxy) all along. Two failures of the leader's
network, one after the other on the same cluster:

1. its link goes down (`ip link set eth0 down` in its namespace: a pulled cable);
2. a partition: nft rules in its namespace drop everything to and from the other members and app1
   (it still runs, and the test's own namespace still sees its REST API).

On the isolated side a prober writes to the old leader all along, over its Unix socket, with
synchronous_commit=local (a client that reaches it; a commit needs no standby), every attempt
timestamped. Checked: the old leader stops accepting writes (failsafe mode demotes a leader that
reaches neither etcd nor every member) *before* a new leader accepts one; never do two members
answer /primary at once; both clients write on the new leader with no acknowledged commit lost;
after healing the old leader rejoins as a replica of the new timeline (pg_rewind), and what it
accepted while isolated is gone from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.live.failover import CLIENTS, Writers, moved_cluster, recovered_at, require_engines, start_lab
from tests.live.netns import Network
from tests.live.patroni import PatroniLab
from tests.live.pg import PG_BIN, SYS_PATH, as_pg, chown_pg

pytestmark = pytest.mark.live

SUBNET = "10.241.0.0/24"
DBS = ("db1", "db2", "db3")


@pytest.fixture(scope="module")
def lab() -> Iterator[PatroniLab]:
    require_engines()
    require(Path("/usr/sbin/nft").exists(), "nft is not installed (Debian package nftables; make test installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="lcpat-part-", dir="/tmp"))
    cluster = moved_cluster(SUBNET, synchronous=True)
    try:
        with Network(SUBNET, bridge="lcbr-t2", prefix="lct2-") as net:
            lab = PatroniLab(net, workdir, cluster)
            try:
                start_lab(lab)
                leader = lab.wait_leader()
                lab.sql(leader, "CREATE TABLE lc_probe (machine text, n bigint, PRIMARY KEY (machine, n))")
                yield lab
            finally:
                lab.stop_all()
    finally:
        if not os.environ.get("LC_KEEP_WORKDIR"):
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Prober:
    """Writes to MACHINE's own PostgreSQL over its socket, inside its namespace, every 0.2 s:
    `<unix time> ok|err` per attempt (the time taken once psql returned)."""

    lab: PatroniLab
    machine: str
    out: Path = field(init=False)
    proc: subprocess.Popen[Any] | None = None

    def start(self) -> Prober:
        m = self.lab.members[self.machine]
        self.out = m.base / f"probe-{time.monotonic_ns()}.log"
        self.out.touch()
        chown_pg(self.out)
        tag = f"{self.machine}-{time.monotonic_ns()}"
        script = (
            "n=0; while :; do n=$((n+1)); "
            f"if psql -XAtq -w -h {m.run_dir} -d postgres -v ON_ERROR_STOP=1 "
            f"-c \"INSERT INTO lc_probe VALUES ('{tag}', $n)\" >/dev/null 2>&1; "
            f'then echo "$(date +%s.%N) ok $n"; else echo "$(date +%s.%N) err $n"; fi >> {self.out}; '
            "sleep 0.2; done"
        )
        self.tag = tag
        self.proc = m.host.popen(
            as_pg(["bash", "-c", script]),
            env={
                "PATH": f"{PG_BIN}:{SYS_PATH}",
                "LANG": "C.UTF-8",
                "PGCONNECT_TIMEOUT": "2",
                # A local commit: what a client that reaches the isolated leader would get if it
                # still accepted writes (it needs no standby for it).
                "PGOPTIONS": "-c synchronous_commit=local -c statement_timeout=2000",
            },
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # stop() ends the loop and its sleep together
        )
        return self

    def stop(self) -> list[tuple[float, bool, int]]:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        rows = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((float(parts[0]), parts[1] == "ok", int(parts[2])))
        return rows


@dataclass
class LeaderWatch:
    """Polls every member's /primary from the test's namespace; records each moment two answered 200."""

    lab: PatroniLab
    both: list[tuple[float, list[str]]] = field(default_factory=list)
    seen: list[tuple[float, str]] = field(default_factory=list)
    stop_flag: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> LeaderWatch:
        def loop() -> None:
            while not self.stop_flag.is_set():
                now = time.time()
                leaders = [n for n in DBS if self.lab.running(n) and self.lab.rest(n, "/primary", timeout=1)[0] == 200]
                if len(leaders) > 1:
                    self.both.append((now, leaders))
                if leaders and (not self.seen or self.seen[-1][1] != leaders[0]):
                    self.seen.append((now, leaders[0]))
                time.sleep(0.2)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(timeout=10)


def isolate_with_nft(lab: PatroniLab, machine: str) -> Callable[[], None]:
    """nft rules in MACHINE's namespace dropping all traffic with the other members and app1;
    returns what heals it."""
    host = lab.members[machine].host
    others = ", ".join(lab.cluster.private_address(n) for n in (*DBS, "app1") if n != machine)
    rules = (
        "table inet lcpartition {\n"
        f"  chain input {{ type filter hook input priority 0; ip saddr {{ {others} }} drop; }}\n"
        f"  chain output {{ type filter hook output priority 0; ip daddr {{ {others} }} drop; }}\n"
        "}\n"
    )
    host.run(["nft", "-f", "-"], input=rules)

    def heal() -> None:
        host.run(["nft", "delete", "table", "inet", "lcpartition"])

    return heal


def cut_link(lab: PatroniLab, machine: str) -> Callable[[], None]:
    host = lab.members[machine].host
    host.link(False)
    return lambda: host.link(True)


def isolate_the_leader(lab: PatroniLab, how: Callable[[PatroniLab, str], Callable[[], None]]) -> dict[str, float]:
    """Isolate the leader by HOW under the write load and the prober; check; heal; check the rejoin."""
    old = lab.wait_leader()
    others = [n for n in DBS if n != old]
    lab.wait_streaming(others, timeout=90)
    lab.wait_sync_standby()  # in synchronous mode only the synchronous standby may take over
    figures: dict[str, float] = {}
    writers = Writers(lab, lab.workdir).start()
    prober = Prober(lab, old).start()
    watch = LeaderWatch(lab).start()
    try:
        writers.wait_acks(30)
        log_from = lab.members[old].log("patroni").stat().st_size
        cut = time.time()
        heal = how(lab, old)
        new = lab.wait_leader(timeout=90, not_on=old)
        writers.wait_acks(30, timeout=60, after=time.time())
        # The prober keeps trying on the isolated side a while after the new leader took over.
        time.sleep(3)
        probes = prober.stop()
        heal()
        healed = time.time()
        lab.wait_streaming([old], timeout=120)
        figures["healed to streaming, seconds"] = time.time() - healed
        writers.wait_acks(20, timeout=30, after=time.time())
    finally:
        watch.stop()
        prober.stop()
        logs = writers.stop()

    assert not watch.both, f"two members answered /primary at once: {watch.both[:5]}"
    # The old leader accepted local writes until it demoted, and none after a new leader accepted one.
    last_old_ok = max((t for t, ok, _ in probes if ok), default=0.0)
    first_new = {kind: recovered_at(logs[kind], cut) for kind in CLIENTS}
    for kind, first in first_new.items():
        assert first is not None, f"{kind}: no write acknowledged by the new leader"
        assert last_old_ok < first, (
            f"{kind}: the new leader acknowledged a write at {first:.2f} while the isolated one still did"
            f" (its last at {last_old_ok:.2f}): two leaders"
        )
        figures[f"seconds without writes ({kind})"] = first - cut
    after_cut = [ok for t, ok, _ in probes if t > cut]
    assert after_cut and not after_cut[-1], "the isolated leader still accepted writes at the end"
    figures["the isolated leader's last accepted write, seconds after the cut"] = max(last_old_ok - cut, 0.0)
    # No bound on when it demotes beyond "before the new leader writes": Patroni demotes after
    # 2 x retry_timeout and failsafe mode's last try to reach the members (some 16 s at most by
    # the settings, 7-11 s seen), but a loaded machine adds its own delays. On NixOS the watchdog
    # (softdog; none in these namespaces) also resets a leader that has not renewed its lock for
    # ttl - safety_margin (15 s); the other members wait for the whole ttl and then promote.
    lost = writers.lost(logs, on=new)
    assert not any(lost.values()), f"acknowledged commits lost in synchronous mode: {lost}"
    # Back as a replica of the new timeline; what it accepted alone is gone (rewound).
    assert lab.leader() == new
    timelines = {m["name"]: m.get("timeline") for m in lab.cluster_state()["members"]}
    assert timelines[old] == timelines[new], f"the old leader follows the new timeline: {timelines}"
    assert lab.sql(old, "SELECT pg_is_in_recovery()") == "t"
    accepted_alone = {n for t, ok, n in probes if ok and t > cut}
    if accepted_alone:
        since = lab.members[old].log("patroni").read_bytes()[log_from:].decode(errors="replace")
        assert "pg_rewind exit code=0" in since, (
            f"{old} diverged ({len(accepted_alone)} local commits) and rejoined without pg_rewind?"
        )
    query = f"SELECT n FROM lc_probe WHERE machine = '{prober.tag}' ORDER BY n"
    deadline = time.monotonic() + 20
    while lab.sql(old, query) != lab.sql(new, query) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lab.sql(old, query) == lab.sql(new, query), "the old leader's data is the new leader's after the rejoin"
    return figures


def test_a_cut_link_to_the_leader(lab: PatroniLab) -> None:
    figures = isolate_the_leader(lab, cut_link)
    print(f"\ncut link: {figures}")


def test_a_partition_that_isolates_the_leader(lab: PatroniLab) -> None:
    figures = isolate_the_leader(lab, isolate_with_nft)
    print(f"\nnft partition: {figures}")
