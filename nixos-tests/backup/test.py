# VM test `backup`: a mistake undone by a point-in-time recovery (nixos-tests/backup/test.nix).
from driver_globals import (
    ADMIN_PASSWORD_FILE,
    ADMIN_USER,
    DATA_DIR,
    DOMAIN,
    LEMMY1,
    LEMMY_DB,
    REPOSITORY,
    STANZA,
    client,
    lemmy1,
    start_all,
    subtest,
)
from lib import api, expect, expect_equal, journal_on_failure, login, psql, quote, wait_for_http

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----
FRONTEND = f"http://{LEMMY1}"
start_all()


def posts(community_id: int) -> dict[int, str]:
    listed = api(client, FRONTEND, f"/api/v3/post/list?community_id={community_id}&sort=New&limit=50", host=DOMAIN)
    return {int(p["post"]["id"]): str(p["post"]["name"]) for p in listed["posts"]}


with (
    subtest("the machine starts, and the first full backup is taken by itself"),
    journal_on_failure(lemmy1, "postgresql.service", "lemmy-cluster-backup-init.service", "lemmy.service"),
):
    for unit in ["postgresql.service", "lemmy.service", "nginx.service"]:
        lemmy1.wait_for_unit(unit)
    # lemmy-cluster-backup-init is a oneshot (again every hour): wait for what it leaves.
    info_command = quote("lemmy-cluster-pgbackrest", f"--stanza={STANZA}", "info")
    lemmy1.wait_until_succeeds(f"{info_command} | grep -q 'full backup'", timeout=300)
    info = lemmy1.succeed(info_command)
    expect("full backup" in info, "pgbackrest info lists a full backup", info)
    expect("cipher: aes-256-cbc" in info, "the repository is encrypted", info)
    lemmy1.succeed(quote("test", "-d", f"{REPOSITORY}/backup/{STANZA}"))
    expect_equal("on", psql(lemmy1, "SHOW archive_mode"), "archive_mode")

with subtest("posts through the API"):
    wait_for_http(client, f"{FRONTEND}/api/v3/site", DOMAIN)
    password = lemmy1.succeed(quote("cat", ADMIN_PASSWORD_FILE)).strip()
    jwt = login(client, FRONTEND, DOMAIN, ADMIN_USER, password)
    community_id = int(
        api(
            client,
            FRONTEND,
            "/api/v3/community",
            host=DOMAIN,
            method="POST",
            body={"name": "backup", "title": "Backup test"},
            jwt=jwt,
        )["community_view"]["community"]["id"]
    )
    written: dict[int, str] = {}
    for title in ("before the mistake 1", "before the mistake 2"):
        answer = api(
            client,
            FRONTEND,
            "/api/v3/post",
            host=DOMAIN,
            method="POST",
            body={"name": title, "community_id": community_id},
            jwt=jwt,
        )
        written[int(answer["post_view"]["post"]["id"])] = title
    expect_equal(written, posts(community_id), "the posts are listed")

with subtest("a table dropped through psql: the posts are gone"):
    lemmy1.succeed("sleep 2")
    target = psql(lemmy1, "SELECT clock_timestamp()")
    lemmy1.succeed("sleep 2")
    psql(lemmy1, "DROP TABLE post CASCADE", LEMMY_DB)
    # Everything up to the drop reaches the repository (pgbackrest check switches the WAL file).
    lemmy1.succeed(quote("lemmy-cluster-pgbackrest", f"--stanza={STANZA}", "check"))
    rc, _ = client.execute(quote("curl", "-fsS", "-H", f"Host: {DOMAIN}", f"{FRONTEND}/api/v3/post/list?limit=5"))
    expect(rc != 0, "the post list fails without its table", rc)

with subtest("restore to before the drop: the steps synth restore runs on this cluster"):
    with journal_on_failure(lemmy1, "postgresql.service"):
        out = lemmy1.succeed(quote("lemmy-cluster-restore", "--check-only", "--time", target) + " 2>&1")
        expect("nothing changed" in out, "the check changes nothing", out)
        lemmy1.succeed("systemctl stop postgresql.service")
        out = lemmy1.succeed(quote("lemmy-cluster-restore", "--time", target) + " 2>&1")
        expect("replayed to the target and promoted" in out, "the restore replays and promotes", out)
        lemmy1.succeed("systemctl start postgresql.service lemmy.service")
        lemmy1.wait_for_unit("postgresql.service")
    kept = lemmy1.succeed(f"ls -d {DATA_DIR}.before-restore-*").split()
    expect_equal(1, len(kept), "the data directory from before the restore is kept")
    lemmy1.succeed(quote("test", "-f", f"{kept[0]}/PG_VERSION"))

with subtest("Lemmy serves the old posts again"):
    with journal_on_failure(lemmy1, "lemmy.service"):
        wait_for_http(client, f"{FRONTEND}/api/v3/post/list?community_id={community_id}", DOMAIN)
    expect_equal(written, posts(community_id), "the posts from before the drop")
    expect_equal("f", psql(lemmy1, "SELECT pg_is_in_recovery()"), "the restored database takes writes")

with subtest("a new full backup of the restored database"):
    lemmy1.succeed(quote("lemmy-cluster-pgbackrest", f"--stanza={STANZA}", "backup", "--type=full"))

with subtest("a snapshot of pict-rs's folder, pict-rs running again after it"):
    lemmy1.succeed("systemctl start lemmy-cluster-pictrs-backup.service")
    snapshots = lemmy1.succeed(f"ls -d {REPOSITORY}/pictrs-files/20*").split()
    expect_equal(1, len(snapshots), "snapshots of pict-rs's folder")
    lemmy1.wait_for_unit("pict-rs.service")
