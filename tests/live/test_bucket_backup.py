"""Live tests of the images bucket's backup (README, "Backups and point-in-time recovery", **Images.**):
modules/backup/scripts/bucket-backup.sh, the script the backup machine's unit runs, driving
Debian's rclone 1.60 to copy pict-rs's bucket to a folder; restores with rclone back.

The script runs `rclone sync src:pictrs <dest>/current --backup-dir <dest>/deleted/<UTC time>`
with a key that can only read: `current` is a mirror of the bucket, and what a run would delete
or overwrite there (an object purged from the bucket, the old version of an overwritten one) is
moved to that run's `deleted/<UTC time>/` instead of vanishing; then it removes the deleted/
folders whose time (their name) is older than --keep-days. A plain `rclone sync` would delete the
backup's copy at the next run after a purge, which is what the backup is for. Restores are
`rclone copyto`/`rclone copy` from those folders into the bucket with a key that can write.

rclone is the tool under test. The S3 server stands in for Garage, which cannot be installed
here: moto's S3 (5.2, its server on the loopback of an "s3" namespace, its signature-v4 and IAM
policy checks on once the test has made the users, their keys and the bucket), behind Debian's
nginx terminating TLS on 10.229.0.40:443 with a certificate from a CA this test makes
(tests/live/test_backup_s3.py's helpers). moto's read-only key is an IAM user policy (s3:GetObject,
s3:ListBucket); Garage's is `garage bucket allow --read` (not run here). Subnet 10.229.0.0/24,
bridge lcbr-k5, namespaces lck5-; rclone and boto3 run in the test's own namespace, the backup
folder is under a temporary folder.

The script is run as the unit runs it: the read-only key's two files (--access-key-file,
--secret-key-file), path-style requests, and here the test's CA (--ca-cert; test-only: Garage's S3
API is plain http on port 3900). It writes rclone's configuration without keys (type = s3,
provider = Other, the endpoint, the region, path-style, no bucket check) to a private temporary
folder; the keys reach rclone only through its own environment (RCLONE_CONFIG_SRC_ACCESS_KEY_ID /
_SECRET_ACCESS_KEY), which a stand-in for rclone checks (test_f_*). The restores run rclone
directly, with a configuration of the same shape and pict-rs's key in rclone's environment.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, require, require_root
from tests.live import pg
from tests.live.netns import Host, Network
from tests.live.test_backup_s3 import MOTO_PORT, NGINX, enforce_auth, make_certificates, nginx_conf, wait_for_s3

pytestmark = pytest.mark.live

SUBNET = "10.229.0."
S3_ADDRESS = f"{SUBNET}40"
ENDPOINT = f"https://{S3_ADDRESS}"
BUCKET = "pictrs"
REGION = "garage"
RCLONE = "/usr/bin/rclone"
REMOTE = "garage"  # the restores' remote (README); the script's is "src"
SCRIPT = ROOT / "modules" / "backup" / "scripts" / "bucket-backup.sh"
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}Z$")

READ_ONLY = ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"]


@dataclass
class Key:
    id: str
    secret: str


@dataclass
class Lab:
    workdir: Path
    dest: Path  # the backup folder: current/ and deleted/<UTC time>/
    conf: Path
    ca: Path
    keyfiles: tuple[Path, Path]  # the read-only key's id and secret, one a file
    writer: Key  # pict-rs's key: s3:*
    reader: Key  # the backup's key: read only
    s3: Any  # boto3's S3 client with pict-rs's key
    stamps: list[str]

    def rclone(self, key: Key, *args: str) -> subprocess.CompletedProcess[str]:
        """rclone ARGS with KEY in rclone's environment only; the config file has no key."""
        env = {
            "PATH": pg.SYS_PATH,
            "HOME": str(self.workdir),
            f"RCLONE_CONFIG_{REMOTE.upper()}_ACCESS_KEY_ID": key.id,
            f"RCLONE_CONFIG_{REMOTE.upper()}_SECRET_ACCESS_KEY": key.secret,
        }
        cmd = [RCLONE, "--config", str(self.conf), "--ca-cert", str(self.ca), *args]
        return subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=120, check=False)

    def script(self, *extra: str, keep_days: str = "30") -> subprocess.CompletedProcess[str]:
        """bucket-backup.sh as the unit runs it: the read-only key's files, path-style, the CA."""
        return run_script(
            self.workdir,
            "--endpoint",
            ENDPOINT,
            "--region",
            REGION,
            "--bucket",
            BUCKET,
            "--dest",
            str(self.dest),
            "--keep-days",
            keep_days,
            "--access-key-file",
            str(self.keyfiles[0]),
            "--secret-key-file",
            str(self.keyfiles[1]),
            "--path-style",
            "--ca-cert",
            str(self.ca),
            *extra,
        )

    def backup(self, keep_days: str = "30") -> str:
        """One run of the script; the run's deleted/ folder name (from its summary line)."""
        r = self.script(keep_days=keep_days)
        assert r.returncode == 0, r.stdout + r.stderr
        m = re.search(rf"moved to {re.escape(str(self.dest))}/deleted/(\S+);", r.stdout)
        assert m and STAMP.match(m.group(1)), r.stdout
        assert not any((self.workdir / "tmp").iterdir()), "the script's rclone.conf folder was left behind"
        self.stamps.append(m.group(1))
        return m.group(1)

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    def bucket(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for o in page.get("Contents", []):
                out[o["Key"]] = self.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        return out


def run_script(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": pg.SYS_PATH, "HOME": str(workdir), "TMPDIR": str(workdir / "tmp")}
    (workdir / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=base | (env or {}), text=True, capture_output=True, timeout=120, check=False
    )


def write_key(path: Path, value: str) -> Path:
    path.write_text(value + "\n")  # as an admin's editor leaves it; the script strips one newline
    path.chmod(0o400)
    return path


def files(folder: Path) -> dict[str, bytes]:
    """The files under FOLDER by their path relative to it (an object's key), with their bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def rclone_conf(path: Path) -> None:
    path.write_text(
        f"[{REMOTE}]\ntype = s3\nprovider = Other\nendpoint = {ENDPOINT}\nregion = {REGION}\n"
        "force_path_style = true\nno_check_bucket = true\n"
    )
    path.chmod(0o600)


def start_s3(host: Host, folder: Path, certs: dict[str, Path]) -> tuple[Key, Key]:
    """moto and nginx in HOST's namespace; pict-rs's user (s3:*) and the backup's (read only),
    their keys and the bucket made there, then moto's authentication turned on."""
    import boto3

    log = (folder / "moto.log").open("ab")
    moto_server = Path(sys.executable).parent / "moto_server"
    env = {"PATH": pg.SYS_PATH, "S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true"}
    args = [str(moto_server), "-H", "127.0.0.1", "-p", str(MOTO_PORT)]
    host.popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    conf = nginx_conf(folder, certs, address=S3_ADDRESS)
    host.popen([NGINX, "-e", str(folder / "error.log"), "-c", str(conf)])
    wait_for_s3(ENDPOINT, certs["ca"], folder / "moto.log")
    admin = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    kw = {"endpoint_url": ENDPOINT, "region_name": REGION, "verify": str(certs["ca"])}
    iam = boto3.client("iam", **kw, **admin)
    keys = []
    for user, actions in (("pictrs", ["s3:*"]), ("images-backup", READ_ONLY)):
        iam.create_user(UserName=user)
        made = iam.create_access_key(UserName=user)["AccessKey"]
        resources = [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resources}]}
        iam.put_user_policy(UserName=user, PolicyName="bucket", PolicyDocument=json.dumps(policy))
        keys.append(Key(str(made["AccessKeyId"]), str(made["SecretAccessKey"])))
    location = {"LocationConstraint": REGION}
    boto3.client("s3", **kw, **admin).create_bucket(Bucket=BUCKET, CreateBucketConfiguration=location)
    enforce_auth(ENDPOINT, certs["ca"])
    return keys[0], keys[1]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    require(Path(RCLONE).exists(), "rclone is not installed (scripts/install-system-deps.sh installs Debian's)")
    require(Path(NGINX).exists(), "nginx is not installed (scripts/install-system-deps.sh installs it)")
    try:
        import boto3
        import moto  # noqa: F401
    except ImportError:
        require(False, "moto is not installed (pyproject.toml's test extra: make setup)")
    workdir = Path(tempfile.mkdtemp(prefix="lcbucket-", dir="/tmp"))
    try:
        with Network(f"{SUBNET}0/24", bridge="lcbr-k5", prefix="lck5-") as net:
            folder = workdir / "s3"
            folder.mkdir()
            certs = make_certificates(folder, address=S3_ADDRESS)
            writer, reader = start_s3(net.add("s3", S3_ADDRESS), folder, certs)
            conf = workdir / "rclone.conf"
            rclone_conf(conf)
            client = boto3.client(
                "s3",
                endpoint_url=ENDPOINT,
                region_name=REGION,
                aws_access_key_id=writer.id,
                aws_secret_access_key=writer.secret,
                verify=str(certs["ca"]),
            )
            keyfiles = (write_key(workdir / "access-key", reader.id), write_key(workdir / "secret-key", reader.secret))
            dest = workdir / "backup"
            yield Lab(workdir, dest, conf, certs["ca"], keyfiles, writer, reader, client, [])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# Keys shaped like pict-rs's (a folder tree of its own ids); bodies random, one over rclone's
# 5 MiB default chunk size.
OBJECTS = {
    "files/2026/12/02/aa/bb/one.webp": secrets.token_bytes(40_000),
    "files/2026/12/02/aa/cc/two.png": secrets.token_bytes(123_457),
    "files/2026/12/02/dd/ee/three.mp4": secrets.token_bytes(6 * 1024 * 1024 + 3),
    "files/2026/12/02/dd/ff/four.jpg": b"",
}
PURGED = "files/2026/12/02/aa/cc/two.png"
OVERWRITTEN = "files/2026/12/02/aa/bb/one.webp"
NEW_BODY = secrets.token_bytes(41_001)
ADDED = "files/2026/12/03/11/22/five.avif"
ADDED_BODY = secrets.token_bytes(7_777)


def test_a_sync_copies_every_object_byte_for_byte_with_a_read_only_key(lab: Lab) -> None:
    for key, body in OBJECTS.items():
        lab.put(key, body)
    assert lab.bucket() == OBJECTS
    lab.backup()
    got = files(lab.dest / "current")
    assert got.keys() == OBJECTS.keys()
    for key, body in OBJECTS.items():
        assert hashlib.sha256(got[key]).hexdigest() == hashlib.sha256(body).hexdigest(), key
    assert not files(lab.dest / "deleted"), "nothing was deleted yet"
    for sub in ("current", "deleted"):
        assert (lab.dest / sub).stat().st_mode & 0o777 == 0o750, sub


def test_a_purged_and_an_overwritten_object_stay_in_the_backup(lab: Lab) -> None:
    lab.s3.delete_object(Bucket=BUCKET, Key=PURGED)
    lab.put(OVERWRITTEN, NEW_BODY)
    lab.put(ADDED, ADDED_BODY)
    assert PURGED not in lab.bucket()
    stamp = lab.backup()
    # current/ mirrors the bucket as it is now.
    want = {k: v for k, v in OBJECTS.items() if k != PURGED} | {OVERWRITTEN: NEW_BODY, ADDED: ADDED_BODY}
    assert files(lab.dest / "current") == want
    # What the run removed or replaced in current/ is in that run's deleted/ folder, unchanged.
    moved = files(lab.dest / "deleted" / stamp)
    assert moved == {PURGED: OBJECTS[PURGED], OVERWRITTEN: OBJECTS[OVERWRITTEN]}
    # A further run with nothing changed moves nothing and keeps the earlier folder.
    again = lab.backup()
    assert not (lab.dest / "deleted" / again).exists() or not files(lab.dest / "deleted" / again)
    assert files(lab.dest / "deleted" / stamp) == moved
    assert files(lab.dest / "current") == want


def test_restore_one_object_then_everything_with_a_key_that_can_write(lab: Lab) -> None:
    stamp = lab.stamps[1]  # the run that moved the purged object aside
    saved = lab.dest / "deleted" / stamp / PURGED
    r = lab.rclone(lab.writer, "copyto", str(saved), f"{REMOTE}:{BUCKET}/{PURGED}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lab.s3.get_object(Bucket=BUCKET, Key=PURGED)["Body"].read() == OBJECTS[PURGED]
    # Everything: the bucket emptied (a purge of all), current/ copied back.
    for key in lab.bucket():
        lab.s3.delete_object(Bucket=BUCKET, Key=key)
    assert not lab.bucket()
    r = lab.rclone(lab.writer, "copy", str(lab.dest / "current"), f"{REMOTE}:{BUCKET}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lab.bucket() == files(lab.dest / "current")


def test_the_backup_key_cannot_write_or_delete(lab: Lab) -> None:
    """The key the timer uses can read the bucket (the syncs above ran with it) and nothing more:
    a restore with it is refused and changes nothing."""
    before = lab.bucket()
    saved = lab.dest / "deleted" / lab.stamps[1] / OVERWRITTEN
    r = lab.rclone(lab.reader, "copyto", str(saved), f"{REMOTE}:{BUCKET}/{OVERWRITTEN}", "--retries", "1")
    assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stdout + r.stderr
    r = lab.rclone(lab.reader, "deletefile", f"{REMOTE}:{BUCKET}/{ADDED}", "--retries", "1")
    assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stdout + r.stderr
    assert lab.bucket() == before


def stamp_days_ago(days: int) -> str:
    return (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H%M%SZ")


def test_e_deleted_folders_older_than_keep_days_expire_by_the_time_in_their_name(lab: Lab) -> None:
    deleted = lab.dest / "deleted"
    old, recent = deleted / stamp_days_ago(40), deleted / stamp_days_ago(2)
    other = deleted / "kept-by-hand"
    for d in (old, recent, other):
        (d / "files").mkdir(parents=True)
        (d / "files" / "x").write_bytes(b"x")
        os.utime(d, (0, 0))  # an mtime far in the past: the name decides, not the mtime
    before = files(lab.dest / "current")
    # The folders earlier runs of today made (a run that moved nothing makes none).
    today = [deleted / s for s in lab.stamps if (deleted / s).exists()]
    assert today, "the runs above moved a purged and an overwritten object aside"
    lab.backup(keep_days="0")  # 0 keeps every folder
    assert old.exists() and recent.exists() and other.exists()
    lab.backup(keep_days="30")
    assert not old.exists(), "a folder 40 days old outlived --keep-days 30"
    assert recent.exists() and other.exists()
    assert all(d.exists() for d in today), "today's folders were removed"
    assert files(lab.dest / "current") == before


# A stand-in for rclone: records its arguments, its environment and the configuration file it is
# given, then exits with $FAKE_RCLONE_RC (default 0).
FAKE_RCLONE = """#!/bin/bash
out=${0%/*}
printf '%s\\0' "$@" > "$out/argv"
env -0 > "$out/env"
cp -- "$RCLONE_CONFIG" "$out/conf"
stat -c %a -- "${RCLONE_CONFIG%/*}" > "$out/confdir-mode"
echo "${RCLONE_CONFIG%/*}" > "$out/confdir"
exit "${FAKE_RCLONE_RC:-0}"
"""


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    rclone = tmp_path / "bin" / "rclone"
    rclone.write_text(FAKE_RCLONE)
    rclone.chmod(0o755)
    write_key(tmp_path / "ak", "AKIDTESTKEY1234")
    write_key(tmp_path / "sk", "s3cr3t/with+chars=")
    (tmp_path / "ca.pem").write_text("not read by the stand-in\n")
    return tmp_path


def fake_args(folder: Path, *extra: str) -> list[str]:
    return [
        "--endpoint",
        "http://10.0.0.5:3900",
        "--region",
        "garage",
        "--bucket",
        "pictrs",
        "--dest",
        str(folder / "dest"),
        "--keep-days",
        "30",
        "--access-key-file",
        str(folder / "ak"),
        "--secret-key-file",
        str(folder / "sk"),
        "--rclone",
        str(folder / "bin" / "rclone"),
        *extra,
    ]


def recorded(folder: Path) -> tuple[list[str], dict[str, str]]:
    argv = (folder / "bin" / "argv").read_bytes().decode().split("\0")[:-1]
    env = dict(e.split("=", 1) for e in (folder / "bin" / "env").read_bytes().decode().split("\0") if e)
    return argv, env


def test_f_the_keys_reach_rclone_only_in_its_environment(fake: Path) -> None:
    r = run_script(fake, *fake_args(fake, "--path-style", "--ca-cert", str(fake / "ca.pem")))
    assert r.returncode == 0, r.stdout + r.stderr
    argv, env = recorded(fake)
    dest = fake / "dest"
    assert argv[:5] == ["sync", "src:pictrs", f"{dest}/current", "--backup-dir", argv[4]]
    assert re.fullmatch(rf"{re.escape(str(dest))}/deleted/\d{{4}}-\d{{2}}-\d{{2}}T\d{{6}}Z", argv[4]), argv
    assert argv[argv.index("--ca-cert") + 1] == str(fake / "ca.pem")
    for secret in ("AKIDTESTKEY1234", "s3cr3t/with+chars="):
        assert not any(secret in a for a in argv), argv
        assert secret not in (fake / "bin" / "conf").read_text()
        assert secret not in r.stdout + r.stderr
    assert env["RCLONE_CONFIG_SRC_ACCESS_KEY_ID"] == "AKIDTESTKEY1234"
    assert env["RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY"] == "s3cr3t/with+chars="
    conf = (fake / "bin" / "conf").read_text().splitlines()
    assert conf == [
        "[src]",
        "type = s3",
        "provider = Other",
        "endpoint = http://10.0.0.5:3900",
        "region = garage",
        "force_path_style = true",
        "no_check_bucket = true",
    ]
    assert (fake / "bin" / "confdir-mode").read_text().strip() == "700"
    assert not Path((fake / "bin" / "confdir").read_text().strip()).exists(), "rclone.conf outlived the run"


def test_f_the_credentials_directory_wins_and_no_path_style_without_the_flag(fake: Path) -> None:
    creds = fake / "creds"
    creds.mkdir()
    write_key(creds / "images-backup-access-key", "FROMCREDS")
    write_key(creds / "images-backup-secret-key", "fromcredssecret")
    r = run_script(fake, *fake_args(fake), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 0, r.stdout + r.stderr
    argv, env = recorded(fake)
    assert env["RCLONE_CONFIG_SRC_ACCESS_KEY_ID"] == "FROMCREDS"
    assert env["RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY"] == "fromcredssecret"
    assert "--ca-cert" not in argv
    assert "force_path_style" not in (fake / "bin" / "conf").read_text()


def test_f_rclone_failing_usage_errors_and_empty_keys(fake: Path) -> None:
    r = run_script(fake, *fake_args(fake), env={"FAKE_RCLONE_RC": "7"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rclone sync failed (exit 7)" in r.stderr and "nothing was deleted" in r.stderr, r.stderr
    old = fake / "dest" / "deleted" / stamp_days_ago(40)
    old.mkdir()
    r = run_script(fake, *fake_args(fake), env={"FAKE_RCLONE_RC": "7"})
    assert r.returncode == 1 and old.exists(), "a failed run expired a folder"
    (fake / "sk").chmod(0o600)
    (fake / "sk").write_text("\n")
    (fake / "bin" / "argv").unlink()
    r = run_script(fake, *fake_args(fake))
    assert r.returncode == 1 and f"{fake / 'sk'} is empty" in r.stderr, r.stderr
    assert not (fake / "bin" / "argv").exists(), "rclone ran without a key"
    for bad in (["--keep-days", "-1"], ["--dest", "relative"], ["--bogus"], ["--bucket"]):
        r = run_script(fake, *fake_args(fake), *bad)
        assert r.returncode == 2, (bad, r.stdout + r.stderr)
    r = run_script(fake, "--endpoint", "http://x")
    assert r.returncode == 2 and "usage:" in r.stderr


def test_f_a_run_never_reuses_an_earlier_runs_deleted_folder(fake: Path) -> None:
    """Two runs in one second would share deleted/<time>: the second's moved objects would
    overwrite the first's. The script waits for a time no folder has."""
    taken = fake / "dest" / "deleted" / stamp_days_ago(0)
    (taken / "files").mkdir(parents=True)
    (taken / "files" / "saved").write_bytes(b"an earlier run's")
    r = run_script(fake, *fake_args(fake))
    assert r.returncode == 0, r.stdout + r.stderr
    argv, _ = recorded(fake)
    assert argv[4] != str(taken), argv
    assert (taken / "files" / "saved").read_bytes() == b"an earlier run's"
