# VM test `storage`: three storage machines running Garage 2 hold pict-rs's images; two pict-rs
# machines reach them through their own S3 balancers, behind one backend, a frontend, a PostgreSQL
# primary and a client (nixos-tests/storage/test.nix).
import contextlib
from collections.abc import Generator

from driver_globals import (
    ADMIN_PASSWORD_FILE,
    ADMIN_USER,
    APP1,
    BACKEND_PORT,
    DB1,
    DOMAIN,
    FE1,
    GARAGE_ACCESS_KEY_FILE,
    GARAGE_ADMIN_PORT,
    GARAGE_BUCKET,
    GARAGE_META_DIR,
    GARAGE_RPC_PORT,
    GARAGE_S3_PORT,
    MEDIA1,
    MEDIA2,
    NODE_IDS,
    NODE_ZONES,
    PG_PORT,
    PICTRS_DB,
    PICTRS_PORT,
    PICTRS_PROXY_PORT,
    S3_PROXY_PORT,
    STORE1,
    STORE2,
    STORE3,
    QemuMachine,
    app1,
    client,
    db1,
    fe1,
    media1,
    media2,
    store1,
    store2,
    store3,
    subtest,
)
from lib import (
    expect,
    expect_equal,
    expect_port,
    expect_status,
    fetch_image,
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
STORES = {"store1": (store1, STORE1), "store2": (store2, STORE2), "store3": (store3, STORE3)}
BALANCER = f"http://127.0.0.1:{S3_PROXY_PORT}"
HEX = "0123456789abcdef"


def short(node_id: str) -> str:
    """How `garage status` names a node: the first 16 hex digits of its id."""
    return node_id[:16]


# ---------------------------------------------------------------------------- Garage


def garage(args: str) -> str:
    """Run the garage CLI as root on store1 (it reaches the local Garage over RPC)."""
    return str(store1.succeed("garage " + args))


def status_rows() -> dict[str, dict[str, list[str]]]:
    """`garage status` on store1: for each section ("HEALTHY NODES", "FAILED NODES"), its rows
    split into fields, by their first field (the first 16 hex digits of the node id)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for line in garage("status").splitlines():
        text = line.strip()
        if text.startswith("====") and text.endswith("===="):
            current = text.strip("= ")
            sections[current] = {}
            continue
        fields = text.split()
        if current and fields and len(fields[0]) == 16 and all(c in HEX for c in fields[0]):
            sections[current][fields[0]] = fields
    return sections


def failed_node_command(node_id: str) -> str:
    """A shell command on store1 that succeeds once `garage status` lists NODE_ID as failed."""
    return "garage status | sed -n '/==== FAILED NODES ====/,$p' | " + quote("grep", "-q", f"^{short(node_id)} ")


def bucket_objects() -> int:
    """The bucket's object count, as `garage bucket info` on store1 prints it ("Objects:  N")."""
    for line in garage(quote("bucket", "info", GARAGE_BUCKET)).splitlines():
        fields = line.split()
        if fields[:1] == ["Objects:"] and len(fields) >= 2 and fields[1].isdigit():
            return int(fields[1])
    raise AssertionError(f"no 'Objects:' line in `garage bucket info {GARAGE_BUCKET}` on store1")


def wait_for_objects(at_least: int, what: str) -> int:
    """Wait until the bucket holds AT_LEAST objects (Garage updates its counters asynchronously)."""
    store1.wait_until_succeeds(
        quote("garage", "bucket", "info", GARAGE_BUCKET)
        + f" | awk '$1 == \"Objects:\" && $2 >= {at_least} {{ found = 1 }} END {{ exit !found }}'",
        timeout=120,
    )
    count = bucket_objects()
    expect(count >= at_least, f"{what}: at least {at_least} objects in bucket {GARAGE_BUCKET}", count)
    return count


def garage_health(expected_start: str, what: str) -> None:
    """Garage's admin /health on store1: HTTP 200 and a text starting with EXPECTED_START."""
    resp = http(store1, f"http://127.0.0.1:{GARAGE_ADMIN_PORT}/health", host="127.0.0.1")
    expect_status(resp, 200, what)
    expect(resp.body.startswith(expected_start), f"{what}: '{expected_start}...'", resp.body)


# ---------------------------------------------------------------------------- pict-rs


def pictrs_health(machine: "QemuMachine", addr: str, what: str) -> None:
    """pict-rs on ADDR answers /healthz to MACHINE (it checks its repository and its store)."""
    resp = http(machine, f"http://{addr}:{PICTRS_PORT}/healthz", host=addr)
    expect_status(resp, 200, what)


def wait_for_pictrs(machine: "QemuMachine", addr: str) -> None:
    with journal_on_failure(machine, "lemmy-cluster-test-secrets.service", "nginx.service", "pict-rs.service"):
        machine.wait_for_unit("nginx.service")
        machine.wait_for_unit("pict-rs.service")
        wait_for_http(machine, f"http://{addr}:{PICTRS_PORT}/healthz", addr, timeout=300)


def environ_command(machine: "QemuMachine") -> str:
    """A shell command printing the environment of the running pict-rs process on MACHINE (what
    pict-rs actually reads), one variable a line."""
    pid = int(machine.succeed(quote("systemctl", "show", "--property=MainPID", "--value", "pict-rs.service")).strip())
    expect(pid > 0, f"pict-rs.service on {machine.name} has a main process", pid)
    exe = machine.succeed(f"readlink /proc/{pid}/exe").strip()
    # nixpkgs wraps pict-rs (PATH to imagemagick, ffmpeg, exiftool): the wrapper execs the real
    # program, bin/.pict-rs-wrapped.
    expect(
        exe.endswith("/bin/.pict-rs-wrapped"), f"the main process of pict-rs.service on {machine.name} is pict-rs", exe
    )
    return f"tr '\\0' '\\n' < /proc/{pid}/environ"


def balancer_answers(machine: "QemuMachine", what: str) -> None:
    """Three requests in a row to MACHINE's S3 balancer (one per storage machine in nginx's round
    robin) are all answered by a Garage: unsigned, so with S3's AccessDenied (HTTP 403)."""
    for attempt in (1, 2, 3):
        resp = http(machine, f"{BALANCER}/", host=f"127.0.0.1:{S3_PROXY_PORT}", timeout=20)
        expect_status(resp, 403, f"{what}: unsigned request {attempt} to {machine.name}'s S3 balancer")
        expect("AccessDenied" in resp.body, f"{what}: Garage's S3 error, request {attempt}", resp.body[:600])


def upload(path: str, jwt: str, what: str) -> str:
    """Upload the PNG at PATH on the client through fe1; return pict-rs's alias (lib.py's upload_image)."""
    return upload_image(client, FE1, DOMAIN, path, jwt, what)


def fetch(alias: str, what: str) -> None:
    """GET /pictrs/image/ALIAS on the client through fe1: HTTP 200 and a PNG (lib.py's fetch_image)."""
    fetch_image(client, FE1, DOMAIN, alias, what)


def aliases() -> str:
    return psql(db1, "SELECT count(*) FROM aliases", PICTRS_DB)


@contextlib.contextmanager
def image_path_journals() -> Generator[None]:
    """On a failure, print the journals of what an image request passes through: app1's nginx and
    Lemmy, then pict-rs and the S3 balancer on media1 and media2."""
    with (
        journal_on_failure(app1, "nginx.service", "lemmy.service"),
        journal_on_failure(media1, "pict-rs.service", "nginx.service"),
        journal_on_failure(media2, "pict-rs.service", "nginx.service"),
    ):
        yield


# ---------------------------------------------------------------------------- the test

with subtest("the PostgreSQL primary starts first, then the three storage machines"):
    db1.start()
    with journal_on_failure(db1, "postgresql.service", "lemmy-cluster-pg-setup.service"):
        db1.wait_for_unit("lemmy-cluster-pg-setup.service")
    for machine, _ in STORES.values():
        machine.start()
    for machine, _ in STORES.values():
        with journal_on_failure(machine, "lemmy-cluster-test-secrets.service", "garage.service"):
            machine.wait_for_unit("garage.service")

with subtest("store1's setup gives every storage machine its role, imports pict-rs's key, creates the bucket"):
    with (
        journal_on_failure(store1, "garage.service", "lemmy-cluster-garage-setup.service"),
        journal_on_failure(store2, "garage.service"),
        journal_on_failure(store3, "garage.service"),
    ):
        store1.wait_until_succeeds(
            "journalctl -b --no-pager -o cat -u lemmy-cluster-garage-setup.service | "
            + quote("grep", "-qF", f"own bucket {GARAGE_BUCKET}; done"),
            timeout=600,
        )
    layout = garage("layout show")
    expect(
        "Current cluster layout version: 1" in layout.splitlines(),
        "`garage layout show` on store1: layout version 1 (one apply, for all three machines)",
        layout,
    )
    access_key = store1.succeed(quote("cat", GARAGE_ACCESS_KEY_FILE)).strip()
    expect(
        len(access_key) == 26 and access_key.startswith("GK") and all(c in HEX for c in access_key[2:]),
        "pict-rs's access key id on store1 is Garage's: GK and 24 hex digits",
        access_key,
    )
    info = garage(quote("bucket", "info", GARAGE_BUCKET))
    rows = [line.split() for line in info.splitlines()]
    expect(
        any(fields[:2] == ["RWO", access_key] for fields in rows),
        f"`garage bucket info {GARAGE_BUCKET}`: pict-rs's key {access_key} may read, write and own it",
        info,
    )
    garage_health("Garage is fully operational", "Garage's /health on store1, all storage machines up")

with subtest("store1's Garage sees all three storage machines, each with its role, and no failed one"):
    sections = status_rows()
    healthy = sections.get("HEALTHY NODES", {})
    expect("FAILED NODES" not in sections, "`garage status` on store1: no FAILED NODES section", sections)
    expect_equal(3, len(healthy), "rows of HEALTHY NODES in `garage status` on store1")
    for name, (_store, addr) in STORES.items():
        node_id = NODE_IDS[name]
        row = healthy.get(short(node_id))
        expect(row is not None, f"{name} ({short(node_id)}) is a healthy node of `garage status`", healthy)
        assert row is not None
        line = " ".join(row)
        expect("NO ROLE ASSIGNED" not in line and "pending..." not in line, f"{name} has its role", line)
        # ID, Hostname, Address, [Tags], Zone, Capacity, ...
        expect_equal(name, row[1], f"{name}: hostname in `garage status`")
        expect_equal(addr, row[2].rpartition(":")[0], f"{name}: address in `garage status` ({line})")
        expect_equal(NODE_ZONES[node_id], row[4], f"{name}: zone in `garage status` ({line})")

with subtest("every storage machine runs Garage with the node key that storage.toml names"):
    for name, (machine, _) in STORES.items():
        node_id = NODE_IDS[name]
        pub = machine.succeed(f"od -An -v -tx1 {quote(GARAGE_META_DIR + '/node_key.pub')} | tr -d ' \\n'").strip()
        expect_equal(node_id, pub, f"{name}: hex of {GARAGE_META_DIR}/node_key.pub")
        installed = machine.succeed(
            "journalctl -b --no-pager -o cat -u garage.service | "
            + quote("grep", "-cF", f"install-node-key: installed the node key of {node_id}")
            + " || true"
        ).strip()
        expect_equal("1", installed, f"{name}: install-node-key installed the key once, before Garage's first start")
    expect_equal(
        f"{NODE_IDS['store1']}@{STORE1}:{GARAGE_RPC_PORT}",
        store1.succeed("garage node id -q").strip(),
        "`garage node id -q` on store1",
    )

with subtest("pict-rs starts on media1 (it migrates the repository), then on media2, each behind its S3 balancer"):
    # One after the other: two pict-rs starting at once against an empty repository would both
    # run its migrations.
    for name, (machine, addr) in MEDIA.items():
        machine.start()
        wait_for_pictrs(machine, addr)
        listeners = machine.succeed(quote("ss", "-Htlnp", f"sport = :{S3_PROXY_PORT}")).strip().splitlines()
        expect_equal(
            [f"127.0.0.1:{S3_PROXY_PORT}"],
            [line.split()[3] for line in listeners],
            f"{name}: local addresses listening on port {S3_PROXY_PORT}",
        )
        expect(all('"nginx"' in line for line in listeners), f"{name}: nginx on port {S3_PROXY_PORT}", listeners)
        env = environ_command(machine)
        store_env = machine.succeed(
            env + " | grep -E '^PICTRS__STORE__(TYPE|ENDPOINT|BUCKET_NAME|USE_PATH_STYLE)=' || true"
        ).split()
        expect_equal(
            sorted(
                [
                    "PICTRS__STORE__TYPE=object_storage",
                    f"PICTRS__STORE__ENDPOINT={BALANCER}",
                    f"PICTRS__STORE__BUCKET_NAME={GARAGE_BUCKET}",
                    "PICTRS__STORE__USE_PATH_STYLE=true",
                ]
            ),
            sorted(store_env),
            f"{name}: pict-rs's object storage settings in its process environment",
        )
        # The key's formats only (its values stay out of the log).
        key_formats = machine.succeed(
            env + " | grep -cE '^PICTRS__STORE__(ACCESS_KEY=GK[0-9a-f]{24}|SECRET_KEY=[0-9a-f]{64})$' || true"
        ).strip()
        expect_equal("2", key_formats, f"{name}: pict-rs's S3 key in Garage's formats")
        balancer_answers(machine, f"{name}, every storage machine up")
        expect_port(machine, STORE1, GARAGE_S3_PORT, True, f"Garage's S3 API on store1 from {name}")
        expect_port(machine, STORE1, GARAGE_RPC_PORT, False, f"Garage's RPC on store1 from {name}")
        expect_port(machine, STORE1, GARAGE_ADMIN_PORT, False, f"Garage's admin API on store1 from {name}")
    tables = psql(db1, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", PICTRS_DB)
    expect(int(tables) > 0, f"tables in database {PICTRS_DB} on db1 after pict-rs started", tables)

with subtest("the backend, the frontend and the client start; fe1 serves the API; only pict-rs reaches Garage"):
    for machine in (app1, fe1, client):
        machine.start()
    with journal_on_failure(app1, "lemmy.service", "nginx.service"):
        app1.wait_for_unit("lemmy.service")
        app1.wait_for_unit("nginx.service")
        wait_for_http(app1, f"http://{APP1}:{BACKEND_PORT}/api/v3/site", DOMAIN)
    wait_for_frontend(fe1, DOMAIN)
    wait_for_http(client, f"http://{FE1}/api/v3/site", DOMAIN)
    for name, (machine, addr) in MEDIA.items():
        pictrs_health(app1, addr, f"pict-rs /healthz on {name} from app1")
        expect_port(machine, DB1, PG_PORT, True, f"PostgreSQL primary from {name}")
    resp = http(app1, f"http://127.0.0.1:{PICTRS_PROXY_PORT}/healthz", host="127.0.0.1")
    expect_status(resp, 200, "pict-rs /healthz through app1's balancer")
    for name, (_store, addr) in STORES.items():
        expect_port(client, addr, GARAGE_S3_PORT, False, f"Garage's S3 API on {name} from the client")
        expect_port(client, addr, GARAGE_RPC_PORT, False, f"Garage's RPC on {name} from the client")
    expect_port(app1, STORE1, GARAGE_S3_PORT, False, "Garage's S3 API on store1 from the backend")
    expect_port(store2, STORE1, GARAGE_RPC_PORT, True, "Garage's RPC on store1 from store2")
    # The uploads are counted from here: pict-rs's /healthz may itself write an object (some
    # pict-rs 0.5 releases check the store by writing "health-check"), and the last of those
    # requests (above) comes well after the first ones, which Garage's counters have caught up with.
    objects_before = bucket_objects()

with subtest("log in as the admin once (login shares a rate limit of 3 per hour per address)"):
    password = app1.succeed(quote("cat", ADMIN_PASSWORD_FILE)).strip()
    jwt = login(client, f"http://{FE1}", DOMAIN, ADMIN_USER, password)

with subtest("an image uploaded through fe1 is served through fe1 and is an object in the bucket"):
    write_file(client, "/tmp/first.png", png(64, 48))
    with image_path_journals():
        first = upload("/tmp/first.png", jwt, "first upload through fe1")
        fetch(first, "first image through fe1, everything up")
    expect_equal("1", aliases(), f"rows of table aliases in database {PICTRS_DB}")
    objects_first = wait_for_objects(objects_before + 1, "after the first upload")

with subtest("with pict-rs stopped on media1, fe1 still serves the image (media2, same repository and bucket)"):
    media1.succeed("systemctl stop pict-rs.service")
    media1.fail("systemctl is-active --quiet pict-rs.service")
    expect_port(app1, MEDIA1, PICTRS_PORT, False, "pict-rs on media1 from app1 after `systemctl stop`")
    # Twice: app1's nginx (one worker on a one-core VM) takes the pict-rs machines in turn, so one
    # of two requests goes to media1 first, is refused, and moves on to media2. No more: a third
    # failure within fail_timeout would mark media1 down for the next phase.
    for attempt in (1, 2):
        with image_path_journals():
            fetch(first, f"first image through fe1 with media1 stopped (request {attempt})")
    refused = app1.succeed(
        "journalctl -b -u nginx.service --no-pager | grep -F 'Connection refused' | "
        + quote("grep", "-F", f"{MEDIA1}:{PICTRS_PORT}")
        + " || true"
    ).strip()
    expect(refused != "", f"app1's nginx tried media1 ({MEDIA1}:{PICTRS_PORT}), was refused, and moved on", refused)
    media1.succeed("systemctl start pict-rs.service")
    wait_for_pictrs(media1, MEDIA1)
    pictrs_health(app1, MEDIA1, "pict-rs /healthz on media1 from app1 after its restart")

# Garage stopped first, the machine crashed next: a stopped Garage closes its connections, so
# neither balancer keeps an idle keepalive connection to store2 when it then dies.
with subtest("with Garage stopped on store2, images are still read and written (two of three copies)"):
    store2.succeed("systemctl stop garage.service")
    store2.fail("systemctl is-active --quiet garage.service")
    with journal_on_failure(store1, "garage.service"):
        store1.wait_until_succeeds(failed_node_command(NODE_IDS["store2"]), timeout=120)
    garage_health("Garage is operational but some storage nodes", "Garage's /health on store1, store2 stopped")
    for name, (machine, _) in MEDIA.items():
        with journal_on_failure(machine, "nginx.service"):
            balancer_answers(machine, f"{name}, Garage stopped on store2")
        # nginx logs (to the journal) each upstream that refused before it moved on.
        refused = machine.succeed(
            "journalctl -b -u nginx.service --no-pager | grep -F 'Connection refused' | "
            + quote("grep", "-F", f"{STORE2}:{GARAGE_S3_PORT}")
            + " || true"
        ).strip()
        expect(refused != "", f"{name}'s S3 balancer tried store2, was refused, and moved on", refused)
    write_file(client, "/tmp/second.png", png(48, 64))
    with image_path_journals():
        for attempt in (1, 2):
            fetch(first, f"first image through fe1 with store2's Garage stopped (request {attempt})")
        second = upload("/tmp/second.png", jwt, "second upload through fe1 with store2's Garage stopped")
        expect(second != first, "a new alias for a different image", (first, second))
        fetch(second, "second image through fe1 with store2's Garage stopped")
    expect_equal("2", aliases(), f"rows of aliases in {PICTRS_DB}")
    objects_second = wait_for_objects(objects_first + 1, "after the second upload, store2's Garage stopped")

with subtest("with store2 crashed, images are still read and written"):
    # A dead machine: connections to it time out instead of being refused.
    store2.crash()
    garage_health("Garage is operational but some storage nodes", "Garage's /health on store1, store2 crashed")
    for name, (machine, _) in MEDIA.items():
        with journal_on_failure(machine, "nginx.service"):
            balancer_answers(machine, f"{name}, store2 crashed")
    write_file(client, "/tmp/third.png", png(40, 40))
    with image_path_journals():
        for attempt in (1, 2):
            fetch(first, f"first image through fe1 with store2 crashed (request {attempt})")
            fetch(second, f"second image through fe1 with store2 crashed (request {attempt})")
        third = upload("/tmp/third.png", jwt, "third upload through fe1 with store2 crashed")
        expect(third not in (first, second), "a new alias for a different image", (first, second, third))
        fetch(third, "third image through fe1 with store2 crashed")
    expect_equal("3", aliases(), f"rows of aliases in {PICTRS_DB}")
    wait_for_objects(objects_second + 1, "after the third upload, store2 crashed")
    sections = status_rows()
    expect(
        short(NODE_IDS["store2"]) in sections.get("FAILED NODES", {}),
        "`garage status` on store1 lists store2 as failed",
        sections,
    )
    for name in ("store1", "store3"):
        expect(short(NODE_IDS[name]) in sections.get("HEALTHY NODES", {}), f"`garage status`: {name} healthy", sections)
