"""Live tests: automatic failover with the real Patroni, etcd, PostgreSQL and HAProxy.

The cluster of tests/live/patroni-cluster.toml, in synchronous mode: db1, db2, db3 run Patroni
(each also an etcd member, as synth places them), app1 is a backend and a pict-rs machine. Each is
a network namespace with its own address; every program runs with the settings the modules make
of synth's options (tests/live/patroni.py). Two clients write on app1 all along the failure
tests, as Lemmy and pict-rs would: one with the backends' multi-host connection string, one
through the pict-rs machine's HAProxy. The tests share the cluster and run in file order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from synth.model import etcd_members
from tests.conftest import require, require_root, require_tool
from tests.live import nixeval, writeload
from tests.live.netns import Network
from tests.live.patroni import ETCD, HAPROXY, MODULES, PATRONI, PatroniLab, options
from tests.live.pg import PG_BIN, load_cluster

pytestmark = pytest.mark.live

CLUSTER_TOML = Path(__file__).with_name("patroni-cluster.toml")
DBS = ("db1", "db2", "db3")


def require_engines() -> None:
    require_root()
    require_tool("nix-instantiate")
    require((PG_BIN / "postgres").exists(), f"PostgreSQL server binaries not found in {PG_BIN}")
    require(ETCD.exists(), "etcd is not installed (Debian package etcd-server; make test installs it)")
    require(HAPROXY.exists(), "HAProxy is not installed (make test installs it)")
    require(PATRONI.exists(), f"Patroni is not installed at {PATRONI} (scripts/install-system-deps.sh makes its venv)")


@dataclass
class Writers:
    """The two clients on app1: the backend's connection string and pict-rs's proxy."""

    lab: PatroniLab
    folder: Path
    procs: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    runs: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        for kind in ("backend", "proxy"):
            self.runs[kind] = f"{kind}-{time.monotonic_ns()}"
            self.logs[kind] = self.folder / f"{self.runs[kind]}.log"
        self.procs["backend"] = self.lab.start_writer(
            "app1", self.lab.backend_dsn("app1"), self.logs["backend"], run=self.runs["backend"]
        )
        self.procs["proxy"] = self.lab.start_writer(
            "app1",
            self.lab.proxy_dsn("app1"),
            self.logs["proxy"],
            pgpass=self.lab.pictrs_pgpass,
            run=self.runs["proxy"],
        )

    def stop(self) -> dict[str, list[writeload.Attempt]]:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(timeout=30)
        self.procs.clear()
        return {kind: writeload.read_log(path) for kind, path in self.logs.items()}

    def wait_acks(self, count: int = 20, timeout: float = 30) -> None:
        """Wait until each client has COUNT more acknowledged writes than now."""
        base = {k: len(writeload.acknowledged(writeload.read_log(p))) for k, p in self.logs.items()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = {k: len(writeload.acknowledged(writeload.read_log(p))) for k, p in self.logs.items()}
            if all(now[k] - base[k] >= count for k in now):
                return
            time.sleep(0.1)
        tails = {k: writeload.read_log(p)[-3:] for k, p in self.logs.items()}
        raise AssertionError(f"the clients did not write {count} more rows within {timeout}s: {tails}")


@dataclass
class Live:
    lab: PatroniLab
    folder: Path
    figures: dict[str, float] = field(default_factory=dict)

    def writers(self) -> Writers:
        return Writers(self.lab, self.folder)

    def rows(self, writers: Writers, kind: str, db: str) -> set[int]:
        """The numbers of the rows that client KIND of WRITERS wrote, as the leader has them."""
        leader = self.lab.wait_leader()
        out = self.lab.sql(leader, f"SELECT n FROM lc_writes WHERE run = '{writers.runs[kind]}'", db=db)
        return {int(x) for x in out.split()}


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    require_engines()
    workdir = Path(tempfile.mkdtemp(prefix="lcpat-", dir="/tmp"))
    cluster = load_cluster(CLUSTER_TOML, synchronous=True)
    try:
        with Network("10.247.0.0/24", bridge="lcbr-pa", prefix="lca-") as net:
            lab = PatroniLab(net, workdir, cluster)
            try:
                lab.start_etcd()
                lab.wait_etcd()
                lab.start_patroni()
                lab.start_proxy("app1")
                leader = lab.wait_leader()
                for db, owner in (("lemmy", "lemmy"), ("pictrs", "pictrs")):
                    lab.wait_units(leader)  # the databases exist
                    lab.sql(
                        leader,
                        "CREATE TABLE lc_writes (run text, n bigint, at timestamptz DEFAULT now(),"
                        " PRIMARY KEY (run, n))",
                        db=db,
                    )
                    lab.sql(leader, f"ALTER TABLE lc_writes OWNER TO {owner}", db=db)
                yield Live(lab, workdir)
            finally:
                lab.stop_all()
    finally:
        if not os.environ.get("LC_KEEP_WORKDIR"):  # keep the logs to look at a failure
            shutil.rmtree(workdir, ignore_errors=True)


def test_the_designated_member_creates_the_cluster_and_the_others_clone_it(live: Live) -> None:
    lab = live.lab
    assert lab.wait_leader() == "db1", "[postgres] primary (db1) is the only member with a bootstrap section"
    lab.wait_streaming(["db2", "db3"])
    for name in DBS:
        lab.wait_units(name)
    # The data comes from db1's initdb: the same system identifier everywhere, with checksums.
    ids = {lab.sql(n, "SELECT system_identifier FROM pg_control_system()") for n in DBS}
    assert len(ids) == 1, f"members of different clusters: {ids}"
    assert lab.sql("db2", "SHOW data_checksums") == "on"
    # The new leader set up the roles itself (Patroni's on_start callback), as did
    # lemmy-cluster-patroni-setup on the leader only; the roles and databases reached all.
    assert "patroni-callback: on_start as primary: setting up roles and databases" in (
        lab.members["db1"].log("patroni").read_text()
    )
    for name in DBS:
        roles = set(lab.sql(name, "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'").split())
        assert roles == {"postgres", "lemmy", "pictrs", "replicator", "rewind"}, f"{name}: {roles}"
        owners = lab.sql(name, "SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database ORDER BY 1")
        assert "lemmy=lemmy" in owners.split() and "pictrs=pictrs" in owners.split(), owners
    grants = lab.sql(
        "db1",
        "SELECT count(*) FROM pg_proc WHERE has_function_privilege('rewind', oid, 'EXECUTE')"
        " AND proname IN ('pg_ls_dir', 'pg_stat_file', 'pg_read_binary_file')",
    )
    assert int(grants) >= 4, "pg_rewind's grants for the rewind role"
    # Patroni keeps a slot per replica and runs in synchronous mode with the module's timings.
    slots = set(lab.sql("db1", "SELECT slot_name FROM pg_replication_slots").split())
    assert slots == {"db2", "db3"}, slots
    code, config = lab.rest("db2", "/config")
    assert code == 200
    expected = nixeval.evaluate(
        MODULES / "postgres" / "patroni-settings.nix",
        {"cfg": options(lab.cluster, "db2")["postgres"], "paths": {"socketDir": "", "baseConf": "", "callback": ""}},
    )["dcs"]
    for key in ("ttl", "loop_wait", "retry_timeout", "failsafe_mode", "synchronous_mode"):
        assert config[key] == expected[key], f"/config {key}: expected {expected[key]}, got {config[key]}"
    assert config["synchronous_mode"] is True
    standby = lab.wait_sync_standby()
    sync = lab.sql("db1", "SHOW synchronous_standby_names")
    assert sync.strip('"') == standby, f"synchronous_standby_names {sync!r}, Patroni's sync standby {standby}"
    # The pg_hba lines Patroni wrote are the module's (modules/postgres/hba.nix).
    hba = [ln for ln in (lab.members["db1"].data / "pg_hba.conf").read_text().splitlines() if ln and ln[0] != "#"]
    assert hba == nixeval.evaluate(MODULES / "postgres" / "hba.nix", options(lab.cluster, "db1")["postgres"])


@dataclass
class NamespaceHost:
    """What the role checks need of a testinfra Host, for a host of the lab: commands run in its
    namespace (the checks' curl and etcdctl talk to the real Patroni and etcd)."""

    lab: PatroniLab
    machine: str

    def run(self, command: str) -> Any:

        r = self.lab.member(self.machine).host.run(["sh", "-c", command], check=False, timeout=30)
        return type("Result", (), {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr})()


def test_the_role_checks_see_the_cluster_as_it_is(live: Live) -> None:
    """synth verify's checks of the postgres machines and etcd members, against the real cluster."""
    from synth.checks.roles import checks_for
    from synth.topology import plan

    lab = live.lab
    plans = plan(lab.cluster)
    for name in DBS:
        results = checks_for(lab.cluster, plans[name], NamespaceHost(lab, name))
        failed = [str(r) for r in results if not r.ok]
        assert not failed, f"{name}: {failed}"
        names = [r.name for r in results]
        assert names[:2] == ["patroni: member", "patroni: leader"] and "etcd: members" in names, names
    leader_check = next(
        r for r in checks_for(lab.cluster, plans["db2"], NamespaceHost(lab, "db2")) if r.name == "patroni: leader"
    )
    assert "db1: leader (running, timeline 1" in leader_check.detail, leader_check.detail


def test_both_clients_write_to_the_leader(live: Live) -> None:
    writers = live.writers()
    writers.start()
    try:
        writers.wait_acks(50)
    finally:
        logs = writers.stop()
    for kind, db in (("backend", "lemmy"), ("proxy", "pictrs")):
        acked = writeload.acknowledged(logs[kind])
        assert len(acked) >= 50
        assert set(acked) <= live.rows(writers, kind, db)
        # Every attempt of a client that saw no failure was acknowledged: no error at all here.
        assert all(a.ok for a in logs[kind]), [a for a in logs[kind] if not a.ok][:3]


def test_a_crashed_postgres_is_restarted_in_place(live: Live) -> None:
    lab = live.lab
    leader = lab.wait_leader()
    writers = live.writers()
    writers.start()
    try:
        writers.wait_acks(20)
        crash = time.time()
        lab.kill_postgres(leader)
        writers.wait_acks(20, timeout=60)
    finally:
        logs = writers.stop()
    assert lab.wait_leader() == leader, "Patroni restarts a crashed PostgreSQL instead of failing over"
    back = writeload.first_ack_after(logs["backend"], crash)
    assert back is not None
    live.figures["postgres crash: seconds without writes"] = back - crash
    for kind, db in (("backend", "lemmy"), ("proxy", "pictrs")):
        assert set(writeload.acknowledged(logs[kind])) <= live.rows(writers, kind, db), (
            f"{kind}: acknowledged rows lost"
        )


def test_kill9_of_the_leader_fails_over_with_no_acknowledged_commit_lost(live: Live) -> None:
    lab = live.lab
    old = lab.wait_leader()
    lab.wait_streaming([n for n in DBS if n != old])
    # In synchronous mode Patroni promotes only the synchronous standby (a replica that may lack an
    # acknowledged commit is never promoted): right after the leader's restart (the test before)
    # it has none for a loop or two, and a crash then leaves the cluster without a leader until the
    # old one returns. Crash it once the standby is named again.
    lab.wait_sync_standby()
    writers = live.writers()
    writers.start()
    try:
        writers.wait_acks(30)
        crash = lab.kill(old)  # the moment the signals went out (acks in flight come before it)
        new = lab.wait_leader(timeout=90, not_on=old)
        writers.wait_acks(30, timeout=60)
    finally:
        logs = writers.stop()
    assert new != old
    for kind, db in (("backend", "lemmy"), ("proxy", "pictrs")):
        first = writeload.first_ack_after(logs[kind], crash)
        assert first is not None, f"{kind}: no write after the failover"
        live.figures[f"kill -9 of the leader: seconds without writes ({kind})"] = first - crash
        acked = set(writeload.acknowledged(logs[kind]))
        lost = acked - live.rows(writers, kind, db)
        assert not lost, f"{kind}: {len(lost)} acknowledged commits lost in synchronous mode: {sorted(lost)[:10]}"
    # The new leader's callback runs the set-up again (idempotent) once it was promoted. Patroni
    # runs callbacks in a process of their own, after the promotion: writes may resume first.
    said = "patroni-callback: on_role_change as primary"
    log = lab.members[new].log("patroni")
    deadline = time.monotonic() + 60
    while said not in log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert said in log.read_text(errors="replace"), (
        f"{new} never ran its callback:\n{lab.members[new].log_tail('patroni')}"
    )
    # The old leader comes back as a replica of the new one (pg_rewind if it had diverged).
    lab.start_patroni([old], wait=False)
    lab.wait_streaming([old], timeout=120)
    assert lab.leader() == new
    timelines = {m["name"]: m.get("timeline") for m in lab.cluster_state()["members"]}
    assert timelines[old] == timelines[new], f"the old leader follows the new timeline: {timelines}"
    assert lab.sql(old, "SELECT pg_is_in_recovery()") == "t"


def test_unsafe_rest_api_calls_need_the_password(live: Live) -> None:
    lab = live.lab
    import urllib.error
    import urllib.request

    req = urllib.request.Request(lab.api_url("db2") + "/config", data=b'{"ttl": 30}', method="PATCH")
    req.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 401, f"PATCH /config without the REST API password: {refused.value.code}"
    assert lab.rest("db2", "/config")[1]["ttl"] == 20, "the dynamic configuration is unchanged"


def test_a_new_configuration_is_reloaded_without_moving_the_leader(live: Live) -> None:
    """A deploy that changes Patroni's settings reloads it (the module's reloadTriggers): a new
    client's pg_hba line takes effect, and the leader stays."""
    lab = live.lab
    leader = lab.wait_leader()
    data = lab.cluster.model_dump()
    data["machines"]["app2"] = {"address": "10.247.0.22", "roles": ["backend"]}
    from synth.model import from_data

    lab.cluster = from_data(data, "patroni-cluster.toml + app2")
    for name in DBS:
        if lab.running(name):
            lab.reload_patroni(name)
    hba = lab.members[leader].data / "pg_hba.conf"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "10.247.0.22/32" not in hba.read_text():
        time.sleep(0.2)
    assert "host lemmy lemmy 10.247.0.22/32 scram-sha-256" in hba.read_text().splitlines()
    assert lab.leader() == leader, "a reload must not hand the leadership over"
    # ... and is in effect in the running server: the new backend logs in.
    app2 = lab.member("app2").host
    dsn = lab.backend_dsn("app2")
    deadline = time.monotonic() + 10
    while True:
        r = app2.run(
            [str(PG_BIN / "psql"), "-w", "-XAtq", "-d", dsn, "-c", "SELECT current_user"],
            check=False,
            env={"PATH": "/usr/bin:/bin", "PGPASSFILE": str(lab.client_pgpass)},
        )
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert r.stdout.strip() == "lemmy", f"the new backend cannot log in: {r.stderr}"


def test_the_leader_keeps_writing_when_etcd_loses_a_member_and_then_its_quorum(live: Live) -> None:
    """failsafe_mode: without etcd's quorum the leader goes on while it reaches every member."""
    lab = live.lab
    leader = lab.wait_leader()
    lab.wait_streaming([n for n in DBS if n != leader and lab.running(n)], timeout=60)
    members = etcd_members(lab.cluster)  # the postgres machines, as synth places them
    assert members == list(DBS)
    writers = live.writers()
    writers.start()
    stopped: list[str] = []
    try:
        writers.wait_acks(20)
        lab.stop_etcd(members[0])
        stopped.append(members[0])
        writers.wait_acks(40, timeout=30)
        lost_quorum = time.time()
        lab.stop_etcd(members[1])
        stopped.append(members[1])
        # Longer than the leader lock's ttl: without failsafe mode the leader would demote itself.
        time.sleep(30)
        writers.wait_acks(20, timeout=10)
        assert lab.leader() == leader
    finally:
        logs = writers.stop()
        lab.start_etcd(stopped)
    for kind in ("backend", "proxy"):
        worst = writeload.longest_pause(logs[kind], lost_quorum)
        live.figures[f"etcd quorum lost: longest pause between writes ({kind})"] = worst
        # Without failsafe mode the leader demotes itself within retry_timeout (5 s) and writes fail
        # for the rest of the 30 s without quorum; with it, writes go on (a pause of a second or so,
        # more on a loaded machine).
        assert worst < 15, f"{kind}: the leader stopped writing for {worst:.1f}s without etcd's quorum"
    lab.wait_etcd()


def test_a_switchover_moves_the_leader_in_seconds(live: Live) -> None:
    """lemmy-cluster-pg-switchover (scripts/switchover.sh), what `synth promote` runs: the chosen
    replica leads, both clients write again within seconds, nothing acknowledged is lost."""
    lab = live.lab
    old = lab.wait_leader()
    lab.wait_streaming([n for n in DBS if n != old], timeout=60)
    # Synchronous mode: only the synchronous standby may take over; another replica is refused.
    candidate = lab.wait_sync_standby()
    other = next(n for n in DBS if n not in (old, candidate))
    refused = lab.switchover(other)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"only the synchronous standby ({candidate}) may take over" in refused.stderr
    assert lab.leader() == old, "a refused switchover changes nothing"
    writers = live.writers()
    writers.start()
    try:
        writers.wait_acks(20)
        asked = time.time()
        r = lab.switchover(candidate)
        writers.wait_acks(20, timeout=30)
    finally:
        logs = writers.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"switchover: {candidate} leads now" in r.stdout
    assert lab.leader() == candidate
    for kind, db in (("backend", "lemmy"), ("proxy", "pictrs")):
        assert writeload.first_ack_after(logs[kind], asked) is not None, f"{kind}: no write after the switchover"
        live.figures[f"switchover: longest pause between writes ({kind})"] = writeload.longest_pause(logs[kind], asked)
        acked = set(writeload.acknowledged(logs[kind]))
        assert not acked - live.rows(writers, kind, db), f"{kind}: acknowledged commits lost in the switchover"
    # The old leader follows the new one; asking for the current leader changes nothing.
    lab.wait_streaming([old], timeout=60)
    again = lab.switchover(candidate)
    assert again.returncode == 0 and "leads already; nothing to do" in again.stdout
    refused = lab.switchover("db9", via=candidate)
    assert refused.returncode == 1 and "nothing was changed" in refused.stderr
