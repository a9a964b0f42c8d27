# lemmy-cluster: pgBackRest's settings for one PostgreSQL machine, from the backup role's options.
#
# A pure function (builtins only, no nixpkgs): ./default.nix hands the result to nixpkgs'
# services.pgbackrest (which adds the `repo1-` and `pg1-` prefixes), and the live tests evaluate
# this very file with `nix-instantiate --eval` and run Debian's pgbackrest with the result
# (rendered as nixpkgs renders /etc/pgbackrest/pgbackrest.conf).
#
#   import ./pgbackrest-settings.nix { inherit cfg command; pg = { dataDir, socketDir, port }; tls = ...; }
#
# cfg: config.services.lemmy-cluster.backup; pg: where this machine's PostgreSQL keeps its data
# and socket; command: the wrapper that runs pgbackrest with the repository's secrets
# (./scripts/pgbackrest.sh): PostgreSQL's archive_command calls it; tls, with a repository on the
# backup machine (cfg.repository.host): { caFile; certFile; keyFile; listenAddress; }, the files
# pgBackRest's TLS connections read (copies of the secrets that postgres can read: ./default.nix)
# and the address of this machine's own pgBackRest server.
#
# Returns { global; repo; instance; server; archiveCommand; }: server is the section of the
# `server` command ([global:server]), empty without a repository host. No secret is here: the
# passphrase and the S3 key reach pgbackrest as PGBACKREST_REPO1_* environment variables that the
# wrapper reads from files (nixpkgs disables cipher-pass and s3-key in the config for that reason).
{
  cfg,
  pg,
  command,
  tls ? null,
}:
let
  r = cfg.repository;
  s3 = r.type == "s3";
  remote = r.type == "posix" && (r.host or null) != null;
  common = import ./pgbackrest-common.nix { inherit cfg; };
in
{
  inherit (common) global;

  repo =
    common.repo
    // {
      type = r.type;
      path = r.path;
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
    )
    // (
      if remote then
        {
          # The repository is on the backup machine: archive-push, restore and info reach its
          # pgBackRest server over TLS, each side checking the other's certificate. The path is
          # the folder there (the client names it to the server).
          host = r.host.address;
          host-type = "tls";
          host-port = cfg.tlsPort;
          host-ca-file = tls.caFile;
          host-cert-file = tls.certFile;
          host-key-file = tls.keyFile;
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

  # This machine's pgBackRest server: the backup machine takes the backups through it (it reads
  # the data directory here), and only the backup machine's certificate is let in.
  server =
    if remote then
      import ./tls-server.nix {
        inherit tls;
        port = cfg.tlsPort;
        clients = [ r.host.name ];
        inherit (cfg) stanza;
      }
    else
      { };

  # Only a primary archives (archive_mode = on): under Patroni whichever member leads.
  archiveCommand = "${command} --stanza=${cfg.stanza} archive-push \"%p\"";
}
