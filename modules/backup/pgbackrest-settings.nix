# lemmy-cluster: pgBackRest's settings for one PostgreSQL machine, from the backup role's options.
#
# A pure function (builtins only, no nixpkgs): ./default.nix hands the result to nixpkgs'
# services.pgbackrest (which adds the `repo1-` and `pg1-` prefixes), and the live tests evaluate
# this very file with `nix-instantiate --eval` and run Debian's pgbackrest with the result
# (rendered as nixpkgs renders /etc/pgbackrest/pgbackrest.conf).
#
#   import ./pgbackrest-settings.nix { inherit cfg; pg = { dataDir, socketDir, port }; command = "..."; }
#
# cfg: config.services.lemmy-cluster.backup; pg: where this machine's PostgreSQL keeps its data
# and socket; command: the wrapper that runs pgbackrest with the repository's secrets
# (./scripts/pgbackrest.sh): PostgreSQL's archive_command calls it.
#
# Returns { global; repo; instance; archiveCommand; }. No secret is here: the passphrase and the
# S3 key reach pgbackrest as PGBACKREST_REPO1_* environment variables that the wrapper reads from
# files (nixpkgs disables cipher-pass and s3-key in the config for that reason).
{
  cfg,
  pg,
  command,
}:
let
  r = cfg.repository;
  s3 = r.type == "s3";
in
{
  global = {
    # Backups and restores copy with two processes; a checkpoint at once instead of waiting.
    process-max = 2;
    start-fast = "y";
    # zst: fast, and small enough (pgBackRest's default gz costs most of a backup's time).
    compress-type = "zst";
    compress-level = 3;
    # How long archive-push and `check` wait for a WAL segment to reach the repository.
    archive-timeout = 60;
  };

  repo = {
    type = r.type;
    path = r.path;
    cipher-type = "aes-256-cbc";
    retention-full-type = "count";
    retention-full = cfg.retention.full;
    retention-diff = cfg.retention.diff;
  }
  // (
    if s3 then
      {
        s3-endpoint = r.endpoint;
        s3-bucket = r.bucket;
        s3-region = r.region;
        s3-uri-style = r.uriStyle;
      }
    else
      { }
  );

  instance = {
    path = pg.dataDir;
    socket-path = pg.socketDir;
    port = pg.port;
    user = "postgres";
  };

  # Only a primary archives (archive_mode = on): under Patroni whichever member leads.
  archiveCommand = "${command} --stanza=${cfg.stanza} archive-push \"%p\"";
}
