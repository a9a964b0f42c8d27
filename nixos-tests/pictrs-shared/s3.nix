# The S3 server of the VM tests whose pict-rs uses object storage (pictrs-shared): nixpkgs' MinIO
# on port 9000, open to the test network, with one bucket created at boot. For synth this is
# external object storage: it is no machine of the test TOML, only its [pictrs] endpoint.
#
# MinIO's root credentials are the S3 keys the pict-rs machines read from their secret files
# (named s3-access-key and s3-secret-key by synth): both sides derive the values from the test
# seed and those names (secret-values.nix), so no value passes through Nix.
#
# `s3-mc ARGS...` runs MinIO's client as root with the alias `local` (this server), e.g.
# `s3-mc ls --recursive local/lemmy-images`.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.lemmy-cluster-test.s3;
  inherit (lib) mkOption types;
  values = import ../secret-values.nix;

  stateDir = "/var/lib/lemmy-cluster-test-s3";
  # An EnvironmentFile (MINIO_ROOT_USER=..., MINIO_ROOT_PASSWORD=...) for minio.service.
  credentialsFile = "${stateDir}/minio-root-credentials";

  s3-mc = pkgs.writeShellScriptBin "s3-mc" ''
    exec ${pkgs.minio-client}/bin/mc --config-dir ${stateDir}/mc "$@"
  '';
in
{
  options.lemmy-cluster-test.s3 = {
    port = mkOption {
      type = types.port;
      default = 9000;
      description = "Port of MinIO's S3 API (opened in the firewall).";
    };
    bucket = mkOption {
      type = types.str;
      example = "lemmy-images";
      description = "Bucket created at boot.";
    };
    region = mkOption {
      type = types.str;
      default = "us-east-1";
      description = "MinIO's region (the one pict-rs signs its requests for).";
    };
    accessKeyName = mkOption {
      type = types.str;
      default = "s3-access-key";
      description = "Name of the secret file holding the access key on the pict-rs machines; MinIO's root user is its value.";
    };
    secretKeyName = mkOption {
      type = types.str;
      default = "s3-secret-key";
      description = "Name of the secret file holding the secret key on the pict-rs machines; MinIO's root password is its value.";
    };
    mcAlias = mkOption {
      type = types.str;
      default = "local";
      readOnly = true;
      description = "Alias of this server for `s3-mc` (set by lemmy-cluster-test-s3-bucket.service).";
    };
  };

  config = {
    services.minio = {
      enable = true;
      listenAddress = ":${toString cfg.port}";
      browser = false;
      inherit (cfg) region;
      # A path outside the store (a string): the file is written at boot, below.
      rootCredentialsFile = credentialsFile;
    };

    networking.firewall.allowedTCPPorts = [ cfg.port ];

    environment.systemPackages = [ s3-mc ];

    systemd.services = {
      # Before minio.service (whose ConditionPathExists skips it without the file) and before
      # minio-root-credentials.path starts watching the file (writing it later would restart
      # MinIO through minio-restart.service). Path units come after sysinit.target, so this runs
      # in early boot, right after the local file systems.
      lemmy-cluster-test-s3-credentials = {
        description = "lemmy-cluster VM test: MinIO's root credentials from the test secrets";
        wantedBy = [ "multi-user.target" ];
        requiredBy = [ "minio.service" ];
        after = [ "local-fs.target" ];
        before = [
          "minio.service"
          "minio-root-credentials.path"
          "shutdown.target"
        ];
        conflicts = [ "shutdown.target" ];
        unitConfig.DefaultDependencies = false;
        path = [ pkgs.coreutils ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          UMask = "0077";
        };
        script = ''
          ${values.shellFunction}
          mkdir -p ${stateDir}
          if [ ! -s ${credentialsFile} ]; then
            {
              printf 'MINIO_ROOT_USER=%s\n' "$(test_secret ${lib.escapeShellArg cfg.accessKeyName})"
              printf 'MINIO_ROOT_PASSWORD=%s\n' "$(test_secret ${lib.escapeShellArg cfg.secretKeyName})"
            } >${credentialsFile}.tmp
            mv ${credentialsFile}.tmp ${credentialsFile}
          fi
        '';
      };

      # The bucket, once MinIO answers (minio.service is Type=simple: started is not ready).
      lemmy-cluster-test-s3-bucket = {
        description = "lemmy-cluster VM test: create the S3 bucket ${cfg.bucket}";
        wantedBy = [ "multi-user.target" ];
        after = [ "minio.service" ];
        requires = [ "minio.service" ];
        path = [
          pkgs.coreutils
          s3-mc
        ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          UMask = "0077";
          EnvironmentFile = credentialsFile;
        };
        # Test-only credentials on mc's command line (visible in ps on this machine).
        script = ''
          for attempt in $(seq 60); do
            if s3-mc alias set ${cfg.mcAlias} http://127.0.0.1:${toString cfg.port} \
                "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" --api S3v4 &&
              s3-mc mb --ignore-existing ${lib.escapeShellArg "${cfg.mcAlias}/${cfg.bucket}"}; then
              exit 0
            fi
            echo "MinIO not ready yet (attempt $attempt of 60)"
            sleep 2
          done
          echo "could not create bucket ${cfg.bucket} on MinIO" >&2
          exit 1
        '';
      };
    };
  };
}
