"""Checks of a pict-rs machine, through a testinfra Host.

    from synth.checks.pictrs import pictrs_checks
    for result in pictrs_checks(host, "10.0.0.20", 8080):
        print(result)

The host needs ``ss`` (iproute2) and ``curl``.
"""

from __future__ import annotations

from typing import Any

from synth.checks import CheckResult
from synth.checks.frontend import _hostport, http_status, port_listening

PICTRS_PORT = 8080


def healthz(host: Any, address: str, port: int = PICTRS_PORT) -> CheckResult:
    """GET /healthz on pict-rs answers 200 (pict-rs checks its repo and store for it)."""
    url = f"http://{_hostport(address, port)}/healthz"
    code, err = http_status(host, url)
    got = str(code) if code else f"no answer ({err})" if err else "no answer"
    return CheckResult("pictrs: GET /healthz", code == 200, f"expected 200 from {url}, got {got}")


def pictrs_checks(host: Any, address: str, port: int = PICTRS_PORT) -> list[CheckResult]:
    """pict-rs listens on the private ADDRESS:PORT and its health endpoint answers 200."""
    listening = port_listening(host, address, port, what=f"pictrs: listening on {_hostport(address, port)}")
    if not listening.ok:
        return [listening]
    return [listening, healthz(host, address, port)]
