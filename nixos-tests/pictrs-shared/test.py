# VM test `pictrs-shared`: two pict-rs machines sharing a Postgres repository and an S3 bucket
# behind one backend, a frontend, a PostgreSQL primary, a one-node Garage (the S3 server) and a client
# (nixos-tests/pictrs-shared/test.nix).
from driver_globals import (
    ADMIN_PASSWORD_FILE,
    ADMIN_USER,
    APP1,
    BACKEND_PORT,
    DB1,
    DOMAIN,
    FE1,
    MEDIA1,
    MEDIA2,
    PG_PORT,
    PICTRS_DB,
    PICTRS_PORT,
    PICTRS_PROXY_PORT,
    S3_BUCKET,
    QemuMachine,
    app1,
    client,
    db1,
    fe1,
    media1,
    media2,
    s3,
    subtest,
)
from lib import (
    PNG_SIGNATURE,
    expect,
    expect_equal,
    expect_port,
    expect_status,
    fetch_image,
    file_head,
    http,
    journal_on_failure,
    login,
    png,
    psql,
    quote,
    upload_image,
    wait_for_frontend,
    wait_for_http,
    write_file,
)

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----
MEDIA = {"media1": (media1, MEDIA1), "media2": (media2, MEDIA2)}


def pictrs_health(machine: "QemuMachine", addr: str, what: str) -> None:
    """pict-rs on ADDR answers /healthz to MACHINE (it checks its repository and its store)."""
    resp = http(machine, f"http://{addr}:{PICTRS_PORT}/healthz", host=addr)
    expect_status(resp, 200, what)


def wait_for_pictrs(machine: "QemuMachine", addr: str) -> None:
    with journal_on_failure(machine, "lemmy-cluster-test-secrets.service", "pict-rs.service"):
        machine.wait_for_unit("pict-rs.service")
        wait_for_http(machine, f"http://{addr}:{PICTRS_PORT}/healthz", addr, timeout=300)


def upload(path: str, jwt: str, what: str) -> str:
    """Upload the PNG at PATH on the client through fe1; return pict-rs's alias (lib.py's upload_image)."""
    return upload_image(client, FE1, DOMAIN, path, jwt, what)


def fetch(alias: str, what: str) -> None:
    """GET /pictrs/image/ALIAS on the client through fe1: HTTP 200 and a PNG (lib.py's fetch_image)."""
    fetch_image(client, FE1, DOMAIN, alias, what)


def expect_stored(alias: str, what: str) -> None:
    """ALIAS is a row of pict-rs's repository on db1 whose object is in the bucket, a PNG."""
    identifier = psql(
        db1,
        f"SELECT h.identifier FROM aliases a JOIN hashes h ON h.hash = a.hash WHERE a.alias = '{alias}'",
        PICTRS_DB,
    )
    expect(
        identifier != "" and "\n" not in identifier, f"{what}: one identifier for {alias} in {PICTRS_DB}", identifier
    )
    objects = bucket_objects()
    expect(identifier in objects, f"{what}: object {identifier} in bucket {S3_BUCKET}", objects)
    s3.succeed(quote("s3-objects", "cat", identifier) + " > /tmp/object")
    expect_equal(
        PNG_SIGNATURE, file_head(s3, "/tmp/object", len(PNG_SIGNATURE)), f"{what}: start of object {identifier}"
    )


def bucket_objects() -> list[str]:
    """The keys of the objects in the bucket, listed on the s3 node with pict-rs's key (s3.nix)."""
    listing = s3.succeed("s3-objects ls").strip()
    return [line.strip() for line in listing.splitlines() if line.strip()]


with subtest("the PostgreSQL primary starts first, then the S3 server and its bucket"):
    db1.start()
    with journal_on_failure(db1, "postgresql.service", "lemmy-cluster-pg-setup.service"):
        db1.wait_for_unit("lemmy-cluster-pg-setup.service")
    s3.start()
    with journal_on_failure(
        s3, "lemmy-cluster-test-secrets.service", "garage.service", "lemmy-cluster-garage-setup.service"
    ):
        s3.wait_for_unit("garage.service")
        # A simple service that stays active once done: its last line says it is done.
        s3.wait_until_succeeds(
            "journalctl -b --no-pager -o cat -u lemmy-cluster-garage-setup.service | "
            + quote("grep", "-qF", f"own bucket {S3_BUCKET}; done"),
            timeout=300,
        )
    expect_equal([], bucket_objects(), f"objects in the new bucket {S3_BUCKET}, listed with pict-rs's key")

with subtest("pict-rs starts on media1 (it migrates the repository), then on media2"):
    # One after the other: two pict-rs starting at once against an empty repository would both
    # run its migrations.
    for machine, addr in MEDIA.values():
        machine.start()
        wait_for_pictrs(machine, addr)
    tables = psql(db1, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", PICTRS_DB)
    expect(int(tables) > 0, f"tables in database {PICTRS_DB} on db1 after pict-rs started", tables)

with subtest("the backend, the frontend and the client start; fe1 serves the API"):
    for machine in (app1, fe1, client):
        machine.start()
    with journal_on_failure(app1, "lemmy.service", "nginx.service"):
        app1.wait_for_unit("lemmy.service")
        app1.wait_for_unit("nginx.service")
        wait_for_http(app1, f"http://{APP1}:{BACKEND_PORT}/api/v3/site", DOMAIN)
    wait_for_frontend(fe1, DOMAIN)
    wait_for_http(client, f"http://{FE1}/api/v3/site", DOMAIN)

with subtest("app1 reaches both pict-rs machines and its pict-rs balancer; nobody else does"):
    for name, (machine, addr) in MEDIA.items():
        pictrs_health(app1, addr, f"pict-rs /healthz on {name} from app1")
        expect_port(fe1, addr, PICTRS_PORT, False, f"pict-rs on {name} from the frontend")
        expect_port(client, addr, PICTRS_PORT, False, f"pict-rs on {name} from the client")
        expect_port(machine, DB1, PG_PORT, True, f"PostgreSQL primary from {name}")
    resp = http(app1, f"http://127.0.0.1:{PICTRS_PROXY_PORT}/healthz", host="127.0.0.1")
    expect_status(resp, 200, "pict-rs /healthz through app1's balancer")

with subtest("log in as the admin once (login shares a rate limit of 3 per hour per address)"):
    password = app1.succeed(quote("cat", ADMIN_PASSWORD_FILE)).strip()
    jwt = login(client, f"http://{FE1}", DOMAIN, ADMIN_USER, password)

with subtest("an image uploaded through fe1 is served through fe1"):
    write_file(client, "/tmp/first.png", png(64, 48))
    first = upload("/tmp/first.png", jwt, "first upload through fe1")
    fetch(first, "first image through fe1, both pict-rs up")

with subtest("with pict-rs stopped on media1, fe1 still serves the image (media2, same repository and bucket)"):
    media1.succeed("systemctl stop pict-rs.service")
    media1.fail("systemctl is-active --quiet pict-rs.service")
    expect_port(app1, MEDIA1, PICTRS_PORT, False, "pict-rs on media1 from app1 after `systemctl stop`")
    # Twice: app1's nginx (one worker on a one-core VM) takes the pict-rs machines in turn, so one
    # of two requests goes to media1 first, is refused, and moves on to media2. No more: a third
    # failure within fail_timeout would mark media1 down for the next phase.
    for attempt in (1, 2):
        with journal_on_failure(app1, "nginx.service", "lemmy.service"):
            fetch(first, f"first image through fe1 with media1 stopped (request {attempt})")
    # nginx logs (to the journal) each upstream that failed before it moved on.
    refused = app1.succeed(
        "journalctl -b -u nginx.service --no-pager | grep -F 'Connection refused' | "
        + quote("grep", "-F", f"{MEDIA1}:{PICTRS_PORT}")
        + " || true"
    ).strip()
    expect(refused != "", f"app1's nginx tried media1 ({MEDIA1}:{PICTRS_PORT}), was refused, and moved on", refused)

with subtest("the image is an object in the bucket and rows of pict-rs's repository on db1"):
    expect_stored(first, "first image")
    aliases = psql(db1, "SELECT count(*) FROM aliases", PICTRS_DB)
    expect_equal("1", aliases, f"rows of table aliases in database {PICTRS_DB}")
    objects = bucket_objects()
    expect(len(objects) >= 1, f"objects in bucket {S3_BUCKET}", objects)

with subtest("with media1 back and media2 crashed, a second upload and both images work through fe1"):
    media1.succeed("systemctl start pict-rs.service")
    wait_for_pictrs(media1, MEDIA1)
    pictrs_health(app1, MEDIA1, "pict-rs /healthz on media1 from app1 after its restart")
    # A dead machine: app1's connections to it time out instead of being refused.
    media2.crash()
    write_file(client, "/tmp/second.png", png(48, 64))
    with journal_on_failure(media1, "pict-rs.service"), journal_on_failure(app1, "nginx.service", "lemmy.service"):
        second = upload("/tmp/second.png", jwt, "second upload through fe1 with media2 down")
        expect(second != first, "a new alias for a different image", (first, second))
        fetch(second, "second image through fe1 with media2 down")
        fetch(first, "first image through fe1 with media2 down")
    expect_stored(second, "second image")
    expect_equal("2", psql(db1, "SELECT count(*) FROM aliases", PICTRS_DB), f"rows of aliases in {PICTRS_DB}")
    objects = bucket_objects()
    expect(len(objects) >= 2, f"objects in bucket {S3_BUCKET} after two uploads", objects)
