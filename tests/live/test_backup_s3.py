"""Live tests of an S3 backup repository: Debian's pgBackRest 2.45 against an S3 server over TLS.

The cluster is tests/live/pg-cluster.toml on its own subnet (10.239.0.0/24, bridge lcbr-k4,
namespaces lck4-) with [backup] repository = "external-s3": a bucket of its own at the [pictrs]
endpoint (store = "object_storage", path_style = true, an https:// endpoint, as a provider's).
pgbackrest.conf and PostgreSQL's archive_command are what the modules produce
(tests/live/backup.py: modules/backup/pgbackrest-settings.nix evaluated on synth's options, so
repo1-type=s3 and the repo1-s3-* settings), and every command goes through the module's wrapper
(modules/backup/scripts/pgbackrest.sh), which reads the access key and the secret key from files
into PGBACKREST_REPO1_S3_KEY / PGBACKREST_REPO1_S3_KEY_SECRET; restores are restore.sh with the
module's three credentials.

pgBackRest is the engine under test. The S3 server stands in for the provider: moto's S3 (moto
5.2, its server on the loopback of an "s3" namespace, with its signature-v4 checks on once the
test has made the user, its key and the bucket), behind Debian's nginx terminating TLS on
10.239.0.40:443 with a certificate for s3.backup-test.example from a CA this test makes (the name
resolves there through the postgres machine's /etc/hosts: `ip netns exec` mounts
/etc/netns/<ns>/hosts). Not moto's own TLS (moto_server --ssl-cert, werkzeug's): there pgBackRest
2.45 got "TLS error [1:167772454] unexpected eof while reading" on a PUT that moto had answered 200
(apparently a connection closed without TLS's close_notify), retried and failed after 36 s; through
nginx the same requests pass.
Neither Garage (the "s3" repository on the cluster's storage machines, plain http, which needs
pgBackRest 2.58) nor a real provider is installable here.

What differs from NixOS: repo1-storage-ca-file names the test's CA, a test-only addition (NixOS
machines verify a provider's public certificate with the system CA bundle, pgBackRest's default);
TLS verification is never turned off.
"""

from __future__ import annotations

import datetime
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

from tests.conftest import ROOT, require, require_root, require_tool
from tests.live import pg, writeload
from tests.live.backup import PGBACKREST, SCRIPTS, Pgbackrest
from tests.live.netns import Host, Network
from tests.live.pg import PgLab, PgServer, chown_pg

pytestmark = pytest.mark.live

SUBNET = "10.239.0."
S3_ADDRESS = f"{SUBNET}40"
S3_NAME = "s3.backup-test.example"
ENDPOINT = f"https://{S3_NAME}"
BUCKET = "lemmy-backups"
REGION = "eu-test-1"
NGINX = "/usr/sbin/nginx"
MOTO_PORT = 9000  # on the s3 namespace's loopback only: plain HTTP never leaves it


@dataclass
class S3Lab:
    lab: PgLab
    workdir: Path
    cipher: Path
    key_file: Path
    secret_file: Path
    key: str
    secret: str
    ca: Path
    other_ca: Path
    br: Pgbackrest
    s3: Any  # boto3's S3 client, with the backups' key

    def db(self) -> PgServer:
        return self.lab.servers["db1"]

    def objects(self, prefix: str = "") -> dict[str, str]:
        """The bucket's objects under PREFIX and their ETags (digests of the content), as S3 lists them."""
        out: dict[str, str] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out |= {o["Key"]: o["ETag"] for o in page.get("Contents", [])}
        return out


def cluster_text() -> str:
    text = pg.CLUSTER_TOML.read_text().replace("10.232.0.", SUBNET)
    # db1 alone (its start's fencing check asks no absent peer).
    for name in ("db2", "db3"):
        text = text.replace(f'[machines.{name}]\naddress = "{SUBNET}3{name[-1]}"\nroles = ["postgres"]\n', "")
    assert "db2" not in text and "db3" not in text, text
    return text + (
        f'\n[pictrs]\nstore = "object_storage"\nendpoint = "{ENDPOINT}"\nbucket = "pictrs"\n'
        f'region = "{REGION}"\npath_style = true\n'
        f'\n[backup]\nrepository = "external-s3"\nbucket = "{BUCKET}"\nfull_retention = 2\n'
    )


def make_certificates(folder: Path, address: str = S3_ADDRESS) -> dict[str, Path]:
    """A CA and the S3 server's certificate for S3_NAME (and ADDRESS, for boto3 here), and a
    second CA that signed nothing pgBackRest meets."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def ca(cn: str) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("lemmy-cluster live test S3 CA")
    _, other_cert = ca("lemmy-cluster live test, another CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, S3_NAME)]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(S3_NAME), x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca": (folder / "ca.pem", ca_cert.public_bytes(pem)),
        "other_ca": (folder / "other-ca.pem", other_cert.public_bytes(pem)),
        "cert": (folder / "server.pem", server.public_bytes(pem)),
        "key": (
            folder / "server.key",
            server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    }
    for path, data in files.values():
        path.write_bytes(data)
    (folder / "server.key").chmod(0o600)
    for name in ("ca", "other_ca"):
        files[name][0].chmod(0o644)
    return {k: v[0] for k, v in files.items()}


def nginx_conf(folder: Path, certs: dict[str, Path], address: str = S3_ADDRESS) -> Path:
    """nginx terminating TLS for moto on ADDRESS:443: every request passed on as it came (the Host
    header is signed), bodies streamed both ways."""
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(f"""\
daemon off;
user root;
worker_processes 2;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} notice;
events {{ worker_connections 256; }}
http {{
    access_log {folder / "access.log"};
    client_body_temp_path {folder / "body"};
    proxy_temp_path {folder / "proxy"};
    fastcgi_temp_path {folder / "fastcgi"};
    uwsgi_temp_path {folder / "uwsgi"};
    scgi_temp_path {folder / "scgi"};
    server {{
        listen {address}:443 ssl;
        ssl_certificate {certs["cert"]};
        ssl_certificate_key {certs["key"]};
        client_max_body_size 0;
        location / {{
            proxy_pass http://127.0.0.1:{MOTO_PORT};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
""")
    return conf


def enforce_auth(base: str, ca: Path) -> None:
    """From now on moto checks every request's signature and the IAM policies (its reset-auth)."""
    # (A form's content type would hide the body from moto: plain text.)
    req = urllib.request.Request(
        f"{base}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(ca)), timeout=5) as r:
        assert r.status == 200, r.read()


def wait_for_s3(base: str, ca: Path, log: Path, timeout: float = 20) -> None:
    """Until the S3 server behind nginx answers over TLS at BASE (moto's API); its LOG if it never does."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/moto-api/data.json", context=context, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the S3 server did not answer: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def start_s3(host: Host, folder: Path, certs: dict[str, Path]) -> tuple[str, str]:
    """moto and nginx in HOST's namespace; the backups' user, key and bucket made there, then
    moto's authentication turned on (every later request must be signed with that key). Returns
    the key id and the secret key."""
    import boto3

    log = (folder / "moto.log").open("ab")
    moto_server = Path(sys.executable).parent / "moto_server"
    # Path-style requests only (uri-style=path): the host name's first label is not a bucket.
    env = {"PATH": pg.SYS_PATH, "S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true"}
    args = [str(moto_server), "-H", "127.0.0.1", "-p", str(MOTO_PORT)]
    host.popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    host.popen([NGINX, "-e", str(folder / "error.log"), "-c", str(nginx_conf(folder, certs))])
    base = f"https://{S3_ADDRESS}"
    wait_for_s3(base, certs["ca"], folder / "moto.log")
    admin = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    kw = {"endpoint_url": base, "region_name": REGION, "verify": str(certs["ca"])}
    iam = boto3.client("iam", **kw, **admin)
    iam.create_user(UserName="pgbackrest")
    made = iam.create_access_key(UserName="pgbackrest")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="pgbackrest", PolicyName="backups", PolicyDocument=json.dumps(policy))
    boto3.client("s3", **kw, **admin).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    enforce_auth(base, certs["ca"])
    return str(made["AccessKeyId"]), str(made["SecretAccessKey"])


@pytest.fixture(scope="module")
def s3lab() -> Iterator[S3Lab]:
    require_root()
    require((pg.PG_BIN / "postgres").exists(), f"PostgreSQL is not installed in {pg.PG_BIN}")
    require(PGBACKREST.exists(), "pgbackrest is not installed (scripts/install-system-deps.sh installs Debian's)")
    require(Path(NGINX).exists(), "nginx is not installed (scripts/install-system-deps.sh installs it)")
    for tool in ("ip", "runuser", "jq", "nix-instantiate"):
        require_tool(tool)
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
    except ImportError:
        require(False, "moto is not installed (pyproject.toml's test extra: make setup)")
    workdir = Path(tempfile.mkdtemp(prefix="lcbackup-s3-", dir="/tmp"))
    workdir.chmod(0o755)
    cluster_file = workdir / "cluster.toml"
    cluster_file.write_text(cluster_text())
    try:
        with Network(f"{SUBNET}0/24", bridge="lcbr-k4", prefix="lck4-") as net:
            yield from _lab(net, workdir, cluster_file)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _lab(net: Network, workdir: Path, cluster_file: Path) -> Iterator[S3Lab]:
    etc_hosts: Path | None = None
    try:
        s3_folder = workdir / "s3"
        s3_folder.mkdir()
        certs = make_certificates(s3_folder)
        key, secret = start_s3(net.add("s3", S3_ADDRESS), s3_folder, certs)
        lab = PgLab(net, workdir / "lab", pg.load_cluster(cluster_file))
        cipher = lab._secret("backup-cipher-pass", secrets.token_urlsafe(32))
        key_file = lab._secret("backup-s3-access-key", key)
        secret_file = lab._secret("backup-s3-secret-key", secret)
        srv = lab.server("db1")
        etc_hosts = Path("/etc/netns") / srv.host.ns / "hosts"
        etc_hosts.write_text(f"127.0.0.1 localhost\n{S3_ADDRESS} {S3_NAME}\n")
        br = Pgbackrest(
            lab.cluster,
            "db1",
            srv.base / "pgbackrest",
            cipher,
            srv.data,
            srv.run_dir,
            s3_key_files=(key_file, secret_file),
            # Test-only: the test's CA (NixOS: the system bundle verifies a provider's certificate).
            extra_global={"repo1-storage-ca-file": str(certs["ca"])},
        )
        srv.extra_opts = {"archiveCommand": br.archive_command}
        lab.host("app1")
        lab.init_primary(srv)
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=f"https://{S3_ADDRESS}",
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            verify=str(certs["ca"]),
        )
        yield S3Lab(
            lab, workdir, cipher, key_file, secret_file, key, secret, certs["ca"], certs["other_ca"], br, client
        )
        lab.stop_all()
    finally:
        # Before the Network goes (it removes /etc/netns/<ns> when empty).
        if etc_hosts is not None:
            etc_hosts.unlink(missing_ok=True)


def start_writer(b: S3Lab, out: Path, run: str) -> subprocess.Popen[bytes]:
    """tests/live/writeload.py on app1, committing numbered rows (RUN, n) to the primary all along."""
    db1 = b.db()
    db1.psql_run("CREATE TABLE IF NOT EXISTS lc_runs (run text, n bigint, PRIMARY KEY (run, n))", db="lemmy")
    db1.psql_run("ALTER TABLE lc_runs OWNER TO lemmy", db="lemmy")
    args = [sys.executable, "-m", "tests.live.writeload", "--dsn", b.lab.lemmy_conninfo("db1")]
    args += ["--out", str(out), "--table", "lc_runs", "--run", run]
    proc: subprocess.Popen[bytes] = b.lab.hosts["app1"].popen(
        args,
        env={"PATH": pg.SYS_PATH, "PGPASSFILE": str(b.lab.client_pgpass), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=20)


def wait_archived(srv: PgServer, timeout: float = 60) -> str:
    """Switch to a new WAL segment and wait until the one just closed is archived; its name."""
    closed = srv.sql("SELECT pg_walfile_name(pg_switch_wal())")
    got = srv.wait_for(f"SELECT last_archived_wal >= '{closed}' FROM pg_stat_archiver", "t", timeout=timeout)
    assert got == "t", f"WAL {closed} not archived: {got}; {srv.sql('SELECT * FROM pg_stat_archiver')}"
    return closed


def credentials(b: S3Lab, secret_file: Path | None = None) -> list[str]:
    """restore.sh's --credential arguments, as modules/backup/default.nix gives them (an S3
    repository: the passphrase and the key's two files)."""
    return [
        "--credential",
        f"backup-cipher-pass={b.cipher}",
        "--credential",
        f"backup-s3-key={b.key_file}",
        "--credential",
        f"backup-s3-key-secret={secret_file or b.secret_file}",
    ]


def restore(b: S3Lab, *args: str, secret_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """lemmy-cluster-restore ARGS: restore.sh with the module's arguments and the wrapper."""
    srv = b.db()
    full = ["--data-dir", str(srv.data), "--stanza", "lemmy", "--finish-with", str(pg.PG_BIN), *args]
    full += credentials(b, secret_file)
    cmd = b.br.command(s3_secret_file=secret_file)
    r: subprocess.CompletedProcess[str] = srv.host.run(
        pg.as_pg(["bash", str(SCRIPTS / "restore.sh"), *full, "--", *cmd]),
        check=False,
        timeout=300,
        env={"PATH": pg.SYS_PATH, "LANG": "C.UTF-8"},
    )
    return r


# --------------------------------------------------------------------------- tests


def test_the_config_has_the_s3_settings_and_no_key(s3lab: S3Lab) -> None:
    conf = s3lab.br.conf.read_text()
    for line in (
        "repo1-type=s3",
        f"repo1-s3-endpoint={ENDPOINT}",
        f"repo1-s3-bucket={BUCKET}",
        f"repo1-s3-region={REGION}",
        "repo1-s3-uri-style=path",
        "repo1-path=/",
        "repo1-cipher-type=aes-256-cbc",
    ):
        assert line in conf.splitlines(), f"{line} not in {s3lab.br.conf}:\n{conf}"
    assert s3lab.key not in conf and s3lab.secret not in conf, "the S3 key is never in the config"
    assert "s3-key" not in conf and "cipher-pass" not in conf, conf
    command = s3lab.db().sql("SHOW archive_command")
    assert f"--s3-key-file {s3lab.key_file}" in command and f"--s3-key-secret-file {s3lab.secret_file}" in command
    assert s3lab.key not in command and s3lab.secret not in command, "the key is never on a command line"
    # The wrapper reads the files into pgbackrest's own environment: `env` in pgbackrest's place.
    cmd = s3lab.br.command()
    cmd[cmd.index("--bin") + 1] = "/usr/bin/env"
    r = s3lab.db().host.run(pg.as_pg([*cmd[: cmd.index("--")], "--"]), check=False, env={"PATH": pg.SYS_PATH})
    assert r.returncode == 0, r.stderr
    env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert env.get("PGBACKREST_REPO1_S3_KEY") == s3lab.key
    assert env.get("PGBACKREST_REPO1_S3_KEY_SECRET") == s3lab.secret


def test_stanza_and_a_full_backup_go_to_the_bucket_encrypted(s3lab: S3Lab) -> None:
    db1 = s3lab.db()
    assert not s3lab.objects(), "the bucket starts empty"
    r = s3lab.br.script(db1.host, "backup-init.sh", ["--stanza", "lemmy"])
    assert r.returncode == 0, r.stdout + r.stderr
    info = s3lab.br.info(db1.host)
    assert info[0]["status"]["message"] == "ok", info
    assert [bk["type"] for bk in info[0]["backup"]] == ["full"]
    assert info[0]["cipher"] == "aes-256-cbc"
    objects = s3lab.objects()
    label = info[0]["backup"][0]["label"]
    assert "backup/lemmy/backup.info" in objects and "archive/lemmy/archive.info" in objects, sorted(objects)
    files = [k for k in objects if k.startswith(f"backup/lemmy/{label}/pg_data/")]
    assert len(files) > 100, f"the full backup's files are not in the bucket: {sorted(objects)[:20]}"
    assert any(k.startswith("archive/lemmy/15-1/") for k in objects), "no WAL segment in the bucket"
    # Encrypted: every object is OpenSSL's salted format (pgBackRest's aes-256-cbc), none plain.
    for name in [*files[:50], "backup/lemmy/backup.info", "archive/lemmy/archive.info"]:
        body = s3lab.s3.get_object(Bucket=BUCKET, Key=name)["Body"].read()
        assert body.startswith(b"Salted__"), f"{name} is not encrypted: {body[:32]!r}"


def test_archiving_under_a_write_load(s3lab: S3Lab) -> None:
    db1 = s3lab.db()
    out = s3lab.workdir / "writes-archive.log"
    proc = start_writer(s3lab, out, "archive")
    try:
        time.sleep(2)
        closed = [wait_archived(db1) for _ in range(3)]
    finally:
        stop(proc)
    acked = writeload.acknowledged(writeload.read_log(out))
    assert len(acked) > 50, f"the write load committed only {len(acked)} rows"
    failed = db1.sql("SELECT failed_count FROM pg_stat_archiver")
    assert failed == "0", f"archive_command failed {failed} times: {db1.log_tail()}"
    names = {k.rsplit("/", 1)[-1].split("-", 1)[0] for k in s3lab.objects("archive/lemmy/15-1/")}
    assert set(closed) <= names, f"archived segments not in the bucket: {set(closed) - names}"
    r = s3lab.br.run(db1.host, "check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wrong_secret_key_is_refused_and_changes_nothing(s3lab: S3Lab) -> None:
    db1 = s3lab.db()
    wrong = s3lab.lab._secret("wrong-s3-secret-key", secrets.token_urlsafe(30))
    db1.stop()
    try:
        before = sorted(p.name for p in db1.base.iterdir())
        objects = s3lab.objects("backup/lemmy/backup.info") | s3lab.objects("archive/lemmy/archive.info")
        assert len(objects) == 4, objects  # the info files and their copies
        r = restore(s3lab, "--latest", secret_file=wrong)
        assert r.returncode == 1 and "cannot read the repository" in r.stderr, r.stdout + r.stderr
        assert "403 (FORBIDDEN)" in r.stderr, f"not the S3 server's refusal of the signature: {r.stderr}"
        assert sorted(p.name for p in db1.base.iterdir()) == before, "a refused restore changed the folder"
        after = s3lab.objects("backup/lemmy/backup.info") | s3lab.objects("archive/lemmy/archive.info")
        assert after == objects, "a refused restore changed the repository's info files"
    finally:
        db1.start()


def test_a_certificate_pgbackrest_cannot_verify_is_refused(s3lab: S3Lab) -> None:
    """The same settings with another CA file (one that did not sign the server's certificate):
    pgBackRest refuses the server and reads nothing."""
    db1 = s3lab.db()
    other = Pgbackrest(
        s3lab.lab.cluster,
        "db1",
        db1.base / "pgbackrest-other-ca",
        s3lab.cipher,
        db1.data,
        db1.run_dir,
        s3_key_files=(s3lab.key_file, s3lab.secret_file),
        extra_global={"repo1-storage-ca-file": str(s3lab.other_ca)},
    )
    chown_pg(other.conf.parent)
    # (pgBackRest retries a failed connection until io-timeout, 60 s: 3 s here.)
    r = other.run(db1.host, "--output=json", "--io-timeout=3", "info", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr  # info reports a repository it cannot read
    (stanza,) = json.loads(r.stdout)
    assert stanza["status"]["message"] == "other" and not stanza["backup"], stanza
    repo = stanza["repo"][0]["status"]["message"]
    assert f"unable to verify certificate presented by '{S3_NAME}:443'" in repo, repo
    # The good CA still reads it (the refusal is the certificate's, not the settings').
    assert s3lab.br.info(db1.host)[0]["status"]["message"] == "ok"


def test_point_in_time_recovery_from_the_bucket(s3lab: S3Lab) -> None:
    db1 = s3lab.db()
    db1.psql_run("CREATE TABLE marks (id int PRIMARY KEY)", db="lemmy")
    out = s3lab.workdir / "writes-pitr.log"
    proc = start_writer(s3lab, out, "pitr")
    try:
        time.sleep(0.5)
        db1.psql_run("INSERT INTO marks SELECT generate_series(1, 100)", db="lemmy")
        time.sleep(0.3)
        target = db1.sql("SELECT clock_timestamp()")
        target_epoch = float(db1.sql(f"SELECT extract(epoch FROM '{target}'::timestamptz)"))
        time.sleep(0.3)
        db1.psql_run("INSERT INTO marks SELECT generate_series(101, 200)", db="lemmy")
        time.sleep(0.5)
    finally:
        stop(proc)
    wait_archived(db1)
    attempts = writeload.read_log(out)
    db1.stop()
    r = restore(s3lab, "--time", target)
    assert r.returncode == 0, r.stdout + r.stderr
    db1.start(timeout=120)
    got = db1.wait_for("SELECT pg_is_in_recovery()", "f", timeout=120)
    assert got == "f", f"the restored server did not promote: {got}\n{db1.log_tail()}"
    assert db1.sql("SELECT count(*), min(id), max(id) FROM marks", db="lemmy") == "100|1|100"
    rows = {int(x) for x in db1.sql("SELECT n FROM lc_runs WHERE run = 'pitr'", db="lemmy").split()}
    before = {a.n for a in attempts if a.ok and a.at < target_epoch}
    started_after = {a.n for i, a in enumerate(attempts) if i > 0 and attempts[i - 1].at > target_epoch}
    assert before and before <= rows, f"{len(before - rows)} writes acknowledged before the target are missing"
    assert not rows & started_after, f"{len(rows & started_after)} writes sent after the target are there"
