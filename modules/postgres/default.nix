# lemmy-cluster postgres role: a streaming-replicated PostgreSQL on top of nixpkgs'
# services.postgresql.
#
# primary: listens on the private address, lets the Lemmy role in from the backends and the
#   replication role in from the other PostgreSQL machines (scram-sha-256, nothing else), sets
#   both roles' passwords from secret files, and keeps one physical replication slot per peer.
# replica: before postgresql.service, lemmy-cluster-pg-bootstrap clones the primary with
#   scripts/bootstrap-replica.sh (the same file the live tests run), then runs as a hot standby
#   that streams from the primary through its slot.
#
# Every machine gets the same access rules, so a promoted replica serves the backends and the
# other replicas at once. `lemmy-cluster-pg-promote` and `lemmy-cluster-pg-rejoin` wrap the
# promotion and re-clone scripts for the admin (and for `synth promote`).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.postgres;
  top = config.services.lemmy-cluster;
  pgcfg = config.services.postgresql;
  inherit (lib) mkOption types;

  packages = {
    "14" = pkgs.postgresql_14;
    "15" = pkgs.postgresql_15;
    "16" = pkgs.postgresql_16;
    "17" = pkgs.postgresql_17;
    "18" = pkgs.postgresql_18;
  };

  isPrimary = cfg.role == "primary";
  pictrsDb = cfg.pictrsDatabase;
  inherit (import ../lib.nix { inherit lib; }) cidr;
  scripts = ./scripts;
  pgBin = "${pgcfg.finalPackage}/bin";
  runtimeDir = "/run/lemmy-cluster-pg";
  passfile = "${runtimeDir}/replication.pgpass";
  slotSql = lib.concatMapStrings (s: ''
    SELECT pg_create_physical_replication_slot('${s}')
      WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '${s}');
  '') cfg.replicationSlots;

  adminTool =
    name: script: extraArgs:
    pkgs.writeShellScriptBin name ''
      set -euo pipefail
      if [ "$(id -u)" -eq 0 ]; then
        exec ${pkgs.util-linux}/bin/runuser -u postgres -- ${pkgs.bash}/bin/bash ${scripts}/${script} ${extraArgs} "$@"
      fi
      exec ${pkgs.bash}/bin/bash ${scripts}/${script} ${extraArgs} "$@"
    '';
  bootstrapArgs = lib.escapeShellArgs [
    "--pgdata"
    pgcfg.dataDir
    "--primary-host"
    cfg.primaryAddress
    "--primary-port"
    (toString cfg.port)
    "--user"
    cfg.replicationUser
    "--slot"
    cfg.slotName
    "--application-name"
    cfg.slotName
    "--bin-dir"
    pgBin
  ];
in
{
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
        PostgreSQL major version, pinned explicitly: streaming replication needs the same major on
        every machine, and nixpkgs' default follows `system.stateVersion`.
      '';
    };
    role = mkOption {
      type = types.enum [
        "primary"
        "replica"
      ];
      description = "Whether this machine is the writable primary or a hot-standby replica.";
    };
    listenAddress = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = "Address PostgreSQL listens on, besides localhost.";
    };
    port = mkOption {
      type = types.port;
      default = 5432;
      description = "PostgreSQL port (the same on every machine of the cluster).";
    };
    primaryAddress = mkOption {
      type = types.str;
      example = "10.0.0.30";
      description = "Address of the primary, which a replica clones and streams from.";
    };
    slotName = mkOption {
      type = types.strMatching "[a-z0-9_]{1,63}";
      example = "db2";
      description = "This machine's replication slot and application_name on the primary.";
    };
    replicationSlots = mkOption {
      type = types.listOf (types.strMatching "[a-z0-9_]{1,63}");
      default = [ ];
      example = [ "db2" ];
      description = "Physical replication slots kept on this machine while it is the primary (one per peer).";
    };
    maxSlotWalKeepSize = mkOption {
      type = types.str;
      default = "16GB";
      description = ''
        WAL a slot may hold back for a replica that is away. A replica gone longer than that loses
        its slot and must be re-cloned (lemmy-cluster-pg-rejoin), but the primary's disk never
        fills up because of it.
      '';
    };
    synchronousStandbys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "db2"
        "db3"
      ];
      description = ''
        application_names of the standbys; when not empty, a commit on the primary waits until
        one of them has it (`synchronous_standby_names = 'ANY 1 (...)'`), so losing the primary
        loses no committed transaction.
      '';
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
        description = "Addresses of the pict-rs machines: allowed to connect as the role, and through the firewall.";
      };
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = isPrimary || cfg.primaryAddress != cfg.listenAddress;
        message = "services.lemmy-cluster.postgres: this machine is a replica but primaryAddress (${cfg.primaryAddress}) is its own address; name the primary's address, or set role = \"primary\".";
      }
      {
        assertion = !pictrsDb.enable || pictrsDb.passwordFile != null;
        message = "services.lemmy-cluster.postgres.pictrsDatabase.enable needs pictrsDatabase.passwordFile.";
      }
      {
        assertion = lib.all (f: !(lib.hasPrefix "/nix/store" f)) [
          cfg.passwordFile
          cfg.replicationPasswordFile
        ];
        message = "services.lemmy-cluster.postgres: a password file points into the Nix store, which is world-readable; keep secrets in root-owned files outside it.";
      }
    ];

    services.postgresql = {
      enable = true;
      package = packages.${toString cfg.majorVersion};
      enableTCPIP = true;
      ensureDatabases = [ cfg.database ] ++ lib.optional pictrsDb.enable pictrsDb.name;
      ensureUsers = [
        {
          name = cfg.user;
          ensureDBOwnership = true;
        }
      ]
      ++ lib.optional pictrsDb.enable {
        name = pictrsDb.user;
        ensureDBOwnership = pictrsDb.name == pictrsDb.user;
      }
      ++ [
        {
          name = cfg.replicationUser;
          ensureClauses = {
            login = true;
            replication = true;
          };
        }
      ];
      # First match wins; these come before nixpkgs' defaults (local peer, loopback md5).
      authentication = lib.concatStrings (
        map (a: "host ${cfg.database} ${cfg.user} ${cidr a} scram-sha-256\n") cfg.allowedClients
        ++ lib.optionals pictrsDb.enable (
          map (a: "host ${pictrsDb.name} ${pictrsDb.user} ${cidr a} scram-sha-256\n") pictrsDb.allowedClients
        )
        ++ map (a: "host replication ${cfg.replicationUser} ${cidr a} scram-sha-256\n") cfg.replicationPeers
        # Peers ask each other "are you in recovery?" before starting as a primary (fencing).
        ++ map (a: "host postgres ${cfg.replicationUser} ${cidr a} scram-sha-256\n") cfg.replicationPeers
      );
      settings = {
        port = cfg.port;
        listen_addresses = lib.mkForce "${cfg.listenAddress},localhost";
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
      // lib.optionalAttrs (!isPrimary) {
        primary_conninfo = "host=${cfg.primaryAddress} port=${toString cfg.port} user=${cfg.replicationUser} passfile=${passfile} application_name=${cfg.slotName}";
        primary_slot_name = cfg.slotName;
      }
      // lib.optionalAttrs (isPrimary && cfg.synchronousStandbys != [ ]) {
        synchronous_standby_names = "ANY 1 (${lib.concatStringsSep ", " cfg.synchronousStandbys})";
        synchronous_commit = "on";
      };
    };

    systemd.services = {
      # Fencing: a machine configured as the primary refuses to start while another PostgreSQL
      # machine already accepts writes (an old primary booting after a failover, before its new
      # configuration is deployed), instead of forking the cluster's history.
      # nixpkgs' setup (CREATE DATABASE, roles) would wait for a synchronous standby that cannot
      # connect yet on a first start: its psql commits locally (the server ignores PGOPTIONS).
      postgresql-setup.environment.PGOPTIONS = "-c synchronous_commit=local";

      postgresql = {
        environment.PGOPTIONS = "-c synchronous_commit=local";
        after = [ "lemmy-cluster-pg-passfile.service" ];
        serviceConfig.ExecStartPre = lib.mkIf (isPrimary && cfg.replicationPeers != [ ]) [
          "${pkgs.bash}/bin/bash ${scripts}/check-no-other-primary.sh ${
            lib.escapeShellArgs [
              "--peers"
              (lib.concatStringsSep "," cfg.replicationPeers)
              "--port"
              (toString cfg.port)
              "--user"
              cfg.replicationUser
              "--passfile"
              passfile
              "--bin-dir"
              pgBin
            ]
          }"
        ];
      };

      # The replication password as a libpq password file in /run, for the WAL receiver (and
      # for the promote and rejoin tools). Written on every boot from the secret file.
      lemmy-cluster-pg-passfile = {
        description = "lemmy-cluster: PostgreSQL replication password file";
        before = [ "postgresql.service" ];
        requiredBy = [ "postgresql.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          User = "postgres";
          Group = "postgres";
          RuntimeDirectory = "lemmy-cluster-pg";
          RuntimeDirectoryMode = "0700";
          RuntimeDirectoryPreserve = true;
          LoadCredential = [ "replication-password:${cfg.replicationPasswordFile}" ];
          ExecStart = "${pkgs.bash}/bin/bash ${scripts}/write-pgpass.sh ${cfg.replicationUser} %d/replication-password ${passfile}";
        };
      };

      # Sets the two roles' passwords from the secret files and keeps the replication slots,
      # whenever this server accepts writes (a standby skips it; after a promotion it runs on
      # the next start). SQL goes through stdin; psql reads the passwords from the files.
      lemmy-cluster-pg-setup = {
        description = "lemmy-cluster: PostgreSQL roles' passwords and replication slots";
        after = [ "postgresql.target" ];
        requires = [ "postgresql.target" ];
        wantedBy = [ "multi-user.target" ];
        path = [ pgcfg.finalPackage ];
        environment.PGPORT = toString cfg.port;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          User = "postgres";
          Group = "postgres";
          LoadCredential = [
            "db-password:${cfg.passwordFile}"
            "replication-password:${cfg.replicationPasswordFile}"
          ]
          ++ lib.optional pictrsDb.enable "pictrs-db-password:${pictrsDb.passwordFile}";
        };
        script = ''
          if [ "$(psql -XAtc 'SELECT pg_is_in_recovery()')" = t ]; then
            echo "standby: roles and slots come from the primary"
            exit 0
          fi
          ${lib.optionalString isPrimary ''
            # The configuration has caught up with a promotion: the marker promote.sh left has done
            # its job (should this machine become a replica again, it must be refused, not started).
            rm -f ${lib.escapeShellArg "${pgcfg.dataDir}/lemmy-cluster-promoted"}
          ''}
          psql -X -v ON_ERROR_STOP=1 -d postgres <<'SQL'
          SET log_statement = 'none';
          -- With synchronous standbys configured, a commit waits for one of them; but they can
          -- only connect once this very script has set the replication password.
          SET synchronous_commit = local;
          \set lemmy_pw `cat "$CREDENTIALS_DIRECTORY/db-password"`
          \set repl_pw `cat "$CREDENTIALS_DIRECTORY/replication-password"`
          ALTER ROLE "${cfg.user}" WITH LOGIN PASSWORD :'lemmy_pw';
          ALTER ROLE "${cfg.replicationUser}" WITH LOGIN REPLICATION PASSWORD :'repl_pw';
          ${lib.optionalString pictrsDb.enable ''
            \set pictrs_pw `cat "$CREDENTIALS_DIRECTORY/pictrs-db-password"`
            ALTER ROLE "${pictrsDb.user}" WITH LOGIN PASSWORD :'pictrs_pw';
            -- pict-rs creates its tables and the pgcrypto extension: it must own its database
            -- (nixpkgs' ensureDBOwnership covers only a database named like the role).
            ALTER DATABASE "${pictrsDb.name}" OWNER TO "${pictrsDb.user}";
          ''}
          ${slotSql}
          SQL
        '';
      };
    }
    // lib.optionalAttrs (!isPrimary) {
      # Clone the primary before PostgreSQL's own start script would run initdb.
      lemmy-cluster-pg-bootstrap = {
        description = "lemmy-cluster: clone the PostgreSQL primary into a hot standby";
        after = [
          "network-online.target"
          "lemmy-cluster-pg-passfile.service"
        ];
        wants = [ "network-online.target" ];
        before = [ "postgresql.service" ];
        requiredBy = [ "postgresql.service" ];
        path = [
          pkgs.coreutils
          pgcfg.finalPackage
        ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          User = "postgres";
          Group = "postgres";
          StateDirectory = "postgresql";
          LoadCredential = [ "replication-password:${cfg.replicationPasswordFile}" ];
          # --wait-for-primary: a replica may boot before its primary is up or has set the
          # replication password; postgresql.service waits for the clone instead of failing.
          ExecStart = "${pkgs.bash}/bin/bash ${scripts}/bootstrap-replica.sh ${bootstrapArgs} --password-file %d/replication-password --wait-for-primary";
          # A slow first clone of a big database must not be killed.
          TimeoutStartSec = "infinity";
        };
      };
    };

    environment.systemPackages = [
      (adminTool "lemmy-cluster-pg-promote" "promote.sh" (
        lib.escapeShellArgs [
          "--port"
          (toString cfg.port)
          "--bin-dir"
          pgBin
          "--slots"
          (lib.concatStringsSep "," cfg.replicationSlots)
        ]
      ))
      # Uses the password file that lemmy-cluster-pg-passfile keeps in /run for postgres.
      (adminTool "lemmy-cluster-pg-rejoin" "rejoin-as-replica.sh" "${bootstrapArgs} --passfile ${passfile}")
    ];

    services.lemmy-cluster.firewall.allow = [
      {
        inherit (cfg) port;
        from = lib.unique (cfg.allowedClients ++ cfg.replicationPeers ++ lib.optionals pictrsDb.enable pictrsDb.allowedClients);
        description = "PostgreSQL";
      }
    ];
  };
}
