"""Live test: one plain PostgreSQL machine grown to two under Patroni, every row kept.

tests/live/patroni-cluster.toml without db2 and db3, on 10.242.0.0/24: db1 is the one postgres
machine, so it runs plain `services.postgresql` (streaming mode settings, as tests/live/pg.py runs
it), with data in it; app1 is a backend writing to it all along. Then what the admin does:

1. `synth add-machine db2 --role postgres` (the real command, on a copy of the file): two postgres
   machines, so automatic failover: Patroni on db1 and db2, etcd on db1, db2 and fe1;
2. the deploy, in the order `synth plan` gives: the etcd members, then db1 (services.postgresql
   stops, patroni-prepare.sh sets nixpkgs' postgresql.conf link aside, Patroni takes the running
   database over as the cluster's first member), then db2 (Patroni clones db1 and streams).

Checked: the same database (system identifier) with every row (count and checksum of the seeded
table, every acknowledged write of the client that wrote through the switch) on the leader and on
the new replica; nothing deleted (the configuration link is kept aside); the backends' new
multi-host string and pict-rs's HAProxy write to the new cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth.cli import main
from synth.model import automatic_failover, etcd_members, parse
from tests.live import nixeval, writeload
from tests.live.failover import Writers, create_tables, recovered_at, require_engines
from tests.live.netns import Network
from tests.live.patroni import MODULES, PatroniLab, options
from tests.live.pg import PgLab

pytestmark = pytest.mark.live

HERE = Path(__file__).resolve().parent
SUBNET = "10.242.0.0/24"
SEED_ROWS = 50_000
CHECKSUM = "SELECT count(*) || ' ' || md5(string_agg(id || ':' || body, ',' ORDER BY id)) FROM lc_seed"


def single_machine_toml() -> str:
    """patroni-cluster.toml on this module's subnet, with db1 as its only postgres machine."""
    text = (HERE / "patroni-cluster.toml").read_text(encoding="utf-8").replace("10.247.0.", "10.242.0.")
    text = re.sub(r"\n\[machines\.db[23]\]\naddress = \"[^\"]+\"\nroles = \[\"postgres\"\]\n", "\n", text)
    assert "db2" not in text.split("[machines.db1]")[1], "db2 and db3 are left out"
    return text


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    require_engines()
    folder = Path(tempfile.mkdtemp(prefix="lcpat-grow-", dir="/tmp"))
    try:
        yield folder
    finally:
        if not os.environ.get("LC_KEEP_WORKDIR"):
            shutil.rmtree(folder, ignore_errors=True)


def backend_dsn_of(c: object, lab: PatroniLab) -> str:
    """The backend's libpq string as cluster C renders it (before the growth: db1 only)."""
    saved = lab.cluster
    lab.cluster = c  # type: ignore[assignment]
    try:
        return lab.backend_dsn("app1")
    finally:
        lab.cluster = saved


def test_one_plain_postgres_machine_grows_to_two_under_patroni_with_every_row(workdir: Path) -> None:
    toml = workdir / "admin" / "cluster.toml"
    toml.parent.mkdir()
    toml.write_text(single_machine_toml())
    before = parse(toml.read_text(), str(toml))
    assert not automatic_failover(before) and before.machines_with("postgres") == ["db1"]

    with Network(SUBNET, bridge="lcbr-t3", prefix="lct3-") as net:
        pg = PgLab(net, workdir, before)
        lab: PatroniLab | None = None
        try:
            # The single machine, plain PostgreSQL, with data.
            for name in ("app1", "fe1"):
                pg.host(name)
            db1 = pg.server("db1")
            pg.init_primary(db1)
            assert db1.opts["role"] == "primary" and not db1.opts.get("patroni", {}).get("enable")
            db1.sql(
                "CREATE TABLE lc_seed (id int PRIMARY KEY, body text);"
                f" INSERT INTO lc_seed SELECT i, md5(i::text) FROM generate_series(1, {SEED_ROWS}) i;"
                " ALTER TABLE lc_seed OWNER TO lemmy",
                db="lemmy",
            )
            seeded = db1.sql(CHECKSUM, db="lemmy")
            assert seeded.startswith(f"{SEED_ROWS} ")
            sysid = db1.system_identifier()

            # 1. synth add-machine db2 --role postgres.
            result = CliRunner().invoke(
                main,
                ["add-machine", "db2", "--role", "postgres", "--address", "10.242.0.32", "--cluster", str(toml)],
                catch_exceptions=False,
            )
            assert result.exit_code == 0, result.output
            after = parse(toml.read_text(), str(toml))
            assert automatic_failover(after) and etcd_members(after) == ["db1", "db2", "fe1"]
            assert "[machines.db2]" in toml.read_text() and "# " in toml.read_text(), "comments kept"

            # The same secrets (synth secrets init keeps the existing ones), the same machines.
            passwords = {
                "db_password": pg.db_password,
                "replication_password": pg.replication_password,
                "pictrs_db_password": pg.pictrs_password_file.read_text().strip(),
            }
            lab = PatroniLab(net, workdir, after, hosts=pg.hosts, passwords=passwords)
            db1.sql(
                "CREATE TABLE lc_writes (run text, n bigint, at timestamptz DEFAULT now(), PRIMARY KEY (run, n));"
                " ALTER TABLE lc_writes OWNER TO lemmy",
                db="lemmy",
            )
            # A backend as deployed before the growth (its string names db1 only) writes all along.
            run = f"grow-{time.monotonic_ns()}"
            log = workdir / f"{run}.log"
            writer = lab.start_writer("app1", backend_dsn_of(before, lab), log, run=run)
            try:
                deadline = time.monotonic() + 30
                while len(writeload.acknowledged(writeload.read_log(log))) < 50 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert len(writeload.acknowledged(writeload.read_log(log))) >= 50, writeload.read_log(log)[-3:]

                # 2. The deploy: the etcd members, then db1 (its database taken over), then db2.
                lab.start_etcd()
                lab.wait_etcd()
                switched = time.time()
                db1.stop()  # services.postgresql goes with the new configuration
                lab.start_patroni(["db1"], timeout=120)
                assert lab.wait_leader() == "db1"
                led = time.time()
                lab.wait_units("db1")
                lab.start_patroni(["db2"], wait=False)
                lab.wait_streaming(["db2"], timeout=120)
                lab.wait_units("db2")
                # The backends and pict-rs machines are deployed with the new cluster too.
                lab.start_proxy("app1")
                create_tables(lab, "db1")  # pict-rs's table (lemmy's exists)
                writers = Writers(lab, workdir).start()
                try:
                    writers.wait_acks(30, timeout=60)
                finally:
                    new_logs = writers.stop()
                deadline = time.monotonic() + 30
                while writeload.first_ack_after(writeload.read_log(log), time.time() - 1) is None:
                    assert time.monotonic() < deadline, "the old backend string does not write any more"
                    time.sleep(0.2)
            finally:
                writer.terminate()
                writer.wait(timeout=30)
            attempts = writeload.read_log(log)

            resumed = recovered_at(attempts, switched)
            assert resumed is not None and writeload.first_ack_after(attempts, led) is not None, (
                "the writes through db1 resumed once Patroni led"
            )
            print(
                f"\ngrowth: writes paused {writeload.longest_pause(attempts, switched):.1f}s while db1 moved to "
                f"Patroni (first write {resumed - switched:.1f}s after the stop)"
            )
            # Every row, on both members, in the same database.
            for name in ("db1", "db2"):
                assert lab.sql(name, "SELECT system_identifier FROM pg_control_system()") == sysid, (
                    f"{name}: not the database that was there"
                )
            acked = set(writeload.acknowledged(attempts))
            assert len(acked) > 50
            query = f"SELECT n FROM lc_writes WHERE run = '{run}'"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                on = {name: {int(x) for x in lab.sql(name, query, db="lemmy").split()} for name in ("db1", "db2")}
                seeds = {name: lab.sql(name, CHECKSUM, db="lemmy") for name in ("db1", "db2")}
                if all(acked <= rows for rows in on.values()) and set(seeds.values()) == {seeded}:
                    break
                time.sleep(0.5)
            for name in ("db1", "db2"):
                assert seeds[name] == seeded, f"{name}: the seeded rows changed: {seeds[name]} != {seeded}"
                missing = acked - on[name]
                assert not missing, f"{name}: {len(missing)} acknowledged rows missing: {sorted(missing)[:10]}"
            assert not any(writers.lost(new_logs).values()), "the new clients' rows are on the leader"
            # Nothing deleted: nixpkgs' configuration link kept aside; a replica with its slot.
            kept = lab.members["db1"].data / "postgresql.conf.before-patroni"
            assert kept.is_symlink() and kept.resolve() == (db1.conf_dir / "postgresql.conf").resolve()
            assert set(lab.sql("db1", "SELECT slot_name FROM pg_replication_slots").split()) == {"db2"}
            assert lab.sql("db2", "SELECT pg_is_in_recovery()") == "t"
            # The roles the plain machine had kept their passwords; Patroni's rewind role was added.
            roles = set(lab.sql("db1", "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'").split())
            assert {"lemmy", "pictrs", "replicator", "rewind", "postgres"} <= roles, roles
            hba = [ln for ln in (lab.members["db1"].data / "pg_hba.conf").read_text().splitlines() if ln[:1] != "#"]
            expected = nixeval.evaluate(MODULES / "postgres" / "hba.nix", options(after, "db1")["postgres"])
            assert [ln for ln in hba if ln] == expected, "Patroni's pg_hba lines are the module's"
        finally:
            if lab is not None:
                lab.stop_all()
            pg.stop_all()
