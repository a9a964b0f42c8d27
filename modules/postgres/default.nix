# lemmy-cluster postgres role: the cluster's PostgreSQL, in one of two shapes.
#
# - Under Patroni (patroni.enable; synth's choice with several postgres machines and automatic
#   failover): nixpkgs' services.patroni runs PostgreSQL on every postgres machine, with etcd
#   (services.lemmy-cluster.etcd) as its consensus store. Patroni creates the cluster on the one
#   member allowed to (patroni.bootstrap), clones the others, elects the leader, fails over by
#   itself and brings a former leader back with pg_rewind. See ./patroni.nix.
# - Without Patroni: nixpkgs' services.postgresql, alone (one postgres machine) or as a
#   streaming-replicated primary and hot standbys that an admin promotes (manual failover).
#   See ./streaming.nix.
#
# Either way the machine listens on its private address, lets the Lemmy role in from the
# backends, pict-rs's role from the pict-rs machines and the replication role from the other
# PostgreSQL machines (scram-sha-256 only; ./hba.nix), and sets every role's password from its
# secret file on the server that accepts writes (scripts/setup-roles.sh).
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.lemmy-cluster.postgres;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;
  slotType = types.strMatching "[a-z0-9_]{1,63}";
  secretFiles = [
    cfg.passwordFile
    cfg.replicationPasswordFile
  ]
  ++ lib.optional (cfg.pictrsDatabase.passwordFile != null) cfg.pictrsDatabase.passwordFile
  ++ lib.optionals cfg.patroni.enable [
    cfg.patroni.superuserPasswordFile
    cfg.patroni.rewindPasswordFile
    cfg.patroni.restApiPasswordFile
  ];
in
{
  imports = [
    ./streaming.nix
    ./patroni.nix
  ];

  options.services.lemmy-cluster.postgres = {
    enable = lib.mkEnableOption "the PostgreSQL role of lemmy-cluster";
    majorVersion = mkOption {
      type = types.enum [
        14
        15
        16
        17
        18
      ];
      example = 17;
      description = ''
        PostgreSQL major version, pinned explicitly: replication needs the same major on every
        machine, and nixpkgs' default follows `system.stateVersion`.
      '';
    };
    listenAddress = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = "Address PostgreSQL listens on (besides its Unix socket, and localhost without Patroni).";
    };
    port = mkOption {
      type = types.port;
      default = 5432;
      description = "PostgreSQL port (the same on every machine of the cluster).";
    };
    database = mkOption {
      type = types.str;
      default = "lemmy";
      description = "Lemmy's database.";
    };
    user = mkOption {
      type = types.str;
      default = "lemmy";
      description = "Lemmy's database role (owner of the database).";
    };
    passwordFile = mkOption {
      type = types.str;
      description = "File holding the Lemmy role's password (read at run time, never in the store).";
    };
    replicationUser = mkOption {
      type = types.str;
      default = "replicator";
      description = "Role the replicas connect with.";
    };
    replicationPasswordFile = mkOption {
      type = types.str;
      description = "File holding the replication role's password (read at run time, never in the store).";
    };
    maxConnections = mkOption {
      type = types.ints.between 20 10000;
      default = 200;
      description = "PostgreSQL's max_connections (the same on every machine: a standby needs at least the primary's).";
    };
    maxSlotWalKeepSize = mkOption {
      type = types.str;
      default = "16GB";
      description = ''
        WAL a replication slot may hold back for a replica that is away. A replica gone longer than
        that loses its slot and must be cloned again, but the primary's disk never fills up because
        of it.
      '';
    };
    allowedClients = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.20" ];
      description = "Addresses of the backends: allowed to connect as the Lemmy role, and through the firewall.";
    };
    replicationPeers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.31" ];
      description = "Addresses of the other PostgreSQL machines: allowed to replicate, and through the firewall.";
    };
    archiveCommand = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "lemmy-cluster-pgbackrest --stanza=lemmy archive-push \"%p\"";
      description = ''
        PostgreSQL's archive_command, with archive_mode = on (only a primary archives; under
        Patroni whichever member leads). Set by the backup role (services.lemmy-cluster.backup).
      '';
    };
    pictrsDatabase = {
      enable = lib.mkEnableOption "a database for pict-rs's Postgres repository (pict-rs with object storage)";
      name = mkOption {
        type = types.str;
        default = "pictrs";
        description = "Database of pict-rs's repository.";
      };
      user = mkOption {
        type = types.str;
        default = "pictrs";
        description = "Role pict-rs connects as (owner of the database).";
      };
      passwordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "File holding the role's password (read at run time, never in the store).";
      };
      allowedClients = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.0.41" ];
        description = "Addresses of the pict-rs machines (or their proxies): allowed to connect as the role, and through the firewall.";
      };
    };

    # Without Patroni (./streaming.nix).
    role = mkOption {
      type = types.nullOr (
        types.enum [
          "primary"
          "replica"
        ]
      );
      default = null;
      description = ''
        Without Patroni: whether this machine is the writable primary or a hot-standby replica
        (null under Patroni, which decides by itself).
      '';
    };
    primaryAddress = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.0.0.30";
      description = "Without Patroni: address of the primary, which a replica clones and streams from.";
    };
    slotName = mkOption {
      type = types.nullOr slotType;
      default = null;
      example = "db2";
      description = "Without Patroni: this machine's replication slot and application_name on the primary.";
    };
    replicationSlots = mkOption {
      type = types.listOf slotType;
      default = [ ];
      example = [ "db2" ];
      description = "Without Patroni: physical replication slots kept on this machine while it is the primary (one per peer).";
    };
    synchronousStandbys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "db2"
        "db3"
      ];
      description = ''
        Without Patroni: application_names of the standbys; when not empty, a commit on the
        primary waits until one of them has it (`synchronous_standby_names = 'ANY 1 (...)'`).
      '';
    };

    # Under Patroni (./patroni.nix).
    patroni = {
      enable = lib.mkEnableOption "Patroni: automatic failover between the postgres machines (needs etcd)";
      bootstrap = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Whether this member may create the cluster: run initdb when no cluster exists yet, or
          take over the database already in its data directory (a machine moving from
          services.postgresql to Patroni). Exactly one member of a cluster should have it; the
          others wait for a leader and clone it.
        '';
      };
      etcdHosts = mkOption {
        type = types.nonEmptyListOf types.str;
        example = [
          "10.0.0.30:2379"
          "10.0.0.31:2379"
          "10.0.0.10:2379"
        ];
        description = "Client addresses (address:port) of the etcd members, Patroni's consensus store (API v3).";
      };
      synchronous = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Patroni's synchronous mode (not strict): a commit returns once one standby has it, so a
          failover loses no acknowledged commit; with no standby left the leader goes on alone.
        '';
      };
      watchdog = mkOption {
        type = types.bool;
        default = !config.boot.isContainer;
        defaultText = lib.literalExpression "!config.boot.isContainer";
        description = ''
          Patroni's watchdog (the kernel's softdog, nixpkgs' services.patroni.softwareWatchdog):
          should Patroni hang while this member leads, the machine restarts before another member
          can take the leader lock. Patroni then refuses to lead without a working watchdog.
        '';
      };
      restApiPort = mkOption {
        type = types.port;
        default = 8008;
        description = "Port of Patroni's REST API (on listenAddress).";
      };
      restApiClients = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.0.41" ];
        description = ''
          Addresses allowed to reach the REST API besides the other members (replicationPeers):
          the machines whose proxies follow the leader by its `/primary` check.
        '';
      };
      superuser = mkOption {
        type = types.str;
        default = "postgres";
        description = "The superuser Patroni connects as (over the Unix socket).";
      };
      rewindUser = mkOption {
        type = types.str;
        default = "rewind";
        description = "The role pg_rewind connects as to bring a former leader back.";
      };
      restApiUser = mkOption {
        type = types.str;
        default = "patroni";
        description = "User of the REST API's basic authentication (for its unsafe endpoints: switchover, config, ...).";
      };
      superuserPasswordFile = mkOption {
        type = types.str;
        description = "File holding the superuser's password (read at run time, never in the store).";
      };
      rewindPasswordFile = mkOption {
        type = types.str;
        description = "File holding the rewind role's password.";
      };
      restApiPasswordFile = mkOption {
        type = types.str;
        description = "File holding the REST API's password (the same on every member).";
      };
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = !cfg.pictrsDatabase.enable || cfg.pictrsDatabase.passwordFile != null;
        message = "services.lemmy-cluster.postgres.pictrsDatabase.enable needs pictrsDatabase.passwordFile.";
      }
      {
        assertion = lib.all (f: !(lib.hasPrefix "/nix/store" f)) secretFiles;
        message = "services.lemmy-cluster.postgres: a password file points into the Nix store, which is world-readable; keep secrets in root-owned files outside it.";
      }
    ];

    services.lemmy-cluster.firewall.allow = [
      {
        inherit (cfg) port;
        from = lib.unique (
          cfg.allowedClients
          ++ cfg.replicationPeers
          ++ lib.optionals cfg.pictrsDatabase.enable cfg.pictrsDatabase.allowedClients
        );
        description = "PostgreSQL";
      }
    ];
  };
}
