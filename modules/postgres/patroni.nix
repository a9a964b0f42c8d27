# lemmy-cluster postgres role under Patroni: nixpkgs' services.patroni with etcd v3, configured
# by ./patroni-settings.nix (the same file the live tests run the real Patroni with).
#
# Around Patroni:
# - patroni.service: the passwords as systemd credentials, exported as PATRONI_* variables
#   (services.patroni.environmentFiles; Patroni hides them from PostgreSQL); before it,
#   scripts/patroni-prepare.sh keeps a data directory's nixpkgs configuration link aside, so that
#   a machine moving from services.postgresql is taken over with its data. A change of the
#   settings reloads Patroni instead of restarting it (a restart would hand the leadership over).
# - lemmy-cluster-patroni-config: applies the dynamic configuration (timings, synchronous and
#   failsafe mode, cluster-wide parameters) to the running cluster through the REST API; Patroni
#   itself reads it only when it creates the cluster.
# - lemmy-cluster-patroni-setup: on the member that is the leader, the roles, databases,
#   passwords and grants (scripts/setup-roles.sh), idempotently, when a deploy changes them;
#   replicas get them by replication. Patroni's on_start/on_role_change callback
#   (scripts/patroni-callback.sh) does the same whenever a member becomes the leader.
# - lemmy-cluster-pg-reinit: clones a member afresh, keeping its old data directory aside.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.postgres;
  top = config.services.lemmy-cluster;
  p = cfg.patroni;
  inherit (import ../lib.nix { inherit lib; }) hostPort;

  package = (import ./packages.nix pkgs).${toString cfg.majorVersion};
  scripts = ./scripts;
  inherit (config.services.patroni) scope name;
  # nixpkgs' services.patroni writes its settings to /etc/<this name>.
  configFileName = "patroni-${scope}-${name}.yaml";
  dataDir = config.services.patroni.postgresqlDataDir;
  socketDir = "/run/postgresql";
  baseConf = pkgs.writeText "lemmy-cluster-postgresql.base.conf" ''
    # lemmy-cluster: every setting of this server comes from Patroni (patroni-settings.nix).
  '';
  # The callback runs inside patroni.service: its credentials are the unit's.
  callback = "${pkgs.bash}/bin/bash ${scripts}/patroni-callback.sh ${
    lib.escapeShellArgs (
      import ./setup-args.nix {
        inherit cfg;
        credentials = credentialDir;
      }
    )
  }";
  evaluated = import ./patroni-settings.nix {
    inherit cfg;
    paths = {
      inherit socketDir callback;
      baseConf = "${baseConf}";
    };
  };
  dcsFile = pkgs.writeText "lemmy-cluster-patroni-dynamic.json" (builtins.toJSON evaluated.dcs);
  api = "http://${hostPort cfg.listenAddress p.restApiPort}";
  credentialDir = "/run/credentials/patroni.service";

  setupCredentials = [
    "db-password:${cfg.passwordFile}"
    "replication-password:${cfg.replicationPasswordFile}"
    "superuser-password:${p.superuserPasswordFile}"
    "rewind-password:${p.rewindPasswordFile}"
  ]
  ++ lib.optional cfg.pictrsDatabase.enable "pictrs-db-password:${cfg.pictrsDatabase.passwordFile}";
  etcdHere = config.services.lemmy-cluster.etcd.enable;
in
{
  config = lib.mkIf (top.enable && cfg.enable && p.enable) {
    assertions = [
      {
        assertion = !config.services.postgresql.enable;
        message = "services.lemmy-cluster.postgres.patroni: Patroni runs this machine's PostgreSQL; services.postgresql must stay disabled here (something else enables it).";
      }
      {
        assertion = lib.versions.major pkgs.patroni.version == "4";
        message = "services.lemmy-cluster.postgres.patroni: lemmy-cluster is tested with Patroni 4 (etcd v3), but pkgs.patroni is ${pkgs.patroni.version}. Use the flake's nixpkgs (NixOS 26.05).";
      }
      {
        assertion = cfg.role == null;
        message = "services.lemmy-cluster.postgres.role is for PostgreSQL without Patroni; under Patroni the members elect their leader. Remove role (and primaryAddress, slotName, replicationSlots, synchronousStandbys).";
      }
    ];

    services.patroni = {
      enable = true;
      scope = top.clusterName;
      name = config.networking.hostName;
      nodeIp = cfg.listenAddress;
      otherNodesIps = cfg.replicationPeers;
      postgresqlPackage = package;
      postgresqlPort = cfg.port;
      restApiPort = p.restApiPort;
      # PostgreSQL's own user: a data directory that services.postgresql made is taken over as it is.
      user = "postgres";
      group = "postgres";
      # Fencing: should Patroni hang, the kernel's watchdog restarts the machine before another
      # member can take the leader lock (Patroni refuses to lead without it). Not in containers.
      softwareWatchdog = p.watchdog;
      inherit (evaluated) settings;
      environmentFiles = {
        PATRONI_SUPERUSER_PASSWORD = "${credentialDir}/superuser-password";
        PATRONI_REPLICATION_PASSWORD = "${credentialDir}/replication-password";
        PATRONI_REWIND_PASSWORD = "${credentialDir}/rewind-password";
        PATRONI_RESTAPI_PASSWORD = "${credentialDir}/restapi-password";
      };
    };

    # services.postgresql, which is off here, would define PostgreSQL's user (same ids).
    users.users.postgres = {
      description = "PostgreSQL server user";
      group = "postgres";
      home = dataDir;
      uid = config.ids.uids.postgres;
      useDefaultShell = true;
    };
    users.groups.postgres.gid = config.ids.gids.postgres;

    systemd.services = {
      patroni = {
        after = [ "network-online.target" ] ++ lib.optional etcdHere "etcd.service";
        wants = [ "network-online.target" ];
        # etcdctl for patroni-prepare.sh, psql for the callback.
        path = [
          pkgs.etcd_3_6
          package
        ];
        environment = {
          PGHOST = socketDir;
          PGPORT = toString cfg.port;
        };
        # The settings are read from /etc (a stable path), so that a new configuration reloads
        # Patroni (SIGHUP) rather than restarting it; a new Patroni package still restarts it.
        script = lib.mkForce ''
          ${lib.concatStringsSep "\n" (
            lib.mapAttrsToList (
              n: path: ''export ${n}="$(< ${lib.escapeShellArg path})"''
            ) config.services.patroni.environmentFiles
          )}
          exec ${lib.getExe pkgs.patroni} /etc/${configFileName}
        '';
        reloadTriggers = [ config.environment.etc.${configFileName}.source ];
        serviceConfig = {
          # Patroni's passwords, and those its callback sets on a new leader (setupCredentials).
          LoadCredential = lib.unique (setupCredentials ++ [ "restapi-password:${p.restApiPasswordFile}" ]);
          ExecStartPre = "${pkgs.bash}/bin/bash ${scripts}/patroni-prepare.sh ${
            lib.escapeShellArgs (
              import ./patroni-prepare-args.nix {
                inherit cfg scope dataDir;
              }
            )
          }";
          RuntimeDirectory = "postgresql";
          RuntimeDirectoryMode = "0755";
          # nixpkgs' unit has KillMode=process: PostgreSQL outlives a Patroni that crashed and is
          # restarted, so its socket folder must too (systemd removes it on every stop otherwise,
          # and Patroni reaches its server over that socket).
          RuntimeDirectoryPreserve = "restart";
          RestartSec = "5s";
        };
        # A member that crashed in a loop must keep trying: the cluster needs it back.
        unitConfig.StartLimitIntervalSec = 0;
      };

      lemmy-cluster-patroni-config = {
        description = "lemmy-cluster: Patroni's dynamic configuration";
        after = [ "patroni.service" ];
        wants = [ "patroni.service" ];
        wantedBy = [ "multi-user.target" ];
        path = [ pkgs.curl ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          User = "postgres";
          Group = "postgres";
          LoadCredential = [ "restapi-password:${p.restApiPasswordFile}" ];
          ExecStart = "${pkgs.bash}/bin/bash ${scripts}/patroni-config.sh ${
            lib.escapeShellArgs [
              "--api"
              api
              "--user"
              p.restApiUser
              "--password-file"
              "%d/restapi-password"
              "--config"
              "${dcsFile}"
            ]
          }";
        };
      };

      lemmy-cluster-patroni-setup = {
        description = "lemmy-cluster: PostgreSQL roles, databases and passwords (on the Patroni leader)";
        after = [ "patroni.service" ];
        wants = [ "patroni.service" ];
        wantedBy = [ "multi-user.target" ];
        path = [
          pkgs.curl
          pkgs.jq
          package
        ];
        environment = {
          PGHOST = socketDir;
          PGPORT = toString cfg.port;
        };
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          User = "postgres";
          Group = "postgres";
          LoadCredential = setupCredentials;
          # Bounded: on the first deploy of a new cluster Patroni waits for etcd's quorum, and the
          # switch must not wait for machines that are deployed after this one (patroni-setup.sh
          # then leaves the set-up to the callback of the member that becomes the leader).
          TimeoutStartSec = "5min";
          ExecStart = "${pkgs.bash}/bin/bash ${scripts}/patroni-setup.sh --api ${api} --timeout 90 -- ${
            lib.escapeShellArgs (
              import ./setup-args.nix {
                inherit cfg;
                credentials = "%d";
              }
            )
          }";
        };
      };
    };

    environment.systemPackages = [
      # `synth promote MACHINE` runs `lemmy-cluster-pg-switchover MACHINE` on MACHINE (as root,
      # who may read the REST API's password file).
      (pkgs.writeShellScriptBin "lemmy-cluster-pg-switchover" ''
        set -euo pipefail
        if [ $# -ne 1 ]; then
          echo "usage: lemmy-cluster-pg-switchover CANDIDATE   (the member that is to lead)" >&2
          exit 2
        fi
        export PATH=${
          lib.makeBinPath [
            pkgs.curl
            pkgs.jq
            pkgs.coreutils
            pkgs.gawk
          ]
        }:$PATH
        exec ${pkgs.bash}/bin/bash ${scripts}/switchover.sh ${
          lib.escapeShellArgs [
            "--api"
            api
            "--user"
            p.restApiUser
            "--password-file"
            p.restApiPasswordFile
          ]
        } --candidate "$1"
      '')
      (pkgs.writeShellScriptBin "lemmy-cluster-pg-reinit" ''
        set -euo pipefail
        export PATH=${
          lib.makeBinPath [
            pkgs.curl
            pkgs.jq
            pkgs.coreutils
            config.systemd.package
          ]
        }:$PATH
        export LEMMY_CLUSTER_PATRONI_API=${lib.escapeShellArg api}
        exec ${pkgs.bash}/bin/bash ${scripts}/reinit.sh ${lib.escapeShellArg dataDir}
      '')
    ];

    services.lemmy-cluster.firewall.allow = [
      {
        port = p.restApiPort;
        from = lib.unique (cfg.replicationPeers ++ p.restApiClients);
        description = "Patroni REST API";
      }
    ];
  };
}
