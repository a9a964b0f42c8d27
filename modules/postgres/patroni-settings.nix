# lemmy-cluster: the settings handed to Patroni (services.patroni.settings), from the postgres
# role's options.
#
# A pure function (builtins only, no nixpkgs): the role module calls it, and the live tests
# evaluate this very file with `nix-instantiate --eval` on the options synth renders and run the
# real Patroni with the result. What nixpkgs' services.patroni adds itself (name, scope,
# namespace, restapi/postgresql listen and connect addresses, bin_dir, data_dir, pgpass, the
# watchdog) is not here; nor are the passwords, which reach Patroni as PATRONI_* environment
# variables read from files.
#
#   (import ./patroni-settings.nix { inherit cfg; paths = { socketDir, baseConf, callback }; }).settings
#
# returns { settings; dcs; }: `dcs` is the dynamic configuration (also inside settings.bootstrap on
# the member that may create the cluster), which lemmy-cluster-patroni-config applies to a running
# cluster, since Patroni reads bootstrap.dcs only when it creates the cluster.
#
# cfg: config.services.lemmy-cluster.postgres; paths.socketDir: PostgreSQL's Unix socket folder;
# paths.baseConf: the (empty) file Patroni includes instead of renaming an existing
# postgresql.conf to postgresql.base.conf; paths.callback: the command Patroni runs when this
# member starts or changes its role (scripts/patroni-callback.sh with its arguments): a new leader
# sets up the roles and databases by itself.
{ cfg, paths }:
let
  p = cfg.patroni;

  # Failure detection. A leader that stops renewing its lock (ttl) is replaced: Patroni's
  # minimum ttl is 20 s; loop_wait + 2 * retry_timeout must stay below it, so that a leader that
  # cannot reach etcd demotes itself before its lock can expire and another member takes over.
  # With failsafe mode the leader first asks every member (POST /failsafe: a 2 s connect timeout,
  # tried twice), which adds up to 4 s: 2 + 2 * 5 + 4 = 16 s. With 8 s (2 + 16 + 4 = 22 s) a
  # leader cut off by a partition that drops its packets was seen still accepting writes after its
  # lock had expired and another member had been promoted (tests/live/test_patroni_partition.py).
  timing = {
    ttl = 20;
    loop_wait = 2;
    retry_timeout = 5;
  };

  # Settings every member must share; Patroni keeps them in etcd (dynamic configuration).
  dcs = timing // {
    # A replica more than this many bytes behind is never promoted (async mode's bound on loss).
    maximum_lag_on_failover = 1048576;
    # Losing etcd's quorum does not demote a primary that still reaches every member.
    failsafe_mode = true;
    # On (not strict): a commit waits for one synchronous standby while there is one; with none
    # left the primary goes on alone instead of blocking every write.
    synchronous_mode = p.synchronous;
    synchronous_mode_strict = false;
    synchronous_node_count = 1;
    postgresql = {
      use_pg_rewind = true;
      use_slots = true;
      parameters = {
        max_connections = cfg.maxConnections;
        max_wal_senders = 10;
        max_replication_slots = 10;
        max_slot_wal_keep_size = cfg.maxSlotWalKeepSize;
        wal_level = "replica";
        wal_log_hints = "on";
        hot_standby = "on";
        hot_standby_feedback = "on";
        password_encryption = "scram-sha-256";
        # A replica that died without closing its connection (its machine crashed, its link cut)
        # is noticed by the leader within 5 s instead of 60: until then its walsender lingers
        # and, in synchronous mode, Patroni still counts it as the synchronous standby that every
        # commit waits for.
        wal_sender_timeout = "5s";
      };
    };
  };
in
{
  inherit dcs;
  settings = {
    etcd3 = {
      hosts = p.etcdHosts;
      protocol = "http";
    };

    restapi.authentication.username = p.restApiUser;

    postgresql = {
      authentication = {
        superuser.username = p.superuser;
        replication.username = cfg.replicationUser;
        rewind.username = p.rewindUser;
      };
      pg_hba = import ./hba.nix cfg;
      # Patroni reaches its own server over the socket (peer authentication, no password).
      use_unix_socket = true;
      parameters = {
        unix_socket_directories = paths.socketDir;
        password_encryption = "scram-sha-256";
      }
      // (
        # WAL archiving (the backup role): in every member's own parameters, so that whichever
        # member leads archives (archive_mode = on: a replica does not).
        if (cfg.archiveCommand or null) != null then
          {
            archive_mode = "on";
            archive_command = cfg.archiveCommand;
            # A quiet database still hands its WAL to the archive within a minute (the RPO).
            archive_timeout = 60;
          }
        else
          { }
      );
      custom_conf = paths.baseConf;
      callbacks = {
        on_start = paths.callback;
        on_role_change = paths.callback;
      };
      # A new replica clones at once instead of waiting for the leader's next checkpoint.
      basebackup = [ { checkpoint = "fast"; } ];
      # A former leader that cannot be rewound, or whose timeline diverged, stays stopped with its
      # data rather than having it deleted: `lemmy-cluster-pg-reinit` moves it aside and re-clones.
      remove_data_directory_on_rewind_failure = false;
      remove_data_directory_on_diverged_timelines = false;
    };
  }
  // (
    if p.bootstrap then
      {
        # Only this member may create the cluster (or take over the database already in its data
        # directory); the others wait for it and clone. Patroni bootstraps only with this section.
        bootstrap = {
          inherit dcs;
          initdb = [
            "data-checksums"
            { encoding = "UTF8"; }
            { locale = "C.UTF-8"; }
          ];
        };
      }
    else
      { }
  );
}
