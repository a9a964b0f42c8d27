"""Checks of a backend machine (lemmy_server), through a testinfra Host.

    from synth.checks.backend import backend_checks
    for result in backend_checks(host, "10.0.0.20", 8536):
        print(result)

lemmy_server answers 503 while it runs its database migrations at start; that is reported as its
own failure ("migrations running"), so an operator can tell a slow start from a broken backend.
The host needs ``ss`` (iproute2) and ``curl``.
"""

from __future__ import annotations

from typing import Any

from synth.checks import CheckResult
from synth.checks.frontend import _hostport, http_status, port_listening

BACKEND_PORT = 8536
SITE_PATH = "/api/v3/site"


def site_api(host: Any, address: str, port: int = BACKEND_PORT) -> CheckResult:
    """GET /api/v3/site on the backend's own listener answers 200."""
    url = f"http://{_hostport(address, port)}{SITE_PATH}"
    name = f"backend: GET {SITE_PATH}"
    code, err = http_status(host, url)
    if code == 200:
        return CheckResult(name, True, f"200 from {url}")
    if code == 503:
        return CheckResult(
            name,
            False,
            f"migrations running: {url} answers 503, which Lemmy does while it migrates the database at "
            "start; wait for it (a large migration can take hours) and check again",
        )
    got = str(code) if code else f"no answer ({err})" if err else "no answer"
    return CheckResult(name, False, f"expected 200 from {url}, got {got}")


def backend_checks(host: Any, address: str, port: int = BACKEND_PORT) -> list[CheckResult]:
    """lemmy_server listens on the private ADDRESS:PORT and its site API answers 200."""
    listening = port_listening(host, address, port, what=f"backend: listening on {_hostport(address, port)}")
    if not listening.ok:
        return [listening]
    return [listening, site_api(host, address, port)]
