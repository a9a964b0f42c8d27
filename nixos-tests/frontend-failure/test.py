# VM test `frontend-failure`: a frontend crashes; the other serves on without a single failed
# request, and the crashed one serves again after its restart (nixos-tests/frontend-failure/test.nix).
from driver_globals import (
    APP1,
    BACKEND_PORT,
    DOMAIN,
    FE1,
    FE2,
    UI_PORT,
    app1,
    client,
    db1,
    db2,
    fe1,
    fe2,
    subtest,
)
from lib import (
    api,
    expect,
    expect_equal,
    expect_port,
    expect_status,
    http,
    quote,
    start_cluster,
    wait_for_backend,
    wait_for_frontend,
    wait_for_http,
    write_file,
)

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----
PROBE_SECONDS = 45

# Requests through fe2, in a loop, in the background on the client: one line per request,
# "<HTTP code> <path>" (000: no answer).
PROBE = f"""
set -u
end=$((SECONDS + {PROBE_SECONDS}))
: > /tmp/probe.log
while [ "$SECONDS" -lt "$end" ]; do
  for path in / /api/v3/site /robots.txt; do
    code=$(curl --silent --output /dev/null --max-time 10 --write-out '%{{http_code}}' \\
      --header 'Host: {DOMAIN}' "http://{FE2}$path") || true
    echo "${{code:-000}} $path" >> /tmp/probe.log
  done
  sleep 0.3
done
touch /tmp/probe.done
"""

with subtest("the cluster boots and serves through both frontends"):
    start_cluster(db1, db2, [app1, fe1, fe2, client])
    wait_for_backend(app1, APP1, BACKEND_PORT, DOMAIN)
    for fe in (fe1, fe2):
        wait_for_frontend(fe, DOMAIN)
    for addr in (FE1, FE2):
        wait_for_http(client, f"http://{addr}/", DOMAIN)

with subtest("fe2 answers every request while fe1 crashes and stays down"):
    write_file(client, "/tmp/probe.sh", PROBE.encode())
    client.succeed("rm -f /tmp/probe.log /tmp/probe.done")
    client.succeed('systemd-run --unit=probe-fe2 --setenv=PATH="$PATH" "$(command -v bash)" /tmp/probe.sh')
    client.wait_until_succeeds("test -s /tmp/probe.log", timeout=30)
    fe1.crash()
    expect_port(client, FE1, 80, False, "fe1 after its crash")
    client.wait_for_file("/tmp/probe.done", timeout=PROBE_SECONDS + 120)
    lines = client.succeed("cat /tmp/probe.log").splitlines()
    failures = [line for line in lines if not line.startswith("200 ")]
    expect(len(lines) >= 30, "the probe made at least 30 requests through fe2", len(lines))
    expect_equal([], failures, f"requests through fe2 that failed, of {len(lines)}")

with subtest("fe1 boots again and serves"):
    fe1.start()
    wait_for_frontend(fe1, DOMAIN)
    wait_for_http(client, f"http://{FE1}/", DOMAIN)
    page = http(client, f"http://{FE1}/", host=DOMAIN)
    expect_status(page, 200, "front page through fe1 after its restart")
    expect("Lemmy" in page.body, "lemmy-ui's page through fe1 contains 'Lemmy'", page.body[:400])
    api(client, f"http://{FE1}", "/api/v3/site", host=DOMAIN)

with subtest("fe2 renders pages with fe1's lemmy-ui while its own is stopped"):
    fe2.succeed("systemctl stop lemmy-ui.service")
    fe2.wait_for_closed_port(UI_PORT, FE2)
    for i in range(10):
        page = http(client, f"http://{FE2}/", host=DOMAIN)
        expect_status(page, 200, f"front page {i + 1} through fe2 without its lemmy-ui")
        expect("Lemmy" in page.body, "the page contains 'Lemmy'", page.body[:400])
    fe2.succeed("systemctl start lemmy-ui.service")
    fe2.wait_for_open_port(UI_PORT, FE2)
    # The probe unit is gone once finished; nothing else is left running.
    client.succeed(quote("rm", "-f", "/tmp/probe.sh", "/tmp/probe.log", "/tmp/probe.done"))
