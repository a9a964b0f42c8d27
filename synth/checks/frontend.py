"""Checks of a frontend machine (nginx + lemmy-ui), through a testinfra Host.

    import testinfra
    from synth.checks.frontend import frontend_checks
    host = testinfra.get_host("ssh://root@fe1.example.org")
    for result in frontend_checks(host, "lemmy.example.org", "10.0.0.10", 1234, ["10.0.0.20:8536"]):
        print(result)

The host needs ``ss`` (iproute2) and ``curl``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from synth.checks import CheckResult

HTTP_PORT = 80


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _run(host: Any, command: str) -> tuple[int, str, str]:
    result = host.run(command)
    return int(result.rc), str(result.stdout), str(result.stderr)


def nginx_running(host: Any) -> CheckResult:
    """An nginx process runs on the host."""
    procs = host.process.filter(comm="nginx")
    return CheckResult(
        "nginx process running",
        bool(procs),
        f"expected at least one process named nginx, got {len(procs)}",
    )


def port_listening(host: Any, address: str, port: int, program: str | None = None, what: str = "") -> CheckResult:
    """Something (PROGRAM, when given) listens on TCP ADDRESS:PORT; ADDRESS "0.0.0.0" means any IPv4 address."""
    name = what or f"tcp {_hostport(address, port)} listening"
    rc, out, err = _run(host, f"ss -Hltnp 'sport = :{port}'")
    if rc != 0:
        return CheckResult(name, False, f"`ss` failed with exit code {rc}: {err.strip()}")
    wanted = {_hostport(address, port)}
    if address == "0.0.0.0":
        wanted |= {f"*:{port}"}
    else:
        wanted |= {_hostport("0.0.0.0", port), f"*:{port}", f"[::]:{port}"}
    lines = [line for line in out.splitlines() if len(line.split()) >= 4 and line.split()[3] in wanted]
    if not lines:
        seen = sorted({line.split()[3] for line in out.splitlines() if len(line.split()) >= 4}) or ["nothing"]
        return CheckResult(name, False, f"expected a listener on {_hostport(address, port)}, got {', '.join(seen)}")
    if program is not None and not any(f'(("{program}"' in line for line in lines):
        return CheckResult(name, False, f"expected {program} to listen on {_hostport(address, port)}, got: {lines[0]}")
    return CheckResult(name, True, f"listening: {lines[0].split()[3]}" + (f" ({program})" if program else ""))


def http_status(host: Any, url: str, host_header: str | None = None, timeout: int = 5) -> tuple[int, str]:
    """(HTTP status, error text) of a GET of URL made on the host with curl; status 0 when there was no answer."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout)]
    if host_header is not None:
        args += ["-H", f"Host: {host_header}"]
    args.append(url)
    rc, out, err = _run(host, shlex.join(args))
    try:
        code = int(out.strip() or 0)
    except ValueError:
        code = 0
    return code, (err.strip() if rc != 0 else "")


def site_answers(host: Any, domain: str) -> CheckResult:
    """GET / through the host's own nginx with Host: DOMAIN gets a successful answer (lemmy-ui or its backup)."""
    code, err = http_status(host, f"http://127.0.0.1:{HTTP_PORT}/", host_header=domain)
    ok = 200 <= code < 400
    detail = f"expected 2xx/3xx for GET / with Host: {domain}, got {code or 'no answer'}"
    return CheckResult(f"GET / via local nginx (Host: {domain})", ok, detail + (f" ({err})" if err else ""))


def backend_reachable(host: Any, backend: str) -> CheckResult:
    """The backend (address:port) answers HTTP from this host; any status counts, it proves the path is open."""
    code, err = http_status(host, f"http://{backend}/api/v3/site")
    detail = f"expected an HTTP answer from {backend}, got " + (str(code) if code else f"none ({err})")
    return CheckResult(f"backend {backend} reachable", code != 0, detail)


def frontend_checks(
    host: Any, domain: str, private_address: str, ui_port: int, backends: Sequence[str]
) -> list[CheckResult]:
    """Every check of a frontend: nginx runs and owns port 80, lemmy-ui listens on the private
    address, the site answers through the local nginx, and each backend is reachable."""
    return [
        nginx_running(host),
        port_listening(host, "0.0.0.0", HTTP_PORT, program="nginx", what="nginx listening on port 80"),
        port_listening(
            host, private_address, ui_port, what=f"lemmy-ui listening on {_hostport(private_address, ui_port)}"
        ),
        site_answers(host, domain),
        *(backend_reachable(host, b) for b in backends),
    ]
