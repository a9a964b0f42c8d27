# VM test `failover`: the PostgreSQL leader's machine crashes while Lemmy serves. Patroni fails
# over by itself: with no command on any machine, a post written through the frontend succeeds
# within a stated bound, and nothing written before is lost. The crashed machine boots again and
# comes back as a streaming replica of the new leader, on its timeline (nixos-tests/failover/test.nix).
import contextlib
import json
from collections.abc import Generator
from typing import Any

from driver_globals import (
    ADMIN_PASSWORD_FILE,
    ADMIN_USER,
    APP1,
    BACKEND_PORT,
    DOMAIN,
    ETCD_CLIENT_URLS,
    ETCD_MEMBERS,
    FE1,
    LEMMY_DB,
    PATRONI_APIS,
    PATRONI_TTL,
    PG_PORT,
    app1,
    client,
    db1,
    db2,
    db3,
    fe1,
    start_all,
    subtest,
)
from lib import (
    api,
    curl_ok,
    expect,
    expect_equal,
    http,
    journal_on_failure,
    login,
    quote,
    wait_for_backend,
    wait_for_frontend,
    wait_for_http,
)

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----
FRONTEND = f"http://{FE1}"
MACHINES = {m.name: m for m in (db1, db2, db3)}
NAMES = sorted(MACHINES)
PATRONI_UNITS = ("patroni.service", "etcd.service", "lemmy-cluster-patroni-setup.service")

# The bound on writes resuming after the leader's machine crashed. Its leader lock expires at most
# PATRONI_TTL (20) s after its last renewal; a replica then takes it and is promoted within a
# couple of seconds (loop_wait 2 s). The backend notices its idle pooled connections to the dead
# machine within some 14 s (keepalives; a statement in flight fails after some 25 s) and skips
# the machine on new ones after connect_timeout (3 s), so writes resume well under a minute after
# the crash (make bench measures it; this is a bound, not a target). The rest is room for a slow
# CI machine.
FAILOVER_BOUND = 120
# Lemmy limits posts to 6 per 10 minutes per client address, and a failed request counts: one post
# before the crash, at most this many attempts after it.
POST_ATTEMPTS = 4
POST_RETRY_PAUSE = 5
# The crashed machine's return: boot, etcd, Patroni's crash recovery of the old primary, pg_rewind
# if its WAL went past the new leader's, and streaming.
REJOIN_TIMEOUT = 600
# The first boot: every VM, etcd's first election, initdb on the bootstrap member, two clones.
BOOT_TIMEOUT = 900

expect_equal(NAMES, sorted(PATRONI_APIS), "the Patroni members: the test's db machines vs the nodes under Patroni")
expect_equal(NAMES, sorted(ETCD_MEMBERS), "the etcd members (services.lemmy-cluster.etcd.members) vs the db machines")
expect_equal(sorted(ETCD_MEMBERS), sorted(ETCD_CLIENT_URLS), "the etcd members vs the nodes that run etcd")


# ---------------------------------------------------------------------------- Patroni and etcd

# Holds when the members of /cluster are exactly $names, one of them the leader (named $leader,
# unless that is empty) and running, every other one a replica that streams, all on one timeline
# above $above.
HEALTHY_CLUSTER = """
(.members // []) as $m
| ([$m[].name] | sort) == $names
  and ([$m[] | select(.role == "leader" and .state == "running")] | length) == 1
  and ([$m[] | select(.role != "leader" and .state == "streaming")] | length) == ($names | length) - 1
  and ([$m[].timeline] | unique | length) == 1
  and ([$m[].timeline] | min) > $above
  and ($leader == "" or [$m[] | select(.role == "leader") | .name] == [$leader])
"""


@contextlib.contextmanager
def journals_on_failure(names: list[str], *units: str) -> Generator[None]:
    """journal_on_failure on every machine of NAMES (never a crashed one: the driver would boot it)."""
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(journal_on_failure(MACHINES[name], *units))
        yield


def rest_command(via: str, path: str) -> str:
    """GET PATH of VIA's Patroni REST API, run on VIA (the API is open only to the other members
    and the proxies: the test asks each member about itself)."""
    return quote("curl", "--fail", "--silent", "--show-error", "--max-time", "5", PATRONI_APIS[via] + path)


def rest(via: str, path: str) -> Any:
    return json.loads(MACHINES[via].succeed(rest_command(via, path)))


def cluster_state(via: str) -> dict[str, Any]:
    """Patroni's /cluster as VIA sees it, or {"error": ...} when VIA does not answer."""
    rc, out = MACHINES[via].execute(rest_command(via, "/cluster") + " 2>&1")
    if rc != 0:
        return {"error": f"curl exit code {rc}: {out.strip()}"}
    try:
        return dict(json.loads(out))
    except json.JSONDecodeError:
        return {"error": f"not JSON: {out[:300]!r}"}


def members(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(m["name"]): m for m in state.get("members", [])}


def summary(state: dict[str, Any]) -> str:
    """The members of a /cluster answer, one clause each: name role state timeline lag."""
    if "error" in state:
        return str(state["error"])
    return (
        "; ".join(
            f"{m.get('name')} {m.get('role')} {m.get('state')} timeline {m.get('timeline')} lag {m.get('lag', '-')}"
            for m in state.get("members", [])
        )
        or "no members"
    )


def wait_for_cluster(
    via: str, names: list[str], *, above: int, timeout: int, what: str, leader: str = ""
) -> dict[str, Any]:
    """Wait until VIA's /cluster lists exactly NAMES: one leader (LEADER if given) running, the
    others streaming replicas, all on one timeline above ABOVE. Returns that /cluster answer."""
    check = (
        rest_command(via, "/cluster")
        + " | jq -e "
        + quote(
            "--argjson", "names", json.dumps(sorted(names)), "--arg", "leader", leader, "--argjson", "above", str(above)
        )
        + " "
        + quote(HEALTHY_CLUSTER)
    )
    try:
        MACHINES[via].wait_until_succeeds(check, timeout=timeout)
    except Exception:
        raise AssertionError(
            f"{what}: expected within {timeout}s members {sorted(names)}, "
            + (f"{leader} leading" if leader else "one leader")
            + f" and the others streaming, on one timeline above {above}; "
            + f"got (from {via}) {summary(cluster_state(via))}"
        ) from None
    state = cluster_state(via)
    # What the wait saw, spelled out (and checked once more on the answer returned).
    by_name = members(state)
    expect_equal(sorted(names), sorted(by_name), f"{what}: the members Patroni lists")
    leaders = [n for n, m in by_name.items() if m.get("role") == "leader"]
    expect_equal(1, len(leaders), f"{what}: the number of leaders ({summary(state)})")
    for name, m in by_name.items():
        if name == leaders[0]:
            expect_equal("running", m.get("state"), f"{what}: the state of the leader {name}")
        else:
            expect_equal(("replica", "streaming"), (m.get("role"), m.get("state")), f"{what}: role and state of {name}")
        expect_equal(
            by_name[leaders[0]].get("timeline"), m.get("timeline"), f"{what}: the timeline of {name} vs the leader's"
        )
    return state


def leader_of(state: dict[str, Any]) -> str:
    return next(n for n, m in members(state).items() if m.get("role") == "leader")


def timeline_of(state: dict[str, Any]) -> int:
    return int(members(state)[leader_of(state)]["timeline"])


def expect_etcd_healthy(names: list[str], what: str, timeout: int = 120) -> None:
    """etcd answers /health with health "true" on every one of NAMES (a member reports healthy only
    while the cluster has a leader, so with its quorum)."""
    for name in names:
        machine = MACHINES[name]
        url = ETCD_CLIENT_URLS[name] + "/health"
        machine.wait_until_succeeds(
            quote("curl", "--fail", "--silent", "--max-time", "5", url) + " | jq -e '.health == \"true\"'",
            timeout=timeout,
        )
        answer = json.loads(machine.succeed(quote("curl", "--silent", "--max-time", "5", url)))
        expect_equal("true", answer.get("health"), f"{what}: etcd's /health on {name}")


def etcd_member_names(via: str) -> list[str]:
    out = MACHINES[via].succeed(
        quote("etcdctl", f"--endpoints={ETCD_CLIENT_URLS[via]}", "member", "list", "-w", "json")
    )
    return sorted(str(m.get("name", "")) for m in json.loads(out).get("members", []))


# ---------------------------------------------------------------------------- Lemmy's posts


def sql_command(sql: str, database: str = "postgres") -> str:
    """SQL as the superuser over the local socket (peer authentication), tuples only."""
    return quote("runuser", "-u", "postgres", "--", "psql", "-XAt", "-p", str(PG_PORT), "-d", database, "-c", sql)


def wait_for_sql(name: str, sql: str, expected: str, *, database: str = "postgres", timeout: int = 60) -> None:
    """Wait until SQL on machine NAME (the leader or a replica) prints EXPECTED."""
    machine = MACHINES[name]
    command = sql_command(sql, database)
    try:
        machine.wait_until_succeeds(command + " | grep -qxF " + quote(expected), timeout=timeout)
    except Exception:
        _, got = machine.execute(command + " 2>&1")
        raise AssertionError(f"{sql} on {name}: expected {expected!r} within {timeout}s, got {got.strip()!r}") from None


def wait_for_row(name: str, post_id: int, title: str, timeout: int = 60) -> None:
    """Wait until the database on machine NAME has Lemmy's post POST_ID, named TITLE."""
    wait_for_sql(name, f"SELECT name FROM post WHERE id = {post_id}", title, database=LEMMY_DB, timeout=timeout)


def create_post(jwt: str, community_id: int, title: str) -> int:
    answer = api(
        client,
        FRONTEND,
        "/api/v3/post",
        host=DOMAIN,
        method="POST",
        body={"name": title, "community_id": community_id},
        jwt=jwt,
    )
    return int(answer["post_view"]["post"]["id"])


def community_posts(community_id: int) -> dict[int, str]:
    listed = api(client, FRONTEND, f"/api/v3/post/list?community_id={community_id}&sort=New&limit=50", host=DOMAIN)
    return {int(p["post"]["id"]): str(p["post"]["name"]) for p in listed["posts"]}


def clock() -> float:
    """Seconds on the client's clock."""
    return float(client.succeed("date +%s.%N").strip())


# ---------------------------------------------------------------------------- the scenario

with subtest("the cluster comes up: etcd on three members, a Patroni leader and two streaming replicas"):
    start_all()
    for name in NAMES:
        with journal_on_failure(MACHINES[name], "etcd.service", "lemmy-cluster-etcd-join.service"):
            expect_etcd_healthy([name], "first boot", timeout=BOOT_TIMEOUT)
    expect_equal(NAMES, etcd_member_names(NAMES[0]), "etcd's members (etcdctl member list)")
    with journals_on_failure(NAMES, *PATRONI_UNITS):
        state = wait_for_cluster(NAMES[0], NAMES, above=0, timeout=BOOT_TIMEOUT, what="first boot")
    leader = leader_of(state)
    timeline_before = timeline_of(state)
    config = rest(leader, "/config")
    expect_equal(PATRONI_TTL, config.get("ttl"), "the leader lock's ttl in the running cluster's configuration")
    print(f"Patroni after the first boot: {summary(state)}")
    # Lemmy's role and database are made on the leader (by Patroni's callback when it starts as
    # the leader, or by lemmy-cluster-patroni-setup), with no command.
    with journals_on_failure([leader], *PATRONI_UNITS):
        wait_for_sql(leader, f"SELECT datname FROM pg_database WHERE datname = '{LEMMY_DB}'", LEMMY_DB, timeout=300)

with subtest("Lemmy answers through fe1"):
    wait_for_backend(app1, APP1, BACKEND_PORT, DOMAIN)
    wait_for_frontend(fe1, DOMAIN)
    wait_for_http(client, f"{FRONTEND}/api/v3/site", DOMAIN)

with subtest("log in once, create a community and a post through fe1"):
    password = app1.succeed(quote("cat", ADMIN_PASSWORD_FILE)).strip()
    jwt = login(client, FRONTEND, DOMAIN, ADMIN_USER, password)
    community_id = int(
        api(
            client,
            FRONTEND,
            "/api/v3/community",
            host=DOMAIN,
            method="POST",
            body={"name": "failover", "title": "Automatic failover test"},
            jwt=jwt,
        )["community_view"]["community"]["id"]
    )
    posts = {create_post(jwt, community_id, "before the crash"): "before the crash"}

with subtest("every replica has the post before the leader crashes"):
    # Without synchronous mode a failover may lose what a replica has not received yet; the test
    # is about the failover, so the crash comes once both replicas have everything.
    replicas = [n for n in NAMES if n != leader]
    for name in replicas:
        for post_id, title in posts.items():
            wait_for_row(name, post_id, title)

crashed = leader
survivors = [n for n in NAMES if n != crashed]

with subtest(f"the leader {crashed}'s VM crashes; a post through fe1 succeeds with no command on any machine"):
    started = clock()
    MACHINES[crashed].crash()
    # From here until the post succeeds only the client acts, as a user would: reads first (they
    # need the database too, and their rate limit is high), then the post. Every connection of
    # the backend wants a server that accepts writes (target_session_attrs=read-write), so a read
    # answers only once a new leader does.
    with journal_on_failure(app1, "lemmy.service"), journals_on_failure(survivors, "patroni.service"):
        try:
            client.wait_until_succeeds(
                curl_ok(f"{FRONTEND}/api/v3/post/list?community_id={community_id}&sort=New&limit=50", DOMAIN),
                timeout=FAILOVER_BOUND,
            )
        except Exception:
            raise AssertionError(
                f"Lemmy's API through fe1 after {crashed} crashed: expected an answer within {FAILOVER_BOUND}s, "
                f"got none; Patroni (from {survivors[0]}): {summary(cluster_state(survivors[0]))}"
            ) from None
        reads_back = clock() - started
        outcomes: list[str] = []
        tried: list[str] = []
        new_id: int | None = None
        new_title = ""
        while len(tried) < POST_ATTEMPTS and clock() - started <= FAILOVER_BOUND:
            title = f"after the crash of {crashed}, attempt {len(tried) + 1}"
            tried.append(title)
            resp = http(
                client,
                f"{FRONTEND}/api/v3/post",
                host=DOMAIN,
                method="POST",
                headers=[f"Authorization: Bearer {jwt}"],
                json_body={"name": title, "community_id": community_id},
                timeout=60,
            )
            if resp.status == 200:
                new_id, new_title = int(resp.json()["post_view"]["post"]["id"]), title
                break
            outcomes.append(f"HTTP {resp.status or resp.curl_error}: {resp.body[:200]!r}")
            client.sleep(POST_RETRY_PAUSE)
        writes_back = clock() - started
        expect(
            new_id is not None and writes_back <= FAILOVER_BOUND,
            f"a post through fe1 after {crashed} crashed: expected HTTP 200 within {FAILOVER_BOUND}s "
            f"(at most {POST_ATTEMPTS} attempts)",
            {"failed attempts": outcomes, "seconds": round(writes_back, 1), "post id": new_id},
        )
    assert new_id is not None
    posts[new_id] = new_title
    print(
        f"after the crash of {crashed}: reads through fe1 again after {reads_back:.1f}s, the first post "
        f"after {writes_back:.1f}s (attempt {len(tried)}); informational, not a benchmark"
    )

with subtest("a survivor leads on a new timeline, the other streams from it, and every post is there"):
    with journals_on_failure(survivors, "patroni.service"):
        state = wait_for_cluster(
            survivors[0], survivors, above=timeline_before, timeout=FAILOVER_BOUND, what=f"after {crashed} crashed"
        )
    new_leader = leader_of(state)
    timeline_after = timeline_of(state)
    print(f"Patroni after the crash of {crashed}: {summary(state)}")
    for name in survivors:
        wait_for_row(name, new_id, new_title)
    got = community_posts(community_id)
    # An attempt that failed may still have been written (its answer lost): such a post may be
    # listed too; nothing else.
    failed_attempts = set(tried) - {new_title}
    extra = {i: n for i, n in got.items() if i not in posts and n in failed_attempts}
    expect_equal({**posts, **extra}, got, "posts of the community (id: name) after the failover")
    expect_etcd_healthy(survivors, f"etcd without {crashed} (a quorum of two)")

with subtest(f"{crashed}'s VM starts again and comes back as a streaming replica of {new_leader}"):
    old = MACHINES[crashed]
    old.start()
    with journal_on_failure(old, *PATRONI_UNITS), journals_on_failure([new_leader], "patroni.service"):
        state = wait_for_cluster(
            new_leader,
            NAMES,
            leader=new_leader,
            above=timeline_before,
            timeout=REJOIN_TIMEOUT,
            what=f"{crashed} back",
        )
    came_back = members(state)[crashed]
    expect_equal(
        ("replica", "streaming", timeline_after),
        (came_back.get("role"), came_back.get("state"), came_back.get("timeline")),
        f"{crashed}'s role, state and timeline after its return",
    )
    print(f"Patroni after {crashed} came back: {summary(state)}")
    in_recovery = old.succeed(sql_command("SELECT pg_is_in_recovery()")).strip()
    expect_equal("t", in_recovery, f"pg_is_in_recovery() on {crashed}")
    # It replays the new leader's timeline: the post written after the crash reaches it.
    wait_for_row(crashed, new_id, new_title, timeout=120)
    expect_etcd_healthy(NAMES, f"etcd with {crashed} back")
    expect_equal(NAMES, etcd_member_names(crashed), f"etcd's members with {crashed} back (the same three, none added)")
    got = community_posts(community_id)
    expect_equal({**posts, **extra}, got, f"posts of the community (id: name) with {crashed} back")
