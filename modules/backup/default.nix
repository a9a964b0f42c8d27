# lemmy-cluster backup role: pgBackRest on every PostgreSQL machine (nixpkgs' services.pgbackrest).
#
# - WAL archiving: PostgreSQL's archive_command pushes every WAL segment to the repository
#   (./pgbackrest-settings.nix). Only a primary archives (archive_mode = on); under Patroni the
#   command is in Patroni's own postgresql.parameters, so whichever member leads archives.
# - Backups: full and differential backups on systemd timers (nixpkgs' jobs), run on every
#   machine but skipped on a standby (ExecCondition: ./scripts/is-primary.sh), and at the first
#   start of the leader a stanza and a full backup (lemmy-cluster-backup-init).
# - Encryption: the repository is aes-256-cbc with the passphrase of cipherPassFile; the
#   passphrase (and an S3 repository's key) reach pgbackrest only in its own environment, read
#   from the units' credentials by ./scripts/pgbackrest.sh (`lemmy-cluster-pgbackrest`, also the
#   admin's command: it runs pgbackrest as postgres).
#
# - With a backup machine (role "backup", ./repository.nix): the repository is there, reached over
#   TLS (pgBackRest's server on both sides, certificates of the cluster's backup CA); the backup
#   machine takes the scheduled backups, so this machine only archives, restores and answers it.
#
# Restores are `synth restore` (steps in the README): they stop PostgreSQL, keep the old data
# directory aside and run `lemmy-cluster-pgbackrest restore`.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.backup;
  top = config.services.lemmy-cluster;
  pgCfg = top.postgres;
  inherit (lib) mkOption types;
  patroni = pgCfg.patroni.enable;
  scripts = ./scripts;
  pgPackage = (import ../postgres/packages.nix pkgs).${toString pgCfg.majorVersion};
  dataDir =
    if patroni then config.services.patroni.postgresqlDataDir else config.services.postgresql.dataDir;
  socketDir = "/run/postgresql";
  s3 = cfg.repository.type == "s3";
  # The repository on the backup machine (pgBackRest's repository host).
  remote = cfg.repository.host != null;
  tlsFiles = import ./tls-files.nix {
    inherit lib pkgs;
    inherit (cfg) tls;
    owner = "postgres";
  };

  pgbackrest = import ./wrapper.nix {
    inherit lib pkgs;
    inherit (cfg) cipherPassFile;
    runAs = "postgres";
    s3 =
      if s3 then
        {
          accessKeyFile = cfg.s3AccessKeyFile;
          secretKeyFile = cfg.s3SecretKeyFile;
        }
      else
        null;
  };
  wrapper = pgbackrest.package;
  inherit (pgbackrest) command credentials;

  evaluated = import ./pgbackrest-settings.nix {
    inherit cfg command;
    pg = {
      inherit dataDir socketDir;
      inherit (pgCfg) port;
    };
    tls = tlsFiles.paths // {
      listenAddress = top.privateAddress;
    };
  };

  isPrimary = "${pkgs.bash}/bin/bash ${scripts}/is-primary.sh --socket-dir ${socketDir} --port ${toString pgCfg.port} --bin-dir ${pgPackage}/bin";
  pgUnit = if patroni then "patroni.service" else "postgresql.service";
  jobUnit = job: "pgbackrest-${cfg.stanza}-${job}";
in
{
  imports = [
    ./pictrs-files.nix
    ./repository.nix
  ];

  options.services.lemmy-cluster.backup = {
    enable = lib.mkEnableOption "pgBackRest backups and WAL archiving of this machine's PostgreSQL (the postgres role)";
    stanza = mkOption {
      type = types.strMatching "[a-z0-9_-]{1,63}";
      default = "lemmy";
      description = "pgBackRest's stanza: the name of this database cluster in the repository.";
    };
    repository = {
      type = mkOption {
        type = types.enum [
          "posix"
          "s3"
        ];
        description = "posix: a folder (path; a shared mount with several PostgreSQL machines); s3: a bucket.";
      };
      path = mkOption {
        type = types.str;
        default = "/var/lib/pgbackrest";
        description = "posix: the repository's folder; s3: the prefix inside the bucket.";
      };
      endpoint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://10.0.0.40:3900";
        description = "s3: the endpoint URL (http:// needs pgBackRest 2.58 or later, as nixpkgs has).";
      };
      bucket = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "s3: the repository's bucket.";
      };
      region = mkOption {
        type = types.str;
        default = "us-east-1";
        description = "s3: the region (Garage's s3_region).";
      };
      uriStyle = mkOption {
        type = types.enum [
          "host"
          "path"
        ];
        default = "host";
        description = "s3: path for Garage and MinIO, host for most providers.";
      };
      host = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              name = mkOption {
                type = types.str;
                description = "The backup machine's name (the common name of its certificate).";
              };
              address = mkOption {
                type = types.str;
                description = "The backup machine's private address (its pgBackRest server).";
              };
            };
          }
        );
        default = null;
        description = "posix: the backup machine that keeps the repository (pgBackRest's repository host, reached over TLS), or null: the folder is on this machine.";
      };
    };
    tlsPort = mkOption {
      type = types.port;
      default = 8432;
      description = "The port of pgBackRest's TLS servers (on this machine and the backup machine).";
    };
    tls = import ./tls-options.nix { inherit lib; };
    inherit (import ./job-options.nix { inherit lib; }) retention schedule;
    cipherPassFile = mkOption {
      type = types.str;
      description = "File holding the repository's encryption passphrase (read at run time, never in the store). Without it no backup can be read.";
    };
    s3AccessKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "s3: file holding the access key id.";
    };
    s3SecretKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "s3: file holding the secret key.";
    };
    archiveCommand = mkOption {
      type = types.str;
      readOnly = true;
      default = evaluated.archiveCommand;
      defaultText = lib.literalExpression ''"lemmy-cluster-pgbackrest --stanza=<stanza> archive-push \"%p\""'';
      description = "PostgreSQL's archive_command (set on the postgres role by this module).";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = pgCfg.enable;
        message = "services.lemmy-cluster.backup backs up this machine's PostgreSQL: enable services.lemmy-cluster.postgres too.";
      }
      {
        assertion =
          !s3
          || (cfg.repository.endpoint != null && cfg.repository.bucket != null && cfg.s3AccessKeyFile != null && cfg.s3SecretKeyFile != null);
        message = "services.lemmy-cluster.backup: an s3 repository needs repository.endpoint, repository.bucket, s3AccessKeyFile and s3SecretKeyFile.";
      }
      {
        assertion = lib.all (f: f == null || !(lib.hasPrefix "/nix/store" f)) (
          [
            cfg.cipherPassFile
            cfg.s3AccessKeyFile
            cfg.s3SecretKeyFile
          ]
          ++ lib.attrValues cfg.tls
        );
        message = "services.lemmy-cluster.backup: a secret file points into the Nix store, which is world-readable; keep secrets in root-owned files outside it.";
      }
      {
        assertion = !remote || (cfg.repository.type == "posix" && lib.all (f: f != null) (lib.attrValues cfg.tls));
        message = "services.lemmy-cluster.backup: a repository on a backup machine (repository.host) is a posix repository and needs tls.caFile, tls.certFile and tls.keyFile.";
      }
      {
        # The backup machine is told where the data directory is (synth: the modules' default).
        assertion = !remote || dataDir == "/var/lib/postgresql/${toString pgCfg.majorVersion}";
        message = "services.lemmy-cluster.backup: the backup machine backs up /var/lib/postgresql/${toString pgCfg.majorVersion}, and this machine's data directory is ${dataDir}; keep the default dataDir.";
      }
      {
        assertion = lib.versionAtLeast pkgs.pgbackrest.version "2.58" || !s3 || !(lib.hasPrefix "http://" (toString cfg.repository.endpoint));
        message = "services.lemmy-cluster.backup: pgBackRest ${pkgs.pgbackrest.version} needs https for S3; an http:// endpoint needs 2.58 or later.";
      }
    ];

    services.lemmy-cluster.postgres.archiveCommand = cfg.archiveCommand;

    services.pgbackrest = {
      enable = true;
      settings = evaluated.global;
      # One repository, named so that nixpkgs sets no repo-host (this machine writes it itself).
      # One repository, named so that nixpkgs' default host (the name) is not used: this machine
      # writes it itself, or it names the backup machine's address (evaluated.repo.host).
      repos.lemmy = {
        host = null;
      }
      // evaluated.repo;
      commands.server = evaluated.server;
      stanzas.${cfg.stanza} = {
        instances.localhost = evaluated.instance;
        # With a backup machine, it takes the backups (a backup runs where the repository is).
        jobs = lib.mkIf (!remote) {
          full = {
            schedule = cfg.schedule.full;
            type = "full";
          };
          diff = {
            schedule = cfg.schedule.diff;
            type = "diff";
          };
        };
      };
    };

    # The admin's tools (and `synth backup` / `synth restore`'s remote commands), run as root.
    environment.systemPackages = [
      wrapper
      (pkgs.writeShellScriptBin "lemmy-cluster-restore" ''
        export PATH=${
          lib.makeBinPath [
            pkgs.jq
            pkgs.coreutils
            pkgs.gnused
            pkgs.util-linux
          ]
        }:$PATH
        exec ${pkgs.bash}/bin/bash ${scripts}/restore.sh ${
          lib.escapeShellArgs [
            "--data-dir"
            dataDir
            "--stanza"
            cfg.stanza
            "--owner"
            "postgres"
            "--finish-with"
            "${pgPackage}/bin"
          ]
          ++ lib.concatMap (c: [
            "--credential"
            c
          ]) (map (lib.replaceStrings [ ":" ] [ "=" ]) credentials)
        } "$@" -- ${command}
      '')
      (pkgs.writeShellScriptBin "lemmy-cluster-move-aside" ''
        exec ${pkgs.bash}/bin/bash ${scripts}/move-aside.sh --data-dir ${lib.escapeShellArg dataDir} "$@"
      '')
    ]
    ++ lib.optional patroni (
      pkgs.writeShellScriptBin "lemmy-cluster-patroni-forget" ''
        export PATH=${lib.makeBinPath [ pkgs.etcd pkgs.coreutils ]}:$PATH
        exec ${pkgs.bash}/bin/bash ${scripts}/patroni-forget.sh ${
          lib.escapeShellArgs [
            "--endpoints"
            (lib.concatMapStringsSep "," (h: "http://${h}") pgCfg.patroni.etcdHosts)
            "--scope"
            top.clusterName
          ]
        } "$@"
      ''
    );

    # nixpkgs makes the repository's folder the home of its pgbackrest user (0700, its owner);
    # here every pgbackrest process runs as postgres, which owns the repository.
    users.users.pgbackrest = {
      home = lib.mkForce "/var/empty";
      createHome = lib.mkForce false;
    };

    # The posix repository (with several machines: the shared mount's folder), PostgreSQL's.
    systemd.tmpfiles.rules = lib.optional (!s3 && !remote) "d ${cfg.repository.path} 0750 postgres postgres - -";

    # The backup machine's backups reach this machine's data directory through this server.
    services.lemmy-cluster.firewall.allow = lib.optional remote {
      port = cfg.tlsPort;
      from = [ cfg.repository.host.address ];
      description = "pgBackRest (the backup machine)";
    };

    systemd.services =
      let
        # nixpkgs' jobs run pgbackrest as its own user without the passphrase; here they run the
        # wrapper as postgres (the owner of the data directory and of a posix repository), on the
        # machine that leads only.
        job = type: {
          after = [ pgUnit ];
          serviceConfig = {
            User = lib.mkForce "postgres";
            Group = lib.mkForce "postgres";
            LoadCredential = credentials;
            ExecCondition = isPrimary;
            ExecStartPre = lib.mkForce "${command} --stanza=${cfg.stanza} stanza-create";
            ExecStart = lib.mkForce "${command} --stanza=${cfg.stanza} backup --type=${type}";
          };
        };
      in
      lib.mkMerge [
        {
          # The credentials archive_command reads (PostgreSQL inherits its unit's environment).
          ${lib.removeSuffix ".service" pgUnit}.serviceConfig.LoadCredential = credentials;
        }
        (lib.mkIf remote {
          lemmy-cluster-backup-tls = tlsFiles.unit;
          lemmy-cluster-pgbackrest-server = tlsFiles.server {
            inherit command credentials;
            user = "postgres";
            description = "lemmy-cluster: pgBackRest's TLS server for the backup machine (backups of this machine's data directory)";
            restartTriggers = [ config.environment.etc."pgbackrest/pgbackrest.conf".source ];
          };
          # archive_command reads the TLS files.
          ${lib.removeSuffix ".service" pgUnit} = {
            requires = [ "lemmy-cluster-backup-tls.service" ];
            after = [ "lemmy-cluster-backup-tls.service" ];
          };
        })
        (lib.mkIf (!remote) {
        ${jobUnit "full"} = job "full";
        ${jobUnit "diff"} = job "diff";
        lemmy-cluster-backup-init = {
          description = "lemmy-cluster: pgBackRest stanza and first full backup (on the machine that leads)";
          wantedBy = [ "multi-user.target" ];
          # Again every hour (each step already done is skipped): a machine that was a standby at
          # boot and leads now, or a stanza that the first attempt could not create, is caught up
          # long before the weekly full backup (WAL that cannot be archived stays in pg_wal).
          startAt = "hourly";
          after = [ pgUnit ];
          wants = [ pgUnit ];
          path = [ pkgs.gnugrep ];
          serviceConfig = {
            Type = "oneshot";
            User = "postgres";
            Group = "postgres";
            LoadCredential = credentials;
            ExecCondition = "${isPrimary} --wait 120";
            ExecStart = "${pkgs.bash}/bin/bash ${scripts}/backup-init.sh --stanza ${cfg.stanza} -- ${command}";
            Restart = "on-failure";
            RestartSec = "30s";
          };
        };
        })
      ];
  };
}
