"""Live tests of the images bucket's backup procedure (README, "Backups and point-in-time recovery",
**Images.**): Debian's rclone 1.60 copying pict-rs's bucket to a folder and back.

The procedure is `rclone sync garage:pictrs <dest>/current --backup-dir <dest>/deleted/<UTC time>`
with a key that can only read: `current` is a mirror of the bucket, and what a run would delete
or overwrite there (an object purged from the bucket, the old version of an overwritten one) is
moved to that run's `deleted/<UTC time>/` instead of vanishing. A plain `rclone sync` would
delete the backup's copy at the next run after a purge, which is what the backup is for.
Restores are `rclone copyto`/`rclone copy` from those folders into the bucket with a key that can
write.

rclone is the tool under test. The S3 server stands in for Garage, which cannot be installed
here: moto's S3 (5.2, its server on the loopback of an "s3" namespace, its signature-v4 and IAM
policy checks on once the test has made the users, their keys and the bucket), behind Debian's
nginx terminating TLS on 10.229.0.40:443 with a certificate from a CA this test makes
(tests/live/test_backup_s3.py's helpers). moto's read-only key is an IAM user policy (s3:GetObject,
s3:ListBucket); Garage's is `garage bucket allow --read` (not run here). Subnet 10.229.0.0/24,
bridge lcbr-k5, namespaces lck5-; rclone and boto3 run in the test's own namespace, the backup
folder is under a temporary folder.

rclone's configuration is a file without keys (type = s3, provider = Other, the endpoint, the
region, path-style requests, no bucket check); the keys reach rclone only through its own
environment (RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID / _SECRET_ACCESS_KEY), the test's CA through
--ca-cert (test-only: Garage's S3 API is plain http on port 3900).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require, require_root
from tests.live import pg
from tests.live.netns import Host, Network
from tests.live.test_backup_s3 import MOTO_PORT, NGINX, make_certificates, nginx_conf

pytestmark = pytest.mark.live

SUBNET = "10.229.0."
S3_ADDRESS = f"{SUBNET}40"
ENDPOINT = f"https://{S3_ADDRESS}"
BUCKET = "pictrs"
REGION = "garage"
RCLONE = "/usr/bin/rclone"
REMOTE = "garage"

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

    def backup(self) -> str:
        """One run of the documented backup, with the read-only key; the run's deleted/ folder name."""
        # The README's `date -u +%Y-%m-%dT%H%M%SZ`, with microseconds: the tests run twice a second.
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M%S.%fZ")
        self.stamps.append(stamp)
        r = self.rclone(
            self.reader,
            "sync",
            f"{REMOTE}:{BUCKET}",
            str(self.dest / "current"),
            "--backup-dir",
            str(self.dest / "deleted" / stamp),
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return stamp

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    def bucket(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for o in page.get("Contents", []):
                out[o["Key"]] = self.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        return out


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
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{ENDPOINT}/moto-api/data.json", context=context, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the S3 server did not answer: {(folder / 'moto.log').read_text()[-2000:]}")
        time.sleep(0.1)
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
    req = urllib.request.Request(
        f"{ENDPOINT}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, context=context, timeout=5) as r:
        assert r.status == 200, r.read()
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
            yield Lab(workdir, workdir / "backup", conf, certs["ca"], writer, reader, client, [])
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
    assert not (lab.dest / "deleted").exists() or not files(lab.dest / "deleted"), "nothing was deleted yet"


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
