"""Live tests: streaming replication, promotion and rejoin on real PostgreSQL in network namespaces.

Every PostgreSQL machine of tests/live/pg-cluster.toml (db1 primary, db2, db3) is a namespace with
its own address; fe1 and app1 are namespaces that play a frontend and a backend as clients. The
servers are configured from synth's plan as modules/postgres/default.nix would configure them
(tests/live/pg.py), and every bootstrap, promotion and rejoin runs the module's own scripts from
modules/postgres/scripts/ unchanged, as the postgres OS user.

The tests share one cluster and run in file order; each one starts from the state the previous
one left (the module fixture builds the primary). The synchronous-mode test starts afresh.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from synth.checks import CheckResult, failures
from synth.checks.postgres import PsqlAccess, check_postgres, check_role, check_slots
from tests.conftest import require, require_root, require_tool
from tests.live import (
    pg,
    ssh,  # not `from ... import testinfra_host`: pytest would collect it as a test
)
from tests.live.netns import Network
from tests.live.pg import PgLab, PgServer
from tests.live.ssh import SshKeys, start_sshd

pytestmark = [
    pytest.mark.live,
    # testinfra's paramiko connection does not know the test hosts' throwaway host key.
    pytest.mark.filterwarnings("ignore:Unknown ssh-ed25519 host key:UserWarning"),
]

DBS = ("db1", "db2", "db3")
UNUSED_ADDRESS = "10.232.0.99"  # on the bridge's subnet, but nobody has it


@dataclass
class Live:
    lab: PgLab
    keys: SshKeys
    figures: dict[str, float] = field(default_factory=dict)

    def srv(self, name: str) -> PgServer:
        return self.lab.servers[name]

    def access(self, name: str) -> PsqlAccess:
        return PsqlAccess(psql=str(pg.PG_BIN / "psql"), socket_dir=str(self.srv(name).run_dir))

    def ti(self, name: str) -> Any:
        return ssh.testinfra_host(self.lab.hosts[name], self.keys)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    require_root()
    require(
        (pg.PG_BIN / "postgres").exists(), f"PostgreSQL is not installed in {pg.PG_BIN} (apt-get install postgresql)"
    )
    for tool in ("ip", "runuser", "setpriv", "ssh-keygen"):
        require_tool(tool)
    require(shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists(), "sshd is not installed")
    # Under /tmp (not pytest's 0700 tmp_path) so that the postgres user can reach its folders.
    workdir = Path(tempfile.mkdtemp(prefix="lcpg-", dir="/tmp"))
    workdir.chmod(0o755)
    try:
        with Network(pg.NETWORK, bridge=pg.BRIDGE, prefix=pg.NS_PREFIX) as net:
            lab = PgLab(net, workdir / "lab", pg.load_cluster())
            for machine in lab.cluster.machines:
                lab.host(machine)
            keys = SshKeys.create(workdir / "ssh")
            for name in DBS:
                start_sshd(lab.hosts[name], keys, workdir / "ssh")
            # log_connections (test-only) shows which authentication method each client used.
            lab.init_primary(lab.server("db1"), log_connections=True)
            yield Live(lab, keys)
            lab.stop_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def ok(r: subprocess.CompletedProcess[str], what: str) -> str:
    assert r.returncode == 0, f"{what}: expected exit 0, got {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout.strip()


def write(live: Live, primary: str, sql: str) -> str:
    """SQL as the Lemmy role over TCP from app1 (a backend) to PRIMARY."""
    r = live.lab.client_psql(live.lab.hosts["app1"], live.lab.lemmy_conninfo(primary), sql)
    return ok(r, f"lemmy@app1 -> {primary}: {sql}")


def insert(live: Live, primary: str, ids: range) -> None:
    write(live, primary, f"INSERT INTO items SELECT g, 'row ' || g FROM generate_series({ids.start}, {ids.stop - 1}) g")


def assert_rows(srv: PgServer, expected: int, timeout: float = 20) -> None:
    got = srv.wait_for("SELECT count(*) FROM items", str(expected), timeout=timeout, db="lemmy")
    assert got == str(expected), f"{srv.name}: expected {expected} rows in items within {timeout}s, got {got}"


def assert_slots_active(srv: PgServer, slots: list[str], timeout: float = 20) -> None:
    sql = "SELECT string_agg(slot_name || '=' || active, ',' ORDER BY slot_name) FROM pg_replication_slots"
    expected = ",".join(f"{s}=true" for s in sorted(slots))
    got = srv.wait_for(sql, expected, timeout=timeout)
    assert got == expected, f"{srv.name}: expected slots {expected} within {timeout}s, got {got}"


def caught_up(primary: PgServer, replicas: list[PgServer], timeout: float = 20) -> None:
    """Wait until every replica has replayed the primary's current WAL position."""
    lsn = primary.sql("SELECT pg_current_wal_lsn()")
    for r in replicas:
        sql = f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        got = r.wait_for(sql, "t", timeout=timeout)
        assert got == "t", f"{r.name}: expected replay past {lsn} within {timeout}s, got {got}"


def assert_all_pass(results: list[CheckResult], who: str) -> None:
    for r in results:
        print(f"{who}: {r}")
    bad = failures(results)
    assert not bad, f"{who}: expected every check to pass, got failures: " + "; ".join(map(str, bad))


class SecretSampler(threading.Thread):
    """Reads every process's argv and environment while it runs, looking for the secrets."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(daemon=True)
        self.secrets = [s.encode() for s in secrets]
        self.stop_event = threading.Event()
        self.leaks: list[str] = []
        self.passes = 0
        self.seen: set[str] = set()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop_event.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        data = (entry / part).read_bytes()
                    except OSError:
                        continue
                    if part == "cmdline":
                        for tool in (b"bootstrap-replica.sh", b"write-pgpass.sh", b"pg_basebackup", b"pg_receivewal"):
                            if tool in data:
                                self.seen.add(tool.decode())
                    if any(s in data for s in self.secrets):
                        argv0 = data.split(b"\0")[0].decode(errors="replace") if part == "cmdline" else ""
                        self.leaks.append(f"pid {entry.name} {part} {argv0}")
            self.passes += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def world_readable_leaks(root: Path, secrets: list[str]) -> list[str]:
    """Files under ROOT that anyone may read and that contain one of SECRETS."""
    needles = [s.encode() for s in secrets]
    leaks = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = Path(dirpath) / f
            try:
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IROTH:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                leaks.append(str(path))
    return leaks


# --------------------------------------------------------------------------- the streaming cluster


def test_replicas_bootstrap_and_stream_without_exposing_the_password(live: Live) -> None:
    lab = live.lab
    db1 = live.srv("db1")
    secrets = [lab.replication_password, lab.db_password]
    sampler = SecretSampler(secrets)
    sampler.start()
    try:
        for name in ("db2", "db3"):
            srv = lab.server(name)
            out = ok(lab.bootstrap(srv), f"bootstrap-replica.sh on {name}")
            assert "is now a standby of 10.232.0.31:5432" in out, f"{name}: expected the success message, got {out!r}"
    finally:
        sampler.stop()
    assert sampler.passes > 0 and {"bootstrap-replica.sh", "pg_basebackup"} <= sampler.seen, (
        f"expected the sampler to watch the bootstrap run, got {sampler.passes} passes, saw {sorted(sampler.seen)}"
    )
    assert not sampler.leaks, f"expected no password in any process's argv or environment, got {sampler.leaks}"

    for name in ("db2", "db3"):
        srv = live.srv(name)
        assert (srv.data / "standby.signal").exists(), f"{name}: expected standby.signal in the clone"
        srv.write_config(lab.cluster)
        srv.start()
        assert srv.in_recovery(), f"{name}: expected pg_is_in_recovery() = t, got f"
    assert_slots_active(db1, ["db2", "db3"])
    sync = db1.sql("SELECT string_agg(application_name || ':' || state, ',' ORDER BY 1) FROM pg_stat_replication")
    assert sync == "db2:streaming,db3:streaming", f"expected db2 and db3 streaming, got {sync!r}"

    # Passwords were set through psql's stdin, stored as SCRAM verifiers.
    kinds = db1.sql(
        "SELECT string_agg(rolname || ':' || left(rolpassword, 13), ',' ORDER BY 1) FROM pg_authid "
        "WHERE rolname IN ('lemmy', 'replicator')"
    )
    assert kinds == "lemmy:SCRAM-SHA-256,replicator:SCRAM-SHA-256", f"expected SCRAM verifiers, got {kinds!r}"

    write(live, "db1", "CREATE TABLE items (id int PRIMARY KEY, note text)")
    insert(live, "db1", range(1, 101))
    for name in ("db2", "db3"):
        assert_rows(live.srv(name), 100)
    auth = re.findall(r'connection authenticated: identity="(\w+)" method=(\S+)', db1.log.read_text())
    assert ("lemmy", "scram-sha-256") in auth and ("replicator", "scram-sha-256") in auth, (
        f"expected lemmy and replicator to authenticate with scram-sha-256, got {sorted(set(auth))}"
    )
    methods = {m for who, m in auth if who in ("lemmy", "replicator")}
    assert methods == {"scram-sha-256"}, f"expected lemmy and replicator only over scram-sha-256, got {methods}"

    leaks = world_readable_leaks(lab.workdir, secrets)
    assert not leaks, f"expected no world-readable file holding a password, got {leaks}"
    for f in (lab.db_password_file, lab.replication_password_file, *(s.passfile for s in lab.servers.values())):
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == 0o600, f"{f}: expected mode 0600, got {mode:o}"


def test_role_checks_over_ssh(live: Live) -> None:
    lab = live.lab
    results = check_postgres(
        live.ti("db1"),
        "primary",
        lab.hosts["db1"].address,
        standbys=["db2", "db3"],
        slots=["db2", "db3"],
        max_lag_bytes=1024 * 1024,
        max_lag_seconds=5,
        access=live.access("db1"),
    )
    assert_all_pass(results, "db1")
    for name in ("db2", "db3"):
        results = check_postgres(
            live.ti(name),
            "replica",
            lab.hosts[name].address,
            primary_address=lab.hosts["db1"].address,
            max_lag_bytes=1024 * 1024,
            max_lag_seconds=5,
            access=live.access(name),
        )
        assert_all_pass(results, name)
    # The checks see a wrong expectation.
    wrong = check_role(live.ti("db2"), "primary", live.access("db2")) + check_slots(
        live.ti("db1"), ["nosuchslot"], live.access("db1")
    )
    assert [r.ok for r in wrong] == [False, False], f"expected both checks to fail, got {[str(r) for r in wrong]}"


def test_replica_restart_resumes_from_its_slot(live: Live) -> None:
    lab = live.lab
    db1, db2 = live.srv("db1"), live.srv("db2")
    marker = db2.data / "lemmy-cluster-test-marker"
    marker.write_text(str(time.time_ns()))
    ident = db2.system_identifier()
    db2.stop()
    got = db1.wait_for("SELECT active FROM pg_replication_slots WHERE slot_name = 'db2'", "f")
    assert got == "f", f"expected slot db2 inactive while db2 is down, got {got}"
    insert(live, "db1", range(101, 201))
    # A reboot: the bootstrap unit runs first and must leave an existing standby alone.
    out = ok(lab.bootstrap(db2), "bootstrap-replica.sh on an existing standby")
    assert "already a standby; nothing to do" in out, f"expected 'nothing to do', got {out!r}"
    db2.start()
    assert_rows(db2, 200)
    assert_slots_active(db1, ["db2", "db3"])
    assert marker.exists(), "expected the marker file in db2's data dir to survive (no re-clone), got it gone"
    assert db2.system_identifier() == ident, f"expected system identifier {ident}, got {db2.system_identifier()}"
    log = db2.log.read_text()
    assert "started streaming WAL from primary" in log.split("database system is shut down")[-1], (
        "expected db2 to resume streaming after the restart; log tail:\n" + db2.log_tail()
    )


def test_pg_hba_lets_only_backends_in(live: Live) -> None:
    lab = live.lab
    conn = lab.lemmy_conninfo("db1")
    r = lab.client_psql(lab.hosts["fe1"], conn, "SELECT 1")
    assert r.returncode != 0, f"expected lemmy@fe1 to be rejected, got exit 0: {r.stdout!r}"
    assert 'no pg_hba.conf entry for host "10.232.0.11"' in r.stderr, f"expected a pg_hba rejection, got {r.stderr!r}"
    r = lab.client_psql(lab.hosts["app1"], conn, "SELECT current_user")
    assert (r.returncode, r.stdout.strip()) == (0, "lemmy"), f"expected lemmy@app1 in, got {r.returncode} {r.stderr}"
    # The replication role is for the PostgreSQL machines only.
    repl = "host=10.232.0.31 user=replicator dbname=replication replication=true"
    r = lab.client_psql(lab.hosts["app1"], repl, "IDENTIFY_SYSTEM")
    assert 'no pg_hba.conf entry for replication connection from host "10.232.0.21"' in r.stderr, (
        f"expected replicator@app1 to be rejected by pg_hba, got exit {r.returncode}: {r.stderr!r}"
    )


def multi_host_server(live: Live) -> str:
    conn = live.lab.lemmy_conninfo(*DBS, target_session_attrs="read-write")
    r = live.lab.client_psql(live.lab.hosts["app1"], conn, "SELECT host(inet_server_addr())")
    return ok(r, f"multi-host connection {conn!r}")


def test_multi_host_string_finds_the_primary(live: Live) -> None:
    got = multi_host_server(live)
    assert got == "10.232.0.31", f"expected the multi-host string to reach the primary db1 (10.232.0.31), got {got}"


# --------------------------------------------------------------------------- failover


def test_promote_replica_after_primary_crash(live: Live) -> None:
    lab = live.lab
    db1, db2, db3 = (live.srv(n) for n in DBS)
    caught_up(db1, [db2, db3])
    db1.kill9()

    start = time.monotonic()
    r = lab.script(
        db2.host, "promote.sh", ["--host", str(db2.run_dir), "--port", "5432", "--slots", "db1,db3", "--timeout", "30"]
    )
    out = ok(r, "promote.sh on db2")
    assert re.search(r"promoted to primary in [0-9.]+ s; slots ensured: db1,db3", out), f"unexpected output {out!r}"
    first_write = None
    while time.monotonic() - start < 30:
        w = lab.client_psql(lab.hosts["app1"], lab.lemmy_conninfo("db2"), "INSERT INTO items VALUES (201, 'after')")
        if w.returncode == 0:
            first_write = time.monotonic() - start
            break
        time.sleep(0.05)
    assert first_write is not None, "expected a write on db2 within 30 s of promote.sh"
    live.figures["promote_to_first_write_s"] = first_write
    print(f"promote-to-first-write: {first_write:.2f} s ({out})")
    assert not db2.in_recovery(), "db2: expected pg_is_in_recovery() = f after promotion, got t"
    got = db2.sql("SELECT string_agg(slot_name, ',' ORDER BY 1) FROM pg_replication_slots")
    assert got == "db1,db3", f"db2: expected slots db1,db3 after promote.sh --slots, got {got!r}"
    again = lab.script(db2.host, "promote.sh", ["--host", str(db2.run_dir)])
    assert again.returncode == 3 and "not a standby" in again.stderr, (
        f"promote.sh on a primary: expected exit 3 'not a standby', got {again.returncode}: {again.stderr!r}"
    )

    # regenerate + deploy: the cluster file now names db2 as primary; every machine gets its config.
    lab.cluster = pg.load_cluster(primary="db2")
    for srv in (db2, db3):
        srv.write_config(lab.cluster)
        srv.reload()
    assert "host=10.232.0.32 " in str(db3.settings["primary_conninfo"]), f"got {db3.settings['primary_conninfo']}"
    sql = "SELECT status || ' from ' || sender_host FROM pg_stat_wal_receiver"
    got = db3.wait_for(sql, "streaming from 10.232.0.32", timeout=30)
    assert got == "streaming from 10.232.0.32", f"db3: expected to stream from db2 after the reload, got {got!r}"
    insert(live, "db2", range(202, 301))
    assert_rows(db3, 300)
    got = db2.wait_for("SELECT active FROM pg_replication_slots WHERE slot_name = 'db3'", "t")
    assert got == "t", f"db2: expected slot db3 active, got {got}"
    results = check_postgres(
        live.ti("db3"),
        "replica",
        "10.232.0.33",
        primary_address="10.232.0.32",
        access=live.access("db3"),
    )
    assert_all_pass(results, "db3")


def test_old_primary_with_its_old_configuration_is_fenced(live: Live) -> None:
    """db1 boots again before the regenerated configuration reaches it: it still says primary.
    postgresql.service's ExecStartPre (check-no-other-primary.sh) must refuse: db2 accepts writes."""
    db1 = live.srv("db1")
    assert db1.opts["role"] == "primary", f"db1: expected its old configuration (primary), got {db1.opts['role']}"
    with pytest.raises(pg.StartRefused) as refused:
        db1.start()
    err = refused.value.result.stderr
    assert refused.value.result.returncode == 1, f"expected exit 1, got {refused.value.result.returncode}: {err!r}"
    assert "10.232.0.32:5432 is already a writable primary" in err, f"expected db2 named as the primary, got {err!r}"
    assert not db1.running(), "db1: expected PostgreSQL not started"


def test_multi_host_string_follows_the_promotion(live: Live) -> None:
    got = multi_host_server(live)
    assert got == "10.232.0.32", f"expected the multi-host string to reach the new primary db2, got {got}"


def test_old_primary_rejoins_as_replica(live: Live) -> None:
    lab = live.lab
    db1, db2 = live.srv("db1"), live.srv("db2")
    assert not db1.running(), "db1: expected PostgreSQL stopped (it crashed)"
    # The boot-time bootstrap must not start a former primary as a replica.
    r = lab.bootstrap(db1)
    assert r.returncode == 1, f"expected bootstrap-replica.sh on a former primary to exit 1, got {r.returncode}"
    assert "rejoin" in r.stderr and "not a standby" in r.stderr, f"expected a message about rejoin, got {r.stderr!r}"
    assert not (db1.data / "standby.signal").exists(), "expected the former primary's data dir untouched"

    old_ident = (db1.data / "global" / "pg_control").read_bytes()
    r = lab.script(db1.host, "rejoin-as-replica.sh", [*lab.bootstrap_args(db1), "--passfile", str(db1.passfile)])
    out = ok(r, "rejoin-as-replica.sh on db1")
    kept = sorted(db1.base.glob("data.old-*"))
    assert len(kept) == 1, f"expected one kept old data dir data.old-*, got {kept}"
    assert (kept[0] / "global" / "pg_control").read_bytes() == old_ident, "expected the old dir kept unchanged"
    assert "kept the old data directory" in out and "is now a standby of 10.232.0.32:5432" in out, f"got {out!r}"

    db1.write_config(lab.cluster)
    db1.start()
    assert db1.in_recovery(), "db1: expected pg_is_in_recovery() = t after rejoining, got f"
    insert(live, "db2", range(301, 351))
    assert_rows(db1, 350)
    assert_slots_active(db2, ["db1", "db3"])
    results = check_postgres(
        live.ti("db2"),
        "primary",
        "10.232.0.32",
        standbys=["db1", "db3"],
        slots=["db1", "db3"],
        access=live.access("db2"),
    )
    assert_all_pass(results, "db2")


def test_bootstrap_bad_input_leaves_nothing_behind(live: Live) -> None:
    lab = live.lab
    db3 = live.srv("db3")
    scratch = lab.workdir / "scratch"
    scratch.mkdir(mode=0o755)
    pg.chown_pg(scratch)

    def run(pgdata: Path, primary: str, password_file: Path) -> subprocess.CompletedProcess[str]:
        args = ["--pgdata", str(pgdata), "--primary-host", primary, "--slot", "scratch"]
        return lab.script(db3.host, "bootstrap-replica.sh", [*args, "--password-file", str(password_file)])

    # Nobody has the address.
    r = run(scratch / "a", UNUSED_ADDRESS, lab.replication_password_file)
    assert r.returncode == 1, f"unreachable primary: expected exit 1, got {r.returncode}: {r.stderr}"
    assert f"cannot reach the primary {UNUSED_ADDRESS}:5432" in r.stderr, (
        f"expected the primary named, got {r.stderr!r}"
    )
    assert re.search(r"No route to host|timeout|timed out|unreachable", r.stderr), (
        f"expected the cause, got {r.stderr!r}"
    )
    print(f"unreachable primary: {r.stderr.strip()}")

    # A wrong password, against the current primary.
    wrong = scratch / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    pg.chown_pg(wrong)
    r = run(scratch / "b", "10.232.0.32", wrong)
    assert r.returncode == 1, f"wrong password: expected exit 1, got {r.returncode}: {r.stderr}"
    assert "cannot reach the primary 10.232.0.32:5432" in r.stderr, f"expected the primary named, got {r.stderr!r}"
    assert 'password authentication failed for user "replicator"' in r.stderr, f"expected the cause, got {r.stderr!r}"
    print(f"wrong password: {r.stderr.strip()}")
    got = live.srv("db2").sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'scratch'")
    assert got == "0", f"expected no slot created with a wrong password, got {got}"

    # An empty data dir (as StateDirectory= creates it) stays empty.
    empty = scratch / "c"
    empty.mkdir(mode=0o700)
    pg.chown_pg(empty)
    r = run(empty, UNUSED_ADDRESS, lab.replication_password_file)
    assert r.returncode == 1, f"empty dir: expected exit 1, got {r.returncode}: {r.stderr}"
    assert list(empty.iterdir()) == [], f"expected the empty data dir to stay empty, got {list(empty.iterdir())}"

    left = sorted(p.name for p in scratch.iterdir())
    assert left == ["c", "wrong-password"], f"expected no data dir and no temp dir left behind, got {left}"


# --------------------------------------------------------------------------- fresh clusters


def test_replica_boot_waits_for_its_primary(live: Live) -> None:
    """A replica that boots before its primary: the bootstrap unit (--wait-for-primary) retries."""
    lab = live.lab
    lab.reset(pg.load_cluster())
    db1, db2 = lab.server("db1"), lab.server("db2")
    result: list[subprocess.CompletedProcess[str]] = []
    t = threading.Thread(target=lambda: result.append(lab.bootstrap(db2)), daemon=True)
    t.start()
    time.sleep(1)  # the first attempt finds nobody listening on db1
    assert t.is_alive(), f"expected the bootstrap to wait for db1, got it finished: {result}"
    lab.init_primary(db1)
    t.join(timeout=60)
    assert result, "expected the bootstrap to finish within 60 s of the primary coming up"
    out = ok(result[0], "bootstrap-replica.sh --wait-for-primary")
    assert re.search(
        r"primary 10.232.0.31:5432 not ready \(.*Connection refused.*\); trying again", result[0].stderr
    ), f"expected a 'not ready ... trying again' message naming the cause, got {result[0].stderr!r}"
    assert "is now a standby of 10.232.0.31:5432" in out, f"expected the success message, got {out!r}"
    db2.write_config(lab.cluster)
    db2.start()
    assert db2.in_recovery(), "db2: expected pg_is_in_recovery() = t, got f"
    got = db1.wait_for("SELECT active FROM pg_replication_slots WHERE slot_name = 'db2'", "t")
    assert got == "t", f"db1: expected slot db2 active, got {got!r}"


# --------------------------------------------------------------------------- synchronous mode


def build_cluster(live: Live, synchronous: bool) -> PgServer:
    """A fresh db1 primary with db2 and db3 streaming; returns db1."""
    lab = live.lab
    lab.reset(pg.load_cluster(synchronous=synchronous))
    db1 = lab.server("db1")
    lab.init_primary(db1)
    for name in ("db2", "db3"):
        srv = lab.server(name)
        ok(lab.bootstrap(srv), f"bootstrap-replica.sh on {name}")
        srv.write_config(lab.cluster)
        srv.start()
    mode = "quorum" if synchronous else "async"
    sql = "SELECT string_agg(application_name || ':' || sync_state, ',' ORDER BY 1) FROM pg_stat_replication"
    want = f"db2:{mode},db3:{mode}"
    got = db1.wait_for(sql, want)
    assert got == want, f"expected both standbys streaming as {mode}, got {got!r}"
    write(live, "db1", "CREATE TABLE items (id int PRIMARY KEY, note text)")
    return db1


def promote_most_advanced(live: Live) -> tuple[PgServer, set[int]]:
    """Promote the standby that received the most WAL (what an operator does); return it and its ids."""
    lab = live.lab
    lsns = {n: live_lsn(lab.servers[n]) for n in ("db2", "db3")}
    new = lab.servers[max(lsns, key=lambda n: lsns[n])]
    ok(lab.script(new.host, "promote.sh", ["--host", str(new.run_dir), "--timeout", "30"]), f"promote.sh on {new.name}")
    return new, {int(x) for x in new.sql("SELECT id FROM items", db="lemmy").split()}


def live_lsn(srv: PgServer) -> int:
    out = srv.sql("SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint")
    return int(out or 0)


def test_synchronous_mode_loses_no_acknowledged_commit(live: Live) -> None:
    lab = live.lab
    db1 = build_cluster(live, synchronous=True)
    assert db1.settings["synchronous_standby_names"] == "ANY 1 (db2, db3)", f"got {db1.settings}"

    # A writer commits rows one by one and records every id the primary acknowledged.
    acked: list[int] = []
    errors: list[str] = []

    def writer() -> None:
        conn = lab.lemmy_conninfo("db1")
        i = 0
        while not errors and i < 5000:
            i += 1
            r = lab.client_psql(lab.hosts["app1"], conn, f"INSERT INTO items VALUES ({i}, 'sync')", timeout=20)
            if r.returncode == 0:
                acked.append(i)
            else:
                errors.append(r.stderr.strip())

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 40 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.02)
    db1.kill9()
    t.join(timeout=30)
    assert not t.is_alive(), "expected the writer to stop once the primary is gone"
    assert len(acked) >= 40, f"expected at least 40 acknowledged commits before the crash, got {len(acked)}: {errors}"
    assert errors, "expected the writer to see the crash"

    new, present = promote_most_advanced(live)
    lost = sorted(set(acked) - present)
    print(f"synchronous: {len(acked)} acknowledged, {len(present)} present on {new.name}, lost {len(lost)}")
    assert not lost, f"expected every acknowledged id on {new.name}, got {len(lost)} lost: {lost[:20]}"


def test_asynchronous_mode_can_lose_acknowledged_commits(live: Live) -> None:
    """The contrast: without synchronous mode, commits the primary acknowledged while its standbys
    were cut off are gone after a failover (with it, those commits would not have been acknowledged)."""
    lab = live.lab
    db1 = build_cluster(live, synchronous=False)
    insert(live, "db1", range(1, 11))
    caught_up(db1, [lab.servers["db2"], lab.servers["db3"]])
    for name in ("db2", "db3"):
        lab.hosts[name].link(False)
    try:
        insert(live, "db1", range(11, 31))  # acknowledged by the primary alone
        db1.kill9()
        # A crashed machine sends nothing more; here the kernel outlives the processes and would
        # deliver what their sockets still held (rows 11-30) once the standbys are back: cut it off.
        lab.hosts["db1"].link(False)
    finally:
        for name in ("db2", "db3"):
            lab.hosts[name].link(True)
    try:
        new, present = promote_most_advanced(live)
    finally:
        lab.hosts["db1"].link(True)
    lost = sorted(set(range(1, 31)) - present)
    print(f"asynchronous: 30 acknowledged, {len(present)} present on {new.name}, lost {len(lost)}")
    assert present == set(range(1, 11)), (
        f"expected exactly the 10 rows from before the cut on {new.name}, got {sorted(present)}"
    )
