"""synth.checks.backend, .pictrs and the dispatcher .roles, on a scripted stand-in for a testinfra Host.

The stand-in answers `ss` and `curl` the way those tools answer on a machine; the same checks run
against real hosts over SSH in tests/live/test_operations.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from synth.checks.backend import backend_checks
from synth.checks.pictrs import pictrs_checks
from synth.checks.roles import checks_for
from synth.model import load, parse
from synth.topology import plan
from tests.conftest import EXAMPLES


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str = ""


@dataclass
class ScriptedHost:
    """LISTEN: {port: "addr:port"}; STATUS: {url: HTTP status} (0: no answer)."""

    listen: dict[int, str] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def run(self, command: str) -> Result:
        self.commands.append(command)
        if command.startswith("ss "):
            port = int(command.split("sport = :")[1].rstrip("'"))
            where = self.listen.get(port)
            line = f"LISTEN 0 128 {where} 0.0.0.0:*" if where else ""
            return Result(0, line)
        if command.startswith("curl "):
            url = command.split()[-1]
            code = self.status.get(url, 0)
            if code == 0:
                return Result(7, "000", "curl: (7) Failed to connect")
            return Result(0, str(code))
        raise AssertionError(f"unexpected command {command}")


def test_backend_ok() -> None:
    host = ScriptedHost({8536: "10.0.0.20:8536"}, {"http://10.0.0.20:8536/api/v3/site": 200})
    results = backend_checks(host, "10.0.0.20")
    assert [(r.name, r.ok) for r in results] == [
        ("backend: listening on 10.0.0.20:8536", True),
        ("backend: GET /api/v3/site", True),
    ]


def test_backend_migrating_is_reported_as_such() -> None:
    host = ScriptedHost({8536: "10.0.0.20:8536"}, {"http://10.0.0.20:8536/api/v3/site": 503})
    site = backend_checks(host, "10.0.0.20")[1]
    assert not site.ok
    assert site.detail.startswith("migrations running: ")


def test_backend_other_status_and_not_listening() -> None:
    host = ScriptedHost({8536: "10.0.0.20:8536"}, {"http://10.0.0.20:8536/api/v3/site": 500})
    site = backend_checks(host, "10.0.0.20")[1]
    assert not site.ok and site.detail == "expected 200 from http://10.0.0.20:8536/api/v3/site, got 500"
    down = backend_checks(ScriptedHost(), "10.0.0.20")
    assert len(down) == 1 and not down[0].ok
    assert "expected a listener on 10.0.0.20:8536, got nothing" in down[0].detail


def test_pictrs() -> None:
    host = ScriptedHost({8080: "10.0.0.20:8080"}, {"http://10.0.0.20:8080/healthz": 200})
    assert all(r.ok for r in pictrs_checks(host, "10.0.0.20"))
    host.status["http://10.0.0.20:8080/healthz"] = 0
    bad = pictrs_checks(host, "10.0.0.20")[1]
    assert not bad.ok and "got no answer (curl: (7) Failed to connect)" in bad.detail


def test_dispatcher_runs_each_role_of_the_machine() -> None:
    c = load(EXAMPLES / "small.toml")
    plans = plan(c)
    app1 = plans["app1"]  # backend + pictrs
    addr = app1.private_address
    host = ScriptedHost(
        {8536: f"{addr}:8536", 8080: f"{addr}:8080"},
        {f"http://{addr}:8536/api/v3/site": 200, f"http://{addr}:8080/healthz": 200},
    )
    results = checks_for(c, app1, host)
    assert [r.name for r in results] == [
        f"pictrs: listening on {addr}:8080",
        "pictrs: GET /healthz",
        f"backend: listening on {addr}:8536",
        "backend: GET /api/v3/site",
    ]
    assert all(r.ok for r in results)


def test_dispatcher_postgres_primary_in_rollout_does_not_require_standbys(tmp_path: Path) -> None:
    text = (EXAMPLES / "small.toml").read_text().replace("[postgres]\n", '[postgres]\nfailover = "manual"\n', 1)
    c = parse(text)
    db1 = plan(c)["db1"]
    assert db1.postgres is not None and db1.postgres.replication_slots == ["db2"]

    class PgHost(ScriptedHost):
        def run(self, command: str) -> Result:
            self.commands.append(command)
            if "pg_postmaster_start_time" in command:
                return Result(0, "2026-01-01 00:00:00+00")
            if "pg_is_in_recovery" in command:
                return Result(0, "f")
            if "pg_stat_replication" in command or "pg_replication_slots" in command:
                return Result(0, "")
            raise AssertionError(command)

        def socket(self, spec: str) -> object:
            return type("S", (), {"is_listening": True})()

    full = checks_for(c, db1, PgHost())
    assert [r.name for r in full if not r.ok] == ["postgres: replication to db2", "postgres: slot db2"]
    rollout = checks_for(c, db1, PgHost(), rollout=True)
    assert all(r.ok for r in rollout)
    assert [r.name for r in rollout] == [
        "postgres: running",
        f"postgres: listening on {db1.private_address}:5432",
        "postgres: role primary",
    ]


# `garage status` of Garage 2 (src/garage/cli/remote/cluster.rs): columns separated by at least
# two spaces, each row starting with the first 16 hex digits of the node id.
GARAGE_STATUS = """\
==== HEALTHY NODES ====
ID                Hostname  Address         Tags  Zone    Capacity          DataAvail  Version
18d62856787e7cf9  store1    10.2.0.21:3901  []    store1  500.0 GB          412.3 GB (82.5%)  v2.3.0
6457f6a2b540a75f  store2    10.2.0.22:3901              NO ROLE ASSIGNED              v2.3.0
4802b428697c029a  store3    10.2.0.23:3901              pending...                    v2.3.0
"""


def storage_host(addr: str, status: str = GARAGE_STATUS, health: int = 200) -> ScriptedHost:
    class GarageHost(ScriptedHost):
        def run(self, command: str) -> Result:
            if command.endswith("garage status"):
                self.commands.append(command)
                return Result(0, status) if status else Result(1, "", "Error: Internal error: connection refused")
            return super().run(command)

    return GarageHost({3900: f"{addr}:3900", 3901: f"{addr}:3901"}, {"http://127.0.0.1:3903/health": health})


def test_storage_checks_through_the_dispatcher() -> None:
    from tests.test_golden import GOLDEN

    c = load(GOLDEN / "storage.toml")
    plans = plan(c)
    names = {}
    for machine in ("store1", "store2", "store3"):
        h = plans[machine]
        results = checks_for(c, h, storage_host(h.private_address))
        names[machine] = [(r.name, r.ok) for r in results]
    assert names["store1"] == [
        ("storage: S3 API on 10.2.0.21:3900", True),
        ("storage: RPC on 10.2.0.21:3901", True),
        ("storage: Garage quorum (GET /health)", True),
        ("storage: this machine holds data (garage status)", True),
    ]
    # no role yet, or only staged: not holding data
    assert names["store2"][-1] == ("storage: this machine holds data (garage status)", False)
    assert names["store3"][-1] == ("storage: this machine holds data (garage status)", False)
    # run as root with the RPC secret that `synth secrets push` installed
    host = storage_host(plans["store1"].private_address)
    checks_for(c, plans["store1"], host)
    secret = "/var/lib/lemmy-cluster/secrets/garage-rpc-secret"
    assert f"GARAGE_RPC_SECRET_FILE={secret} garage status" in host.commands
    # during a rollout the layout may not exist yet: not required
    h = plans["store2"]
    rollout = checks_for(c, h, storage_host(h.private_address), rollout=True)
    assert [r.name for r in rollout][-1] == "storage: Garage quorum (GET /health)" and all(r.ok for r in rollout)


def test_storage_check_details() -> None:
    from synth.checks.storage import storage_checks

    node = "6457f6a2b540a75fb478bb84fb02a9caa3547982a2036f63d729fc33c3d7de7a"
    r = storage_checks(storage_host("10.2.0.22"), "10.2.0.22", node)[-1]
    assert "has no role in the applied layout yet" in r.detail and "lemmy-cluster-garage-setup" in r.detail
    quorum = storage_checks(storage_host("10.2.0.22", health=503), "10.2.0.22", node)[2]
    assert not quorum.ok and "got 503; some objects cannot be read or written" in quorum.detail
    unknown = storage_checks(storage_host("10.2.0.22"), "10.2.0.22", "ab" * 32)[-1]
    assert not unknown.ok and "is not among the nodes" in unknown.detail
    down = storage_checks(storage_host("10.2.0.22", status=""), "10.2.0.22", node)[-1]
    assert not down.ok and "`garage status` failed with exit code 1: Error: Internal error" in down.detail
    silent = storage_checks(ScriptedHost(), "10.2.0.22", node)
    assert [r.ok for r in silent] == [False, False], "no quorum or layout check without listeners"


def test_dispatcher_runs_patroni_and_etcd_checks_on_their_machines() -> None:
    """Under Patroni a postgres machine gets Patroni's checks, an etcd member etcd's (the checks
    themselves run against the real Patroni and etcd in tests/live/test_patroni.py)."""
    c = load(EXAMPLES / "small.toml")
    plans = plan(c)

    class Silent(ScriptedHost):
        def run(self, command: str) -> Result:
            self.commands.append(command)
            return Result(7, "", "no answer")

        def socket(self, spec: str) -> object:
            return type("S", (), {"is_listening": False})()

    db1 = Silent()
    results = checks_for(c, plans["db1"], db1)
    assert [r.name for r in results] == ["patroni: member", "etcd: healthy"]
    assert not any(r.ok for r in results)
    assert "http://10.0.0.30:8008/patroni" in results[0].detail
    # During a deploy, a first member whose etcd has no quorum yet is waiting, not broken.
    waiting = checks_for(c, plans["db1"], Silent(), rollout=True)
    assert all(r.ok for r in waiting), waiting
    assert "waiting for etcd's quorum" in waiting[0].detail
