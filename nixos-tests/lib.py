"""Helpers shared by the lemmy-cluster VM tests.

nixos-tests/lib.nix puts this file first in every test script, then the scenario's parameters
(addresses, ports, the domain: read from the nodes' configuration), then the scenario's body.
The NixOS test driver build type-checks (ty; mypy before nixpkgs PR #509615) and lints (ruff's
pyflakes rules) that whole script, with its globals declared and every node typed QemuMachine;
tests/test_vm_tests.py does the same here (nixos-tests/driver/). So: no unused imports here, and
machine arguments annotated "QemuMachine" (a string: the driver defines the class for the type
check only, and TYPE_CHECKING is false when the script runs), so that the checkers see every call
of a machine method.
"""

import base64
import contextlib
import json
import shlex
import struct
import zlib
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from test_driver.machine import QemuMachine


class Response(NamedTuple):
    """One HTTP exchange made with curl inside a VM (status 0: no HTTP answer at all)."""

    status: int
    content_type: str
    body: str
    curl_error: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except json.JSONDecodeError:
            raise AssertionError(
                f"expected a JSON body, got HTTP {self.status} ({self.content_type}): {self.body[:600]!r}"
            ) from None


def expect_equal(expected: Any, got: Any, what: str) -> None:
    assert expected == got, f"{what}: expected {expected!r}, got {got!r}"


def expect(condition: bool, what: str, got: Any) -> None:
    assert condition, f"{what}; got {got!r}"


def quote(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in args)


def http(
    machine: "QemuMachine",
    url: str,
    *,
    host: str,
    method: str = "GET",
    headers: Sequence[str] = (),
    json_body: Any = None,
    form: str | None = None,
    timeout: int = 30,
) -> Response:
    """Run one request with curl on MACHINE, with `Host: HOST`; never raises on HTTP errors."""
    args = [
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        str(timeout),
        "--request",
        method,
        "--header",
        f"Host: {host}",
        "--output",
        "/tmp/http-body",
        "--write-out",
        "%{http_code} %{content_type}",
    ]
    for header in headers:
        args += ["--header", header]
    if json_body is not None:
        args += ["--header", "Content-Type: application/json", "--data-binary", json.dumps(json_body)]
    if form is not None:
        args += ["--form", form]
    args.append(url)
    machine.succeed("rm -f /tmp/http-body")
    rc, out = machine.execute(quote(*args) + " 2>&1")
    if rc != 0:
        return Response(0, "", "", f"curl exit code {rc}: {out.strip()}")
    code, _, content_type = out.strip().partition(" ")
    _, body = machine.execute("cat /tmp/http-body 2>/dev/null || true")
    return Response(int(code) if code.isdigit() else 0, content_type, body, "")


def expect_status(resp: Response, expected: int, what: str) -> None:
    assert resp.status == expected, (
        f"{what}: expected HTTP {expected}, got {resp.status or resp.curl_error}"
        f" ({resp.content_type}): {resp.body[:600]!r}"
    )


def api(
    machine: "QemuMachine",
    base: str,
    path: str,
    *,
    host: str,
    method: str = "GET",
    body: Any = None,
    jwt: str | None = None,
) -> Any:
    """Call Lemmy's HTTP API at BASE (http://<frontend>) and return the decoded JSON (HTTP 200 only)."""
    headers = [f"Authorization: Bearer {jwt}"] if jwt else []
    resp = http(machine, base + path, host=host, method=method, headers=headers, json_body=body)
    expect_status(resp, 200, f"{method} {path} via {base}")
    return resp.json()


def curl_ok(url: str, host: str) -> str:
    """A shell command that succeeds when URL answers 2xx (for wait_until_succeeds)."""
    return quote("curl", "--fail", "--silent", "--show-error", "--max-time", "10", "--header", f"Host: {host}", url)


def wait_for_http(machine: "QemuMachine", url: str, host: str, timeout: int = 600) -> None:
    """Wait until URL answers 2xx from MACHINE (Lemmy answers 503 while it runs migrations)."""
    machine.wait_until_succeeds(curl_ok(url, host), timeout=timeout)


def login(machine: "QemuMachine", base: str, host: str, username: str, password: str) -> str:
    """Log in once and return the JWT. Login, registration and community creation share one rate
    limit of 3 per hour per client address (Lemmy's default): reuse the token."""
    answer = api(
        machine,
        base,
        "/api/v3/user/login",
        host=host,
        method="POST",
        body={"username_or_email": username, "password": password},
    )
    jwt = answer.get("jwt")
    expect(isinstance(jwt, str) and len(jwt) > 20, "login returns a JWT", answer)
    return str(jwt)


def port_open(machine: "QemuMachine", addr: str, port: int, seconds: int = 5) -> bool:
    """Whether MACHINE can open a TCP connection to ADDR:PORT (a dropped SYN times out)."""
    rc, _ = machine.execute(f"timeout {seconds + 2} nc -z -w {seconds} {shlex.quote(addr)} {port}")
    return rc == 0


def expect_port(machine: "QemuMachine", addr: str, port: int, reachable: bool, what: str) -> None:
    got = port_open(machine, addr, port)
    state = {True: "reachable", False: "unreachable"}
    assert got == reachable, f"{what}: expected {addr}:{port} {state[reachable]} from {machine.name}, got {state[got]}"


def psql_command(sql: str, database: str = "postgres") -> str:
    """The shell command that runs SQL as the postgres superuser (unaligned, tuples only)."""
    return quote("runuser", "-u", "postgres", "--", "psql", "-XAt", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql)


def psql(machine: "QemuMachine", sql: str, database: str = "postgres") -> str:
    """Run SQL as the postgres superuser on MACHINE; return its output."""
    return str(machine.succeed(psql_command(sql, database))).strip()


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG image (a colour gradient), built without any image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + b"".join(bytes(((x * 255) // width, (y * 255) // height, 128)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_file(machine: "QemuMachine", path: str, data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    machine.succeed(f"printf %s {encoded} | base64 -d > {shlex.quote(path)}")


def file_head(machine: "QemuMachine", path: str, n: int) -> bytes:
    return base64.b64decode(machine.succeed(f"head -c {n} {shlex.quote(path)} | base64 -w0").strip())


@contextlib.contextmanager
def journal_on_failure(machine: "QemuMachine", *units: str) -> Generator[None]:
    """On an exception, print the last journal lines of UNITS on MACHINE, then re-raise."""
    try:
        yield
    except Exception:
        for unit in units:
            _, out = machine.execute(f"journalctl -b --no-pager -n 60 -u {shlex.quote(unit)} 2>&1")
            print(f"---- {machine.name}: journal of {unit} ----\n{out}")
        raise


# ---------------------------------------------------------------------------- cluster start-up


def start_cluster(primary: "QemuMachine", replica: "QemuMachine", others: Sequence[Any]) -> None:
    """Boot the PostgreSQL primary first, then everything else.

    The replica clones the primary once, at boot (lemmy-cluster-pg-bootstrap.service), and that
    needs the replication role's password, which the primary's lemmy-cluster-pg-setup.service
    sets: so the replica starts only once the primary has run it.
    """
    primary.start()
    with journal_on_failure(primary, "postgresql.service", "lemmy-cluster-pg-setup.service"):
        primary.wait_for_unit("lemmy-cluster-pg-setup.service")
    replica.start()
    for machine in others:
        machine.start()
    with journal_on_failure(replica, "lemmy-cluster-pg-bootstrap.service", "postgresql.service"):
        replica.wait_for_unit("postgresql.service")


def wait_for_backend(machine: "QemuMachine", addr: str, port: int, host: str) -> None:
    """pict-rs and lemmy_server up, and the API past its migrations (it answers 503 until then)."""
    with journal_on_failure(machine, "lemmy.service", "pict-rs.service"):
        machine.wait_for_unit("pict-rs.service")
        machine.wait_for_unit("lemmy.service")
        wait_for_http(machine, f"http://{addr}:{port}/api/v3/site", host)


def wait_for_frontend(machine: "QemuMachine", host: str) -> None:
    """nginx and lemmy-ui up, and a page rendered (lemmy-ui answers 500 while the API is down)."""
    with journal_on_failure(machine, "nginx.service", "lemmy-ui.service"):
        machine.wait_for_unit("nginx.service")
        machine.wait_for_unit("lemmy-ui.service")
        wait_for_http(machine, "http://127.0.0.1/", host)


# ---------------------------------------------------------------------------- pict-rs images


def upload_image(client: "QemuMachine", fe: str, domain: str, path: str, jwt: str, what: str) -> str:
    """Upload the PNG at PATH on CLIENT through the frontend FE (`Host: DOMAIN`); return pict-rs's
    alias (the file name)."""
    resp = http(
        client,
        f"http://{fe}/pictrs/image",
        host=domain,
        method="POST",
        headers=[f"Authorization: Bearer {jwt}"],
        form=f"images[]=@{path};type=image/png",
        timeout=60,
    )
    expect_status(resp, 200, what)
    answer = resp.json()
    expect_equal("ok", answer.get("msg"), f"{what}: msg of pict-rs's answer")
    alias = str(answer["files"][0]["file"])
    # Callers interpolate it into SQL (`re` is not imported in the driver's script: checked by hand).
    plain = alias != "" and all(c.isascii() and (c.isalnum() or c in "._-") for c in alias)
    expect(plain, f"{what}: a plain file name as alias", alias)
    return alias


def fetch_image(client: "QemuMachine", fe: str, domain: str, alias: str, what: str) -> None:
    """GET /pictrs/image/ALIAS on CLIENT through the frontend FE (`Host: DOMAIN`): HTTP 200 and a PNG."""
    client.succeed("rm -f /tmp/download")
    rc, out = client.execute(
        quote(
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--header",
            f"Host: {domain}",
            "--output",
            "/tmp/download",
            "--write-out",
            "%{http_code}",
            f"http://{fe}/pictrs/image/{alias}",
        )
        + " 2>&1"
    )
    expect_equal((0, "200"), (rc, out.strip()), f"{what}: curl exit code and HTTP status")
    expect_equal(PNG_SIGNATURE, file_head(client, "/tmp/download", len(PNG_SIGNATURE)), f"{what}: start of the body")
