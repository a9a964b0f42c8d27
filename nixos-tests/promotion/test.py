# VM test `promotion`: the PostgreSQL primary is lost; the replica is promoted with the module's
# admin tool. The backend, whose connection string lists both databases and requires a writable
# one, follows the promotion by itself (no redeploy); then it switches to the configuration synth
# generates after `synth promote` (the new primary first). Nothing written before is lost and
# writing works throughout (nixos-tests/promotion/test.nix).
from driver_globals import (
    ADMIN_PASSWORD_FILE,
    ADMIN_USER,
    APP1,
    BACKEND_PORT,
    DB1,
    DB2,
    DOMAIN,
    FE1,
    FE2,
    PG_PORT,
    PROMOTED_SYSTEM,
    QemuMachine,
    app1,
    client,
    db1,
    db2,
    fe1,
    fe2,
    subtest,
)
from lib import (
    Response,
    api,
    curl_ok,
    expect,
    expect_equal,
    expect_status,
    http,
    journal_on_failure,
    login,
    psql,
    psql_command,
    quote,
    start_cluster,
    wait_for_backend,
    wait_for_frontend,
)

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----


def create_post(base: str, jwt: str, community_id: int, name: str) -> int:
    answer = api(
        client,
        base,
        "/api/v3/post",
        host=DOMAIN,
        method="POST",
        body={"name": name, "community_id": community_id},
        jwt=jwt,
    )
    return int(answer["post_view"]["post"]["id"])


def wait_for_row(machine: "QemuMachine", post_id: int, name: str) -> None:
    sql = f"SELECT name FROM post WHERE id = {post_id}"
    machine.wait_until_succeeds(psql_command(sql, "lemmy") + " | grep -qxF " + quote(name), timeout=60)


with subtest("the cluster boots"):
    start_cluster(db1, db2, [app1, fe1, fe2, client])
    wait_for_backend(app1, APP1, BACKEND_PORT, DOMAIN)
    for fe in (fe1, fe2):
        wait_for_frontend(fe, DOMAIN)

with subtest("log in once, create a community and two posts through fe1"):
    password = app1.succeed(quote("cat", ADMIN_PASSWORD_FILE)).strip()
    jwt = login(client, f"http://{FE1}", DOMAIN, ADMIN_USER, password)
    community_id = int(
        api(
            client,
            f"http://{FE1}",
            "/api/v3/community",
            host=DOMAIN,
            method="POST",
            body={"name": "failover", "title": "Failover test"},
            jwt=jwt,
        )["community_view"]["community"]["id"]
    )
    posts = {create_post(f"http://{FE1}", jwt, community_id, f"before failover {i}"): f"before failover {i}"
             for i in range(1, 3)}  # fmt: skip

with subtest("the replica has every post before the primary is lost"):
    for post_id, name in posts.items():
        wait_for_row(db2, post_id, name)

with subtest("db1 is lost; lemmy-cluster-pg-promote makes db2 the primary"):
    db1.crash()
    with journal_on_failure(db2, "postgresql.service"):
        out = db2.succeed("lemmy-cluster-pg-promote 2>&1")
    print(out)
    expect_equal("f", psql(db2, "SELECT pg_is_in_recovery()"), "pg_is_in_recovery() on db2 after the promotion")
    slots = psql(db2, "SELECT slot_name FROM pg_replication_slots ORDER BY 1").splitlines()
    expect("db1" in slots, "db2 keeps a replication slot for db1 (to rejoin as a replica)", slots)

with (
    subtest("without a redeploy, Lemmy finds the new primary by itself"),
    journal_on_failure(app1, "lemmy.service"),
):
    env = app1.succeed("systemctl show lemmy.service --property=Environment")
    expect(
        f"LEMMY_CLUSTER_DB_HOSTS={DB1}:{PG_PORT},{DB2}:{PG_PORT}" in env and "target_session_attrs=read-write" in env,
        "lemmy.service lists both databases and requires a writable one",
        env,
    )
    # Pooled connections to db1 are dead; new ones skip db1 (connect_timeout) and the read-only
    # standby that db2 was, until db2 accepts writes. Retry for a while, as a user would.
    # Reads first (GET /api/v3/site needs the database too): they cost no post rate limit, which
    # allows 6 posts per 10 minutes per address, so the posts below are budgeted (2 + up to 3 + 1).
    client.wait_until_succeeds(curl_ok(f"http://{FE1}/api/v3/site", DOMAIN), timeout=180)
    followed: Response | None = None
    for _attempt in range(3):
        followed = http(
            client,
            f"http://{FE1}/api/v3/post",
            host=DOMAIN,
            method="POST",
            headers=[f"Authorization: Bearer {jwt}"],
            json_body={"name": "while failing over", "community_id": community_id},
        )
        if followed.status == 200:
            break
        client.sleep(10)
    assert followed is not None, "range(3) made no request"
    expect_status(followed, 200, "a post after the promotion without a redeploy")
    follow_id = int(followed.json()["post_view"]["post"]["id"])
    posts[follow_id] = "while failing over"
    wait_for_row(db2, follow_id, "while failing over")

with (
    subtest("app1 switches to the configuration that names db2 as the primary"),
    journal_on_failure(app1, "lemmy.service"),
):
    app1.succeed(f"{PROMOTED_SYSTEM}/bin/switch-to-configuration test")
    env = app1.succeed("systemctl show lemmy.service --property=Environment")
    expect(
        f"LEMMY_CLUSTER_DB_HOSTS={DB2}:{PG_PORT},{DB1}:{PG_PORT}" in env,
        "lemmy.service's database hosts are db2 first, then db1",
        env,
    )
    wait_for_backend(app1, APP1, BACKEND_PORT, DOMAIN)

with subtest("writing works again and every post written before is there"):
    new_name = "after failover"
    new_id = create_post(f"http://{FE2}", jwt, community_id, new_name)
    wait_for_row(db2, new_id, new_name)
    listed = api(
        client,
        f"http://{FE2}",
        f"/api/v3/post/list?community_id={community_id}&sort=New&limit=50",
        host=DOMAIN,
    )["posts"]
    got = {int(p["post"]["id"]): p["post"]["name"] for p in listed}
    expect_equal({**posts, new_id: new_name}, got, "posts of the community (id: name) after the failover")
