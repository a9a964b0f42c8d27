"""Every validation rule of cluster.toml has a failing case here that asserts its message."""

from __future__ import annotations

import pytest

from synth.errors import SynthError
from synth.model import parse

BASE = """
[cluster]
name = "t"
domain = "lemmy.example.org"
admin_email = "admin@example.org"

[postgres]
primary = "db1"
version = 17

[machines.fe1]
address = "10.0.0.1"
roles = ["frontend"]

[machines.app1]
address = "10.0.0.2"
roles = ["backend", "pictrs"]

[machines.db1]
address = "10.0.0.3"
roles = ["postgres"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SynthError) as info:
        parse(text, "c.toml")
    return [p.render("c.toml") for p in info.value.problems]


def one(text: str) -> str:
    got = problems(text)
    assert len(got) == 1, f"expected exactly one problem, got {got}"
    return got[0]


def test_base_is_valid() -> None:
    c = parse(BASE)
    assert list(c.machines) == ["fe1", "app1", "db1"]
    assert c.private_address("fe1") == "10.0.0.1"
    assert c.postgres.version == 17


def test_toml_syntax_error_has_line_and_column() -> None:
    msg = one(BASE + "\n[machines.x\n")
    line = (BASE + "\n[machines.x\n").count("\n")
    assert msg.startswith(f"c.toml: TOML syntax error: line {line}, column 12: "), msg


def test_unknown_key_with_did_you_mean() -> None:
    msg = one(BASE.replace('admin_email = "admin@example.org"', 'admin_email = "admin@example.org"\ndomian = "x"'))
    assert msg.startswith("c.toml: cluster.domian: unknown key; did you mean 'domain'?"), msg


def test_unknown_key_in_machine() -> None:
    msg = one(BASE.replace('address = "10.0.0.1"', 'address = "10.0.0.1"\nrole = ["frontend"]'))
    assert "machines.fe1.role: unknown key; did you mean 'roles'?" in msg, msg


def test_unknown_top_level_table() -> None:
    msg = one(BASE + '\n[postgress]\nprimary = "db1"\n')
    assert "c.toml: postgress: unknown key; did you mean 'postgres'?" in msg, msg


def test_unknown_role_with_did_you_mean() -> None:
    msg = one(BASE.replace('roles = ["frontend"]', 'roles = ["frontent"]'))
    assert "machines.fe1.roles[0]: unknown role 'frontent'; did you mean 'frontend'?" in msg, msg
    assert "roles are: frontend, backend, pictrs, postgres" in msg


def test_wrong_type() -> None:
    msg = one(BASE.replace("version = 17", 'version = "17"'))
    assert msg == "c.toml: postgres.version: must be an integer (got str)", msg


def test_missing_table_and_key() -> None:
    got = problems(BASE.replace('[postgres]\nprimary = "db1"\nversion = 17\n', ""))
    assert got == ["c.toml: postgres: missing table [postgres]; add it (see the README's reference)"], got
    msg = one(BASE.replace('domain = "lemmy.example.org"\n', ""))
    assert msg == "c.toml: cluster.domain: required key missing; add it", msg


@pytest.mark.parametrize("name", ["Fe1", "fe_1", "-fe", "fe-", "a" * 64])
def test_invalid_machine_name(name: str) -> None:
    msg = one(BASE.replace("[machines.fe1]", f'[machines."{name}"]'))
    assert "invalid machine name; use a hostname label" in msg, msg


def test_invalid_machine_name_reported_with_structural_errors() -> None:
    got = problems(BASE.replace("[machines.fe1]", '[machines."FE1"]').replace("version = 17", 'version = "x"'))
    assert any("invalid machine name" in g for g in got), got
    assert any("postgres.version: must be an integer" in g for g in got), got


@pytest.mark.parametrize("address", ["10.0.0.300", "not an address", "-bad.example.org"])
def test_invalid_address(address: str) -> None:
    msg = one(BASE.replace('address = "10.0.0.1"', f'address = "{address}"'))
    assert f"machines.fe1.address: '{address}' is neither an IP address nor a DNS name" in msg, msg


def test_dns_address_needs_private_address() -> None:
    msg = one(BASE.replace('address = "10.0.0.1"', 'address = "fe1.example.org"'))
    assert "machines.fe1.private_address: required because address is a DNS name" in msg, msg
    ok = BASE.replace('address = "10.0.0.1"', 'address = "fe1.example.org"\nprivate_address = "10.0.0.1"')
    assert parse(ok).private_address("fe1") == "10.0.0.1"


def test_invalid_private_address() -> None:
    msg = one(BASE.replace('address = "10.0.0.1"', 'address = "10.0.0.1"\nprivate_address = "fe1.lan"'))
    assert "machines.fe1.private_address: 'fe1.lan' is not an IP address" in msg, msg


def test_duplicate_address() -> None:
    got = problems(BASE.replace('address = "10.0.0.2"', 'address = "10.0.0.1"'))
    assert "c.toml: machines.app1.address: 10.0.0.1 is already the address of machine 'fe1'" in got, got
    assert any("private address 10.0.0.1 is already used by machine 'fe1'" in g for g in got), got


def test_duplicate_private_address() -> None:
    text = BASE.replace('address = "10.0.0.2"', 'address = "app1.example.org"\nprivate_address = "10.0.0.1"')
    msg = one(text)
    assert "machines.app1.private_address: private address 10.0.0.1 is already used by machine 'fe1'" in msg, msg


def test_duplicate_ipv6_in_other_spelling() -> None:
    text = BASE.replace('address = "10.0.0.1"', 'address = "2001:db8::1"').replace(
        'address = "10.0.0.2"', 'address = "2001:db8:0::1"'
    )
    assert any("is already the address of machine 'fe1'" in g for g in problems(text))


def test_empty_and_duplicate_roles() -> None:
    got = problems(BASE.replace('roles = ["frontend"]', "roles = []"))
    roles = "frontend, backend, pictrs, postgres, storage, backup"
    assert f"c.toml: machines.fe1.roles: give at least one role: {roles}" in got, got
    msg = one(BASE.replace('roles = ["postgres"]', 'roles = ["postgres", "postgres"]'))
    assert "machines.db1.roles[1]: role 'postgres' is listed twice" in msg, msg


def test_primary_missing() -> None:
    msg = one(BASE.replace('primary = "db1"', 'primary = "db2"'))
    assert "postgres.primary: no machine named 'db2'; did you mean 'db1'? it must name a machine" in msg, msg


def test_primary_not_postgres() -> None:
    msg = one(BASE.replace('primary = "db1"', 'primary = "app1"'))
    assert "postgres.primary: machine 'app1' has no 'postgres' role" in msg, msg


def test_no_frontend() -> None:
    msg = one(BASE.replace('roles = ["frontend"]', 'roles = ["postgres"]'))
    assert "machines: no machine has role 'frontend'" in msg, msg


def test_backends_and_pictrs_count() -> None:
    # Several backends are fine (issue: scale-out); several pict-rs need shared storage.
    parse(BASE.replace('roles = ["frontend"]', 'roles = ["frontend", "backend"]'))
    msg = one(BASE.replace('roles = ["frontend"]', 'roles = ["frontend", "pictrs"]'))
    assert "2 machines have role 'pictrs' (fe1, app1), but [pictrs] store = \"local\"" in msg, msg
    assert 'share the storage: [pictrs] store = "object_storage"' in msg
    shared = '\n[pictrs]\nstore = "object_storage"\nendpoint = "https://s3.example.org"\nbucket = "lemmy-images"\n'
    parse(BASE.replace('roles = ["frontend"]', 'roles = ["frontend", "pictrs"]') + shared)
    got = problems(BASE.replace('roles = ["backend", "pictrs"]', 'roles = ["frontend"]'))
    assert any("no machine has role 'backend'" in g for g in got), got
    assert any("no machine has role 'pictrs'" in g for g in got), got


def test_pictrs_object_storage_settings() -> None:
    got = problems(BASE + '\n[pictrs]\nstore = "object_storage"\n')
    assert any('pictrs.endpoint: required with store = "object_storage"' in g for g in got), got
    assert any('pictrs.bucket: required with store = "object_storage"' in g for g in got), got
    got = problems(BASE + '\n[pictrs]\nstore = "object_storage"\nendpoint = "s3.example.org"\nbucket = "A_B"\n')
    assert any("pictrs.endpoint: 's3.example.org' is not an http(s) URL" in g for g in got), got
    assert any("pictrs.bucket: 'A_B' is not a valid bucket name" in g for g in got), got
    msg = one(BASE + '\n[pictrs]\nbucket = "images"\n')
    assert 'pictrs.bucket: only used with store = "object_storage"' in msg, msg


TWO_BACKENDS = BASE.replace('roles = ["frontend"]', 'roles = ["frontend", "backend"]')


def test_scheduled_tasks_exactly_one_process() -> None:
    msg = one(TWO_BACKENDS + '\n[backend]\nscheduled_tasks = ["fe1", "app1"]\n')
    assert msg.startswith("c.toml: backend.scheduled_tasks: exactly one Lemmy process may run the scheduled tasks"), msg
    assert "scheduled_tasks = 'fe1'" in msg
    msg = one(TWO_BACKENDS + '\n[backend]\nscheduled_tasks = "db1"\n')
    assert "backend.scheduled_tasks: 'db1' is not a machine with role 'backend'" in msg, msg
    parse(TWO_BACKENDS + '\n[backend]\nscheduled_tasks = "app1"\n')


def test_federation_senders_each_shard_once() -> None:
    msg = one(TWO_BACKENDS + '\n[backend]\nfederation_senders = ["app1", "app1"]\n')
    assert "backend.federation_senders[1]: 'app1' is listed twice: each federation shard must run exactly once" in msg
    msg = one(TWO_BACKENDS + "\n[backend]\nfederation_senders = []\n")
    assert "backend.federation_senders: empty: nobody would send outgoing federation" in msg, msg
    msg = one(TWO_BACKENDS + '\n[backend]\nfederation_senders = ["apps1"]\n')
    assert "backend.federation_senders[0]: 'apps1' is not a machine with role 'backend'; did you mean 'app1'?" in msg
    msg = one(TWO_BACKENDS + '\n[backend]\nfederation_process = "separate"\n')
    assert "backend.federation_process: invalid value 'separate'; expected one of 'inline' or 'dedicated'" in msg, msg


@pytest.mark.parametrize("domain", ["localhost", "Lemmy.Example.org", "10.0.0.1", "a..b", "lemmy.example.org."])
def test_invalid_domain(domain: str) -> None:
    msg = one(BASE.replace('domain = "lemmy.example.org"', f'domain = "{domain}"'))
    assert f"cluster.domain: {domain!r} is not a valid domain name" in msg, msg


def test_invalid_cluster_name_email_system() -> None:
    text = BASE.replace('name = "t"', 'name = "My Cluster"').replace(
        'admin_email = "admin@example.org"', 'admin_email = "admin"\nsystem = "x86"'
    )
    got = problems(text)
    assert any(g.startswith("c.toml: cluster.name: use lowercase letters") for g in got), got
    assert "c.toml: cluster.admin_email: 'admin' is not an email address" in got, got
    assert any("cluster.system: 'x86' is not a Nix system" in g for g in got), got


def test_unsupported_postgres_version() -> None:
    msg = one(BASE.replace("version = 17", "version = 12"))
    assert "postgres.version: PostgreSQL 12 is not supported; choose one of 14, 15, 16, 17, 18" in msg, msg


def test_tls_manual_needs_files() -> None:
    text = BASE.replace('admin_email = "admin@example.org"', 'admin_email = "admin@example.org"\ntls = "manual"')
    got = problems(text)
    assert any('cluster.tls_certificate: required when tls = "manual"' in g for g in got), got
    assert any('cluster.tls_key: required when tls = "manual"' in g for g in got), got
    msg = one(BASE.replace('admin_email = "admin@example.org"', 'admin_email = "admin@example.org"\ntls_key = "/k"'))
    assert 'cluster.tls_key: only used with tls = "manual"' in msg, msg
    msg = one(BASE.replace('admin_email = "admin@example.org"', 'admin_email = "a@b.org"\ntls = "tls"'))
    assert "cluster.tls: invalid value 'tls'; expected one of 'acme', 'none' or 'manual'" in msg, msg


def test_secrets_dir_must_be_outside_store() -> None:
    msg = one(BASE + '\n[secrets]\ndir = "/nix/store/secrets"\n')
    assert "secrets.dir: must be an absolute path on the hosts, outside /nix/store" in msg, msg


def test_synchronous_needs_a_replica() -> None:
    msg = one(BASE.replace("version = 17", "version = 17\nsynchronous = true"))
    assert "postgres.synchronous: needs at least one replica" in msg, msg


def test_pool_size_must_fit_max_connections() -> None:
    msg = one(BASE.replace("version = 17", "version = 17\nmax_connections = 30") + "\n[backend]\npool_size = 30\n")
    assert "backend.pool_size: 1 Lemmy process with pool_size = 30 need 30 connections plus 10 reserved" in msg, msg
    # Dedicated federation senders are processes with pools of their own.
    text = TWO_BACKENDS.replace("version = 17", "version = 17\nmax_connections = 100")
    parse(text + "\n[backend]\npool_size = 40\n")  # 2 x 40 + 10 <= 100
    msg = one(text + '\n[backend]\npool_size = 40\nfederation_process = "dedicated"\n')
    assert "4 Lemmy processes with pool_size = 40 need 160 connections" in msg, msg


SHARED = '\n[pictrs]\nstore = "object_storage"\nendpoint = "https://s3.example.org"\nbucket = "lemmy-images"\n'


def test_pool_check_counts_pictrs_postgres_pools() -> None:
    # pict-rs 0.5's Postgres repository: 8 connections per CPU plus min(CPUs, 4) for LISTEN, on
    # every pict-rs machine. Two of them at the assumed 4 CPUs need 2 x 36 beside Lemmy's 40.
    text = BASE.replace("version = 17", "version = 17\nmax_connections = 100").replace(
        'roles = ["frontend"]', 'roles = ["frontend", "pictrs"]'
    )
    msg = one(text + SHARED + "\n[backend]\npool_size = 40\n")
    assert msg.startswith(
        "c.toml: postgres.max_connections: 1 Lemmy process with pool_size = 40 need 40 connections, "
        "2 pict-rs machines up to 36 each (pict-rs 0.5 opens 8 per CPU plus 4 for LISTEN: 4 CPUs assumed)"
    ), msg
    assert "plus 10 reserved: 122, more than max_connections = 100; raise max_connections to at least 122" in msg
    assert "or set [pictrs] cpus to the CPUs of the pict-rs machines" in msg, msg
    # The same Lemmy pool fits with 2 CPUs (2 x 18); at 3 (2 x 27) it does not, and the hint about
    # [pictrs] cpus is gone once it is set.
    parse(text + SHARED + "cpus = 2\n\n[backend]\npool_size = 40\n")
    msg = one(text + SHARED + "cpus = 3\n\n[backend]\npool_size = 40\n")
    assert "2 pict-rs machines up to 27 each (pict-rs 0.5 opens 8 per CPU plus 3 for LISTEN: [pictrs] cpus = 3)" in msg
    assert "plus 10 reserved: 104," in msg and "[pictrs] cpus to" not in msg, msg


def test_pool_check_local_pictrs_adds_nothing() -> None:
    # store = "local" keeps pict-rs's repository in sled: only Lemmy's pool counts (40 + 10 <= 50).
    text = BASE.replace("version = 17", "version = 17\nmax_connections = 50")
    parse(text + "\n[backend]\npool_size = 40\n")
    msg = one(text + "\n[pictrs]\ncpus = 2\n\n[backend]\npool_size = 40\n")
    assert 'pictrs.cpus: only used with store = "object_storage"' in msg, msg


def test_pool_check_pictrs_bounded_by_the_local_proxy() -> None:
    # Under Patroni pict-rs reaches the leader through HAProxy (maxconn 100 per machine): 16 CPUs
    # would open 132, the proxy lets through 100 (30 + 100 + 10 <= 150). Without Patroni all 132.
    text = (
        BASE.replace("version = 17", "version = 17\nmax_connections = 150")
        + '\n[machines.db2]\naddress = "10.0.0.4"\nroles = ["postgres"]\n'
        + SHARED
        + "cpus = 16\n"
    )
    parse(text)
    msg = one(text.replace("max_connections = 150", 'max_connections = 150\nfailover = "manual"'))
    assert "1 pict-rs machine up to 132 each (pict-rs 0.5 opens 8 per CPU plus 4 for LISTEN: [pictrs] cpus = 16)" in msg
    assert "plus 10 reserved: 172, more than max_connections = 150" in msg, msg
    msg = one(text.replace("max_connections = 150", "max_connections = 130"))
    assert (
        "up to 100 each (pict-rs 0.5 opens 8 per CPU plus 4 for LISTEN: [pictrs] cpus = 16, at most 100 through" in msg
    )
    assert "reserved: 140, more than max_connections = 130" in msg, msg


def test_site_name_and_admin_username_limits() -> None:
    text = BASE.replace(
        'admin_email = "admin@example.org"',
        'admin_email = "admin@example.org"\nsite_name = "' + "x" * 21 + '"\nadmin_username = "a b"',
    )
    got = problems(text)
    assert "c.toml: cluster.site_name: Lemmy allows 1 to 20 characters" in got, got
    assert any(g.startswith("c.toml: cluster.admin_username: Lemmy user names") for g in got), got


def test_all_problems_at_once() -> None:
    text = (
        BASE.replace('domain = "lemmy.example.org"', 'domain = "bad"')
        .replace('primary = "db1"', 'primary = "nope"')
        .replace('address = "10.0.0.2"', 'address = "10.0.0.1"')
    )
    got = problems(text)
    assert len(got) >= 3, got
    assert got == sorted(got), "problems are reported in a stable order"


def test_examples_are_valid() -> None:
    from tests.conftest import EXAMPLES

    for path in sorted(EXAMPLES.glob("*.toml")):
        # storage.toml: valid once `synth secrets init` has recorded its node ids (next test)
        parse(path.read_text(), str(path), pending_node_ids=path.name == "storage.toml")


def test_storage_example_needs_only_its_node_ids() -> None:
    """Before `synth secrets init` the storage example fails with one problem per storage machine:
    the node id that init records, and how to get it."""
    from tests.conftest import EXAMPLES

    with pytest.raises(SynthError) as exc:
        parse((EXAMPLES / "storage.toml").read_text(), "storage.toml")
    assert [p.path for p in exc.value.problems] == [f"machines.store{i}.garage_node_id" for i in (1, 2, 3)]
    assert all("run `synth secrets init`" in p.message for p in exc.value.problems)


def test_acme_limited_to_five_frontends() -> None:
    extra = "".join(f'\n[machines.fe{i}]\naddress = "10.0.1.{i}"\nroles = ["frontend"]\n' for i in range(2, 7))
    msg = one(BASE + extra)
    assert msg.startswith('c.toml: cluster.tls: tls = "acme" gets one certificate per frontend'), msg
    assert "with 6 frontends use" in msg
    parse(BASE.replace('admin_email = "admin@example.org"', 'admin_email = "a@b.org"\ntls = "none"') + extra)


# --------------------------------------------------------------------------- automatic failover

DB2 = '\n[machines.db2]\naddress = "10.0.0.4"\nroles = ["postgres"]\n'


def test_two_postgres_machines_get_automatic_failover_with_three_etcd_members() -> None:
    from synth.model import automatic_failover, etcd_members

    c = parse(BASE + DB2)
    assert automatic_failover(c)
    # The postgres machines first, then the other machines in file order.
    assert etcd_members(c) == ["db1", "db2", "fe1"]
    assert etcd_members(parse(BASE)) == [], "one postgres machine: plain PostgreSQL, no etcd"
    manual = parse(BASE.replace("version = 17", 'version = 17\nfailover = "manual"') + DB2)
    assert not automatic_failover(manual) and etcd_members(manual) == []


def test_automatic_failover_refused_without_room_for_three_etcd_members() -> None:
    # Two machines, both with every role: no third machine to hold an etcd member.
    text = BASE.split("[machines.fe1]")[0] + (
        '[machines.db1]\naddress = "10.0.0.3"\nroles = ["frontend", "backend", "pictrs", "postgres"]\n'
    )
    msg = one(text + DB2)
    assert msg.startswith("c.toml: postgres.failover: automatic failover needs 3 etcd members on 3 different machines")
    assert 'set [postgres] failover = "manual"' in msg and "Add a machine" in msg
    # The way out works.
    parse(text.replace("version = 17", 'version = 17\nfailover = "manual"') + DB2)


def test_five_etcd_members_need_five_machines() -> None:
    msg = one(BASE + DB2 + "\n[etcd]\nsize = 5\n")
    assert "needs 5 etcd members on 5 different machines" in msg and "4 machines" in msg


@pytest.mark.parametrize(
    ("etcd", "expected"),
    [
        (
            'members = ["db1", "db2", "fe9"]',
            "c.toml: etcd.members[2]: no machine named 'fe9' in this cluster; did you mean 'fe1'?",
        ),
        (
            'members = ["db1", "db1", "fe1"]',
            "c.toml: etcd.members[1]: 'db1' is listed twice; each etcd member runs on its own machine",
        ),
        (
            'members = ["db1", "db2"]',
            "c.toml: etcd.members: 2 members: name 3 machines (a quorum survives one down) or 5 (two down)",
        ),
        (
            "size = 4",
            "c.toml: etcd.size: 4 etcd members: use 3 (a quorum survives one machine down) or 5 (two down); "
            "an even number tolerates no more failures than one member fewer",
        ),
        ('members = ["db1", "db2", "fe1"]\nsize = 5', "c.toml: etcd.size: 5, but etcd.members names 3; remove size"),
    ],
)
def test_etcd_section_refusals(etcd: str, expected: str) -> None:
    assert one(BASE + DB2 + f"\n[etcd]\n{etcd}\n") == expected


def test_named_etcd_members_are_kept() -> None:
    from synth.model import etcd_members

    c = parse(BASE + DB2 + '\n[etcd]\nmembers = ["fe1", "db2", "app1"]\n')
    assert etcd_members(c) == ["fe1", "db2", "app1"]


def test_etcd_section_refused_without_automatic_failover() -> None:
    assert one(BASE + "\n[etcd]\nsize = 3\n") == (
        "c.toml: etcd.size: etcd runs only with automatic failover, and this cluster has 1 postgres machine "
        "(etcd serves Patroni, which needs two or more); remove [etcd]"
    )
    manual = BASE.replace("version = 17", 'version = 17\nfailover = "manual"') + DB2
    assert one(manual + '\n[etcd]\nmembers = ["db1", "db2", "fe1"]\n') == (
        'c.toml: etcd.members: etcd runs only with automatic failover, and this cluster has failover = "manual"; '
        "remove [etcd]"
    )


def test_unknown_failover_mode() -> None:
    msg = one(BASE.replace("version = 17", 'version = 17\nfailover = "auto"'))
    assert msg.startswith("c.toml: postgres.failover: invalid value 'auto'; expected one of 'automatic' or 'manual'")


def test_a_frontend_needs_an_ipv4_private_address() -> None:
    """lemmy-ui reads its listen address from LEMMY_UI_HOST with `.split(":")`: an IPv6 address
    leaves it without a port. A frontend's private address must be IPv4."""
    msg = one(BASE.replace('address = "10.0.0.1"', 'address = "2001:db8::1"'))
    assert "machines.fe1.address: 2001:db8::1 is the private address (no private_address is given)" in msg, msg
    assert "lemmy-ui" in msg and "IPv4 private_address" in msg, msg
    msg = one(BASE.replace('address = "10.0.0.1"', 'address = "10.0.0.1"\nprivate_address = "fd00::1"'))
    assert "machines.fe1.private_address: fd00::1 is an IPv6 address" in msg, msg
    ok = BASE.replace('address = "10.0.0.1"', 'address = "2001:db8::1"\nprivate_address = "10.0.0.1"')
    assert parse(ok).private_address("fe1") == "10.0.0.1"


def test_other_roles_take_an_ipv6_private_address() -> None:
    """pict-rs (its module writes the bracketed [address]:port that pict-rs parses), the backend
    and PostgreSQL listen on IPv6 private addresses."""
    c = parse(BASE.replace('address = "10.0.0.2"', 'address = "10.0.0.2"\nprivate_address = "fd00::2"'))
    assert c.private_address("app1") == "fd00::2"


@pytest.mark.parametrize(
    "old,new,where",
    [
        ("[machines.app1]", '[machines."app1\\n"]', "invalid machine name"),
        ('domain = "lemmy.example.org"', 'domain = "lemmy.example.org\\n"', "cluster.domain"),
        ('admin_email = "admin@example.org"', 'admin_email = "admin@example.org\\n"', "cluster.admin_email"),
    ],
)
def test_a_trailing_newline_is_not_a_valid_value(old: str, new: str, where: str) -> None:
    """A regex's `$` matches before a trailing newline: every such value passed before."""
    assert old in BASE
    got = problems(BASE.replace(old, new))
    assert any(where in p for p in got), got
