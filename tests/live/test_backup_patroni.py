"""Live tests of backups under Patroni: archiving follows the leader, and a restore bootstraps the
cluster from the backup.

tests/live/patroni-cluster.toml on its own subnet (10.249.0.0/24, bridge lcbr-k2, namespaces
lck2-) with a [backup] section (a posix repository in the test's folder, as a shared mount of
every member; Debian's pgBackRest 2.45 speaks S3 only over TLS). Patroni's settings are
modules/postgres/patroni-settings.nix with the backup role's archiveCommand
(modules/backup/pgbackrest-settings.nix), so every member has the archive_command and only the
leader archives (tests/live/patroni.py, tests/live/backup.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.live import writeload
from tests.live.backup import PGBACKREST, SCRIPTS, SYS_PATH, Pgbackrest
from tests.live.netns import Network
from tests.live.patroni import PatroniLab, options
from tests.live.pg import PG_BIN, as_pg, chown_pg, load_cluster
from tests.live.test_patroni import require_engines

pytestmark = pytest.mark.live

CLUSTER_TOML = Path(__file__).with_name("patroni-cluster.toml")
DBS = ("db1", "db2", "db3")
SUBNET = "10.249.0."


@dataclass
class Lab:
    lab: PatroniLab
    workdir: Path
    repo: Path
    brs: dict[str, Pgbackrest]

    def sql(self, machine: str, sql: str, db: str = "postgres") -> str:
        return self.lab.sql(machine, sql, db)


@pytest.fixture(scope="module")
def plab() -> Iterator[Lab]:
    require_engines()
    require(PGBACKREST.exists(), "pgbackrest is not installed (scripts/install-system-deps.sh installs Debian's)")
    workdir = Path(tempfile.mkdtemp(prefix="lcbackpat-", dir="/tmp"))
    workdir.chmod(0o755)
    repo = workdir / "repo"
    repo.mkdir(mode=0o750)
    chown_pg(repo)
    cluster_file = workdir / "cluster.toml"
    text = CLUSTER_TOML.read_text().replace("10.247.0.", SUBNET)
    cluster_file.write_text(text + f'\n[backup]\nrepository = "posix"\npath = "{repo}"\nshared_mount = true\n')
    try:
        with Network(f"{SUBNET}0/24", bridge="lcbr-k2", prefix="lck2-") as net:
            lab = PatroniLab(net, workdir / "lab", load_cluster(cluster_file))
            try:
                # Written by the lab like every secret of synth's list (PatroniLab: postgres, 0600).
                cipher = lab.secrets["backup_cipher_pass"]
                brs = {}
                for name in DBS:
                    m = lab.member(name)
                    brs[name] = Pgbackrest(lab.cluster, name, m.base / "pgbackrest", cipher, m.data, m.run_dir)
                    lab.extra_postgres_options[name] = {"archiveCommand": brs[name].archive_command}
                lab.start_etcd()
                lab.wait_etcd()
                lab.start_patroni()
                leader = lab.wait_leader()
                lab.wait_units(leader)
                lab.sql(
                    leader,
                    "CREATE TABLE lc_writes (run text, n bigint, at timestamptz DEFAULT now(), PRIMARY KEY (run, n))",
                    db="lemmy",
                )
                lab.sql(leader, "ALTER TABLE lc_writes OWNER TO lemmy", db="lemmy")
                yield Lab(lab, workdir, repo, brs)
            finally:
                lab.stop_all()
    finally:
        if not os.environ.get("LC_KEEP_WORKDIR"):
            shutil.rmtree(workdir, ignore_errors=True)


def wait_archived(p: Lab, machine: str, timeout: float = 90) -> str:
    """Switch to a new WAL segment and wait until the one just closed is archived; its name.
    pg_switch_wal() switches only when the segment holds something, so the name it gives may be
    of the segment still being written (seen in CI: it stayed open until archive_timeout, 60 s):
    every 5 s a transaction with an xid (a commit record) and another switch close it."""
    closed = p.sql(machine, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    nudge = time.monotonic() + 5
    got = ""
    while time.monotonic() < deadline:
        got = p.sql(machine, f"SELECT coalesce(last_archived_wal >= '{closed}', false) FROM pg_stat_archiver")
        if got == "t":
            return closed
        if time.monotonic() > nudge:
            p.sql(machine, "SELECT txid_current()")
            p.sql(machine, "SELECT pg_switch_wal()")
            nudge = time.monotonic() + 5
        time.sleep(0.2)
    status = p.sql(machine, "SELECT * FROM pg_stat_archiver")
    logs = p.lab.members[machine].log_tail("patroni", 30)
    raise AssertionError(f"{machine}: WAL {closed} not archived in {timeout}s: {status}\n{logs}")


def test_every_member_has_the_archive_command_and_only_the_leader_archives(plab: Lab) -> None:
    lab = plab.lab
    leader = lab.wait_leader()
    r = plab.brs[leader].script(lab.members[leader].host, "backup-init.sh", ["--stanza", "lemmy"])
    assert r.returncode == 0, r.stdout + r.stderr
    lab.wait_streaming([n for n in DBS if n != leader])
    for name in DBS:
        assert plab.sql(name, "SHOW archive_mode") == "on"
        assert "archive-push" in plab.sql(name, "SHOW archive_command")
    wait_archived(plab, leader)
    for name in DBS:
        if name != leader:
            assert plab.sql(name, "SELECT archived_count FROM pg_stat_archiver") == "0", f"{name} archives"


def test_a_new_leader_keeps_archiving_after_a_failover(plab: Lab) -> None:
    lab = plab.lab
    old = lab.wait_leader()
    out = plab.workdir / "writes-failover.log"
    writer = lab.start_writer("app1", lab.backend_dsn("app1"), out, run="failover")
    try:
        time.sleep(2)
        lab.kill(old)
        new = lab.wait_leader(timeout=60, not_on=old)
        time.sleep(3)
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    timeline = int(plab.sql(new, "SELECT timeline_id FROM pg_control_checkpoint()"))
    closed = wait_archived(plab, new)
    assert int(closed[:8], 16) >= 2 and int(closed[:8], 16) == timeline, (closed, timeline)
    assert any(p.name.startswith(closed) for p in plab.repo.rglob(f"{closed}*")), f"{closed} is not in the repository"
    r = plab.brs[new].run(lab.members[new].host, "check")
    assert r.returncode == 0, r.stdout + r.stderr
    acked = set(writeload.acknowledged(writeload.read_log(out)))
    assert acked, "the writer wrote nothing"
    # A backup from the new leader, on its timeline.
    r = plab.brs[new].run(lab.members[new].host, "--type=diff", "backup")
    assert r.returncode == 0, r.stdout + r.stderr
    lab.start_patroni([old], wait=False)
    lab.wait_streaming([n for n in DBS if n != new], timeout=120)


def test_a_restore_bootstraps_the_cluster_from_the_backup(plab: Lab) -> None:
    lab = plab.lab
    leader = lab.wait_leader()
    plab.sql(leader, "CREATE TABLE marks (id int PRIMARY KEY)", db="lemmy")
    plab.sql(leader, "INSERT INTO marks SELECT generate_series(1, 100)", db="lemmy")
    time.sleep(0.5)
    target = plab.sql(leader, "SELECT clock_timestamp()")
    time.sleep(0.5)
    plab.sql(leader, "DROP TABLE lc_writes", db="lemmy")  # the mistake
    plab.sql(leader, "INSERT INTO marks SELECT generate_series(101, 200)", db="lemmy")
    wait_archived(plab, leader)
    endpoints = ",".join(f"http://{h}" for h in lab_options(plab, "db1")["patroni"]["etcdHosts"])
    forget = ["bash", str(SCRIPTS / "patroni-forget.sh"), "--endpoints", endpoints, "--scope", lab.cluster.cluster.name]
    r = lab.members["db1"].host.run(forget, check=False, timeout=60, env={"PATH": SYS_PATH})
    assert r.returncode == 1 and "still holds the leader lock" in r.stderr, r.stdout + r.stderr
    # 1. Patroni stops everywhere (the replicas first), and the cluster leaves etcd.
    for name in [*(n for n in DBS if n != leader), leader]:
        lab.stop_patroni(name)
    # The module's lemmy-cluster-patroni-forget (patroni-forget.sh with the etcd members).
    r = lab.members["db1"].host.run(forget, check=False, timeout=60, env={"PATH": SYS_PATH})
    assert r.returncode == 0 and "removed" in r.stdout, r.stdout + r.stderr
    # 2. The bootstrap member (db1, [postgres] primary) is restored and replays to the target.
    db1 = lab.members["db1"]
    r = plabs_restore(plab, "db1", "--time", target, "--finish-with", str(PG_BIN))
    assert r.returncode == 0, r.stdout + r.stderr
    # 3. The other members' data directories move aside (kept), so that they clone the new one.
    for name in ("db2", "db3"):
        m = lab.members[name]
        r = m.host.run(
            as_pg(["bash", str(SCRIPTS / "move-aside.sh"), "--data-dir", str(m.data)]), check=False, timeout=30
        )
        assert r.returncode == 0 and not m.data.exists(), r.stdout + r.stderr
        assert list(m.base.glob("data.before-restore-*")), f"{name}: the old data directory is kept"
    assert sorted(p.name for p in db1.base.glob("data.before-restore-*")), "db1's old data directory is kept"
    lab.start_patroni(["db1"])
    assert lab.wait_leader(timeout=90) == "db1"
    lab.wait_units("db1")
    assert plab.sql("db1", "SELECT count(*), max(id) FROM marks", db="lemmy") == "100|100"
    assert plab.sql("db1", "SELECT to_regclass('lc_writes') IS NOT NULL", db="lemmy") == "t", (
        "the dropped table is back"
    )
    lab.start_patroni(["db2", "db3"], wait=False)
    lab.wait_streaming(["db2", "db3"], timeout=120)
    assert plab.sql("db2", "SELECT count(*) FROM marks", db="lemmy") == "100"
    # The restored leader archives on its new timeline.
    wait_archived(plab, "db1", timeout=150)


def plabs_restore(plab: Lab, machine: str, *args: str) -> subprocess.CompletedProcess[str]:
    m = plab.lab.members[machine]
    cipher = f"backup-cipher-pass={plab.brs[machine].cipher_pass_file}"
    args = ("--data-dir", str(m.data), "--stanza", "lemmy", "--credential", cipher, *args)
    return plab.brs[machine].script(m.host, "restore.sh", list(args))


def lab_options(plab: Lab, machine: str) -> dict[str, Any]:
    pgo: dict[str, Any] = options(plab.lab.cluster, machine)["postgres"]
    return pgo
