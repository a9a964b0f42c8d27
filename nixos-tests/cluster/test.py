# VM test `cluster`: two frontends, a backend with pict-rs, a PostgreSQL primary and a replica,
# and a client (nixos-tests/cluster/test.nix).
from driver_globals import (
    ADMIN_PASSWORD_FILE,
    ADMIN_USER,
    APP1,
    BACKEND_PORT,
    DB1,
    DOMAIN,
    FE1,
    FE2,
    PG_PORT,
    PICTRS_PORT,
    SITE_NAME,
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
    PNG_SIGNATURE,
    api,
    expect,
    expect_equal,
    expect_port,
    expect_status,
    file_head,
    http,
    login,
    png,
    psql,
    psql_command,
    quote,
    start_cluster,
    wait_for_backend,
    wait_for_frontend,
    wait_for_http,
    write_file,
)

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----
FRONTENDS = {"fe1": FE1, "fe2": FE2}

with subtest("the primary starts, then the replica clones it and the other machines boot"):
    start_cluster(db1, db2, [app1, fe1, fe2, client])

with subtest("the replica is a hot standby streaming from the primary"):
    expect_equal("t", psql(db2, "SELECT pg_is_in_recovery()"), "pg_is_in_recovery() on db2")
    streaming = "SELECT 1 FROM pg_stat_replication WHERE application_name = 'db2' AND state = 'streaming'"
    db1.wait_until_succeeds(psql_command(streaming) + " | grep -qx 1", timeout=120)
    slots = psql(db1, "SELECT slot_name FROM pg_replication_slots WHERE active ORDER BY 1")
    expect_equal("db2", slots, "active replication slots on db1")

with subtest("the backend and pict-rs start on app1"):
    wait_for_backend(app1, APP1, BACKEND_PORT, DOMAIN)

with subtest("both frontends serve lemmy-ui"):
    for fe in (fe1, fe2):
        wait_for_frontend(fe, DOMAIN)
    for name, addr in FRONTENDS.items():
        wait_for_http(client, f"http://{addr}/", DOMAIN)
        page = http(client, f"http://{addr}/", host=DOMAIN)
        expect_status(page, 200, f"front page through {name}")
        expect("Lemmy" in page.body, f"lemmy-ui's page through {name} contains 'Lemmy'", page.body[:400])

with subtest("each frontend sends API, nodeinfo, ActivityPub and POST requests to the backend"):
    for name, addr in FRONTENDS.items():
        base = f"http://{addr}"
        site = api(client, base, "/api/v3/site", host=DOMAIN)
        expect_equal(SITE_NAME, site["site_view"]["site"]["name"], f"site name through {name}")

        nodeinfo = http(client, base + "/nodeinfo/2.1", host=DOMAIN)
        expect_status(nodeinfo, 200, f"/nodeinfo/2.1 through {name}")
        expect_equal("lemmy", nodeinfo.json()["software"]["name"], f"nodeinfo software through {name}")

        # The same URL a person's browser gets lemmy-ui for: with an ActivityPub Accept header the
        # backend answers with the site's actor.
        actor = http(client, base + "/", host=DOMAIN, headers=["Accept: application/activity+json"])
        expect_status(actor, 200, f"GET / with an ActivityPub Accept header through {name}")
        expect_equal("Application", actor.json().get("type"), f"type of the site actor through {name}")

        # Every POST goes to the backend: Lemmy has no such route (404); lemmy-ui (express) would
        # have answered "Cannot POST".
        post = http(client, base + "/no-such-path", host=DOMAIN, method="POST", json_body={})
        expect(
            post.status in (404, 405) and "Cannot POST" not in post.body,
            f"POST to an unknown path through {name} is answered by the backend (404/405, not lemmy-ui)",
            (post.status, post.body[:200]),
        )

with subtest("log in as the admin once (login shares a rate limit of 3 per hour per address)"):
    password = app1.succeed(quote("cat", ADMIN_PASSWORD_FILE)).strip()
    jwt = login(client, f"http://{FE1}", DOMAIN, ADMIN_USER, password)

with subtest("a community and a post created through fe1 are read through fe2"):
    community = api(
        client,
        f"http://{FE1}",
        "/api/v3/community",
        host=DOMAIN,
        method="POST",
        body={"name": "vmtest", "title": "VM test community"},
        jwt=jwt,
    )["community_view"]["community"]
    created = api(
        client,
        f"http://{FE1}",
        "/api/v3/post",
        host=DOMAIN,
        method="POST",
        body={"name": "Hello from fe1", "community_id": community["id"], "body": "written through fe1"},
        jwt=jwt,
    )["post_view"]["post"]
    read = api(client, f"http://{FE2}", f"/api/v3/post?id={created['id']}", host=DOMAIN)["post_view"]["post"]
    expect_equal(
        (created["id"], "Hello from fe1", "written through fe1"),
        (read["id"], read["name"], read.get("body")),
        "post read through fe2 (id, name, body)",
    )

with subtest("an image uploaded through fe1 is served through fe2"):
    write_file(client, "/tmp/upload.png", png(64, 48))
    upload = http(
        client,
        f"http://{FE1}/pictrs/image",
        host=DOMAIN,
        method="POST",
        headers=[f"Authorization: Bearer {jwt}"],
        form="images[]=@/tmp/upload.png;type=image/png",
        timeout=60,
    )
    expect_status(upload, 200, "image upload through fe1")
    uploaded = upload.json()
    expect_equal("ok", uploaded.get("msg"), "pict-rs upload answer's msg")
    alias = uploaded["files"][0]["file"]
    client.succeed(
        quote("curl", "--fail", "--silent", "--show-error", "--max-time", "30", "--header", f"Host: {DOMAIN}")
        + " "
        + quote("--output", "/tmp/download", f"http://{FE2}/pictrs/image/{alias}")
    )
    expect_equal(PNG_SIGNATURE, file_head(client, "/tmp/download", len(PNG_SIGNATURE)), "start of the image from fe2")

with subtest("the post reached the replica"):
    expect_equal("t", psql(db2, "SELECT pg_is_in_recovery()"), "pg_is_in_recovery() on db2")
    row = f"SELECT name FROM post WHERE id = {int(created['id'])}"
    db2.wait_until_succeeds(psql_command(row, "lemmy") + " | grep -qxF 'Hello from fe1'", timeout=60)

with subtest("PostgreSQL, the backend, pict-rs and lemmy-ui are open only to their peers"):
    expect_port(app1, DB1, PG_PORT, True, "PostgreSQL primary from the backend")
    expect_port(fe1, DB1, PG_PORT, False, "PostgreSQL primary from a frontend")
    expect_port(client, DB1, PG_PORT, False, "PostgreSQL primary from the client")
    expect_port(fe2, APP1, BACKEND_PORT, True, "backend from a frontend")
    expect_port(client, APP1, BACKEND_PORT, False, "backend from the client")
    expect_port(fe1, APP1, PICTRS_PORT, False, "pict-rs from a frontend")
    expect_port(client, APP1, PICTRS_PORT, False, "pict-rs from the client")
    expect_port(fe2, FE1, UI_PORT, True, "fe1's lemmy-ui from fe2 (its backup)")
    expect_port(client, FE1, UI_PORT, False, "fe1's lemmy-ui from the client")
    expect_port(client, FE1, 80, True, "fe1's HTTP from the client")
