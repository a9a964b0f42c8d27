# lemmy-cluster backup machine (role "backup"): pgBackRest's repository host.
#
# The repository is a folder here (path), written by pgBackRest as its own user, encrypted with
# the cluster's passphrase. The postgres machines reach it over TLS through this machine's
# pgBackRest server (archive-push, restore, info: only their certificates, signed by the cluster's
# backup CA, are let in); this machine takes the scheduled full and differential backups from
# whichever postgres machine is the primary (pgBackRest asks each one, through its own server),
# and at its first start, once a primary answers, creates the stanza and a first full backup.
# With pict-rs's object storage (images.enable) it also copies pict-rs's bucket into
# <path>/pictrs-bucket every six hours with a read-only key (./scripts/bucket-backup.sh: rclone
# sync; objects deleted from the bucket or replaced are moved into deleted/<time>, kept keepDays).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.backupRepository;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;
  scripts = ./scripts;
  user = "pgbackrest";

  pgbackrest = import ./wrapper.nix {
    inherit lib pkgs;
    inherit (cfg) cipherPassFile;
    runAs = user;
  };
  wrapper = pgbackrest.package;
  inherit (pgbackrest) command credentials;

  tlsFiles = import ./tls-files.nix {
    inherit lib pkgs;
    inherit (cfg) tls;
    owner = user;
  };
  evaluated = import ./repository-settings.nix {
    inherit cfg;
    tls = tlsFiles.paths // {
      inherit (cfg) listenAddress;
    };
  };
  jobUnit = job: "pgbackrest-${cfg.stanza}-${job}";
  imagesFolder = "pictrs-bucket";
  needsTls = {
    requires = [ "lemmy-cluster-backup-tls.service" ];
    after = [
      "lemmy-cluster-backup-tls.service"
      "network-online.target"
    ];
    wants = [ "network-online.target" ];
  };
in
{
  options.services.lemmy-cluster.backupRepository = {
    enable = lib.mkEnableOption "the cluster's pgBackRest repository on this machine (role backup)";
    stanza = mkOption {
      type = types.strMatching "[a-z0-9_-]{1,63}";
      default = "lemmy";
      description = "pgBackRest's stanza: the name of the database cluster in the repository.";
    };
    path = mkOption {
      type = types.str;
      default = "/var/lib/pgbackrest";
      description = "The repository's folder (pgBackRest's user owns it).";
    };
    listenAddress = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = "Where pgBackRest's TLS server listens.";
    };
    tlsPort = mkOption {
      type = types.port;
      default = 8432;
      description = "The port of pgBackRest's TLS servers (here and on the postgres machines).";
    };
    tls = import ./tls-options.nix { inherit lib; };
    databases = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            name = mkOption {
              type = types.str;
              description = "The postgres machine's name (the common name of its certificate).";
            };
            address = mkOption {
              type = types.str;
              description = "Its private address (its pgBackRest server).";
            };
            dataDir = mkOption {
              type = types.str;
              description = "Its data directory.";
            };
            socketDir = mkOption {
              type = types.str;
              default = "/run/postgresql";
              description = "Its PostgreSQL socket folder.";
            };
            port = mkOption {
              type = types.port;
              default = 5432;
              description = "Its PostgreSQL port.";
            };
          };
        }
      );
      description = "The postgres machines, every one: the backups are taken from the one that is the primary.";
    };
    inherit (import ./job-options.nix { inherit lib; }) retention schedule;
    cipherPassFile = mkOption {
      type = types.str;
      description = "File holding the repository's encryption passphrase (read at run time, never in the store).";
    };
    images = {
      enable = lib.mkEnableOption "the copy of pict-rs's bucket into <path>/pictrs-bucket";
      endpoint = mkOption {
        type = types.str;
        example = "http://10.0.0.40:3900";
        description = "The S3 endpoint of pict-rs's bucket (Garage's S3 API, or the provider's).";
      };
      region = mkOption {
        type = types.str;
        default = "garage";
        description = "The bucket's region.";
      };
      bucket = mkOption {
        type = types.str;
        description = "pict-rs's bucket.";
      };
      pathStyle = mkOption {
        type = types.bool;
        default = true;
        description = "Path-style requests (Garage, MinIO).";
      };
      accessKeyFile = mkOption {
        type = types.str;
        description = "File holding the access key id of a key that can only read the bucket.";
      };
      secretKeyFile = mkOption {
        type = types.str;
        description = "File holding its secret key.";
      };
      schedule = mkOption {
        type = types.str;
        default = "*-*-* 00/6:30:00";
        description = "When the copy runs (systemd OnCalendar).";
      };
      keepDays = mkOption {
        type = types.ints.unsigned;
        default = 21;
        description = "Days an object deleted from the bucket (or replaced) stays in the copy's deleted/ folders; 0: forever.";
      };
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = lib.all (f: f != null) (lib.attrValues cfg.tls);
        message = "services.lemmy-cluster.backupRepository needs tls.caFile, tls.certFile and tls.keyFile (`synth secrets init` makes them).";
      }
      {
        assertion = cfg.databases != [ ];
        message = "services.lemmy-cluster.backupRepository.databases: name the postgres machines to back up.";
      }
      {
        assertion = lib.all (f: f == null || !(lib.hasPrefix "/nix/store" f)) (
          [ cfg.cipherPassFile ]
          ++ lib.attrValues cfg.tls
          ++ lib.optionals cfg.images.enable [
            cfg.images.accessKeyFile
            cfg.images.secretKeyFile
          ]
        );
        message = "services.lemmy-cluster.backupRepository: a secret file points into the Nix store, which is world-readable; keep secrets in root-owned files outside it.";
      }
      {
        assertion = !(top.postgres.enable or false) && !(top.backup.enable or false);
        message = "services.lemmy-cluster.backupRepository: this machine runs PostgreSQL too; keep the repository on a machine of its own (losing it would lose both).";
      }
    ];

    services.pgbackrest = {
      enable = true;
      settings = evaluated.global;
      # "localhost": nixpkgs sets no repo-host (the repository is here) and makes path the home
      # of its pgbackrest user.
      repos.localhost = evaluated.repo;
      commands.server = evaluated.server;
      stanzas.${cfg.stanza} = {
        instances = evaluated.instances;
        jobs = {
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

    environment.systemPackages = [ wrapper ];

    services.lemmy-cluster.firewall.allow = [
      {
        port = cfg.tlsPort;
        from = map (db: db.address) cfg.databases;
        description = "pgBackRest repository (the postgres machines)";
      }
    ];

    systemd.services =
      let
        # nixpkgs' jobs without the passphrase; here through the wrapper (credentials).
        job = type: {
          inherit (needsTls) requires after wants;
          serviceConfig = {
            LoadCredential = credentials;
            ExecStartPre = lib.mkForce "${command} --stanza=${cfg.stanza} stanza-create";
            ExecStart = lib.mkForce "${command} --stanza=${cfg.stanza} backup --type=${type}";
          };
        };
      in
      {
        lemmy-cluster-backup-tls = tlsFiles.unit;
        lemmy-cluster-pgbackrest-server = tlsFiles.server {
          inherit command credentials user;
          description = "lemmy-cluster: pgBackRest's TLS server (the repository, for the postgres machines)";
          restartTriggers = [ config.environment.etc."pgbackrest/pgbackrest.conf".source ];
        };
        ${jobUnit "full"} = job "full";
        ${jobUnit "diff"} = job "diff";
        lemmy-cluster-images-backup = lib.mkIf cfg.images.enable {
          description = "lemmy-cluster: copy pict-rs's bucket into ${cfg.path}/${imagesFolder} (read-only key)";
          startAt = cfg.images.schedule;
          after = [ "network-online.target" ];
          wants = [ "network-online.target" ];
          serviceConfig = {
            Type = "oneshot";
            User = user;
            Group = user;
            LoadCredential = [
              "images-backup-access-key:${cfg.images.accessKeyFile}"
              "images-backup-secret-key:${cfg.images.secretKeyFile}"
            ];
            ExecStart = "${pkgs.bash}/bin/bash ${scripts}/bucket-backup.sh ${
              lib.escapeShellArgs (
                [
                  "--endpoint"
                  cfg.images.endpoint
                  "--region"
                  cfg.images.region
                  "--bucket"
                  cfg.images.bucket
                  "--dest"
                  "${cfg.path}/${imagesFolder}"
                  "--keep-days"
                  (toString cfg.images.keepDays)
                  "--access-key-file"
                  cfg.images.accessKeyFile
                  "--secret-key-file"
                  cfg.images.secretKeyFile
                  "--rclone"
                  (lib.getExe pkgs.rclone)
                ]
                ++ lib.optional cfg.images.pathStyle "--path-style"
              )
            }";
          };
          # What the script calls besides rclone (GNU date, find -printf, awk).
          path = [
            pkgs.coreutils
            pkgs.findutils
            pkgs.gawk
          ];
        };
        lemmy-cluster-backup-init = needsTls // {
          description = "lemmy-cluster: pgBackRest stanza and first full backup (from the primary)";
          wantedBy = [ "multi-user.target" ];
          # Again every hour (each step already done is skipped), and after a failure every 30 s:
          # the postgres machines may come up after this one.
          startAt = "hourly";
          path = [ pkgs.gnugrep ];
          serviceConfig = {
            Type = "oneshot";
            User = user;
            Group = user;
            LoadCredential = credentials;
            ExecStart = "${pkgs.bash}/bin/bash ${scripts}/backup-init.sh --stanza ${cfg.stanza} -- ${command}";
            Restart = "on-failure";
            RestartSec = "30s";
          };
        };
      };
  };
}
