# lemmy-cluster postgres role without Patroni: nixpkgs' services.postgresql, alone or as a
# streaming-replicated primary and hot standbys (manual failover).
#
# primary: lets the roles in (./hba.nix), sets their passwords from secret files and keeps one
#   physical replication slot per peer (scripts/setup-roles.sh).
# replica: before postgresql.service, lemmy-cluster-pg-bootstrap clones the primary with
#   scripts/bootstrap-replica.sh (the same file the live tests run), then runs as a hot standby
#   that streams from the primary through its slot.
#
# Patroni needs a consensus store of three machines; with fewer, an admin promotes a standby:
# `lemmy-cluster-pg-promote` (or `synth promote`), and brings an old primary back with
# `lemmy-cluster-pg-rejoin`. A machine configured as the primary refuses to start while another
# one accepts writes (scripts/check-no-other-primary.sh), so a stale configuration cannot fork the
# database.
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

  packages = import ./packages.nix pkgs;

  isPrimary = cfg.role == "primary";
  pictrsDb = cfg.pictrsDatabase;
  scripts = ./scripts;
  pgBin = "${pgcfg.finalPackage}/bin";
  runtimeDir = "/run/lemmy-cluster-pg";
  passfile = "${runtimeDir}/replication.pgpass";
  settings = import ./streaming-settings.nix { inherit cfg passfile; };

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
    (toString cfg.primaryAddress)
    "--primary-port"
    (toString cfg.port)
    "--user"
    cfg.replicationUser
    "--slot"
    (toString cfg.slotName)
    "--application-name"
    (toString cfg.slotName)
    "--bin-dir"
    pgBin
  ];
in
{
  config = lib.mkIf (top.enable && cfg.enable && !cfg.patroni.enable) {
    assertions = [
      {
        assertion = cfg.role != null;
        message = "services.lemmy-cluster.postgres.role must be \"primary\" or \"replica\" unless patroni.enable is set.";
      }
      {
        assertion = isPrimary || (cfg.primaryAddress != null && cfg.slotName != null);
        message = "services.lemmy-cluster.postgres: a replica needs primaryAddress (the primary it clones) and slotName.";
      }
      {
        assertion = isPrimary || cfg.primaryAddress != cfg.listenAddress;
        message = "services.lemmy-cluster.postgres: this machine is a replica but primaryAddress (${toString cfg.primaryAddress}) is its own address; name the primary's address, or set role = \"primary\".";
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
      authentication = lib.concatMapStrings (line: line + "\n") (import ./hba.nix cfg);
      settings =
        settings
        // {
          listen_addresses = lib.mkForce settings.listen_addresses;
        }
        // lib.optionalAttrs (cfg.archiveCommand != null) {
          # nixpkgs' services.pgbackrest sets its own for its stanza "default", without the
          # repository's passphrase; ours runs through lemmy-cluster-pgbackrest.
          archive_command = lib.mkForce settings.archive_command;
        };
    };

    systemd.services = {
      # nixpkgs' setup (CREATE DATABASE, roles) would wait for a synchronous standby that cannot
      # connect yet on a first start: its psql commits locally.
      postgresql-setup.environment.PGOPTIONS = "-c synchronous_commit=local";

      postgresql = {
        after = [ "lemmy-cluster-pg-passfile.service" ];
        # Fencing: a machine configured as the primary refuses to start while another PostgreSQL
        # machine already accepts writes (an old primary booting after a failover, before its new
        # configuration is deployed), instead of forking the cluster's history.
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

      # Sets the roles' passwords from the secret files and keeps the replication slots, whenever
      # this server accepts writes (a standby skips it; after a promotion it runs on the next
      # start): scripts/setup-roles.sh, whose psql reads the passwords from the files.
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
          cd "$CREDENTIALS_DIRECTORY"
          exec ${pkgs.bash}/bin/bash ${scripts}/setup-roles.sh ${
            lib.escapeShellArgs (
              import ./setup-args.nix {
                inherit cfg;
                credentials = ".";
              }
            )
          }
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
  };
}
