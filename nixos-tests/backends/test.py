# VM test `backends`: two Lemmy backends behind one frontend. Exactly one Lemmy process runs the
# scheduled tasks and each outgoing-federation shard runs once; the frontend fails over when a
# backend crashes, without a failed request, and writing works with one backend left
# (nixos-tests/backends/test.nix).
import shlex

from driver_globals import (
    ADMIN_PASSWORD_FILE,
    ADMIN_USER,
    API1,
    API2,
    BACKEND_PORT,
    DOMAIN,
    FE1,
    QemuMachine,
    api1,
    api2,
    client,
    db1,
    db2,
    fe1,
    media1,
    subtest,
)
from lib import (
    api,
    expect,
    expect_equal,
    expect_port,
    expect_status,
    http,
    journal_on_failure,
    login,
    quote,
    start_cluster,
    wait_for_frontend,
    wait_for_http,
    write_file,
)

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----
BACKENDS = {"api1": api1, "api2": api2}
ADDRESSES = {"api1": API1, "api2": API2}
UNITS = ("lemmy.service", "lemmy-federate.service")
FRONTEND = f"http://{FE1}"
COMMUNITY = "backends"

# What backends.toml asks for: api1 (the first backend, the default) runs the scheduled tasks;
# both backends send, shard i on the i-th backend of the file, each in a lemmy-federate process.
SCHEDULER = "api1/lemmy.service"
SHARDS = {"api1": 1, "api2": 2}

# A request through fe1 may wait for nginx's proxy_read_timeout (60 s, nginx's default) when it
# was sent on a kept-alive connection to the backend that just crashed (no RST comes back); nginx
# then retries it on the other backend. So a request fails only when it gets no 200 within 90 s.
PROBE_MAX_TIME = 90


def probe_script(name: str, count: int) -> str:
    """COUNT GETs of /api/v3/site through fe1, one line each: "<HTTP code> <seconds>" (000: none)."""
    return f"""
set -u
: > /tmp/probe-{name}.log
for _ in $(seq 1 {count}); do
  out=$(curl --silent --output /dev/null --max-time {PROBE_MAX_TIME} \\
    --write-out '%{{http_code}} %{{time_total}}' \\
    --header 'Host: {DOMAIN}' "{FRONTEND}/api/v3/site") || true
  echo "${{out:-000 0}}" >> /tmp/probe-{name}.log
  sleep 0.5
done
touch /tmp/probe-{name}.done
"""


def start_probe(name: str, count: int) -> None:
    write_file(client, f"/tmp/probe-{name}.sh", probe_script(name, count).encode())
    client.succeed(quote("rm", "-f", f"/tmp/probe-{name}.log", f"/tmp/probe-{name}.done"))
    client.succeed(f'systemd-run --unit=probe-{name} --setenv=PATH="$PATH" "$(command -v bash)" /tmp/probe-{name}.sh')


def probe_lines(name: str) -> int:
    return int(client.succeed(f"cat /tmp/probe-{name}.log | wc -l").strip())


def finish_probe(name: str, count: int) -> list[tuple[str, float]]:
    """Wait for the probe NAME to end; return (HTTP code, seconds) per request."""
    client.wait_for_file(f"/tmp/probe-{name}.done", timeout=count + 2 * PROBE_MAX_TIME + 120)
    results: list[tuple[str, float]] = []
    for line in client.succeed(f"cat /tmp/probe-{name}.log").splitlines():
        code, _, seconds = line.partition(" ")
        results.append((code, float(seconds or 0)))
    expect_equal(count, len(results), f"requests made by probe {name}")
    return results


def wait_for_lemmy(machine: "QemuMachine", addr: str) -> None:
    """lemmy_server and lemmy-federate up, and the API past its migrations (503 until then)."""
    with journal_on_failure(machine, *UNITS):
        for unit in UNITS:
            machine.wait_for_unit(unit)
        wait_for_http(machine, f"http://{addr}:{BACKEND_PORT}/api/v3/site", DOMAIN)


def key_values(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    return env


def unit_environment(machine: "QemuMachine", unit: str) -> dict[str, str]:
    """The Environment= of UNIT as systemd has it."""
    out = machine.succeed(quote("systemctl", "show", "--property=Environment", "--value", unit))
    return key_values(shlex.split(out))


def main_pid(machine: "QemuMachine", unit: str) -> int:
    pid = int(machine.succeed(quote("systemctl", "show", "--property=MainPID", "--value", unit)).strip())
    expect(pid > 0, f"{unit} on {machine.name} has a main process", pid)
    return pid


def process_environment(machine: "QemuMachine", unit: str) -> dict[str, str]:
    """The environment of UNIT's running lemmy_server process (what clap actually reads)."""
    pid = main_pid(machine, unit)
    exe = machine.succeed(f"readlink /proc/{pid}/exe").strip()
    expect(exe.endswith("/bin/lemmy_server"), f"the main process of {unit} on {machine.name} is lemmy_server", exe)
    return key_values(machine.succeed(f"tr '\\0' '\\n' < /proc/{pid}/environ").splitlines())


def switch_on(env: dict[str, str], name: str, where: str) -> bool:
    """Whether Lemmy's switch NAME is on; the module sets only the switches that are on, to "true"."""
    value = env.get(name)
    expect(value in (None, "true"), f"{where}: {name} is either unset or 'true'", value)
    return value == "true"


def check_processes(envs: dict[tuple[str, str], dict[str, str]], source: str) -> None:
    """The cluster-wide rules over the four Lemmy processes, from ENVS ((machine, unit): environment)."""
    expect_equal(sorted((m, u) for m in BACKENDS for u in UNITS), sorted(envs), f"Lemmy processes inspected ({source})")
    where = {key: f"{source} of {key[1]} on {key[0]}" for key in envs}
    schedulers = [
        f"{m}/{u}"
        for (m, u), env in sorted(envs.items())
        if not switch_on(env, "LEMMY_DISABLE_SCHEDULED_TASKS", where[(m, u)])
    ]
    expect_equal([SCHEDULER], schedulers, f"Lemmy processes without LEMMY_DISABLE_SCHEDULED_TASKS=true ({source})")

    for key, env in sorted(envs.items()):
        federate = key[1] == "lemmy-federate.service"
        expect_equal(
            federate,
            switch_on(env, "LEMMY_DISABLE_HTTP_SERVER", where[key]),
            f"{where[key]}: LEMMY_DISABLE_HTTP_SERVER=true (on lemmy-federate only)",
        )
        expect_equal(
            not federate,
            switch_on(env, "LEMMY_DISABLE_ACTIVITY_SENDING", where[key]),
            f"{where[key]}: LEMMY_DISABLE_ACTIVITY_SENDING=true (on lemmy_server only: sending is dedicated)",
        )

    # Lemmy's defaults, when unset, are index 1 and count 1.
    senders = {m: env for (m, u), env in envs.items() if u == "lemmy-federate.service"}
    indices = {m: int(env.get("LEMMY_FEDERATE_PROCESS_INDEX", "1")) for m, env in senders.items()}
    counts = sorted(int(env.get("LEMMY_FEDERATE_PROCESS_COUNT", "1")) for env in senders.values())
    expect_equal([1, 2], sorted(indices.values()), f"federation shards over both backends, each once ({source})")
    expect_equal([2, 2], counts, f"LEMMY_FEDERATE_PROCESS_COUNT of the senders ({source})")
    expect_equal(SHARDS, indices, f"shard of each backend, in the order of backends.toml ({source})")


def federate_log_line(shard: int) -> str:
    # Logged (info) once by SendManager::do_loop when sending starts (crates/federate/src/lib.rs,
    # Lemmy 0.19.5 through 0.19.20), with the 0-based index: process_index - 1.
    return f"Starting federation workers for process count {len(SHARDS)} and index {shard - 1}"


def wait_for_federate_log(machine: "QemuMachine", shard: int) -> None:
    line = federate_log_line(shard)
    with journal_on_failure(machine, "lemmy-federate.service"):
        machine.wait_until_succeeds(
            f"journalctl -b --no-pager -u lemmy-federate.service | grep -qF {shlex.quote(line)}", timeout=120
        )


with subtest("the primary starts, then the replica, pict-rs, both backends and the frontend"):
    start_cluster(db1, db2, [media1, api1, api2, fe1, client])
    with journal_on_failure(media1, "pict-rs.service"):
        media1.wait_for_unit("pict-rs.service")
    for name, machine in BACKENDS.items():
        wait_for_lemmy(machine, ADDRESSES[name])
    wait_for_frontend(fe1, DOMAIN)
    wait_for_http(client, f"{FRONTEND}/api/v3/site", DOMAIN)
    for name, machine in BACKENDS.items():
        for unit in UNITS:
            # Every Lemmy process runs the migrations at start and Lemmy takes no lock for them, so
            # processes that start together may fail once and be restarted (Restart=on-failure).
            restarts = machine.succeed(quote("systemctl", "show", "--property=NRestarts", "--value", unit)).strip()
            print(f"{name}: {unit} restarted {restarts} times during start-up")

with subtest("exactly one Lemmy process runs the scheduled tasks; shards 1 and 2 are each sent once"):
    # 1. As systemd starts the units.
    unit_envs = {(name, unit): unit_environment(m, unit) for name, m in BACKENDS.items() for unit in UNITS}
    check_processes(unit_envs, "unit environment")
    # 2. As the running processes have it (what Lemmy's clap arguments read).
    proc_envs = {(name, unit): process_environment(m, unit) for name, m in BACKENDS.items() for unit in UNITS}
    check_processes(proc_envs, "process environment")
    # 3. In effect: only lemmy_server listens on the backend port (lemmy-federate has no HTTP
    # server), and each lemmy-federate logs that it started sending its own shard while no
    # lemmy_server does. The scheduled tasks leave no such trace: Lemmy 0.19.20's
    # scheduled_tasks::setup logs nothing when it starts, and its first task (hot ranks, every 10
    # minutes) logs only 10 minutes later, so the journal is not checked for them.
    for name, machine in BACKENDS.items():
        out = machine.succeed(quote("ss", "-Htlnp", f"sport = :{BACKEND_PORT}"))
        pids = {int(part.split(",")[0]) for part in out.split("pid=")[1:]}
        expect_equal({main_pid(machine, "lemmy.service")}, pids, f"processes listening on {name}'s port {BACKEND_PORT}")
        wait_for_federate_log(machine, SHARDS[name])
    for name, machine in BACKENDS.items():
        started = machine.succeed(
            "journalctl -b --no-pager -u lemmy.service | grep -cF 'Starting federation workers' || true"
        ).strip()
        expect_equal("0", started, f"lines of {name}'s lemmy.service journal where it starts federation workers")

with subtest("fe1 answers every API request while api1 crashes and stays down"):
    crash_requests = 60
    start_probe("crash", crash_requests)
    client.wait_until_succeeds("test $(cat /tmp/probe-crash.log | wc -l) -ge 5", timeout=60)
    since = fe1.succeed("date +%s").strip()
    before = probe_lines("crash")
    api1.crash()
    expect_port(fe1, API1, BACKEND_PORT, False, "api1's backend after its crash")
    results = finish_probe("crash", crash_requests)
    after = len(results) - before
    failures = [f"request {i + 1}: {code} after {s:.1f}s" for i, (code, s) in enumerate(results) if code != "200"]
    slow = [round(s, 1) for _, s in results if s > 5]
    print(f"probe through fe1: {len(results)} requests, {before} before the crash; over 5 s: {slow}")
    expect(after >= 30, "at least 30 requests went through fe1 after api1's crash", after)
    expect_equal([], failures, f"requests through fe1 that failed, of {len(results)}")
    # nginx did try the crashed api1 (so the requests above really failed over), and its passive
    # health check (max_fails, fail_timeout) kept it from trying api1 for every second request as
    # plain round robin would. nginx logs a failed attempt at level error, naming the upstream.
    tried = fe1.succeed(
        f"journalctl --no-pager -u nginx.service --since=@{since}"
        + " | grep -F "
        + shlex.quote('request: "GET /api/v3/site')
        + " | grep -cF "
        + shlex.quote(f'upstream: "http://{API1}:{BACKEND_PORT}/')
        + " || true"
    ).strip()
    expect(int(tried) >= 1, "nginx on fe1 logged at least one failed attempt on api1 after its crash", tried)
    expect(
        int(tried) <= after // 2,
        f"nginx on fe1 stopped trying api1 for every other request (at most {after // 2} failed attempts)",
        tried,
    )

with subtest("a write through fe1 succeeds while only api2 is up"):
    expect_port(fe1, API1, BACKEND_PORT, False, "api1's backend (still down)")
    # Login and community creation share Lemmy's register rate limit (3 per hour per address):
    # one login, one community.
    password = api2.succeed(quote("cat", ADMIN_PASSWORD_FILE)).strip()
    jwt = login(client, FRONTEND, DOMAIN, ADMIN_USER, password)
    created = api(
        client,
        FRONTEND,
        "/api/v3/community",
        host=DOMAIN,
        method="POST",
        body={"name": COMMUNITY, "title": "Written with api1 down"},
        jwt=jwt,
    )["community_view"]["community"]
    read = api(client, FRONTEND, f"/api/v3/community?name={COMMUNITY}", host=DOMAIN)["community_view"]["community"]
    expect_equal((created["id"], COMMUNITY), (read["id"], read["name"]), "community read back through fe1 (id, name)")

with subtest("api1 boots again, resumes its shard and serves through fe1"):
    api1.start()
    wait_for_lemmy(api1, API1)
    expect_port(fe1, API1, BACKEND_PORT, True, "api1's backend after its restart")
    wait_for_federate_log(api1, SHARDS["api1"])
    back_requests = 80
    start_probe("back", back_requests)
    # Once its fail_timeout is over, nginx sends api1 requests again: fe1 holds connections to it
    # (lemmy-ui reaches the backends through fe1's own nginx, so every connection from fe1 is
    # nginx's).
    with journal_on_failure(fe1, "nginx.service"):
        api1.wait_until_succeeds(
            quote("ss", "-Htn", "state", "established", f"( sport = :{BACKEND_PORT} and dst {FE1} )") + " | grep -q .",
            timeout=60,
        )
    results = finish_probe("back", back_requests)
    failures = [f"request {i + 1}: {code}" for i, (code, _) in enumerate(results) if code != "200"]
    expect_equal([], failures, f"requests through fe1 after api1's return that failed, of {len(results)}")
    # api1 reads what was written through api2: one database.
    direct = http(fe1, f"http://{API1}:{BACKEND_PORT}/api/v3/community?name={COMMUNITY}", host=DOMAIN)
    expect_status(direct, 200, "the community asked from api1 directly")
    expect_equal(created["id"], direct.json()["community_view"]["community"]["id"], "community id from api1")
    client.succeed(quote("rm", "-f", "/tmp/probe-crash.sh", "/tmp/probe-back.sh"))
