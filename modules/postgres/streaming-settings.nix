# lemmy-cluster: services.postgresql.settings of a PostgreSQL machine without Patroni (one
# machine, or a primary and hot standbys with manual failover), from the postgres role's options.
#
# A pure function (builtins only, no nixpkgs): ./streaming.nix calls it, and the live tests
# evaluate this very file with `nix-instantiate --eval` and run the real PostgreSQL with the
# result (rendered as nixpkgs renders postgresql.conf).
#
#   import ./streaming-settings.nix { inherit cfg; passfile = "/run/lemmy-cluster-pg/replication.pgpass"; }
#
# passfile: the libpq password file of the replication role that a replica's WAL receiver reads.
{ cfg, passfile }:
let
  isPrimary = cfg.role == "primary";
in
{
  inherit (cfg) port;
  listen_addresses = "${cfg.listenAddress},localhost";
  password_encryption = "scram-sha-256";
  max_connections = cfg.maxConnections;
  wal_level = "replica";
  max_wal_senders = 10;
  max_replication_slots = 10;
  max_slot_wal_keep_size = cfg.maxSlotWalKeepSize;
  hot_standby = true;
  hot_standby_feedback = true;
  wal_log_hints = true; # lets pg_rewind bring a former primary back
}
// (
  if isPrimary then
    { }
  else
    {
      primary_conninfo = "host=${cfg.primaryAddress} port=${toString cfg.port} user=${cfg.replicationUser} passfile=${passfile} application_name=${cfg.slotName}";
      primary_slot_name = cfg.slotName;
    }
)
// (
  # WAL archiving (the backup role): only a primary archives (archive_mode = on).
  if (cfg.archiveCommand or null) != null then
    {
      archive_mode = "on";
      archive_command = cfg.archiveCommand;
      # A quiet database still hands its WAL to the archive within a minute (the RPO).
      archive_timeout = 60;
    }
  else
    { }
)
// (
  if isPrimary && cfg.synchronousStandbys != [ ] then
    {
      synchronous_standby_names = "ANY 1 (${builtins.concatStringsSep ", " cfg.synchronousStandbys})";
      synchronous_commit = "on";
    }
  else
    { }
)
