"""Live tests of backups and point-in-time recovery: Debian's pgBackRest with PostgreSQL 15.

tests/live/pg-cluster.toml on its own subnet (10.248.0.0/24, bridge lcbr-k1, namespaces lck1-),
with a [backup] section: a posix repository in the test's folder (Debian's pgBackRest 2.45 speaks
S3 only over TLS; the cluster's Garage is plain HTTP, which needs nixpkgs' 2.58). PostgreSQL's
archive_command and pgbackrest.conf are what the modules produce (tests/live/backup.py):
modules/backup/pgbackrest-settings.nix and modules/postgres/streaming-settings.nix evaluated on
synth's options; backups, checks and restores are the module's scripts
(modules/backup/scripts/backup-init.sh, restore.sh) through its wrapper (pgbackrest.sh).
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, require, require_root, require_tool
from tests.live import pg, writeload
from tests.live.backup import PGBACKREST, SCRIPTS, Pgbackrest
from tests.live.netns import Network
from tests.live.pg import PgLab, PgServer, chown_pg

pytestmark = pytest.mark.live

SUBNET = "10.248.0."


@dataclass
class BackupLab:
    lab: PgLab
    workdir: Path
    repo: Path
    cipher: Path
    brs: dict[str, Pgbackrest]

    def br(self, machine: str) -> Pgbackrest:
        return self.brs[machine]

    def db(self, machine: str) -> PgServer:
        return self.lab.servers[machine]


def cluster_text(repo: Path) -> str:
    text = pg.CLUSTER_TOML.read_text().replace("10.232.0.", SUBNET)
    return text + f'\n[backup]\nrepository = "posix"\npath = "{repo}"\nshared_mount = true\nfull_retention = 2\n'


@pytest.fixture(scope="module")
def blab() -> Iterator[BackupLab]:
    require_root()
    require((pg.PG_BIN / "postgres").exists(), f"PostgreSQL is not installed in {pg.PG_BIN}")
    require(PGBACKREST.exists(), "pgbackrest is not installed (scripts/install-system-deps.sh installs Debian's)")
    for tool in ("ip", "runuser", "jq", "nix-instantiate"):
        require_tool(tool)
    workdir = Path(tempfile.mkdtemp(prefix="lcbackup-", dir="/tmp"))
    workdir.chmod(0o755)
    repo = workdir / "repo"
    repo.mkdir(mode=0o750)
    chown_pg(repo)
    # A local pict-rs's snapshots live in the repository's folder too (pictrs-backup.sh): pgBackRest
    # works beside them.
    (repo / "pictrs-files" / "20261201T013000Z" / "files").mkdir(parents=True)
    cluster_file = workdir / "cluster.toml"
    cluster_file.write_text(cluster_text(repo))
    try:
        with Network(f"{SUBNET}0/24", bridge="lcbr-k1", prefix="lck1-") as net:
            lab = PgLab(net, workdir / "lab", pg.load_cluster(cluster_file))
            cipher = lab._secret("backup-cipher-pass", secrets.token_urlsafe(32))
            brs = {}
            for machine in ("db1", "db2"):
                srv = lab.server(machine)
                brs[machine] = Pgbackrest(lab.cluster, machine, srv.base / "pgbackrest", cipher, srv.data, srv.run_dir)
                srv.extra_opts = {"archiveCommand": brs[machine].archive_command}
            lab.host("app1")
            db1 = lab.servers["db1"]
            lab.init_primary(db1)
            yield BackupLab(lab, workdir, repo, cipher, brs)
            lab.stop_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def start_writer(b: BackupLab, out: Path, run: str) -> object:
    """tests/live/writeload.py on app1, committing numbered rows (RUN, n) to the primary all along."""
    b.db("db1").psql_run("CREATE TABLE IF NOT EXISTS lc_runs (run text, n bigint, PRIMARY KEY (run, n))", db="lemmy")
    b.db("db1").psql_run("ALTER TABLE lc_runs OWNER TO lemmy", db="lemmy")
    host = b.lab.hosts["app1"]
    dsn = b.lab.lemmy_conninfo("db1")
    return host.popen(
        [
            sys.executable,
            "-m",
            "tests.live.writeload",
            "--dsn",
            dsn,
            "--out",
            str(out),
            "--table",
            "lc_runs",
            "--run",
            run,
        ],
        env={"PATH": pg.SYS_PATH, "PGPASSFILE": str(b.lab.client_pgpass), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


def stop(proc: object) -> None:
    import subprocess

    assert isinstance(proc, subprocess.Popen)
    proc.terminate()
    proc.wait(timeout=20)


def wait_archived(srv: PgServer, timeout: float = 60) -> str:
    """Switch to a new WAL segment and wait until the one just closed is archived; its name."""
    closed = srv.sql("SELECT pg_walfile_name(pg_switch_wal())")
    got = srv.wait_for(f"SELECT last_archived_wal >= '{closed}' FROM pg_stat_archiver", "t", timeout=timeout)
    assert got == "t", (
        f"WAL {closed} not archived within {timeout}s: {got}; {srv.sql('SELECT * FROM pg_stat_archiver')}"
    )
    return closed


def restore(b: BackupLab, machine: str, *args: str) -> object:
    """lemmy-cluster-restore ARGS: restore.sh with the module's arguments (--finish-with: replay
    and promote, then stop cleanly, before postgresql.service starts the restored data)."""
    srv = b.db(machine)
    args = ("--data-dir", str(srv.data), "--stanza", "lemmy", "--finish-with", str(pg.PG_BIN), *args)
    args = (*args, "--credential", f"backup-cipher-pass={b.cipher}")
    return b.br(machine).script(srv.host, "restore.sh", list(args))


def asides(srv: PgServer) -> list[Path]:
    return sorted(srv.base.glob("data.before-restore-*"))


# --------------------------------------------------------------------------- tests


def test_the_settings_are_the_modules(blab: BackupLab) -> None:
    db1 = blab.db("db1")
    assert db1.sql("SHOW archive_mode") == "on"
    command = db1.sql("SHOW archive_command")
    assert "pgbackrest.sh" in command and "archive-push" in command and "--stanza=lemmy" in command
    conf = blab.br("db1").conf.read_text()
    assert f"repo1-path={blab.repo}" in conf and "repo1-cipher-type=aes-256-cbc" in conf
    assert "cipher-pass" not in conf.replace("cipher-pass-file", ""), "the passphrase is never in the config"


def test_init_creates_the_stanza_and_a_first_full_backup(blab: BackupLab) -> None:
    db1 = blab.db("db1")
    r = blab.br("db1").script(db1.host, "backup-init.sh", ["--stanza", "lemmy"])
    assert r.returncode == 0, r.stdout + r.stderr
    info = blab.br("db1").info(db1.host)
    assert info[0]["status"]["message"] == "ok", info
    assert [bk["type"] for bk in info[0]["backup"]] == ["full"]
    assert info[0]["cipher"] == "aes-256-cbc"
    again = blab.br("db1").script(db1.host, "backup-init.sh", ["--stanza", "lemmy"])
    assert again.returncode == 0 and "ready" in again.stdout, again.stdout + again.stderr
    assert len(blab.br("db1").info(db1.host)[0]["backup"]) == 1, "a second init takes no second backup"
    # The repository is encrypted: no WAL file in it reads as PostgreSQL's own.
    wal = [p for p in (blab.repo / "archive").rglob("*") if p.is_file() and "-" in p.name and "history" not in p.name]
    assert wal, "nothing archived"


def test_archiving_keeps_up_with_a_write_load(blab: BackupLab) -> None:
    db1 = blab.db("db1")
    out = blab.workdir / "writes-archive.log"
    proc = start_writer(blab, out, "archive")
    try:
        time.sleep(3)
        for _ in range(3):
            wait_archived(db1)
    finally:
        stop(proc)
    acked = writeload.acknowledged(writeload.read_log(out))
    assert len(acked) > 50, f"the write load committed only {len(acked)} rows"
    failed = db1.sql("SELECT failed_count FROM pg_stat_archiver")
    assert failed == "0", f"archive_command failed {failed} times: {db1.log_tail()}"
    r = blab.br("db1").run(db1.host, "check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_diff_backup_under_load(blab: BackupLab) -> None:
    db1 = blab.db("db1")
    out = blab.workdir / "writes-diff.log"
    proc = start_writer(blab, out, "diff")
    try:
        time.sleep(1)
        r = blab.br("db1").run(db1.host, "--type=diff", "backup")
    finally:
        stop(proc)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [bk["type"] for bk in blab.br("db1").info(db1.host)[0]["backup"]] == ["full", "diff"]


def test_refusals_change_nothing(blab: BackupLab) -> None:
    db1 = blab.db("db1")
    before = sorted(p.name for p in db1.base.iterdir())
    # PostgreSQL still runs.
    r = restore(blab, "db1", "--latest")
    assert r.returncode == 1 and "PostgreSQL is running" in r.stderr, r.stdout + r.stderr
    db1.stop()
    try:
        # A time before the first backup ended.
        r = restore(blab, "db1", "--time", "2001-01-01 00:00:00+00")
        assert r.returncode == 1 and "before the end of the first backup" in r.stderr, r.stdout + r.stderr
        # A wrong passphrase.
        wrong = blab.lab._secret("wrong-cipher-pass", "not-the-passphrase")
        srv = db1
        args = ["--data-dir", str(srv.data), "--stanza", "lemmy", "--latest"]
        cmd = blab.br("db1").command(wrong)
        r2 = srv.host.run(
            pg.as_pg(["bash", str(SCRIPTS / "restore.sh"), *args, "--", *cmd]),
            check=False,
            timeout=120,
            env={"PATH": pg.SYS_PATH},
        )
        assert r2.returncode == 1 and "cannot read the repository" in r2.stderr, r2.stdout + r2.stderr
        # An unreachable repository (its folder gone away, as an unmounted share).
        moved = blab.repo.with_name("repo.away")
        blab.repo.rename(moved)
        try:
            r3 = restore(blab, "db1", "--latest")
        finally:
            moved.rename(blab.repo)
        assert r3.returncode == 1 and "cannot read the repository" in r3.stderr, r3.stdout + r3.stderr
        after = sorted(p.name for p in db1.base.iterdir())
        assert after == before, f"a refused restore changed {db1.base}: {before} -> {after}"
    finally:
        db1.start()


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under FOLDER (relative name) and the sha256 of its content."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_a_time_after_the_end_of_the_archive_is_refused_before_anything_changes(blab: BackupLab) -> None:
    """A target after the newest archived WAL segment reached the repository: no archived commit
    can take the replay there. Refused at the checks (before this, the restore swapped the data
    directory and then failed at the replay: "recovery ended before configured recovery target")."""
    db1 = blab.db("db1")
    out = blab.workdir / "writes-end.log"
    proc = start_writer(blab, out, "end")
    try:
        time.sleep(1)
    finally:
        stop(proc)
    wait_archived(db1)
    rows = db1.sql("SELECT count(*) FROM lc_runs WHERE run = 'end'", db="lemmy")
    assert int(rows) > 0, "the writer committed nothing"
    db1.stop()
    try:
        # The newest archived segment and when it reached the (encrypted) repository: its file's mtime.
        (archive,) = [a for a in blab.br("db1").info(db1.host)[0]["archive"] if a.get("max")]
        newest = archive["max"]
        (segment,) = (blab.repo / "archive" / "lemmy" / archive["id"] / newest[:16]).glob(f"{newest}-*")
        archived = int(segment.stat().st_mtime)
        # A minute after it, but in the past (a future time is refused by an earlier check): when
        # the segment is younger than that, a time just after it, once that has passed.
        target_epoch = min(archived + 60, int(time.time()) - 1)
        while target_epoch <= archived:
            time.sleep(0.2)
            target_epoch = min(archived + 60, int(time.time()) - 1)
        target = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(target_epoch))
        listing = sorted(p.name for p in db1.base.iterdir())
        digest = tree_digest(db1.data)
        r = restore(blab, "db1", "--time", target)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"--time {target} is after the end of the archive" in r.stderr, r.stdout + r.stderr
        at = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(archived))
        assert f"its newest WAL segment ({newest}) was archived at {at}" in r.stderr, r.stderr
        assert "--latest" in r.stderr, r.stderr
        assert sorted(p.name for p in db1.base.iterdir()) == listing, "a refused restore changed the folder"
        assert tree_digest(db1.data) == digest, "a refused restore changed the data directory"
    finally:
        db1.start()
    assert db1.sql("SELECT count(*) FROM lc_runs WHERE run = 'end'", db="lemmy") == rows


def test_point_in_time_recovery_between_two_commits(blab: BackupLab) -> None:
    db1 = blab.db("db1")
    db1.psql_run("CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())", db="lemmy")
    out = blab.workdir / "writes-pitr.log"
    proc = start_writer(blab, out, "pitr")
    try:
        time.sleep(1)
        db1.psql_run("INSERT INTO marks (id) SELECT g FROM generate_series(1, 100) g", db="lemmy")
        time.sleep(0.5)
        target = db1.sql("SELECT clock_timestamp()")
        target_epoch = float(db1.sql(f"SELECT extract(epoch FROM '{target}'::timestamptz)"))
        time.sleep(0.5)
        db1.psql_run("INSERT INTO marks (id) SELECT g FROM generate_series(101, 200) g", db="lemmy")
        time.sleep(1)
    finally:
        stop(proc)
    wait_archived(db1)
    attempts = writeload.read_log(out)
    db1.stop()
    r = restore(blab, "db1", "--time", target)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(asides(db1)) == 1, "the data directory before the restore is kept"
    assert (asides(db1)[0] / "PG_VERSION").exists()
    db1.start(timeout=120)
    got = db1.wait_for("SELECT pg_is_in_recovery()", "f", timeout=120)
    assert got == "f", f"the restored server did not promote: {got}\n{db1.log_tail()}"
    assert db1.sql("SELECT count(*), min(id), max(id) FROM marks", db="lemmy") == "100|1|100"
    rows = {int(x) for x in db1.sql("SELECT n FROM lc_runs WHERE run = 'pitr'", db="lemmy").split()}
    # Every write acknowledged before the target is there, and none that was sent after it.
    before = {a.n for a in attempts if a.ok and a.at < target_epoch}
    started_after = {a.n for i, a in enumerate(attempts) if i > 0 and attempts[i - 1].at > target_epoch}
    assert before <= rows, f"{len(before - rows)} writes acknowledged before the target are missing"
    assert not rows & started_after, f"{len(rows & started_after)} writes sent after the target are there"


def test_latest_after_the_data_directory_is_gone(blab: BackupLab) -> None:
    db1 = blab.db("db1")
    # The restore above promoted on a new timeline: a new backup for it, then writes.
    r = blab.br("db1").run(db1.host, "--type=full", "backup")
    assert r.returncode == 0, r.stdout + r.stderr
    out = blab.workdir / "writes-latest.log"
    proc = start_writer(blab, out, "latest")
    try:
        time.sleep(2)
    finally:
        stop(proc)
    wait_archived(db1)
    acked = writeload.acknowledged(writeload.read_log(out))
    last = max(acked)
    db1.kill9()
    # The disk is lost: the data directory is gone (moved away here, to look at nothing else).
    lost = db1.base / "data.lost"
    db1.data.rename(lost)
    r = restore(blab, "db1", "--latest")
    assert r.returncode == 0, r.stdout + r.stderr
    db1.start(timeout=120)
    got = db1.wait_for("SELECT pg_is_in_recovery()", "f", timeout=120)
    assert got == "f", f"not promoted: {got}\n{db1.log_tail()}"
    rows = {int(x) for x in db1.sql("SELECT n FROM lc_runs WHERE run = 'latest'", db="lemmy").split()}
    missing = [n for n in acked if n not in rows]
    assert not missing, f"{len(missing)} acknowledged writes lost (last acknowledged: {last})"


@dataclass
class _Result:
    rc: int
    stdout: str
    stderr: str


@dataclass
class NsHost:
    """The one method of a testinfra Host the checks use, run in a namespace host."""

    host: object

    def run(self, command: str) -> _Result:
        from tests.live.netns import Host

        assert isinstance(self.host, Host)
        r = self.host.run(["bash", "-c", command], check=False, timeout=120, env={"PATH": pg.SYS_PATH})
        return _Result(r.returncode, r.stdout, r.stderr)


def test_verify_reports_the_ages_of_the_last_backup_and_the_last_archived_wal(blab: BackupLab) -> None:
    import shlex

    from synth.checks.backup import backup_checks
    from synth.checks.postgres import PsqlAccess

    db1 = blab.db("db1")
    access = PsqlAccess(psql=str(pg.PG_BIN / "psql"), socket_dir=str(db1.run_dir))
    command = shlex.join(pg.as_pg(blab.br("db1").command()))
    wait_archived(db1)
    results = backup_checks(NsHost(db1.host), access=access, pgbackrest=command)
    assert [r.name for r in results] == ["backup: archive", "backup: last backup"]
    assert all(r.ok for r in results), results
    assert "last archived WAL" in results[0].detail and " ago" in results[0].detail
    assert "the last good backup ended" in results[1].detail
    # A day later with no new backup (the timers stopped): the check fails and says why.
    late = backup_checks(NsHost(db1.host), access=access, pgbackrest=command, now=time.time() + 3 * 86400)
    assert not late[1].ok and "do the backup timers run?" in late[1].detail, late
    # Archiving that fails (the repository gone) is reported.
    moved = blab.repo.with_name("repo.away")
    blab.repo.rename(moved)
    try:
        db1.psql_run("SELECT pg_switch_wal()")
        db1.psql_run("CREATE TABLE IF NOT EXISTS lc_nudge (x int); INSERT INTO lc_nudge VALUES (1)", db="lemmy")
        db1.psql_run("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        failing = backup_checks(NsHost(db1.host), access=access, pgbackrest=command)
        while failing[0].ok and time.monotonic() < deadline:
            time.sleep(1)
            failing = backup_checks(NsHost(db1.host), access=access, pgbackrest=command)
    finally:
        moved.rename(blab.repo)
    assert not failing[0].ok and "archiving fails" in failing[0].detail, failing
    assert not failing[1].ok and "cannot read the repository" in failing[1].detail, failing
    wait_archived(db1, timeout=120)  # it catches up once the repository is back


# --------------------------------------------------------------------------- synth over SSH


def shims(b: BackupLab, folder: Path) -> Path:
    """What NixOS puts on db1's PATH, for root's SSH sessions: the module's tools
    (lemmy-cluster-pgbackrest, lemmy-cluster-restore: its scripts with the arguments
    modules/backup/default.nix gives them, the test's paths), and stand-ins for what systemd and
    NixOS's psql do here (systemctl start/stop postgresql.service: pg_ctl on db1's data directory,
    as postgresql.service runs it; psql: db1's socket folder)."""
    import shlex

    from tests.live.backup import PGBACKREST as BIN

    srv = b.db("db1")
    br = b.br("db1")
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = [
        "bash", str(SCRIPTS / "pgbackrest.sh"), "--bin", str(BIN), "--cipher-pass-file", str(b.cipher),
        "--run-as", "postgres", "--", f"--config={br.conf}",
    ]  # fmt: skip
    tools = {
        "lemmy-cluster-pgbackrest": f'exec {shlex.join(wrapper)} "$@"',
        "lemmy-cluster-restore": (
            f"exec bash {SCRIPTS / 'restore.sh'} --data-dir {srv.data} --stanza lemmy --owner postgres "
            f'--finish-with {pg.PG_BIN} --credential backup-cipher-pass={b.cipher} "$@" -- {shlex.join(wrapper)}'
        ),
        "psql": f'exec {pg.PG_BIN / "psql"} -h {srv.run_dir} "$@"',
        "systemctl": (
            'case "$1 $2" in\n'
            f'"stop postgresql.service") exec runuser -u postgres -- {pg.PG_BIN / "pg_ctl"} stop -D {srv.data}'
            " -m fast -w ;;\n"
            f'"start postgresql.service") ln -sfn {srv.conf_dir / "postgresql.conf"} {srv.data / "postgresql.conf"}\n'
            f"  exec runuser -u postgres -- {pg.PG_BIN / 'pg_ctl'} start -D {srv.data} -w -t 300"
            f" -l {srv.base / 'pg_ctl.log'} ;;\n"
            '*) echo "systemctl stand-in: $*" >&2; exit 2 ;;\nesac'
        ),
    }
    for name, body in tools.items():
        path = folder / name
        path.write_text(f"#!/bin/bash\nset -euo pipefail\n{body}\n")
        path.chmod(0o755)
    return folder


def test_synth_backup_and_restore_over_ssh(blab: BackupLab) -> None:
    """synth backup --now and synth restore --to TIME --yes, over real SSH to db1, run the module's
    tools there; the cluster file names db1 as its only postgres machine."""
    import subprocess

    from tests.live.ssh import SshKeys, start_sshd

    db1 = blab.db("db1")
    folder = blab.workdir / "ssh"
    keys = SshKeys.create(folder)
    path = shims(blab, folder / "bin")
    start_sshd(db1.host, keys, folder, extra=[f"SetEnv PATH={path}:{pg.SYS_PATH}"])
    text = cluster_text(blab.repo)
    for name in ("db2", "db3"):
        text = text.replace(f'[machines.{name}]\naddress = "{SUBNET}3{name[-1]}"\nroles = ["postgres"]\n', "")
    text = text.replace("shared_mount = true\n", "")
    cluster_file = blab.workdir / "ssh-cluster.toml"
    cluster_file.write_text(text)
    ssh = ["-i", str(keys.client_key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]

    def synth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "synth", *args, "--cluster", str(cluster_file), *ssh],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            cwd=ROOT,
        )

    r = synth("backup", "--now", "--type", "diff")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "db1: taking a diff backup" in r.stdout and "diff" in r.stdout.split("read on db1:")[1], r.stdout
    assert "last archived WAL" in r.stdout, r.stdout

    db1.psql_run("CREATE TABLE ssh_marks (id int PRIMARY KEY)", db="lemmy")
    db1.psql_run("INSERT INTO ssh_marks SELECT generate_series(1, 10)", db="lemmy")
    time.sleep(0.5)
    target = db1.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00:00')")
    time.sleep(0.5)
    db1.psql_run("DROP TABLE ssh_marks", db="lemmy")
    wait_archived(db1)

    # A time before the first backup: refused at the check, nothing changed, PostgreSQL still up.
    r = synth("restore", "--to", "2001-01-01 00:00:00+00:00", "--yes")
    assert r.returncode == 1 and "nothing was changed" in r.stderr, r.stdout + r.stderr
    assert db1.sql("SELECT 1") == "1"

    r = synth("restore", "--to", target, "--yes")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert db1.sql("SELECT count(*) FROM ssh_marks", db="lemmy") == "10", "the dropped table is back"
        assert db1.sql("SELECT pg_is_in_recovery()") == "f"
        assert len(asides(db1)) >= 2, "every restore keeps the data directory it replaced"
        assert "[5/5] db1: a full backup" in r.stdout, r.stdout
    finally:
        # The server the stand-in systemctl started (not the lab's process): stop it here.
        subprocess.run(
            pg.as_pg([str(pg.PG_BIN / "pg_ctl"), "stop", "-D", str(db1.data), "-m", "fast", "-w"]),
            capture_output=True,
            check=False,
        )
