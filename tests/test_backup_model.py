"""cluster.toml [backup]: every rule has a failing case here that asserts its message."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from synth.backup import calendar_problem
from synth.errors import SynthError
from synth.model import parse
from synth.render import host_data
from synth.topology import plan
from tests.test_model import BASE, problems

TWO_DB = BASE + '\n[machines.db2]\naddress = "10.0.0.4"\nroles = ["postgres"]\n'
EXTERNAL = '\n[pictrs]\nstore = "object_storage"\nendpoint = "https://s3.example.net"\nbucket = "images"\n'


def with_backup(body: str, base: str = BASE) -> str:
    return base + "\n[backup]\n" + body + "\n"


def test_a_posix_repository_renders_the_module_options() -> None:
    c = parse(with_backup('repository = "posix"\nfull_retention = 3'), "c.toml")
    b = host_data(c, plan(c)["db1"])["services"]["lemmy-cluster"]["backup"]
    assert b["repository"] == {"type": "posix", "path": "/var/lib/pgbackrest"}
    assert b["retention"] == {"full": 3, "diff": 6}
    assert b["cipherPassFile"] == "/var/lib/lemmy-cluster/secrets/backup-cipher-pass"
    assert "s3AccessKeyFile" not in b
    assert "backup_cipher_pass" in plan(c)["db1"].secrets
    assert "backup_cipher_pass" not in plan(c)["app1"].secrets, "only the postgres machines get it"
    assert "backup" not in host_data(c, plan(c)["app1"])["services"]["lemmy-cluster"]


def test_external_s3_uses_the_pictrs_endpoint_and_its_own_bucket() -> None:
    c = parse(with_backup('repository = "external-s3"\nbucket = "backups"', BASE + EXTERNAL), "c.toml")
    b = host_data(c, plan(c)["db1"])["services"]["lemmy-cluster"]["backup"]
    assert b["repository"]["endpoint"] == "https://s3.example.net"
    assert b["repository"]["bucket"] == "backups"
    assert b["s3AccessKeyFile"].endswith("/backup-s3-access-key")


def test_unknown_repository_kind() -> None:
    assert any("backup.repository: invalid value 'nfs'" in p for p in problems(with_backup('repository = "nfs"')))


def test_posix_with_several_machines_needs_a_shared_mount() -> None:
    got = problems(with_backup('repository = "posix"', TWO_DB))
    assert any("backup.shared_mount" in p and "shared filesystem" in p for p in got), got
    parse(with_backup('repository = "posix"\nshared_mount = true', TWO_DB), "c.toml")


def test_posix_path_must_be_absolute_and_outside_the_store() -> None:
    got = problems(with_backup('repository = "posix"\npath = "/nix/store/x"'))
    assert any("backup.path" in p for p in got), got
    got = problems(with_backup('repository = "posix"\npath = "backups"'))
    assert any("backup.path" in p for p in got), got


def test_s3_needs_storage_machines() -> None:
    got = problems(with_backup('repository = "s3"'))
    assert any("backup.repository" in p and "storage machines" in p for p in got), got


def test_external_s3_needs_the_pictrs_endpoint_and_a_bucket_of_its_own() -> None:
    got = problems(with_backup('repository = "external-s3"\nbucket = "backups"'))
    assert any("backup.repository" in p and "[pictrs] endpoint" in p for p in got), got
    got = problems(with_backup('repository = "external-s3"', BASE + EXTERNAL))
    assert any("backup.bucket: required" in p for p in got), got
    got = problems(with_backup('repository = "external-s3"\nbucket = "images"', BASE + EXTERNAL))
    assert any("backup.bucket: must differ" in p for p in got), got


def test_retention_bounds() -> None:
    got = problems(with_backup('repository = "posix"\nfull_retention = 0'))
    assert any("backup.full_retention" in p for p in got), got


def test_a_bad_schedule_names_the_field() -> None:
    got = problems(with_backup('repository = "posix"\nfull_schedule = "every sunday"'))
    assert any("backup.full_schedule: not a systemd OnCalendar expression" in p for p in got), got


def test_keys_of_another_repository_kind_are_refused() -> None:
    got = problems(with_backup('repository = "posix"\nbucket = "b"'))
    assert any("backup.bucket: only used with an S3 repository" in p for p in got), got


GOOD = [
    "Sun",
    "daily",
    "weekly",
    "Sun *-*-* 01:00:00",
    "Mon..Sat *-*-* 01:00:00",
    "*-*-* 03:30",
    "Mon,Wed 02:00",
    "04:00",
]
BAD = ["every sunday", "Funday 01:00", "", "01:00 Sun", "Sun *-*-* 25"]


@pytest.mark.parametrize("text", GOOD)
def test_calendar_accepts(text: str) -> None:
    assert calendar_problem(text) is None


@pytest.mark.parametrize("text", BAD)
def test_calendar_refuses(text: str) -> None:
    assert calendar_problem(text) is not None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("text", GOOD + BAD[:4])
def test_calendar_agrees_with_systemd(text: str) -> None:
    """What synth accepts, systemd accepts (and the other way round, for these examples)."""
    r = subprocess.run(["systemd-analyze", "calendar", text], capture_output=True, text=True, check=False)
    assert (r.returncode == 0) == (calendar_problem(text) is None), r.stdout + r.stderr


def test_no_postgres_machine() -> None:
    text = BASE.replace('roles = ["postgres"]', 'roles = ["frontend"]')
    with pytest.raises(SynthError):
        parse(with_backup('repository = "posix"', text), "c.toml")


def test_s3_on_the_storage_machines_opens_garage_to_the_database_machines() -> None:
    from tests.conftest import ROOT

    text = (ROOT / "tests" / "golden" / "storage.toml").read_text() + '\n[backup]\nrepository = "s3"\n'
    c = parse(text, "c.toml")
    plans = plan(c)
    pgs = [c.private_address(m) for m in c.machines_with("postgres")]
    first = c.machines_with("storage")[0]
    st = plans[first].storage
    assert st is not None and all(a in st.s3_clients for a in pgs), "the database machines reach Garage's S3 API"
    assert st.backup_bucket == "pgbackrest"
    setup = host_data(c, plans[first])["services"]["lemmy-cluster"]["storage"]["setup"]
    assert setup["backup"]["keyName"] == "pgbackrest"
    assert setup["backup"]["accessKeyFile"].endswith("/backup-s3-access-key")
    b = host_data(c, plans["db1"])["services"]["lemmy-cluster"]["backup"]
    assert b["repository"]["endpoint"] == f"http://{c.private_address(first)}:3900"
    assert b["repository"]["uriStyle"] == "path"
    for name in c.machines_with("storage")[1:]:
        other = plans[name].storage
        assert other is not None and other.backup_bucket is None, "one machine creates the bucket"


def test_a_local_pictrs_on_a_posix_machine_gets_its_folder_snapshotted() -> None:
    from tests.conftest import EXAMPLES

    c = parse((EXAMPLES / "single.toml").read_text(), "c.toml")
    b = host_data(c, plan(c)["lemmy1"])["services"]["lemmy-cluster"]["backup"]
    assert b["pictrsFiles"] == {"enable": True, "destination": "/var/lib/pgbackrest/pictrs-files", "keep": 7}
    # pict-rs elsewhere, or object storage: no snapshot of a local folder.
    c = parse(with_backup('repository = "posix"'), "c.toml")
    assert "pictrsFiles" not in host_data(c, plan(c)["db1"])["services"]["lemmy-cluster"]["backup"]
