"""Live test of `synth promote` over real SSH against real PostgreSQL in network namespaces.

db1 (primary) and db2 (replica) of tests/live/pg-cluster.toml run as the postgres module would
run them (tests/live/pg.py); db2 runs sshd. The remote commands are the module's: the recovery
check is psql, the promotion is modules/postgres/scripts/promote.sh (what lemmy-cluster-pg-promote
wraps), both given to synth with the paths of this test machine instead of the NixOS ones.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from synth.model import load
from tests.conftest import require, require_root, require_tool
from tests.live import pg
from tests.live.netns import Network
from tests.live.pg import PgLab
from tests.live.ssh import SshKeys, start_sshd
from tests.live.staged import MODULES

pytestmark = pytest.mark.live


@dataclass
class Promote:
    lab: PgLab
    keys: SshKeys
    workdir: Path
    cluster_file: Path

    def remote_commands(self, machine: str) -> list[str]:
        srv = self.lab.servers[machine]
        psql = pg.PG_BIN / "psql"
        check = f"runuser -u postgres -- {psql} -h {srv.run_dir} -p 5432 -XAtc 'SELECT pg_is_in_recovery()'"
        promote = (
            f"runuser -u postgres -- bash {MODULES}/postgres/scripts/promote.sh "
            f"--host {srv.run_dir} --port 5432 --bin-dir {pg.PG_BIN} --slots db1"
        )
        return ["--check-command", check, "--promote-command", promote]

    def synth(self, *args: str) -> subprocess.CompletedProcess[str]:
        ssh = ["-i", str(self.keys.client_key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return subprocess.run(
            [sys.executable, "-m", "synth", *args, "--cluster", str(self.cluster_file), *ssh],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )


@pytest.fixture(scope="module")
def promote_lab() -> Iterator[Promote]:
    require_root()
    require((pg.PG_BIN / "postgres").exists(), f"PostgreSQL is not installed in {pg.PG_BIN}")
    for tool in ("ip", "runuser", "ssh", "ssh-keygen"):
        require_tool(tool)
    workdir = Path(tempfile.mkdtemp(prefix="lcpromote-", dir="/tmp"))
    workdir.chmod(0o755)
    try:
        # pg-cluster.toml on a subnet, bridge and namespace prefix of its own, so that this module
        # runs beside test_postgres.py (make test runs test files in parallel).
        cluster_file = workdir / "cluster.toml"
        cluster_file.write_text(pg.CLUSTER_TOML.read_text().replace("10.232.0.", "10.246.0."))
        with Network("10.246.0.0/24", bridge="lcbr-pm", prefix="lcm-") as net:
            lab = PgLab(net, workdir / "lab", pg.load_cluster(cluster_file))
            for machine in ("db1", "db2", "app1"):
                lab.host(machine)
            keys = SshKeys.create(workdir / "ssh")
            start_sshd(lab.hosts["db2"], keys, workdir / "ssh")
            lab.init_primary(lab.server("db1"))
            r = lab.bootstrap(lab.server("db2"))
            assert r.returncode == 0, r.stderr
            lab.servers["db2"].write_config(lab.cluster)
            lab.servers["db2"].start()
            assert lab.servers["db2"].in_recovery()
            yield Promote(lab, keys, workdir, cluster_file)
            lab.stop_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_promote_a_healthy_replica(promote_lab: Promote) -> None:
    lab = promote_lab.lab
    lab.servers["db1"].kill9()  # the primary is lost
    before = promote_lab.cluster_file.read_text()
    r = promote_lab.synth("promote", "db2", *promote_lab.remote_commands("db2"))
    assert r.returncode == 0, f"expected exit 0, got {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "db2: healthy standby; promoting" in r.stdout, r.stdout
    assert "promote: promoted to primary" in r.stdout, "the promote script's own report is shown"
    assert not lab.servers["db2"].in_recovery(), "db2 accepts writes"
    slots = lab.servers["db2"].sql("SELECT string_agg(slot_name, ',') FROM pg_replication_slots")
    assert slots == "db1", f"db2 keeps a slot for db1 to rejoin: expected 'db1', got {slots!r}"
    # cluster.toml follows, comments kept; hosts/ regenerated with db2 as the primary.
    after = promote_lab.cluster_file.read_text()
    assert 'primary = "db2"' in after and 'primary = "db1"' not in after
    assert after.replace('primary = "db2"', 'primary = "db1"') == before, "nothing else in the file changed"
    assert load(promote_lab.cluster_file).postgres.primary == "db2"
    db2_module = (promote_lab.workdir / "hosts" / "db2" / "default.nix").read_text()
    assert 'role = "primary";' in db2_module
    assert "1. postgres-primary: db2" in r.stdout, "the deploy order starts with the new primary"
    assert "app1" in r.stdout.split("Deploy next", 1)[1], "the backend is in the list"


def test_promoted_machine_restarts_before_its_new_configuration_is_deployed(promote_lab: Promote) -> None:
    """db2 was promoted but still runs the replica configuration (primary: db1, which is dead).

    Its bootstrap unit runs again at every start; promote.sh's marker lets db2 start as the primary
    it now is. An old primary has no marker and is refused, even when its configured primary cannot
    be reached (a partition must not let it accept writes)."""
    lab = promote_lab.lab
    db1, db2 = lab.servers["db1"], lab.servers["db2"]
    assert (db2.data / "lemmy-cluster-promoted").exists(), "promote.sh leaves its marker"
    r = lab.bootstrap(db2)  # the module's lemmy-cluster-pg-bootstrap, replica-of-db1 arguments
    assert r.returncode == 0, f"expected exit 0, got {r.returncode}: {r.stdout}{r.stderr}"
    assert "was promoted to primary (promote.sh)" in r.stdout, r.stdout
    db2.stop()
    db2.start()
    assert not db2.in_recovery(), "db2 comes back as the primary"

    # db1, the old primary, configured as a replica of db2 while db2 is down: still refused.
    db2.stop()
    promoted = load(promote_lab.cluster_file)
    r = lab.script(db1.host, "bootstrap-replica.sh", [*lab.bootstrap_args(db1, promoted), "--password-file",
                                                      str(lab.replication_password_file)])  # fmt: skip
    assert r.returncode == 1, f"expected exit 1, got {r.returncode}: {r.stdout}{r.stderr}"
    assert "this machine was a primary" in r.stderr and "rejoin-as-replica" in r.stderr, r.stderr
    db2.start()
    assert not db2.in_recovery()


def test_promote_refuses_a_machine_that_is_not_a_healthy_replica(promote_lab: Promote) -> None:
    # db1 is down (killed above) and the file now names db2 as the primary: db1 is no replica.
    before = promote_lab.cluster_file.read_text()
    cmd = ["--check-command", f"runuser -u postgres -- {pg.PG_BIN}/psql -h /nonexistent -XAtc 'SELECT 1'"]
    r = promote_lab.synth("promote", "db1", *cmd, "-o", "ConnectTimeout=3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "db1 is not a healthy replica" in r.stderr, r.stderr
    assert promote_lab.cluster_file.read_text() == before, "the cluster file is untouched"
    # Promoting the primary is nothing to do, not an error, and touches nothing.
    r = promote_lab.synth("promote", "db2", *promote_lab.remote_commands("db2"))
    assert r.returncode == 0 and "db2 is already the primary; nothing to do." in r.stdout, r.stdout + r.stderr
    assert promote_lab.cluster_file.read_text() == before
