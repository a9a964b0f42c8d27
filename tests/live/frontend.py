"""Real nginx on the frontend role's own include files, in network-namespace hosts.

``render_nginx_conf`` writes, for one frontend of a synth plan, the nginx.conf that
modules/frontend/default.nix makes NixOS generate: the same upstream groups (names, servers,
max_fails / fail_timeout, backup, keepalive), the port-80 server with the ACME includes and
routing.conf, and the loopback internal-API server. The rule files themselves are not copied: the
conf includes modules/frontend/*.conf by absolute path, so the tests run the very files the module
ships. Only what a test run needs on top (pid, logs, temp paths in a scratch folder, an access log
that names the upstream) is added.

``RoutingFixture`` is a TEST FIXTURE FOR NGINX ROUTING, NOT LEMMY: a tiny HTTP server that answers
every method with JSON naming itself ({"server", "method", "path", "headers", ...}), so a test can
tell which upstream nginx chose. It stands where lemmy-ui and the Lemmy backend would listen.

Used by tests/live/test_frontend.py and meant for a later benchmark script as well.

    nginx = start_nginx(host, conf_path)
    ui = RoutingFixture.start(host, "fe1-ui", host.address, 1234)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from synth.topology import UI_PORT, FrontendPlan, hostport
from tests.live.netns import Host

REPO = Path(__file__).resolve().parents[2]
# The module's include files; LEMMY_CLUSTER_FRONTEND_DIR points at another copy (to try a change).
FRONTEND_MODULE = Path(os.environ.get("LEMMY_CLUSTER_FRONTEND_DIR") or REPO / "modules" / "frontend")
NGINX = "/usr/sbin/nginx"

# modules/frontend/default.nix option defaults
MAX_FAILS = 3
FAIL_TIMEOUT = "10s"
INTERNAL_API_PORT = 8537


# --------------------------------------------------------------------------- nginx.conf


@dataclass(frozen=True)
class FrontendPaths:
    """Scratch files of one nginx instance: everything it writes lives under ROOT."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def acme_root(self) -> Path:
        return self.root / "acme-challenge"

    @property
    def pid(self) -> Path:
        return self.root / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    @property
    def temp(self) -> Path:
        return self.root / "temp"

    def create(self) -> FrontendPaths:
        for folder in (self.root, self.acme_root, self.temp):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def put_acme_token(self, token: str, content: str) -> Path:
        """Place an HTTP-01 token where the ACME client would (the webroot's acme-challenge folder)."""
        folder = self.acme_root / ".well-known" / "acme-challenge"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / token
        path.write_text(content)
        return path


def _server_params(backup: bool = False, max_fails: int = MAX_FAILS, fail_timeout: str = FAIL_TIMEOUT) -> str:
    return f" max_fails={max_fails} fail_timeout={fail_timeout}" + (" backup" if backup else "")


def render_nginx_conf(
    plan: FrontendPlan,
    domain: str,
    ui_listen_address: str,
    paths: FrontendPaths,
    *,
    ui_port: int = UI_PORT,
    internal_api_port: int = INTERNAL_API_PORT,
    max_fails: int = MAX_FAILS,
    fail_timeout: str = FAIL_TIMEOUT,
    tls: str = "none",
    certificate: Path | None = None,
    key: Path | None = None,
) -> str:
    """nginx.conf for one frontend, as modules/frontend/default.nix configures it.

    PLAN is the host's synth FrontendPlan; UI_LISTEN_ADDRESS is where its own lemmy-ui listens
    (the module's uiListenAddress, the machine's private address). TLS is the cluster's tls mode:
    with "none" port 80 serves the site; otherwise port 80 answers ACME challenges and redirects
    the rest, and port 443 serves the site with CERTIFICATE and KEY (for "acme" the module uses
    the ACME certificate; a test passes a self-signed one). recommendedTlsSettings is left out.
    """
    https = tls != "none"
    if https and (certificate is None or key is None):
        raise ValueError(f'tls = "{tls}" needs a certificate and a key file')
    local_ui = hostport(ui_listen_address, ui_port)
    params = _server_params(max_fails=max_fails, fail_timeout=fail_timeout)
    backup = _server_params(backup=True, max_fails=max_fails, fail_timeout=fail_timeout)
    backend_servers = "".join(f"        server {b}{params};\n" for b in plan.backends)
    ui_servers = f"        server {local_ui}{params};\n"
    ui_servers += "".join(f"        server {p}{backup};\n" for p in plan.ui_peers)
    acme_upstream = ""
    if plan.acme_peers:
        servers = "".join(f"        server {p};\n" for p in plan.acme_peers)
        acme_upstream = f"    upstream lemmy_acme_peers {{\n{servers}    }}\n"
    acme_fallback = "acme-peers.conf" if plan.acme_peers else "acme-no-peers.conf"
    t = paths.temp
    m = FRONTEND_MODULE
    routing = f"include {m / 'routing.conf'};"
    port80_what = "a redirect to HTTPS" if https else 'the site (tls = "none")'
    port80_rest = "location / { return 301 https://$host$request_uri; }" if https else routing
    https_server = ""
    if https:
        https_server = f"""
    # The HTTPS site (onlySSL, default).
    server {{
        listen 0.0.0.0:443 ssl http2 default_server;
        server_name {domain};
        ssl_certificate {certificate};
        ssl_certificate_key {key};
        {routing}
    }}
"""
    return f"""\
# Rendered by tests/live/frontend.py from a synth FrontendPlan; mirrors modules/frontend/default.nix
# (tls = "{tls}"). The routing rules are the module's own files, included by absolute path.
daemon off;
# The test runs as root and keeps its files in a private scratch folder: workers stay root here
# (the NixOS service runs them as the nginx user).
user root;
worker_processes 2;
pid {paths.pid};
error_log {paths.error_log} notice;

events {{
    worker_connections 1024;
}}

http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    # recommendedOptimisation
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;

    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;

    # Test-only: which upstream answered, and whether a request was an ACME peer hop.
    log_format lemmy_cluster_test '$remote_addr "$request" $status host=$host '
                                  'upstream=$upstream_addr hop=$http_x_lemmy_cluster_acme_hop';
    access_log {paths.access_log} lemmy_cluster_test;

    # commonHttpConfig
    include {m / "routing-http.conf"};

    upstream lemmy_backend {{
{backend_servers}        zone lemmy_backend 64k;
        keepalive 16;
        keepalive_timeout 4s;
    }}
    upstream lemmy_ui {{
{ui_servers}        zone lemmy_ui 64k;
        keepalive 8;
        keepalive_timeout 4s;
    }}
{acme_upstream}
    # "lemmy-cluster-http": port 80, ACME challenges, then {port80_what}.
    server {{
        listen 0.0.0.0:80 default_server;
        server_name {domain};

        set $lemmy_cluster_acme_root {paths.acme_root};
        include {m / "acme-challenge.conf"};
        include {m / acme_fallback};
        {port80_rest}
    }}
{https_server}
    # "lemmy-cluster-internal-api": lemmy-ui's server-side rendering reaches the backends here.
    server {{
        listen 127.0.0.1:{internal_api_port};
        server_name lemmy-cluster-internal-api;
        location / {{
            proxy_pass http://lemmy_backend;
            proxy_http_version 1.1;
            proxy_set_header Host {domain};
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504;
        }}
    }}
}}
"""


def write_nginx_conf(plan: FrontendPlan, domain: str, ui_listen_address: str, root: Path, **kw: Any) -> FrontendPaths:
    """Create ROOT's scratch folders and write its nginx.conf; return the paths."""
    paths = FrontendPaths(root).create()
    paths.conf.write_text(render_nginx_conf(plan, domain, ui_listen_address, paths, **kw))
    return paths


def render_balancer_conf(
    paths: FrontendPaths,
    *,
    upstream: str,
    servers: list[str],
    upstream_extra: str,
    listen: str,
    server_name: str,
    include: Path,
) -> str:
    """nginx.conf of a loopback balancer of the role modules (the backends' pict-rs balancer, the
    pict-rs machines' S3 balancer): the upstream group UPSTREAM of SERVERS (max_fails=3,
    fail_timeout=10s, as the modules set them) and UPSTREAM_EXTRA lines, and one server that
    listens on LISTEN and includes the module's INCLUDE file. The access log records each
    request's method, status, and the upstream addresses tried with their statuses."""
    lines = "".join(f"        server {u} max_fails=3 fail_timeout=10s;\n" for u in servers)
    extra = "".join(f"        {line.strip()}\n" for line in upstream_extra.strip().splitlines())
    t = paths.temp
    return f"""\
daemon off;
user root;
worker_processes 2;
pid {paths.pid};
error_log {paths.error_log} notice;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    log_format upstream '$request_method $uri $status upstream=[$upstream_addr] upstream_status=[$upstream_status]';
    access_log {paths.access_log} upstream;
    upstream {upstream} {{
{lines}{extra}    }}
    server {{
        listen {listen};
        server_name {server_name};
        include {include};
    }}
}}
"""


def self_signed_certificate(folder: Path, domain: str) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and key for DOMAIN (what a test serves HTTPS with)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    if not cert.exists():
        args = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={domain}"]
        args += ["-addext", f"subjectAltName=DNS:{domain}", "-keyout", str(key), "-out", str(cert)]
        subprocess.run(
            args,
            check=True,
            capture_output=True,
        )
    return cert, key


def nginx_test(host: Host | None, paths: FrontendPaths) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the rendered conf (in HOST's namespace, or here when HOST is None)."""
    args = [NGINX, "-t", "-q", "-e", str(paths.error_log), "-c", str(paths.conf)]
    if host is None:
        return subprocess.run(args, check=False, text=True, capture_output=True)
    return host.run(args, check=False)


class Nginx:
    """One nginx master (daemon off) running in a host's namespace."""

    def __init__(self, host: Host, paths: FrontendPaths) -> None:
        self.host = host
        self.paths = paths
        self.proc: subprocess.Popen[Any] | None = None

    def start(self, timeout: float = 10, port: int = 80) -> Nginx:
        """Start nginx and wait until it listens on PORT of the host's address."""
        self.proc = self.host.popen(
            [NGINX, "-e", str(self.paths.error_log), "-c", str(self.paths.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.host.address, port, timeout, proc=self.proc, what=f"nginx on {self.host.name}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def access_log_lines(self) -> list[str]:
        if not self.paths.access_log.exists():
            return []
        return self.paths.access_log.read_text().splitlines()


def wait_for_port(
    address: str, port: int, timeout: float = 10, proc: subprocess.Popen[Any] | None = None, what: str = ""
) -> None:
    """Wait until ADDRESS:PORT accepts TCP connections (from this, the root, namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'process'} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what or 'nothing'} listening on {hostport(address, port)} after {timeout}s")


# --------------------------------------------------------------------------- routing fixture


class RoutingFixtureServer(ThreadingHTTPServer):
    """TEST FIXTURE FOR NGINX ROUTING, NOT LEMMY: answers every request with JSON naming itself."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, name: str, address: tuple[str, int], status: int = 200) -> None:
        self.fixture_name = name
        self.status = status
        super().__init__(address, _RoutingHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that hangs for about
        # ten seconds in a namespace without DNS. Bind like a plain TCPServer instead.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _RoutingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive expects
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for the peer's
    # delayed ACK of the headers (about 40 ms per answer on a keep-alive connection). Answer at once.
    disable_nagle_algorithm = True
    server: RoutingFixtureServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
        delay = float(self.headers.get("X-Fixture-Delay") or 0)
        if delay > 0:
            time.sleep(min(delay, 5.0))
        body = json.dumps(
            {
                "server": self.server.fixture_name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_length": length - remaining,
            }
        ).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Fixture-Server", self.server.fixture_name)  # HEAD answers have no body
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class RoutingFixture:
    """A RoutingFixtureServer running as a process in a host's namespace (so it can be killed)."""

    host: Host
    name: str
    address: str
    port: int
    proc: subprocess.Popen[Any] | None = None
    status: int = 200  # every answer's status (503: a failing upstream that still accepts connections)

    @classmethod
    def start(cls, host: Host, name: str, address: str, port: int) -> RoutingFixture:
        return cls(host, name, address, port).restart()

    def restart(self) -> RoutingFixture:
        self.kill()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        args = ["serve", self.name, self.address, str(self.port), "--status", str(self.status)]
        self.proc = self.host.popen(
            [sys.executable, "-m", "tests.live.frontend", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.address, self.port, 15, proc=self.proc, what=f"routing fixture {self.name}")
        return self

    def kill(self) -> None:
        """SIGKILL, like a crashed lemmy-ui: open connections are reset, the port stops listening."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data

    @property
    def server(self) -> str | None:
        """The routing fixture that answered, or None when the answer did not come from one."""
        if self.status != 200:
            return None
        return self.headers.get("x-fixture-server")


def request(
    address: str,
    method: str,
    path: str,
    *,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    port: int | None = None,
    https: bool = False,
    timeout: float = 10,
) -> Answer:
    """One HTTP/1.1 request straight to ADDRESS (no proxy from the environment), Host: HOST.

    With HTTPS the certificate is not verified (the tests' certificates are self-signed).
    """
    conn: http.client.HTTPConnection
    if https:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(address, port or 443, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(address, port or 80, timeout=timeout)
    try:
        all_headers = {"Host": host, **(headers or {})}
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in all_headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            # nginx may refuse a too-large body (413) before reading all of it; keep its answer.
            try:
                view = memoryview(body)
                for i in range(0, len(body), 1 << 20):
                    conn.send(view[i : i + (1 << 20)])
            except (BrokenPipeError, ConnectionResetError):
                pass
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, data, {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


# --------------------------------------------------------------------------- entry point


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.live.frontend serve")
    parser.add_argument("name")
    parser.add_argument("address")
    parser.add_argument("port", type=int)
    parser.add_argument("--status", type=int, default=200, help="every answer's status (default 200)")
    args = parser.parse_args(argv)
    with RoutingFixtureServer(args.name, (args.address, args.port), args.status) as server:
        server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        _serve(sys.argv[2:])
    else:
        sys.exit("usage: python -m tests.live.frontend serve NAME ADDRESS PORT  (a routing fixture, not Lemmy)")
