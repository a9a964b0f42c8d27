"""Backup figures for `make bench` (section "backup"): Debian's pgBackRest 2.45 and PostgreSQL 15.

db1 of tests/live/pg-cluster.toml on the backup tests' subnet (10.248.0.0/24), with the [backup]
of tests/live/test_backup.py (a posix repository in the benchmark's folder, encrypted, zst level 3,
process-max 2: what modules/backup/pgbackrest-settings.nix gives), run as the module runs it:

  1. a full backup of a pgbench database (pgbench -i -s LC_BENCH_BACKUP_SCALE, default 30:
     about 450 MB): seconds, and MB/s of database size; the repository's size beside it;
  2. lemmy-cluster-restore --latest of that database (restore.sh with --finish-with: the restore,
     the replay of the archive and the promotion, the clean stop): seconds and MB/s;
  3. the archive's RPO under pgbench (8 clients, 30 s, TPC-B-like): every 100 ms the current WAL
     position and the last archived segment; at each sample the age of the oldest commit not yet
     in the repository (the first moment the WAL passed the end of the last archived segment),
     p50, p99 and the maximum. archive_timeout (60 s) only matters on a quiet database.

Needs root, iproute2, PostgreSQL (pgbench) and pgbackrest.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.live import pg
from tests.live.backup import PGBACKREST, Pgbackrest
from tests.live.netns import Network
from tests.live.pg import PgLab, PgServer, chown_pg

Row = tuple[str, str, str]
SCALE = int(os.environ.get("LC_BENCH_BACKUP_SCALE", "30"))
SUBNET = "10.248.0."
SEGMENT = 16 * 1024 * 1024


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def segment_end(walfile: str) -> int:
    """The WAL position just after segment WALFILE (timeline, log, segment: 8 hex digits each)."""
    log, seg = int(walfile[8:16], 16), int(walfile[16:24], 16)
    return (log * 0x100 + seg + 1) * SEGMENT


def _pgbench(srv: PgServer, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    cmd = pg.as_pg([srv.tool("pgbench"), "-h", str(srv.run_dir), *args, "lemmy"])
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {r.stderr[-400:]}")
    return r


def rpo_under_pgbench(srv: PgServer, seconds: int = 30) -> dict[str, float]:
    samples: list[tuple[float, int, str]] = []  # (time, current lsn, last archived segment)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            r = srv.psql_run(
                "SELECT pg_current_wal_lsn(), coalesce(last_archived_wal, '') FROM pg_stat_archiver", check=False
            )
            if r.returncode == 0 and "|" in r.stdout:
                cur, wal = r.stdout.strip().split("|")
                samples.append((time.time(), lsn(cur), wal))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        _pgbench(srv, "-c", "8", "-j", "2", "-T", str(seconds), "-n", timeout=seconds + 120)
    finally:
        stop.set()
        t.join(timeout=10)
    ages: list[float] = []
    for i, (now, cur, wal) in enumerate(samples):
        if ".partial" in wal or ".backup" in wal or ".history" in wal or len(wal) != 24:
            ages.append(ages[-1] if ages else 0.0)
            continue
        end = segment_end(wal)
        if cur <= end:
            ages.append(0.0)
            continue
        # The first sample at which the WAL had passed the archived end: the oldest unarchived commit.
        first = next((ts for ts, c, _ in samples[: i + 1] if c > end), now)
        ages.append(now - first)
    return {
        "samples": float(len(ages)),
        "p50_s": pct(ages, 50),
        "p99_s": pct(ages, 99),
        "max_s": max(ages, default=float("nan")),
    }


def _measure(
    srv: PgServer, taker: Pgbackrest, taker_host: Any, br: Pgbackrest, cipher: Path
) -> tuple[list[Row], dict[str, Any]]:
    """The three figures on SRV: a full backup taken by TAKER (in TAKER_HOST's namespace), the RPO,
    and a restore --latest on SRV through BR (the module's restore.sh)."""
    rows: list[Row] = []
    figures: dict[str, Any] = {"scale": SCALE}
    _pgbench(srv, "-i", "-q", "-s", str(SCALE))
    size = int(srv.sql("SELECT sum(pg_database_size(datname)) FROM pg_database"))
    mb = size / 1e6
    t0 = time.monotonic()
    r = taker.run(taker_host, "--type=full", "backup", timeout=3600)
    backup_s = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"backup: {r.stderr[-400:]}")
    info = taker.info(taker_host)[0]["backup"][-1]["info"]
    stored = int(info["repository"]["delta"]) / 1e6
    figures["backup"] = {"seconds": backup_s, "database_mb": mb, "stored_mb": stored}
    rows.append(
        (
            f"full backup, pgbench -s {SCALE} ({mb:.0f} MB)",
            f"{backup_s:.1f} s, {mb / backup_s:.0f} MB/s (stored: {stored:.0f} MB, zst 3, encrypted)",
            "",
        )
    )
    rpo = rpo_under_pgbench(srv)
    figures["archive_rpo"] = rpo
    rows.append(
        (
            "archive RPO under pgbench (8 clients): commits not yet archived",
            f"p50 {rpo['p50_s']:.2f} s, p99 {rpo['p99_s']:.2f} s, max {rpo['max_s']:.2f} s",
            "p99 < 60 s (archive_timeout)",
        )
    )
    srv.psql_run("SELECT pg_switch_wal()")
    time.sleep(2)
    srv.stop()
    t0 = time.monotonic()
    r = br.script(
        srv.host,
        "restore.sh",
        [
            "--data-dir",
            str(srv.data),
            "--stanza",
            "lemmy",
            "--latest",
            "--finish-with",
            str(pg.PG_BIN),
            "--credential",
            f"backup-cipher-pass={cipher}",
        ],
        timeout=3600,
    )
    restore_s = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"restore: {r.stderr[-400:]}")
    figures["restore"] = {"seconds": restore_s, "database_mb": mb}
    rows.append(
        (
            f"restore --latest (restore, replay, promote), {mb:.0f} MB",
            f"{restore_s:.1f} s, {mb / restore_s:.0f} MB/s",
            "",
        )
    )
    return rows, figures


def _require() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("needs root (network namespaces)")
    if not PGBACKREST.exists() or not (pg.PG_BIN / "pgbench").exists():
        raise RuntimeError("needs pgbackrest and pgbench (scripts/install-system-deps.sh)")


def bench_backup(results: dict[str, Any]) -> list[Row]:
    _require()
    workdir = Path(tempfile.mkdtemp(prefix="lcbench-backup-", dir="/tmp"))
    workdir.chmod(0o755)
    repo = workdir / "repo"
    repo.mkdir(mode=0o750)
    chown_pg(repo)
    toml = workdir / "cluster.toml"
    toml.write_text(
        pg.CLUSTER_TOML.read_text().replace("10.232.0.", SUBNET)
        + f'\n[backup]\nrepository = "posix"\npath = "{repo}"\nshared_mount = true\n'
    )
    try:
        with Network(f"{SUBNET}0/24", bridge="lcbr-k1", prefix="lck1-") as net:
            lab = PgLab(net, workdir / "lab", pg.load_cluster(toml))
            try:
                cipher = lab._secret("backup-cipher-pass", secrets.token_urlsafe(32))
                srv = lab.server("db1")
                br = Pgbackrest(lab.cluster, "db1", srv.base / "pgbackrest", cipher, srv.data, srv.run_dir)
                srv.extra_opts = {"archiveCommand": br.archive_command}
                lab.init_primary(srv)
                r = br.run(srv.host, "stanza-create")
                if r.returncode != 0:
                    raise RuntimeError(f"stanza-create: {r.stderr}")
                rows, figures = _measure(srv, br, srv.host, br, cipher)
            finally:
                lab.stop_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["backup"] = figures
    return rows


def bench_backup_host(results: dict[str, Any]) -> list[Row]:
    """The same figures with the repository on a backup machine (bk1), over pgBackRest's TLS: the
    backup taken on bk1 from db1 through db1's server, archiving and the restore through bk1's
    (tests/live/test_backup_host.py's set-up, on its subnet)."""
    from tests.live import test_backup_host as th

    _require()
    workdir = Path(tempfile.mkdtemp(prefix="lcbench-backuphost-", dir="/tmp"))
    workdir.chmod(0o755)
    repo = workdir / "repo"
    repo.mkdir(mode=0o750)
    chown_pg(repo)
    toml = workdir / "cluster.toml"
    toml.write_text(th.cluster_text(repo))
    made = th.synth(toml, "secrets", "init")
    if made.returncode != 0:
        raise RuntimeError(f"secrets init: {made.stderr}")
    secrets_dir = workdir / "secrets"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Network(f"{th.SUBNET}0/24", bridge="lcbr-k3", prefix="lck3-") as net:
            lab = PgLab(net, workdir / "lab", pg.load_cluster(toml))
            try:
                # db2 is named in bk1's configuration: its pgBackRest server runs, its PostgreSQL
                # not (a standby stopped); later the server goes too (the machine unreachable).
                cipher, brs, bk, bk_host = th.lab_machines(lab, workdir, secrets_dir)
                srv, br = lab.servers["db1"], brs["db1"]
                db2_server = brs["db2"].server(lab.servers["db2"].host)
                procs += [bk.server(bk_host), br.server(srv.host), db2_server]
                lab.init_primary(srv)
                r = bk.run(bk_host, "stanza-create")
                if r.returncode != 0:
                    raise RuntimeError(f"stanza-create: {r.stderr}")
                rows, figures = _measure(srv, bk, bk_host, br, cipher)
                # What an unreachable postgres machine costs each backup: pgBackRest tries every
                # pgN host; a refused TLS connection is retried until io-timeout (60 s).
                srv.start()
                srv.wait_for("SELECT pg_is_in_recovery()", "f", timeout=60)
                times = {}
                for state in ("answering", "unreachable"):
                    if state == "unreachable":
                        db2_server.terminate()
                        db2_server.wait(timeout=20)
                    t0 = time.monotonic()
                    r = bk.run(bk_host, "--type=incr", "backup", timeout=900)
                    times[state] = time.monotonic() - t0
                    if r.returncode != 0:
                        raise RuntimeError(f"incr backup ({state}): {r.stderr[-400:]}")
                figures["incr_backup_s"] = times
                rows.append(
                    (
                        "incremental backup, the standby's pgBackRest answering / unreachable",
                        f"{times['answering']:.1f} s / {times['unreachable']:.1f} s",
                        "",
                    )
                )
            finally:
                for p in procs:
                    p.terminate()
                lab.stop_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["backup_host"] = figures
    return [(f"[backup machine, TLS] {a}", b, c) for a, b, c in rows]


SECTIONS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "backup": bench_backup,
    "backup-host": bench_backup_host,
}
