"""The backup machine (role "backup", pgBackRest's repository host): validation, what each machine
gets, the TLS certificates of `synth secrets init`, the deploy order, the checks and the commands.

Live, over TLS with Debian's pgBackRest: tests/live/test_backup_host.py.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from synth import backuptls
from synth.backupsteps import restore_steps
from synth.checks.backup import repository_checks
from synth.model import parse
from synth.order import batches
from synth.render import host_data
from synth.topology import plan
from tests.conftest import ROOT
from tests.test_cli import run
from tests.test_model import BASE, problems

TWO_DB = BASE + '\n[machines.db2]\naddress = "10.0.0.4"\nroles = ["postgres"]\n'
BK = '\n[machines.bk1]\naddress = "10.0.0.9"\nroles = ["backup"]\n'
POSIX = '\n[backup]\nrepository = "posix"\n'


def cluster(extra: str = "", base: str = TWO_DB) -> str:
    return base + BK + POSIX + extra


def lc(text: str, machine: str) -> dict[str, object]:
    c = parse(text, "c.toml")
    out: dict[str, object] = host_data(c, plan(c)[machine])["services"]["lemmy-cluster"]
    return out


# --------------------------------------------------------------------------- validation


def test_a_backup_machine_needs_a_backup_section() -> None:
    got = problems(TWO_DB + BK)
    assert any(p.startswith("c.toml: machines.bk1.roles:") and "no [backup] section" in p for p in got), got


def test_a_backup_machine_keeps_a_posix_repository_only() -> None:
    text = TWO_DB + BK + '\n[pictrs]\nstore = "object_storage"\nendpoint = "https://s3.example.net"\n'
    text += 'bucket = "img"\n\n[backup]\nrepository = "external-s3"\nbucket = "bk"\n'
    got = problems(text)
    assert any("machines.bk1.roles" in p and 'set repository = "posix"' in p for p in got), got


def test_a_backup_machine_is_not_a_database_machine() -> None:
    text = TWO_DB.replace('roles = ["postgres"]\n', 'roles = ["postgres", "backup"]\n', 1) + POSIX
    got = problems(text)
    assert any("machines.db1.roles" in p and "lose a database machine and the backups" in p for p in got), got


def test_one_backup_machine() -> None:
    got = problems(cluster('\n[machines.bk2]\naddress = "10.0.0.10"\nroles = ["backup"]\n'))
    assert any("machines.bk2.roles" in p and "'bk1' has role 'backup' already" in p for p in got), got


def test_no_shared_mount_with_a_backup_machine() -> None:
    got = problems(cluster("shared_mount = true\n"))
    assert any("backup.shared_mount" in p and "on the backup machine 'bk1' alone" in p for p in got), got


def test_two_database_machines_without_shared_mount_name_the_backup_role_as_a_fix() -> None:
    got = problems(TWO_DB + POSIX)
    assert any("backup.shared_mount" in p and 'give a machine role "backup"' in p for p in got), got
    parse(cluster(), "c.toml")  # with the backup machine: valid


# --------------------------------------------------------------------------- what each machine gets


def test_the_database_machines_name_the_backup_machine_and_their_tls_files() -> None:
    b = lc(cluster(), "db1")["backup"]
    assert isinstance(b, dict)
    assert b["repository"] == {
        "type": "posix",
        "path": "/var/lib/pgbackrest",
        "host": {"name": "bk1", "address": "10.0.0.9"},
    }
    assert b["tlsPort"] == 8432
    assert b["tls"] == {
        "caFile": "/var/lib/lemmy-cluster/secrets/backup-tls-ca",
        "certFile": "/var/lib/lemmy-cluster/secrets/backup-tls-cert",
        "keyFile": "/var/lib/lemmy-cluster/secrets/backup-tls-key",
    }


def test_the_backup_machine_gets_every_database_machine_and_only_its_secrets() -> None:
    text = cluster()
    r = lc(text, "bk1")["backupRepository"]
    assert isinstance(r, dict)
    assert [(d["name"], d["address"], d["dataDir"]) for d in r["databases"]] == [
        ("db1", "10.0.0.3", "/var/lib/postgresql/17"),
        ("db2", "10.0.0.4", "/var/lib/postgresql/17"),
    ]
    assert r["path"] == "/var/lib/pgbackrest" and r["retention"] == {"full": 2, "diff": 6}
    c = parse(text, "c.toml")
    hosts = plan(c)
    assert sorted(hosts["bk1"].secrets) == ["backup_cipher_pass", "backup_tls_ca", "backup_tls_cert", "backup_tls_key"]
    assert "backup_tls_cert" not in hosts["app1"].secrets and "backup_tls_cert" not in hosts["fe1"].secrets
    # Peers both ways (firewall rules, mesh): the database machines and the backup machine.
    assert set(hosts["bk1"].peers) == {"db1", "db2"}
    assert "bk1" in hosts["db1"].peers and "bk1" not in hosts["app1"].peers
    assert "backup" not in lc(text, "bk1"), "the backup machine runs no PostgreSQL of its own"


def test_with_the_mesh_the_tls_addresses_are_the_mesh_addresses(tmp_path: Path) -> None:
    """The TLS connections go to the mesh addresses (the certificates are made for them too)."""
    file = tmp_path / "cluster.toml"
    file.write_text(cluster('\n[network]\nmesh = "wireguard"\n'))
    code, out, err = run("secrets", "init", str(file))
    assert code == 0, out + err
    c = parse(file.read_text(), "cluster.toml")
    hosts = plan(c)
    assert hosts["bk1"].private_address != "10.0.0.9", "the mesh address, not the machine's own"
    b = host_data(c, hosts["db1"])["services"]["lemmy-cluster"]["backup"]
    assert b["repository"]["host"]["address"] == hosts["bk1"].private_address
    r = host_data(c, hosts["bk1"])["services"]["lemmy-cluster"]["backupRepository"]
    assert [d["address"] for d in r["databases"]] == [hosts["db1"].private_address, hosts["db2"].private_address]
    folder = tmp_path / "secrets"
    backuptls.check_machine_cert(
        (folder / "backup-tls-ca").read_bytes(),
        (folder / "backup-tls-key.bk1").read_bytes(),
        (folder / "backup-tls-cert.bk1").read_bytes(),
        "bk1",
        hosts["bk1"].private_address,
    )


def test_deploy_order_puts_the_backup_machine_after_the_databases_and_before_the_apps() -> None:
    c = parse(cluster(), "c.toml")
    stages = [(b.stage, b.machines) for b in batches(c)]
    names = [s for s, _ in stages]
    assert ("backup", ("bk1",)) in stages
    assert names.index("backup") > names.index("postgres-replicas") > names.index("postgres-primary")
    assert names.index("backup") < names.index("pictrs"), names


def test_restore_takes_its_last_backup_on_the_backup_machine() -> None:
    c = parse(cluster(), "c.toml")
    last = restore_steps(c, None)[-1]
    assert last.machine == "bk1" and "backup --type=full" in last.command
    assert restore_steps(c, None)[0].machine == "db1", "the restore itself runs on the primary"


# --------------------------------------------------------------------------- certificates


def test_certificates_name_the_machine_and_its_address_and_are_signed_by_the_ca() -> None:
    ca_key, ca = backuptls.new_ca("t")
    key, cert = backuptls.new_machine_cert(ca_key, ca, "db1", "10.0.0.3")
    backuptls.check_machine_cert(ca, key, cert, "db1", "10.0.0.3")
    parsed = x509.load_pem_x509_certificate(cert)
    assert parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "db1"
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # pgBackRest 2.45 matches only DNS names: the address is one too.
    assert san.get_values_for_type(x509.DNSName) == ["db1", "10.0.0.3"]
    assert parsed.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=3000)
    with pytest.raises(backuptls.TlsFileError, match="not the machine 'db2'"):
        backuptls.check_machine_cert(ca, key, cert, "db2", "10.0.0.3")
    with pytest.raises(backuptls.TlsFileError, match=r"address is 10\.0\.0\.7 now"):
        backuptls.check_machine_cert(ca, key, cert, "db1", "10.0.0.7")
    other_key, other = backuptls.new_ca("other")
    with pytest.raises(backuptls.TlsFileError, match="not signed by the cluster's backup CA"):
        backuptls.check_machine_cert(other, key, cert, "db1", "10.0.0.3")
    key2, _ = backuptls.new_machine_cert(ca_key, ca, "db1", "10.0.0.3")
    with pytest.raises(backuptls.TlsFileError, match="do not belong together"):
        backuptls.check_machine_cert(ca, key2, cert, "db1", "10.0.0.3")
    with pytest.raises(backuptls.TlsFileError, match="do not belong together"):
        backuptls.check_ca(other_key, ca)


def test_ipv6_addresses(tmp_path: Path) -> None:
    ca_key, ca = backuptls.new_ca("t")
    key, cert = backuptls.new_machine_cert(ca_key, ca, "db1", "2001:db8::3")
    backuptls.check_machine_cert(ca, key, cert, "db1", "2001:db8:0::3")


@pytest.fixture
def bk_cluster(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "tests" / "golden" / "backup-host.toml", tmp_path / "cluster.toml")
    return tmp_path / "cluster.toml"


def test_secrets_init_makes_the_ca_and_a_pair_per_machine_and_keeps_them(bk_cluster: Path) -> None:
    code, out, err = run("secrets", "init", str(bk_cluster))
    assert code == 0, out + err
    folder = bk_cluster.parent / "secrets"
    for name in (
        "backup-tls-ca-key",
        "backup-tls-ca",
        *(f"backup-tls-{k}.{m}" for k in ("cert", "key") for m in ("db1", "db2", "bk1")),
    ):
        assert (folder / name).exists(), f"{name} not made: {out}"
        assert (folder / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    assert not list(folder.glob("backup-tls-*.app1")), "only the database machines and the backup machine"
    ca = (folder / "backup-tls-ca").read_bytes()
    backuptls.check_machine_cert(
        ca,
        (folder / "backup-tls-key.bk1").read_bytes(),
        (folder / "backup-tls-cert.bk1").read_bytes(),
        "bk1",
        "10.0.0.40",
    )
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, out, err = run("secrets", "init", str(bk_cluster))
    assert code == 0 and "0 created" in out, out + err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "a second init changes nothing"


def test_secrets_init_reports_a_certificate_for_an_old_address(bk_cluster: Path) -> None:
    assert run("secrets", "init", str(bk_cluster))[0] == 0
    text = bk_cluster.read_text().replace('address = "10.0.0.40"', 'address = "10.0.0.41"')
    bk_cluster.write_text(text)
    folder = bk_cluster.parent / "secrets"
    cert = (folder / "backup-tls-cert.bk1").read_bytes()
    code, out, err = run("secrets", "init", str(bk_cluster))
    assert code == 1, out + err
    assert "backup-tls-cert.bk1 is for the address 10.0.0.40, and bk1's address is 10.0.0.41 now" in err, err
    assert "synth secrets push --host bk1" in err, err
    assert (folder / "backup-tls-cert.bk1").read_bytes() == cert, "never overwritten"


def test_secrets_init_refuses_to_sign_without_the_ca_key(bk_cluster: Path) -> None:
    assert run("secrets", "init", str(bk_cluster))[0] == 0
    folder = bk_cluster.parent / "secrets"
    (folder / "backup-tls-ca-key").unlink()
    (folder / "backup-tls-cert.db2").unlink()
    (folder / "backup-tls-key.db2").unlink()
    code, out, err = run("secrets", "init", str(bk_cluster))
    assert code == 1 and "backup-tls-ca-key is missing (the backup CA)" in err, out + err
    assert not (folder / "backup-tls-cert.db2").exists()


def test_the_ca_key_is_never_pushed(bk_cluster: Path) -> None:
    c = parse(bk_cluster.read_text(), "cluster.toml")
    for h in plan(c).values():
        assert not any("ca-key" in path for path in h.secrets.values()), h.name


# --------------------------------------------------------------------------- checks


class FakeHost:
    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers

    def run(self, command: str) -> object:
        for prefix, (rc, out) in self.answers.items():
            if command.startswith(prefix):
                return type("R", (), {"rc": rc, "stdout": out, "stderr": ""})()
        raise AssertionError(f"unexpected command {command}")


def test_repository_checks_report_the_server_and_the_newest_backup() -> None:
    now = 1_800_000_000
    stop = now - 3600
    info = f'[{{"status":{{"code":0,"message":"ok"}},"backup":[{{"timestamp":{{"stop":{stop}}},"error":false}}]}}]'
    host = FakeHost({"systemctl is-active": (0, "active"), "lemmy-cluster-pgbackrest": (0, info)})
    got = {r.name: r for r in repository_checks(host, now=now)}
    assert got["backup: repository server"].ok and got["backup: last backup"].ok
    assert "1 h ago" in got["backup: last backup"].detail or "60 min" in got["backup: last backup"].detail
    down = FakeHost({"systemctl is-active": (3, "inactive"), "lemmy-cluster-pgbackrest": (0, info)})
    res = {r.name: r for r in repository_checks(down, now=now)}
    assert not res["backup: repository server"].ok and "inactive" in res["backup: repository server"].detail


# --------------------------------------------------------------------------- pict-rs's bucket


def storage_cluster(extra: str = "") -> str:
    """tests/golden/storage.toml (three Garage machines, pict-rs on object storage) with a backup
    machine and [backup] posix."""
    text = (ROOT / "tests" / "golden" / "storage.toml").read_text()
    return (
        text
        + '\n[backup]\nrepository = "posix"\n'
        + extra
        + '\n[machines.bk1]\naddress = "10.2.0.50"\nroles = ["backup"]\n'
    )


def test_the_backup_machine_copies_pictrs_bucket_with_a_read_only_key_of_its_own() -> None:
    c = parse(storage_cluster(), "c.toml")
    hosts = plan(c)
    images = lc(storage_cluster(), "bk1")["backupRepository"]["images"]  # type: ignore[index]
    store1 = hosts["store1"]
    assert images["endpoint"] == f"http://{store1.private_address}:3900"
    assert images["bucket"] == "lemmy-images" and images["pathStyle"] is True
    assert images["keepDays"] == 21, "full_retention 2: three weeks, as long as the oldest full backup"
    assert images["accessKeyFile"].endswith("/images-backup-access-key")
    # The first storage machine imports that key (read-only: modules/storage), and lets bk1 in.
    setup = lc(storage_cluster(), "store1")["storage"]["setup"]  # type: ignore[index]
    assert setup["imagesBackup"]["keyName"] == "images-backup"
    assert hosts["bk1"].private_address in lc(storage_cluster(), "store1")["storage"]["s3Clients"]  # type: ignore[index]
    assert hosts["bk1"].private_address not in lc(storage_cluster(), "store2")["storage"]["s3Clients"]  # type: ignore[index]
    assert "store1" in hosts["bk1"].peers and "bk1" in hosts["store1"].peers
    # Only bk1 and the first storage machine hold the key; pict-rs's own key is not bk1's.
    holders = sorted(n for n, h in hosts.items() if "images_backup_access_key" in h.secrets)
    assert holders == ["bk1", "store1"]
    assert "s3_access_key" not in hosts["bk1"].secrets


def test_images_can_be_turned_off_and_are_refused_where_they_cannot_work() -> None:
    off = parse(storage_cluster("images = false\n"), "c.toml")
    assert "images" not in host_data(off, plan(off)["bk1"])["services"]["lemmy-cluster"]["backupRepository"]
    assert "images_backup_access_key" not in plan(off)["store1"].secrets
    # A local pict-rs has no bucket to copy.
    got = problems(cluster("images = true\n"))
    assert any(p.startswith("c.toml: backup.images:") and 'store = "object_storage"' in p for p in got), got
    # Without the flag a local pict-rs simply gets nothing.
    assert "images" not in lc(cluster(), "bk1")["backupRepository"]  # type: ignore[operator]


def test_with_an_external_provider_the_read_only_key_is_the_admins(tmp_path: Path) -> None:
    text = cluster(
        "",
        TWO_DB
        + '\n[pictrs]\nstore = "object_storage"\nendpoint = "https://s3.example.net"\nbucket = "img"\n'
        + "path_style = true\n",
    )
    file = tmp_path / "cluster.toml"
    file.write_text(text)
    images = lc(text, "bk1")["backupRepository"]["images"]  # type: ignore[index]
    assert images["endpoint"] == "https://s3.example.net" and images["bucket"] == "img"
    code, out, err = run("secrets", "init", str(file))
    assert code == 0, out + err
    assert "missing: " in out and "images-backup-access-key: put the key your S3 provider gave you" in out, out
    assert not (tmp_path / "secrets" / "images-backup-access-key").exists(), "never invented"


def test_repository_checks_report_the_last_copy_of_the_bucket() -> None:
    now = 1_800_000_000
    stop = now - 60
    info = f'[{{"status":{{"code":0,"message":"ok"}},"backup":[{{"timestamp":{{"stop":{stop}}},"error":false}}]}}]'

    def host(show: str) -> FakeHost:
        return FakeHost(
            {
                "systemctl is-active": (0, "active"),
                "systemctl show": (0, show),
                "lemmy-cluster-pgbackrest": (0, info),
            }
        )

    def copy(show: str) -> object:
        got = {r.name: r for r in repository_checks(host(show), now=now, images=True)}
        return got["backup: images copy"]

    ok = copy(f"Result=success\nExecMainExitTimestamp=@{now - 7200}\n")
    assert ok.ok and "2 h ago" in ok.detail, ok  # type: ignore[attr-defined]
    old = copy(f"Result=success\nExecMainExitTimestamp=@{now - 3 * 86400}\n")
    assert not old.ok and "does its timer run" in old.detail, old  # type: ignore[attr-defined]
    failed = copy(f"Result=exit-code\nExecMainExitTimestamp=@{now - 600}\n")
    assert not failed.ok and "failed (exit-code)" in failed.detail, failed  # type: ignore[attr-defined]
    never = copy("Result=success\nExecMainExitTimestamp=\n")
    assert never.ok and "yet" in never.detail, never  # type: ignore[attr-defined]
    without = {r.name for r in repository_checks(host("Result=success\n"), now=now)}
    assert "backup: images copy" not in without, "no bucket to copy: no check"
