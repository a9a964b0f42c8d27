"""modules/wait-address.sh, the script of lemmy-cluster-private-address.service, run for real in a
network namespace of its own (`unshare --net`, a veth pair, no bridge; addresses of
10.237.0.0/24 and 2001:db8::/64, which exist only in that namespace): it returns once the address
is assigned, not before; an IPv6 address only after duplicate address detection (PostgreSQL cannot
bind a tentative one); without the address it gives up after its timeout, saying why."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import ROOT, require_root, require_tool

pytestmark = pytest.mark.live

SCRIPT = ROOT / "modules" / "wait-address.sh"


def _in_namespace(body: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    setup = "set -eu\nip link add v0 type veth peer name v1\nip link set v0 up\nip link set v1 up\n"
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", setup + body], text=True, capture_output=True, timeout=timeout, check=False
    )


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_root()
    for tool in ("unshare", "ip"):
        require_tool(tool)


def test_it_returns_once_the_address_is_assigned_and_not_before() -> None:
    t0 = time.monotonic()
    r = _in_namespace(
        f"sh {SCRIPT} 10.237.0.5 20 & wait_pid=$!\n"
        "sleep 2\n"
        'kill -0 "$wait_pid" && echo "still waiting after 2 s"\n'
        "ip addr add 10.237.0.5/24 dev v0\n"
        'wait "$wait_pid"; echo "exit $?"\n'
    )
    assert r.returncode == 0, r.stderr
    assert "still waiting after 2 s" in r.stdout, "it did not return before the address existed"
    assert "lemmy-cluster: 10.237.0.5 is assigned" in r.stdout and "exit 0" in r.stdout
    assert time.monotonic() - t0 < 15, "and it returned soon after (well within its 20 s)"


def test_a_tentative_ipv6_address_is_waited_for() -> None:
    r = _in_namespace(
        "sysctl -qw net.ipv6.conf.v0.accept_dad=1 net.ipv6.conf.v0.dad_transmits=3\n"
        "ip addr add 2001:db8::6/64 dev v0\n"
        'ip -o addr show to 2001:db8::6 | grep -q tentative && echo "tentative at first"\n'
        f"sh {SCRIPT} 2001:db8::6 20\n"
        'ip -o addr show to 2001:db8::6 | grep -q tentative || echo "not tentative when it returned"\n'
    )
    assert r.returncode == 0, r.stderr
    assert "tentative at first" in r.stdout, r.stdout
    assert "not tentative when it returned" in r.stdout


def test_it_gives_up_after_its_timeout_saying_why() -> None:
    t0 = time.monotonic()
    r = _in_namespace(f'ip addr add 10.237.0.6/24 dev v0\nsh {SCRIPT} 10.237.0.7 2 || echo "exit $?"\n')
    elapsed = time.monotonic() - t0
    assert "exit 1" in r.stdout
    assert "10.237.0.7 (services.lemmy-cluster.privateAddress) is not assigned to any interface after 2 s" in r.stderr
    assert 1 <= elapsed < 15
