# The S3 server of the `pictrs-shared` VM test: a one-node Garage, run by this project's own storage
# module (services.lemmy-cluster.storage) on the test node `s3`. For synth it is external object
# storage: it is no machine of the test TOML, only its [pictrs] endpoint. (It replaces nixpkgs'
# MinIO, which nixpkgs marks insecure: abandoned upstream; tests/test_nixpkgs_packages.py.)
#
# Garage's setup (lemmy-cluster-garage-setup) gives the node its role in the layout, imports
# pict-rs's S3 key and creates the bucket. The keys are the test secrets that the pict-rs machines
# read too (secrets.nix derives both from the file names s3-access-key and s3-secret-key, in
# Garage's formats); the node key is the TEST-ONLY key of garage-keys.nix (s3-node.nix: its id).
#
# `s3-objects ls` lists the bucket's objects (one key a line), `s3-objects cat KEY` prints one:
# rclone as root, signing with pict-rs's key, read from the secret files at run time.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.lemmy-cluster-test.s3;
  inherit (lib) mkOption types;
  node = import ./s3-node.nix;
  storage = config.services.lemmy-cluster.storage;
  secret = name: "${cfg.secretsDir}/${name}";

  s3-objects = pkgs.writeShellScriptBin "s3-objects" ''
    set -euo pipefail
    RCLONE_S3_ACCESS_KEY_ID=$(cat ${lib.escapeShellArg storage.setup.accessKeyFile})
    RCLONE_S3_SECRET_ACCESS_KEY=$(cat ${lib.escapeShellArg storage.setup.secretKeyFile})
    export RCLONE_S3_ACCESS_KEY_ID RCLONE_S3_SECRET_ACCESS_KEY
    export RCLONE_S3_PROVIDER=Other RCLONE_S3_ENDPOINT=http://127.0.0.1:${toString storage.s3Port}
    export RCLONE_S3_REGION=${lib.escapeShellArg storage.s3Region} RCLONE_S3_FORCE_PATH_STYLE=true
    export RCLONE_CONFIG=/dev/null
    remote=:s3:${lib.escapeShellArg storage.setup.bucket}
    case "''${1:-}" in
    ls) exec ${pkgs.rclone}/bin/rclone lsf --recursive --files-only "$remote" ;;
    cat) exec ${pkgs.rclone}/bin/rclone cat "$remote/$2" ;;
    *)
      echo "usage: s3-objects ls | s3-objects cat KEY" >&2
      exit 2
      ;;
    esac
  '';
in
{
  options.lemmy-cluster-test.s3 = {
    bucket = mkOption {
      type = types.str;
      example = "lemmy-images";
      description = "Bucket created by Garage's setup, with pict-rs's key allowed to it.";
    };
    region = mkOption {
      type = types.str;
      default = "us-east-1";
      description = "Region of Garage's S3 API (the one pict-rs signs its requests for).";
    };
    clients = mkOption {
      type = types.listOf types.str;
      example = [ "192.168.1.5" ];
      description = "Addresses of the pict-rs machines, allowed to the S3 port.";
    };
    secretsDir = mkOption {
      type = types.str;
      default = "/var/lib/lemmy-cluster/secrets";
      description = ''
        Folder of the test secrets on this node. The S3 key files are named s3-access-key and
        s3-secret-key, as on the pict-rs machines, so that both get the same values.
      '';
    };
    domain = mkOption {
      type = types.str;
      description = "The test cluster's domain (services.lemmy-cluster.domain has no default).";
    };
  };

  config = {
    services.lemmy-cluster = {
      enable = true;
      clusterName = "vmtest-s3";
      inherit (cfg) domain;
      privateAddress = config.networking.primaryIPAddress;
      storage = {
        enable = true;
        inherit (node) nodeId;
        nodeKeyFile = secret "garage-node-key";
        rpcSecretFile = secret "garage-rpc-secret";
        replicationFactor = 1;
        s3Region = cfg.region;
        s3Clients = cfg.clients;
        setup = {
          enable = true;
          nodes = [
            {
              id = node.nodeId;
              zone = "s3";
              capacity = "1G";
            }
          ];
          inherit (cfg) bucket;
          accessKeyFile = secret "s3-access-key";
          secretKeyFile = secret "s3-secret-key";
        };
      };
    };

    environment.systemPackages = [ s3-objects ];
  };
}
