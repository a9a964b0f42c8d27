"""Who serves what: upstreams, peers, slots, shards and firewall peers derived from the TOML."""

from __future__ import annotations

from synth.model import load, parse
from synth.topology import hostport, plan, slot_name
from tests.conftest import EXAMPLES


def small() -> dict:  # type: ignore[type-arg]
    return plan(load(EXAMPLES / "small.toml"))


def test_frontends_know_backends_and_each_other() -> None:
    p = small()
    fe1, fe2 = p["fe1"].frontend, p["fe2"].frontend
    assert fe1 is not None and fe2 is not None
    assert fe1.backends == ["10.0.0.20:8536"]
    assert fe1.ui_peers == ["10.0.0.11:1234"], "fe1 falls back to fe2's lemmy-ui, never to itself"
    assert fe2.ui_peers == ["10.0.0.10:1234"]
    assert fe1.acme_peers == ["10.0.0.11:80"]
    assert fe1.ui_clients == ["10.0.0.11"]


def test_backend_points_at_every_database_and_pictrs() -> None:
    be = small()["app1"].backend
    assert be is not None
    assert be.database_hosts == ["10.0.0.30", "10.0.0.31"], "primary first, then replicas: follows a promotion"
    assert be.pictrs_url == "http://10.0.0.20:8080/"
    assert be.clients == ["10.0.0.10", "10.0.0.11"]
    assert (be.scheduled_tasks, be.federation_sending, be.federation_index, be.federation_count) == (
        True,
        "inline",
        1,
        1,
    )


def test_scheduled_tasks_and_shards_over_backends() -> None:
    p = plan(load(EXAMPLES / "large.toml"))
    api1, api2 = p["api1"].backend, p["api2"].backend
    assert api1 is not None and api2 is not None
    assert (api1.scheduled_tasks, api2.scheduled_tasks) == (True, False)
    assert (api1.federation_sending, api2.federation_sending) == ("dedicated", "dedicated")
    assert [(b.federation_index, b.federation_count) for b in (api1, api2)] == [(1, 2), (2, 2)]


def test_shards_only_on_senders_and_scheduler_choice() -> None:
    text = (
        (EXAMPLES / "large.toml")
        .read_text()
        .replace('scheduled_tasks = "api1"', 'scheduled_tasks = "api2"\nfederation_senders = ["api2"]')
    )
    p = plan(parse(text))
    api1, api2 = p["api1"].backend, p["api2"].backend
    assert api1 is not None and api2 is not None
    assert (api1.scheduled_tasks, api2.scheduled_tasks) == (False, True)
    assert (api1.federation_sending, api1.federation_index) == ("off", 0)
    assert (api2.federation_sending, api2.federation_index, api2.federation_count) == ("dedicated", 1, 1)


def test_invariants_hold_for_any_backend_count() -> None:
    """Exactly one process runs scheduled tasks; every shard 1..n runs exactly once."""
    base = (EXAMPLES / "small.toml").read_text().replace("version = 17", "version = 17\nmax_connections = 1000")
    for n in range(1, 7):
        extra = "".join(f'\n[machines.api{i}]\naddress = "10.0.2.{i}"\nroles = ["backend"]\n' for i in range(n))
        p = plan(parse(base + extra))
        bes = [h.backend for h in p.values() if h.backend is not None]
        assert sum(b.scheduled_tasks for b in bes) == 1
        shards = sorted(b.federation_index for b in bes if b.federation_sending != "off")
        assert shards == list(range(1, len(bes) + 1))
        assert {b.federation_count for b in bes} == {len(bes)}


def test_pictrs_only_open_to_other_backends() -> None:
    # app1 runs backend and pict-rs: its own traffic uses loopback-trusted paths, no rule needed.
    pr = small()["app1"].pictrs
    assert pr is not None and pr.clients == []


def manual(example: str) -> str:
    """EXAMPLE's text with failover = "manual" (plain streaming replication)."""
    return (EXAMPLES / f"{example}.toml").read_text().replace("[postgres]\n", '[postgres]\nfailover = "manual"\n', 1)


def test_postgres_roles_slots_and_peers_with_manual_failover() -> None:
    p = plan(parse(manual("small")))
    db1, db2 = p["db1"].postgres, p["db2"].postgres
    assert db1 is not None and db2 is not None
    assert db1.patroni is None and db2.patroni is None
    assert p["db1"].etcd is None, "no etcd without automatic failover"
    assert (db1.role, db2.role) == ("primary", "replica")
    assert db2.primary_address == "10.0.0.30"
    assert db1.replication_slots == ["db2"] and db2.replication_slots == ["db1"]
    assert db1.clients == ["10.0.0.20"] and db2.clients == ["10.0.0.20"], "a promoted replica must serve the backend"
    assert db1.replication_peers == ["10.0.0.31"]
    assert db1.synchronous_standbys == []


def test_patroni_members_with_automatic_failover() -> None:
    p = small()
    db1, db2 = p["db1"].postgres, p["db2"].postgres
    assert db1 is not None and db2 is not None and db1.patroni and db2.patroni
    assert (db1.role, db2.role) == ("patroni", "patroni")
    # Only [postgres] primary may create the cluster; the others clone it.
    assert (db1.patroni.bootstrap, db2.patroni.bootstrap) == (True, False)
    assert db1.patroni.etcd_hosts == ["10.0.0.30:2379", "10.0.0.31:2379", "10.0.0.10:2379"]
    assert db1.clients == ["10.0.0.20"] and db2.clients == ["10.0.0.20"], "any member may lead"
    # etcd: the postgres machines first, then the first other machine in file order.
    members = {n for n, h in p.items() if h.etcd}
    assert members == {"db1", "db2", "fe1"}
    assert p["fe1"].etcd is not None
    assert p["fe1"].etcd.members == {"fe1": "10.0.0.10", "db1": "10.0.0.30", "db2": "10.0.0.31"}
    assert p["fe1"].etcd.clients == [], "every Patroni member is an etcd member here"
    # An etcd member talks to the other members and to the Patroni members.
    assert {"db1", "db2"} <= set(p["fe1"].peers)


def test_synchronous_mode_in_large_example() -> None:
    p = plan(load(EXAMPLES / "large.toml"))
    db1 = p["db1"].postgres
    assert db1 is not None and db1.patroni is not None
    assert db1.patroni.synchronous, "[postgres] synchronous = true is Patroni's synchronous mode"
    assert db1.synchronous_standbys == [], "Patroni names the synchronous standby itself"
    manual_db1 = plan(parse(manual("large")))["db1"].postgres
    assert manual_db1 is not None and manual_db1.synchronous_standbys == ["db2", "db3"]
    assert p["edge4"].system == "aarch64-linux"
    assert p["edge1"].system == "x86_64-linux"


def test_secrets_per_role() -> None:
    p = small()
    assert p["fe1"].secrets == {}
    assert set(p["app1"].secrets) == {"db_password", "pictrs_api_key", "admin_password"}
    assert p["db1"].secrets == {
        "db_password": "/var/lib/lemmy-cluster/secrets/lemmy-db-password",
        "replication_password": "/var/lib/lemmy-cluster/secrets/replication-password",
        "postgres_superuser_password": "/var/lib/lemmy-cluster/secrets/postgres-superuser-password",
        "rewind_password": "/var/lib/lemmy-cluster/secrets/postgres-rewind-password",
        "patroni_api_password": "/var/lib/lemmy-cluster/secrets/patroni-api-password",
    }
    assert set(plan(parse(manual("small")))["db1"].secrets) == {"db_password", "replication_password"}


def test_public_ports() -> None:
    p = small()
    assert p["fe1"].public_ports == [80, 443]
    assert p["db1"].public_ports == [], "nothing is public on a database machine"
    single = plan(
        parse(
            (EXAMPLES / "single.toml")
            .read_text()
            .replace('admin_email = "admin@example.org"', 'admin_email = "a@b.org"\ntls = "none"')
        )
    )
    assert single["lemmy1"].public_ports == [80]


def test_peers_are_the_machines_a_host_talks_to() -> None:
    p = small()
    # fe1 is the third etcd member: it talks to the Patroni members too.
    assert p["fe1"].peers == {"fe2": "10.0.0.11", "app1": "10.0.0.20", "db1": "10.0.0.30", "db2": "10.0.0.31"}
    assert p["app1"].peers == {"fe1": "10.0.0.10", "fe2": "10.0.0.11", "db1": "10.0.0.30", "db2": "10.0.0.31"}
    assert p["db2"].peers == {"fe1": "10.0.0.10", "app1": "10.0.0.20", "db1": "10.0.0.30"}
    assert plan(parse(manual("small")))["fe1"].peers == {"fe2": "10.0.0.11", "app1": "10.0.0.20"}


def test_ui_backups_form_a_ring() -> None:
    p = plan(load(EXAMPLES / "large.toml"))
    backups = {n: p[n].frontend.ui_peers for n in ("edge1", "edge2", "edge3", "edge4")}  # type: ignore[union-attr]
    assert backups == {
        "edge1": ["10.1.0.12:1234", "10.1.0.13:1234"],
        "edge2": ["10.1.0.13:1234", "10.1.0.14:1234"],
        "edge3": ["10.1.0.14:1234", "10.1.0.11:1234"],
        "edge4": ["10.1.0.11:1234", "10.1.0.12:1234"],
    }
    # The firewall opens edge1's lemmy-ui exactly to the frontends that use it as a backup.
    assert p["edge1"].frontend.ui_clients == ["10.1.0.13", "10.1.0.14"]  # type: ignore[union-attr]
    # ACME tokens may be on any frontend: every other one is asked.
    assert p["edge1"].frontend.acme_peers == ["10.1.0.12:80", "10.1.0.13:80", "10.1.0.14:80"]  # type: ignore[union-attr]


def test_no_acme_peers_without_acme() -> None:
    text = (EXAMPLES / "small.toml").read_text().replace('site_name = "Example Lemmy"', 'site_name = "x"\ntls = "none"')
    fe1 = plan(parse(text)).get("fe1")
    assert fe1 is not None and fe1.frontend is not None
    assert fe1.frontend.acme_peers == []
    assert fe1.frontend.ui_peers == ["10.0.0.11:1234"]


def test_host_modules_stay_small_in_a_big_cluster() -> None:
    """Per-host data grows with what a host talks to, not with the cluster (1,000 machines)."""
    import sys

    sys.path.insert(0, str(EXAMPLES.parent / "scripts"))
    from bench import big_cluster_toml

    p = plan(parse(big_cluster_toml(1000)))
    fe = p["fe500"]
    assert len(fe.peers) == 1 + 2 + 2, "the backend, two UI backups, two frontends it backs up"
    assert len(p["db2"].peers) == 1 + 2
    assert len(p["app1"].peers) == 995 + 1 + 3, "the backend does talk to every frontend"


def test_single_machine_has_no_peers_anywhere() -> None:
    p = plan(load(EXAMPLES / "single.toml"))["lemmy1"]
    assert p.peers == {}
    assert p.frontend is not None and p.frontend.ui_peers == [] and p.frontend.acme_peers == []
    assert p.postgres is not None and p.postgres.replication_slots == [] and p.postgres.role == "primary"
    # The backend on the same machine connects over TCP to the private address: pg_hba needs it.
    assert p.postgres.clients == ["203.0.113.10"]


def test_helpers() -> None:
    assert hostport("10.0.0.1", 80) == "10.0.0.1:80"
    assert hostport("2001:db8::1", 80) == "[2001:db8::1]:80"
    assert slot_name("db-eu-1") == "db_eu_1"


def test_shared_pictrs() -> None:
    p = plan(load(EXAMPLES / "large.toml"))
    api1, media1, db1 = p["api1"].backend, p["media1"].pictrs, p["db1"].postgres
    assert api1 is not None and media1 is not None and db1 is not None
    assert api1.pictrs_url == "http://127.0.0.1:8079/", "several pict-rs: the backend's own balancer"
    assert api1.pictrs_upstreams == ["10.1.0.31:8080", "10.1.0.32:8080"]
    # Under Patroni pict-rs reaches the leader through its local HAProxy, which checks every member.
    assert (media1.store, media1.repo_host) == ("object_storage", "127.0.0.1")
    assert p["media1"].pg_proxy is not None
    assert p["media1"].pg_proxy.servers == {"db1": "10.1.0.41", "db2": "10.1.0.42", "db3": "10.1.0.43"}
    assert db1.patroni is not None and db1.patroni.api_clients == ["10.1.0.31", "10.1.0.32"]
    assert {"db1", "db2", "db3"} <= set(p["media1"].peers)
    manual_media1 = plan(parse(manual("large")))["media1"].pictrs
    assert manual_media1 is not None and manual_media1.repo_host == "10.1.0.41", "manual: the primary itself"
    assert db1.pictrs_clients == ["10.1.0.31", "10.1.0.32"]
    assert set(p["media1"].secrets) == {"pictrs_api_key", "pictrs_db_password", "s3_access_key", "s3_secret_key"}
    assert "pictrs_db_password" in p["db2"].secrets, "every database machine may become the primary"
    assert "db1" in p["media1"].peers
    # The default stays one local pict-rs, reached directly.
    small_app1 = small()["app1"]
    assert small_app1.backend is not None and small_app1.pictrs is not None
    assert small_app1.backend.pictrs_upstreams == [] and small_app1.pictrs.store == "local"
