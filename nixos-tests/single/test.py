# VM test `single`: every role of lemmy-cluster on one machine (nixos-tests/single/test.nix).
from driver_globals import (
    ADMIN_USER,
    BACKEND_PORT,
    DB_PASSWORD_FILE,
    DOMAIN,
    LEMMY1,
    PG_PORT,
    PICTRS_PORT,
    RUNTIME_CONFIG,
    SECRET_FILES,
    SITE_NAME,
    STORE_PATHS,
    UI_PORT,
    client,
    lemmy1,
    start_all,
    subtest,
)
from lib import expect, expect_equal, expect_port, expect_status, http, journal_on_failure, quote, wait_for_http

# ---- test body (nixos-tests/lib.nix drops everything above this line) ----
start_all()

with (
    subtest("every service of the machine starts"),
    journal_on_failure(lemmy1, "postgresql.service", "lemmy-cluster-pg-setup.service", "lemmy.service"),
):
    for unit in [
        "lemmy-cluster-test-secrets.service",
        "postgresql.service",
        "lemmy-cluster-pg-setup.service",
        "pict-rs.service",
        "lemmy.service",
        "lemmy-ui.service",
        "nginx.service",
    ]:
        lemmy1.wait_for_unit(unit)

with subtest("the API answers through nginx once the migrations are done"):
    with journal_on_failure(lemmy1, "lemmy.service"):
        wait_for_http(lemmy1, "http://127.0.0.1/api/v3/site", DOMAIN)
    site = http(lemmy1, "http://127.0.0.1/api/v3/site", host=DOMAIN).json()
    expect_equal(SITE_NAME, site["site_view"]["site"]["name"], "site name (set up from the config at first start)")
    expect_equal(True, site["site_view"]["local_site"]["site_setup"], "local_site.site_setup")
    admins = [a["person"]["name"] for a in site["admins"]]
    expect_equal([ADMIN_USER], admins, "admins created at first start")

with subtest("a client reaches lemmy-ui and the API on port 80"):
    wait_for_http(client, f"http://{LEMMY1}/", DOMAIN)
    page = http(client, f"http://{LEMMY1}/", host=DOMAIN)
    expect_status(page, 200, "lemmy-ui's front page")
    expect("Lemmy" in page.body, "lemmy-ui's page contains 'Lemmy'", page.body[:400])
    answer = http(client, f"http://{LEMMY1}/api/v3/site", host=DOMAIN)
    expect_status(answer, 200, "/api/v3/site from the client")
    expect_equal(SITE_NAME, answer.json()["site_view"]["site"]["name"], "site name seen by the client")

with subtest("the internal ports are closed to the client"):
    expect_port(client, LEMMY1, 80, True, "HTTP (public)")
    for port, what in [
        (BACKEND_PORT, "Lemmy backend"),
        (UI_PORT, "lemmy-ui"),
        (PICTRS_PORT, "pict-rs"),
        (PG_PORT, "PostgreSQL"),
    ]:
        expect_port(client, LEMMY1, port, False, what)

with subtest("the runtime config is private to the lemmy user and holds the secrets"):
    got = lemmy1.succeed(quote("stat", "-c", "%a %U", RUNTIME_CONFIG)).strip()
    expect_equal("600 lemmy", got, f"mode and owner of {RUNTIME_CONFIG}")
    db_password = lemmy1.succeed(quote("cat", DB_PASSWORD_FILE)).strip()
    uri = lemmy1.succeed(quote("jq", "-r", ".database.uri", RUNTIME_CONFIG)).strip()
    expect(f":{db_password}@" in uri, "the database URI in the runtime config carries the db password", uri[:60])

with subtest("no secret value is in the Nix store"):
    # One pattern per secret file, kept out of the store; then every path of the system's closure.
    lemmy1.succeed(
        "for f in " + quote(*SECRET_FILES) + '; do cat "$f"; echo; done > /run/secret-patterns',
    )
    found = lemmy1.succeed(
        f"xargs -a {STORE_PATHS} grep -rlsF -f /run/secret-patterns -- || true",
        timeout=1200,
    ).strip()
    expect_equal("", found, "store paths containing a secret value")
    lemmy1.succeed("rm /run/secret-patterns")
