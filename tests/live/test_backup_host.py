"""Live tests of the backup machine (role "backup"): pgBackRest's repository host over TLS.

tests/live/pg-cluster.toml with db1, db2 (streaming replication) and a machine bk1 of role
"backup", on its own subnet (10.254.0.0/24, bridge lcbr-k3, namespaces lck3-). Everything is what
the modules and synth produce: the certificates and the passphrase are made by the real `synth
secrets init`; pgbackrest.conf of the postgres machines is modules/backup/pgbackrest-settings.nix
and that of bk1 modules/backup/repository-settings.nix, evaluated on synth's host options and
rendered as nixpkgs renders them; every pgBackRest process (the TLS servers on all three, the
archive_command, the backups on bk1, the restores) is Debian's 2.45 through the module's wrapper.

What differs from NixOS: every process runs as postgres (NixOS: pgBackRest's own user on bk1),
the folders are the test's (tests/live/backup.py says which), and the TLS files are copied into
each machine's folder as lemmy-cluster-backup-tls.service does. The repository's folder lies on
the test machine's one filesystem, so the tests prove that it is reached through bk1's server by
stopping that server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, require, require_root, require_tool
from tests.live import pg, writeload
from tests.live.backup import PGBACKREST, SCRIPTS, Pgbackrest, RepositoryHost
from tests.live.netns import Host, Network
from tests.live.pg import PgLab, PgServer, chown_pg
from tests.live.test_backup import stop

pytestmark = pytest.mark.live

SUBNET = "10.254.0."
BK1 = f"{SUBNET}41"


@dataclass
class HostLab:
    lab: PgLab
    workdir: Path
    repo: Path
    cipher: Path
    secrets: Path
    brs: dict[str, Pgbackrest]
    bk: RepositoryHost
    bk_host: Host
    servers: dict[str, subprocess.Popen[bytes]]

    def db(self, machine: str) -> PgServer:
        return self.lab.servers[machine]

    def start_server(self, machine: str) -> None:
        if machine == "bk1":
            self.servers[machine] = self.bk.server(self.bk_host)
        else:
            self.servers[machine] = self.brs[machine].server(self.db(machine).host)

    def stop_server(self, machine: str) -> None:
        proc = self.servers.pop(machine)
        proc.terminate()
        proc.wait(timeout=20)


def cluster_text(repo: Path) -> str:
    text = pg.CLUSTER_TOML.read_text().replace("10.232.0.", SUBNET)
    text = text.replace(f'[machines.db3]\naddress = "{SUBNET}33"\nroles = ["postgres"]\n', "")
    assert "db3" not in text.split("[machines.")[-1]
    return (
        text
        + f'\n[machines.bk1]\naddress = "{BK1}"\nroles = ["backup"]\n'
        + f'\n[backup]\nrepository = "posix"\npath = "{repo}"\nfull_retention = 2\n'
    )


def tls_copy(secrets: Path, machine: str, folder: Path) -> dict[str, str]:
    """What lemmy-cluster-backup-tls.service does: the machine's TLS secrets, readable by its
    pgBackRest user only (modules/backup/tls-files.nix names the same three files)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    chown_pg(folder)
    files = {
        "caFile": (secrets / "backup-tls-ca", folder / "ca.crt"),
        "certFile": (secrets / f"backup-tls-cert.{machine}", folder / "machine.crt"),
        "keyFile": (secrets / f"backup-tls-key.{machine}", folder / "machine.key"),
    }
    for source, target in files.values():
        shutil.copyfile(source, target)
        target.chmod(0o400)
        chown_pg(target)
    return {name: str(target) for name, (_, target) in files.items()}


def lab_machines(lab: PgLab, workdir: Path, secrets: Path) -> tuple[Path, dict[str, Pgbackrest], RepositoryHost, Host]:
    """pgBackRest on db1, db2 and bk1 of LAB as the modules configure it, with `synth secrets
    init`'s files from SECRETS: (the passphrase's file, the postgres machines' Pgbackrest, bk1's
    RepositoryHost, bk1's namespace host). db1's and db2's archive_command is the module's."""
    cipher = workdir / "cipher-pass"
    shutil.copyfile(secrets / "backup-cipher-pass", cipher)
    cipher.chmod(0o600)
    chown_pg(cipher)
    brs = {}
    for machine in ("db1", "db2"):
        srv = lab.server(machine)
        tls = tls_copy(secrets, machine, srv.base / "tls") | {"listenAddress": srv.address}
        brs[machine] = Pgbackrest(lab.cluster, machine, srv.base / "pgbackrest", cipher, srv.data, srv.run_dir, tls=tls)
        srv.extra_opts = {"archiveCommand": brs[machine].archive_command}
    bk_host = lab.host("bk1")
    bk_dir = workdir / "bk1"
    bk_dir.mkdir(mode=0o755)
    bk_tls = tls_copy(secrets, "bk1", bk_dir / "tls") | {"listenAddress": BK1}
    databases = {m: (lab.servers[m].data, lab.servers[m].run_dir) for m in ("db1", "db2")}
    bk = RepositoryHost(lab.cluster, "bk1", bk_dir / "pgbackrest", cipher, bk_tls, databases)
    return cipher, brs, bk, bk_host


def synth(cluster_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synth", *args, str(cluster_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def hlab() -> Iterator[HostLab]:
    require_root()
    require((pg.PG_BIN / "postgres").exists(), f"PostgreSQL is not installed in {pg.PG_BIN}")
    require(PGBACKREST.exists(), "pgbackrest is not installed (scripts/install-system-deps.sh installs Debian's)")
    for tool in ("ip", "runuser", "jq", "nix-instantiate"):
        require_tool(tool)
    workdir = Path(tempfile.mkdtemp(prefix="lcbackuphost-", dir="/tmp"))
    workdir.chmod(0o755)
    repo = workdir / "repo"
    repo.mkdir(mode=0o750)
    chown_pg(repo)
    cluster_file = workdir / "cluster.toml"
    cluster_file.write_text(cluster_text(repo))
    made = synth(cluster_file, "secrets", "init")
    assert made.returncode == 0, made.stdout + made.stderr
    secrets = workdir / "secrets"
    assert (secrets / "backup-tls-ca-key").exists() and (secrets / "backup-tls-cert.bk1").exists(), made.stdout
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with Network(f"{SUBNET}0/24", bridge="lcbr-k3", prefix="lck3-") as net:
            lab = PgLab(net, workdir / "lab", pg.load_cluster(cluster_file))
            cipher, brs, bk, bk_host = lab_machines(lab, workdir, secrets)
            lab.host("app1")
            h = HostLab(lab, workdir, repo, cipher, secrets, brs, bk, bk_host, servers)
            for machine in ("bk1", "db1", "db2"):
                h.start_server(machine)
            lab.init_primary(lab.servers["db1"])
            db2 = lab.servers["db2"]
            db2.write_config(lab.cluster)
            r = lab.bootstrap(db2)
            assert r.returncode == 0, r.stdout + r.stderr
            db2.start(timeout=120)
            yield h
            for proc in list(servers.values()):
                proc.terminate()
            lab.stop_all()
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def bk_run(h: HostLab, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """lemmy-cluster-pgbackrest ARGS on bk1 (the backup timers' command, the admin's)."""
    return h.bk.run(h.bk_host, *args, timeout=timeout)


def wait_archived(srv: PgServer, timeout: float = 60) -> str:
    """Switch WAL and wait until the closed segment is archived (through bk1); its name."""
    closed = srv.sql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.sql(f"SELECT last_archived_wal >= '{closed}' FROM pg_stat_archiver") == "t":
            return closed
        # A segment that pg_switch_wal() left empty is not closed: write and switch again.
        srv.sql("SELECT txid_current()")
        time.sleep(1)
    raise AssertionError(f"{closed} not archived in {timeout}s: {srv.sql('SELECT * FROM pg_stat_archiver')}")


def start_writer(h: HostLab, primary: str, out: Path, run: str) -> subprocess.Popen[bytes]:
    db = h.db(primary)
    db.psql_run("CREATE TABLE IF NOT EXISTS lc_runs (run text, n bigint, PRIMARY KEY (run, n))", db="lemmy")
    db.psql_run("ALTER TABLE lc_runs OWNER TO lemmy", db="lemmy")
    proc: subprocess.Popen[bytes] = h.lab.hosts["app1"].popen(
        [
            sys.executable,
            "-m",
            "tests.live.writeload",
            "--dsn",
            h.lab.lemmy_conninfo(primary),
            "--out",
            str(out),
            "--table",
            "lc_runs",
            "--run",
            run,
        ],
        env={"PATH": pg.SYS_PATH, "PGPASSFILE": str(h.lab.client_pgpass), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    return proc


# --------------------------------------------------------------------------- tests


def test_the_configurations_are_the_modules(hlab: HostLab) -> None:
    db_conf = hlab.brs["db1"].conf.read_text()
    assert f"repo1-host={BK1}" in db_conf and "repo1-host-type=tls" in db_conf, db_conf
    assert "[global:server]" in db_conf and "tls-server-auth=bk1=lemmy" in db_conf, db_conf
    bk_conf = hlab.bk.conf.read_text()
    for line in (
        f"pg1-host={SUBNET}31",
        f"pg2-host={SUBNET}32",
        "tls-server-auth=db1=lemmy",
        "tls-server-auth=db2=lemmy",
    ):
        assert line in bk_conf, f"{line} missing from bk1's pgbackrest.conf:\n{bk_conf}"
    assert f"repo1-path={hlab.repo}" in bk_conf and "repo1-host" not in bk_conf, bk_conf
    for conf in (db_conf, bk_conf):
        assert "cipher-pass=" not in conf and "BEGIN PRIVATE KEY" not in conf, "no secret in a configuration file"


def test_the_backup_machine_creates_the_stanza_and_a_first_full_backup(hlab: HostLab) -> None:
    r = hlab.bk.script(hlab.bk_host, "backup-init.sh", ["--stanza", "lemmy"])
    assert r.returncode == 0, r.stdout + r.stderr
    # Read from a postgres machine, through bk1's server.
    info = hlab.brs["db1"].info(hlab.db("db1").host)
    assert info[0]["status"]["message"] == "ok", info
    assert [b["type"] for b in info[0]["backup"]] == ["full"], info
    assert info[0]["cipher"] == "aes-256-cbc"
    assert (hlab.repo / "backup" / "lemmy" / "backup.info").exists(), "the repository is bk1's folder"


def test_archiving_and_a_diff_backup_under_a_write_load(hlab: HostLab) -> None:
    db1 = hlab.db("db1")
    # (Archiving failed before the stanza existed: the primary came up before backup-init ran.)
    failed_before = db1.sql("SELECT failed_count FROM pg_stat_archiver")
    out = hlab.workdir / "writes-diff.log"
    proc = start_writer(hlab, "db1", out, "diff")
    try:
        time.sleep(1)
        r = bk_run(hlab, "--type=diff", "backup")
        for _ in range(2):
            wait_archived(db1)
    finally:
        stop(proc)
    assert r.returncode == 0, r.stdout + r.stderr
    # The backup was taken from the primary (pg1, db1), not from the standby.
    assert "backup start archive" in r.stdout or "diff backup size" in r.stdout, r.stdout
    acked = writeload.acknowledged(writeload.read_log(out))
    assert len(acked) > 50, f"the write load committed only {len(acked)} rows"
    assert db1.sql("SELECT failed_count FROM pg_stat_archiver") == failed_before, db1.log_tail()
    info = hlab.bk.info(hlab.bk_host)
    assert [b["type"] for b in info[0]["backup"]] == ["full", "diff"], info


def test_a_certificate_the_backup_machine_does_not_know_is_refused(hlab: HostLab) -> None:
    """Only the cluster's machines get in: a certificate of another CA, and one of the CA for a
    name bk1 does not list, are both refused by bk1's server; nothing reaches the repository."""
    from synth import backuptls

    db1 = hlab.db("db1")
    folder = hlab.workdir / "intruder"
    folder.mkdir(mode=0o755)
    other_ca_key, other_ca = backuptls.new_ca("other")
    own_ca_key = (hlab.secrets / "backup-tls-ca-key").read_bytes()
    own_ca = (hlab.secrets / "backup-tls-ca").read_bytes()
    cases = {
        "other-ca": backuptls.new_machine_cert(other_ca_key, other_ca, "db1", db1.address),
        "unlisted-name": backuptls.new_machine_cert(own_ca_key, own_ca, "app1", db1.address),
    }
    for name, (key, cert) in cases.items():
        key_file, cert_file = folder / f"{name}.key", folder / f"{name}.crt"
        key_file.write_bytes(key)
        cert_file.write_bytes(cert)
        for f in (key_file, cert_file):
            f.chmod(0o400)
            chown_pg(f)
        r = hlab.brs["db1"].run(
            db1.host,
            f"--repo1-host-cert-file={cert_file}",
            f"--repo1-host-key-file={key_file}",
            "--output=json",
            "info",
            timeout=120,
        )
        text = r.stdout + r.stderr
        assert r.returncode != 0 or '"status":{"code":0' not in text.replace(" ", ""), f"{name}: got in: {text}"
        assert "backup" not in text or "error" in text.lower(), f"{name}: {text}"


def test_the_backup_machine_down_loses_no_wal(hlab: HostLab) -> None:
    """bk1's pgBackRest down (bk1 restarting for maintenance): the primary keeps its WAL and
    archiving fails; once it is back every segment reaches the repository, none is skipped.
    (The server stopped, not the link cut: a refused connection fails at once, an unanswered one
    after pgBackRest's io-timeout of 60 s per attempt, which only makes the test slower.)"""
    db1 = hlab.db("db1")
    hlab.stop_server("bk1")
    out = hlab.workdir / "writes-down.log"
    try:
        proc = start_writer(hlab, "db1", out, "down")
        try:
            time.sleep(1)
            switched = [db1.sql("SELECT pg_walfile_name(pg_switch_wal())")]
            time.sleep(1)
            switched.append(db1.sql("SELECT pg_walfile_name(pg_switch_wal())"))
            got = db1.wait_for("SELECT failed_count > 0 FROM pg_stat_archiver", "t", timeout=90)
            assert got == "t", "archiving went on with the repository host unreachable"
        finally:
            stop(proc)
        # restore.sh's checks with the repository unreachable: refused, nothing changed. (pgBackRest
        # retries a refused connection for its io-timeout, 60 s, twice here: 5 s in this test.)
        before = sorted(p.name for p in db1.base.iterdir())
        r = db1.host.run(
            pg.as_pg(
                [
                    "bash",
                    str(SCRIPTS / "restore.sh"),
                    "--data-dir",
                    str(db1.data),
                    "--stanza",
                    "lemmy",
                    "--latest",
                    "--check-only",
                    "--",
                    *hlab.brs["db1"].command(),
                    "--io-timeout=5",
                ]
            ),
            check=False,
            timeout=180,
            env={"PATH": pg.SYS_PATH},
        )
        assert r.returncode == 1 and "cannot read the repository" in r.stderr, r.stdout + r.stderr
        assert sorted(p.name for p in db1.base.iterdir()) == before
    finally:
        hlab.start_server("bk1")
    last = wait_archived(db1, timeout=120)
    assert last > switched[-1]
    # Every segment from the first one switched while bk1 was away is in the archive.
    info = hlab.bk.info(hlab.bk_host)
    archive = info[0]["archive"][0]
    assert archive["min"] <= switched[0] and archive["max"] >= last, archive
    r = bk_run(hlab, "check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_after_a_promotion_the_new_primary_archives_and_is_backed_up(hlab: HostLab) -> None:
    db1, db2 = hlab.db("db1"), hlab.db("db2")
    wait_archived(db1)
    db1.kill9()
    r = hlab.lab.script(db2.host, "promote.sh", ["--host", str(db2.run_dir), "--timeout", "30"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert db2.wait_for("SELECT pg_is_in_recovery()", "f", timeout=30) == "f"
    db2.psql_run("CREATE TABLE after_promotion (id int PRIMARY KEY)", db="lemmy")
    db2.psql_run("INSERT INTO after_promotion SELECT generate_series(1, 50)", db="lemmy")
    closed = wait_archived(db2)
    assert closed.startswith("00000002"), f"db2 archives its own timeline: {closed}"
    # pgBackRest refuses a backup until the new timeline is in pg_control ("WAL timeline 2 does
    # not match pg_control timeline 1"): the first checkpoint after the promotion writes it.
    db2.sql("CHECKPOINT")
    # No change on bk1: the backup finds the primary among pg1 (db1, down) and pg2 (db2).
    r = bk_run(hlab, "--type=full", "backup")
    assert r.returncode == 0, r.stdout + r.stderr
    info = hlab.bk.info(hlab.bk_host)
    newest = info[0]["backup"][-1]
    assert newest["type"] == "full" and newest["archive"]["start"].startswith("00000002"), newest


def test_point_in_time_recovery_from_the_backup_machine(hlab: HostLab) -> None:
    """On db2 (the primary now): two known commits around a target; the restore through bk1
    returns exactly the rows before it, and keeps the old data directory."""
    db2 = hlab.db("db2")
    db2.psql_run("CREATE TABLE marks (id int PRIMARY KEY)", db="lemmy")
    db2.psql_run("INSERT INTO marks SELECT generate_series(1, 100)", db="lemmy")
    time.sleep(0.5)
    target = db2.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')")
    time.sleep(0.5)
    db2.psql_run("INSERT INTO marks SELECT generate_series(101, 200)", db="lemmy")
    db2.psql_run("DROP TABLE after_promotion", db="lemmy")
    wait_archived(db2)
    db2.stop()
    args = ["--data-dir", str(db2.data), "--stanza", "lemmy", "--finish-with", str(pg.PG_BIN), "--time", target]
    args += ["--credential", f"backup-cipher-pass={hlab.cipher}"]
    r = hlab.brs["db2"].script(db2.host, "restore.sh", args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(sorted(db2.base.glob("data.before-restore-*"))) == 1, "the data directory before is kept"
    db2.start(timeout=120)
    assert db2.wait_for("SELECT pg_is_in_recovery()", "f", timeout=120) == "f", db2.log_tail()
    assert db2.sql("SELECT count(*), min(id), max(id) FROM marks", db="lemmy") == "100|1|100"
    assert db2.sql("SELECT count(*) FROM after_promotion", db="lemmy") == "50", "the dropped table is back"
