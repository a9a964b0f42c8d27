# lemmy-cluster storage role: Garage 2, an S3-compatible object store spread over the machines
# with this role, holding pict-rs's images ([pictrs] store = "object_storage" without an
# external endpoint).
#
# Built on nixpkgs' services.garage (garage_2). This module adds what a cluster needs on top:
# - the machine's node key, made by `synth secrets init` (so that every machine's configuration
#   can name its peers' ids in bootstrap_peers), installed from a secret file before Garage
#   starts (scripts/install-node-key.sh);
# - the RPC secret, read by Garage from a systemd credential: neither secret enters the Nix store
#   or /etc/garage.toml;
# - RPC and the S3 API on the private address, each port open only to the machines that need it
#   (RPC: the other storage machines; S3: the pict-rs machines), the admin API (health) on
#   loopback;
# - on one machine (setup.enable), lemmy-cluster-garage-setup: waits for every storage machine,
#   gives each new one its role in the layout, imports pict-rs's key and creates its bucket
#   (scripts/garage-setup.sh); optionally pgBackRest's bucket and key, and a read-only key on
#   pict-rs's bucket for the backup machine's copy of the images.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.storage;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;
  inherit (import ../lib.nix { inherit lib; }) hostPort;
  scripts = ./scripts;
  metadataDir = config.services.garage.settings.metadata_dir;
  credentials = "/run/credentials/garage.service";

  nodeType = types.submodule {
    options = {
      id = mkOption {
        type = types.strMatching "[0-9a-f]{64}";
        description = "Garage node id (hex of the node's public key).";
      };
      zone = mkOption {
        type = types.strMatching "[A-Za-z0-9][A-Za-z0-9_.-]*";
        description = "Zone of the node: Garage puts an object's copies in different zones.";
      };
      capacity = mkOption {
        type = types.strMatching "[1-9][0-9]*(M|G|T|P)(B|iB)?";
        example = "500G";
        description = "Disk space Garage may use on the node; objects are spread in proportion.";
      };
    };
  };
  setupArgs =
    bucket: keyName:
    lib.escapeShellArgs (
      [
        "--bucket"
        bucket
        "--key-name"
        keyName
      ]
      ++ map (n: "${n.id}:${n.zone}:${n.capacity}") cfg.setup.nodes
    );
  setupAll = pkgs.writeShellScript "lemmy-cluster-garage-setup" (
    ''
      set -euo pipefail
      creds=$CREDENTIALS_DIRECTORY
      ${pkgs.bash}/bin/bash ${scripts}/garage-setup.sh ${setupArgs cfg.setup.bucket cfg.setup.keyName} \
        --rpc-secret-file "$creds/rpc-secret" \
        --access-key-file "$creds/s3-access-key" --secret-key-file "$creds/s3-secret-key"
    ''
    + lib.optionalString (cfg.setup.backup != null) ''
      ${pkgs.bash}/bin/bash ${scripts}/garage-setup.sh ${setupArgs cfg.setup.backup.bucket cfg.setup.backup.keyName} \
        --rpc-secret-file "$creds/rpc-secret" \
        --access-key-file "$creds/backup-s3-access-key" --secret-key-file "$creds/backup-s3-secret-key"
    ''
    # after pict-rs's run, which creates the bucket that --read-only requires
    + lib.optionalString (cfg.setup.imagesBackup != null) ''
      ${pkgs.bash}/bin/bash ${scripts}/garage-setup.sh ${setupArgs cfg.setup.bucket cfg.setup.imagesBackup.keyName} \
        --read-only --rpc-secret-file "$creds/rpc-secret" \
        --access-key-file "$creds/images-backup-access-key" --secret-key-file "$creds/images-backup-secret-key"
    ''
  );
in
{
  options.services.lemmy-cluster.storage = {
    enable = lib.mkEnableOption "the storage role of lemmy-cluster (a Garage node)";
    package = mkOption {
      type = types.package;
      default = pkgs.garage_2;
      defaultText = lib.literalExpression "pkgs.garage_2";
      description = ''
        Garage package. lemmy-cluster runs Garage 2: the setup imports pict-rs's key through
        `garage json-api`, which Garage 1 lacks. A major upgrade follows Garage's own procedure.
      '';
    };
    nodeId = mkOption {
      type = types.strMatching "[0-9a-f]{64}";
      description = "This machine's Garage node id, as recorded by `synth secrets init` in cluster.toml.";
    };
    nodeKeyFile = mkOption {
      type = types.str;
      example = "/var/lib/lemmy-cluster/secrets/garage-node-key";
      description = ''
        File holding this machine's node key (base64 of seed and public key, made by
        `synth secrets init`). Installed into Garage's metadata directory before Garage first
        starts; Garage then refuses to start if the key there is another one.
      '';
    };
    rpcSecretFile = mkOption {
      type = types.str;
      example = "/var/lib/lemmy-cluster/secrets/garage-rpc-secret";
      description = "File holding Garage's RPC secret (64 hex digits, the same on every storage machine).";
    };
    replicationFactor = mkOption {
      type = types.ints.positive;
      default = 3;
      description = ''
        Copies of each object (Garage's replication_factor). The same on every storage machine,
        and fixed once the layout is applied: Garage refuses to start with another value.
      '';
    };
    s3Region = mkOption {
      type = types.str;
      default = "us-east-1";
      description = "Region name of the S3 API; pict-rs signs its requests for it.";
    };
    listenAddress = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = "Address of Garage's RPC and S3 API.";
    };
    s3Port = mkOption {
      type = types.port;
      default = 3900;
      description = "Port of the S3 API.";
    };
    rpcPort = mkOption {
      type = types.port;
      default = 3901;
      description = "Port of Garage's RPC between storage machines.";
    };
    adminPort = mkOption {
      type = types.port;
      default = 3903;
      description = "Port of the admin API on 127.0.0.1 (only its unauthenticated /health is used).";
    };
    bootstrapPeers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "0f3c…@10.0.0.42:3901" ];
      description = "The other storage machines as `<node id>@<address>:<rpc port>`.";
    };
    rpcPeers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Addresses of the other storage machines (allowed to the RPC port).";
    };
    s3Clients = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Addresses of the pict-rs machines (allowed to the S3 port).";
    };
    setup = {
      enable = lib.mkEnableOption "the one-time setup of the cluster's layout, key and bucket (on one storage machine)";
      nodes = mkOption {
        type = types.listOf nodeType;
        default = [ ];
        description = "Every storage machine of the cluster (this one included).";
      };
      bucket = mkOption {
        type = types.str;
        default = "pictrs";
        description = "Bucket of pict-rs's images.";
      };
      keyName = mkOption {
        type = types.str;
        default = "pictrs";
        description = "Name of pict-rs's key in Garage.";
      };
      accessKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "File holding pict-rs's access key id (GK and 24 hex digits).";
      };
      secretKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "File holding pict-rs's secret key (64 hex digits).";
      };
      backup = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              bucket = mkOption {
                type = types.str;
                description = "Bucket of pgBackRest's repository (the backup role's).";
              };
              keyName = mkOption {
                type = types.str;
                default = "pgbackrest";
                description = "Name of pgBackRest's key in Garage.";
              };
              accessKeyFile = mkOption {
                type = types.str;
                description = "File holding pgBackRest's access key id (GK and 24 hex digits).";
              };
              secretKeyFile = mkOption {
                type = types.str;
                description = "File holding pgBackRest's secret key (64 hex digits).";
              };
            };
          }
        );
        default = null;
        description = ''
          A second bucket and key, for the database backups ([backup] repository = "s3"): only
          pgBackRest's key can read them, and pict-rs's key cannot delete them.
        '';
      };
      imagesBackup = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              keyName = mkOption {
                type = types.str;
                default = "images-backup";
                description = "Name of the backup machine's read-only key in Garage.";
              };
              accessKeyFile = mkOption {
                type = types.str;
                description = "File holding the read-only key's access key id (GK and 24 hex digits).";
              };
              secretKeyFile = mkOption {
                type = types.str;
                description = "File holding the read-only key's secret key (64 hex digits).";
              };
            };
          }
        );
        default = null;
        description = ''
          A read-only key on pict-rs's bucket for the backup machine's copy of the images: it may
          read and list the bucket (setup.bucket), never write or delete, so that a stolen backup
          key cannot purge the images. Any write or owner permission the key has on the bucket is
          denied at each run of the setup.
        '';
      };
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = lib.versions.major cfg.package.version == "2";
        message = "services.lemmy-cluster.storage.package is Garage ${cfg.package.version}; lemmy-cluster runs Garage 2 (pkgs.garage_2).";
      }
      {
        assertion = lib.all (f: !(lib.hasPrefix "/nix/store" f)) [
          cfg.nodeKeyFile
          cfg.rpcSecretFile
        ];
        message = "services.lemmy-cluster.storage: nodeKeyFile and rpcSecretFile must not point into the world-readable Nix store.";
      }
      {
        assertion =
          cfg.setup.imagesBackup == null
          || lib.all (f: !(lib.hasPrefix "/nix/store" f)) [
            cfg.setup.imagesBackup.accessKeyFile
            cfg.setup.imagesBackup.secretKeyFile
          ];
        message = "services.lemmy-cluster.storage.setup.imagesBackup: accessKeyFile and secretKeyFile must not point into the world-readable Nix store.";
      }
      {
        assertion = !cfg.setup.enable || (cfg.setup.accessKeyFile != null && cfg.setup.secretKeyFile != null);
        message = "services.lemmy-cluster.storage.setup needs accessKeyFile and secretKeyFile (pict-rs's S3 key).";
      }
      {
        assertion = !cfg.setup.enable || lib.any (n: n.id == cfg.nodeId) cfg.setup.nodes;
        message = "services.lemmy-cluster.storage.setup.nodes must list this machine (${cfg.nodeId}) too.";
      }
      {
        assertion = !cfg.setup.enable || cfg.replicationFactor <= lib.length cfg.setup.nodes;
        message = "services.lemmy-cluster.storage.replicationFactor (${toString cfg.replicationFactor}) is larger than the number of storage machines in setup.nodes; Garage cannot apply such a layout.";
      }
    ];

    services.garage = {
      enable = true;
      inherit (cfg) package;
      settings = {
        # nixpkgs' defaults, spelled out because the node key goes into the metadata directory
        # (both on the state directory that the garage unit creates for its dynamic user).
        metadata_dir = lib.mkDefault "/var/lib/garage/meta";
        data_dir = lib.mkDefault "/var/lib/garage/data";
        replication_factor = cfg.replicationFactor;
        consistency_mode = "consistent";
        db_engine = "lmdb";
        rpc_bind_addr = hostPort cfg.listenAddress cfg.rpcPort;
        rpc_public_addr = hostPort cfg.listenAddress cfg.rpcPort;
        # A systemd credential: Garage reads it itself, the garage CLI of root reads it while Garage
        # runs. systemd gives the service's user access to a credential through an ACL, which
        # shows as a group bit (mode 0440), and Garage refuses secret files with any group or
        # other bit unless this is set; the credential directory itself is private to the service.
        rpc_secret_file = "${credentials}/rpc-secret";
        allow_world_readable_secrets = true;
        bootstrap_peers = cfg.bootstrapPeers;
        s3_api = {
          api_bind_addr = hostPort cfg.listenAddress cfg.s3Port;
          s3_region = cfg.s3Region;
          # no root_domain: path-style requests only, which is what pict-rs sends here
        };
        admin.api_bind_addr = hostPort "127.0.0.1" cfg.adminPort;
      };
    };

    systemd.services.garage = {
      path = [ pkgs.coreutils ];
      serviceConfig = {
        LoadCredential = [
          "rpc-secret:${cfg.rpcSecretFile}"
          "node-key:${cfg.nodeKeyFile}"
        ];
        ExecStartPre = [
          "${pkgs.bash}/bin/bash ${scripts}/install-node-key.sh ${
            lib.escapeShellArgs [
              metadataDir
              cfg.nodeId
            ]
          } %d/node-key"
        ];
        Restart = "on-failure";
        RestartSec = "5s";
      };
    };

    systemd.services.lemmy-cluster-garage-setup = lib.mkIf cfg.setup.enable {
      description = "lemmy-cluster: Garage layout, pict-rs's key and bucket";
      wantedBy = [ "multi-user.target" ];
      requires = [ "garage.service" ];
      after = [ "garage.service" ];
      path = [
        cfg.package
        pkgs.jq
        pkgs.gawk
        pkgs.gnused
        pkgs.coreutils
      ];
      # Waits for the other storage machines, which may be deployed after this one: a simple
      # service, so that nixos-rebuild does not wait for it; it stays active once done.
      serviceConfig = {
        Type = "simple";
        RemainAfterExit = true;
        Restart = "on-failure";
        RestartSec = "30s";
        LoadCredential = [
          "rpc-secret:${cfg.rpcSecretFile}"
          "s3-access-key:${cfg.setup.accessKeyFile}"
          "s3-secret-key:${cfg.setup.secretKeyFile}"
        ]
        ++ lib.optionals (cfg.setup.backup != null) [
          "backup-s3-access-key:${cfg.setup.backup.accessKeyFile}"
          "backup-s3-secret-key:${cfg.setup.backup.secretKeyFile}"
        ]
        ++ lib.optionals (cfg.setup.imagesBackup != null) [
          "images-backup-access-key:${cfg.setup.imagesBackup.accessKeyFile}"
          "images-backup-secret-key:${cfg.setup.imagesBackup.secretKeyFile}"
        ];
        # pict-rs's key and bucket, then (with the backups' bucket) pgBackRest's, then (with
        # imagesBackup) the backup machine's read-only key on pict-rs's bucket: the same script
        # once more each time, after the first run (every step already done is skipped).
        ExecStart = "${setupAll}";
      };
    };

    services.lemmy-cluster.firewall.allow = [
      {
        port = cfg.rpcPort;
        from = cfg.rpcPeers;
        description = "Garage RPC";
      }
      {
        port = cfg.s3Port;
        from = cfg.s3Clients;
        description = "Garage S3 API";
      }
    ];
  };
}
