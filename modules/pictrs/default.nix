# lemmy-cluster pict-rs role: the image server behind Lemmy's /pictrs routes.
#
# Built on nixpkgs' services.pict-rs. Two stores:
# - local (default): sled repository and files under /var/lib/pict-rs: one pict-rs machine.
# - object_storage: pict-rs 0.5's Postgres repository (a database on the cluster's PostgreSQL)
#   and an S3-compatible bucket, shared by any number of pict-rs machines; each keeps only its
#   temporary files.
# This module binds pict-rs to the private address, gives it the API key that the backend shares
# and, for object storage, the repository URL and S3 keys (all read from files at start, never in
# the Nix store), and opens its port only to the backends. Clients never talk to pict-rs
# directly: the Lemmy backend checks who uploads and proxies /pictrs to it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.pictrs;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;
  shared = cfg.store == "object_storage";
  inherit (import ../lib.nix { inherit lib; }) hostPort;
in
{
  options.services.lemmy-cluster.pictrs = {
    enable = lib.mkEnableOption "the pict-rs role of lemmy-cluster";
    listenAddress = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = "Address pict-rs listens on (IPv4 or IPv6).";
    };
    port = mkOption {
      type = types.port;
      default = 8080;
      description = "Port pict-rs listens on.";
    };
    apiKeyFile = mkOption {
      type = types.str;
      example = "/var/lib/lemmy-cluster/secrets/pictrs-api-key";
      description = ''
        Path of a file holding the pict-rs API key, the same key as the backend's
        `pictrsApiKeyFile`. Read at service start through systemd's LoadCredential, so it may be
        owned by root with mode 0400; it never enters the Nix store.
      '';
    };
    allowedClients = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.20" ];
      description = "Addresses of the backends allowed to reach pict-rs (firewall).";
    };
    store = mkOption {
      type = types.enum [
        "local"
        "object_storage"
      ];
      default = "local";
      description = "`local`: sled and files on this machine; `object_storage`: Postgres repository and S3 bucket (several machines).";
    };
    repo = {
      host = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.30";
        description = "PostgreSQL primary holding pict-rs's repository (store = object_storage).";
      };
      port = mkOption {
        type = types.port;
        default = 5432;
        description = "PostgreSQL port.";
      };
      name = mkOption {
        type = types.str;
        default = "pictrs";
        description = "Database of pict-rs's repository.";
      };
      user = mkOption {
        type = types.str;
        default = "pictrs";
        description = "Database role of pict-rs.";
      };
      passwordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "File holding the role's password (read at start).";
      };
    };
    objectStorage = {
      endpoint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://s3.example.org";
        description = "S3-compatible endpoint URL.";
      };
      bucket = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Bucket holding the images.";
      };
      region = mkOption {
        type = types.str;
        default = "us-east-1";
        description = "S3 region (any value for most self-hosted stores).";
      };
      usePathStyle = mkOption {
        type = types.bool;
        default = false;
        description = "Path-style bucket addressing (endpoint/bucket/key), as MinIO and Garage prefer.";
      };
      accessKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "File holding the S3 access key id.";
      };
      secretKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "File holding the S3 secret key.";
      };
    };
    s3Upstreams = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "10.0.0.41:3900"
        "10.0.0.42:3900"
      ];
      description = ''
        The S3 APIs of the cluster's storage machines (Garage). When set, nginx on this machine
        balances them on 127.0.0.1 at `s3ProxyPort`, which is then pict-rs's endpoint
        (`objectStorage.endpoint`), so that pict-rs keeps working while a storage machine is down.
      '';
    };
    s3ProxyPort = mkOption {
      type = types.port;
      default = 3909;
      description = "Loopback port of the S3 balancer (with s3Upstreams).";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion =
          !shared
          || lib.all (v: v != null) [
            cfg.repo.host
            cfg.repo.passwordFile
            cfg.objectStorage.endpoint
            cfg.objectStorage.bucket
            cfg.objectStorage.accessKeyFile
            cfg.objectStorage.secretKeyFile
          ];
        message = "services.lemmy-cluster.pictrs.store = \"object_storage\" needs repo.host, repo.passwordFile, objectStorage.endpoint, .bucket, .accessKeyFile and .secretKeyFile.";
      }
      {
        assertion =
          cfg.s3Upstreams == [ ]
          || cfg.objectStorage.endpoint == "http://127.0.0.1:${toString cfg.s3ProxyPort}";
        message = "services.lemmy-cluster.pictrs.s3Upstreams is set, so pict-rs must use the local S3 balancer: set objectStorage.endpoint to \"http://127.0.0.1:${toString cfg.s3ProxyPort}\".";
      }
      {
        # s3-balancer.conf rebuilds the Host header pict-rs signed as $host:$server_port.
        assertion = cfg.s3Upstreams == [ ] || cfg.s3ProxyPort != 80;
        message = "services.lemmy-cluster.pictrs.s3ProxyPort is 80: pict-rs then signs its S3 requests for the Host 127.0.0.1 without a port, but the S3 balancer sends 127.0.0.1:80 on, so Garage refuses every signature. Pick another port (the default is 3909).";
      }
      {
        assertion = !(lib.hasPrefix "/nix/store" cfg.apiKeyFile);
        message = "services.lemmy-cluster.pictrs.apiKeyFile points into the Nix store, which is world-readable; keep the key in a root-owned file outside it.";
      }
    ];

    services.pict-rs = {
      enable = true;
      address = cfg.listenAddress;
      inherit (cfg) port;
    };

    systemd.services.pict-rs = {
      after = [
        "network-online.target"
      ]
      ++ lib.optional (cfg.s3Upstreams != [ ]) "nginx.service"
      # The repository through the local proxy to the PostgreSQL leader (pgProxy).
      ++ lib.optional config.services.lemmy-cluster.pgProxy.enable "haproxy.service";
      wants = [ "network-online.target" ];
      path = lib.optional shared pkgs.jq;
      environment = lib.mkMerge [
        {
          # nixpkgs' module writes "address:port", which pict-rs cannot parse for an IPv6
          # address; the bracketed form works for both.
          PICTRS__SERVER__ADDRESS = lib.mkForce (hostPort cfg.listenAddress cfg.port);
        }
        (lib.mkIf shared {
          # nixpkgs' module always sets the sled and file paths; drop them (null = unset).
          PICTRS__REPO__PATH = lib.mkForce null;
          PICTRS__STORE__PATH = lib.mkForce null;
          PICTRS__REPO__TYPE = "postgres";
          PICTRS__STORE__TYPE = "object_storage";
          PICTRS__STORE__ENDPOINT = cfg.objectStorage.endpoint;
          PICTRS__STORE__BUCKET_NAME = cfg.objectStorage.bucket;
          PICTRS__STORE__REGION = cfg.objectStorage.region;
          PICTRS__STORE__USE_PATH_STYLE = lib.boolToString cfg.objectStorage.usePathStyle;
        })
      ];
      serviceConfig = {
        LoadCredential = [
          "api-key:${cfg.apiKeyFile}"
        ]
        ++ lib.optionals shared [
          "db-password:${cfg.repo.passwordFile}"
          "s3-access-key:${cfg.objectStorage.accessKeyFile}"
          "s3-secret-key:${cfg.objectStorage.secretKeyFile}"
        ];
        # Secrets become environment variables only inside the service's own process.
        ExecStart = lib.mkForce (
          pkgs.writeShellScript "pict-rs-with-secrets" (
            ''
              # A secret is its file's content without one trailing newline (as everywhere in
              # lemmy-cluster); $(<file) alone would drop every trailing newline.
              read_secret() {
                local v
                v=$(cat "$CREDENTIALS_DIRECTORY/$2"; printf x)
                v=''${v%x}
                printf -v "$1" '%s' "''${v%$'\n'}"
              }
              read_secret PICTRS__SERVER__API_KEY api-key
              export PICTRS__SERVER__API_KEY
            ''
            + lib.optionalString shared ''
              password="$(jq -rn --rawfile p "$CREDENTIALS_DIRECTORY/db-password" '$p | rtrimstr("\n") | @uri')"
              PICTRS__REPO__URL="postgres://${cfg.repo.user}:$password@${hostPort cfg.repo.host cfg.repo.port}/${cfg.repo.name}"
              read_secret PICTRS__STORE__ACCESS_KEY s3-access-key
              read_secret PICTRS__STORE__SECRET_KEY s3-secret-key
              export PICTRS__REPO__URL PICTRS__STORE__ACCESS_KEY PICTRS__STORE__SECRET_KEY
              unset password
            ''
            + ''
              exec ${lib.getBin config.services.pict-rs.package}/bin/pict-rs run
            ''
          )
        );
        Restart = "on-failure";
        RestartSec = "5s";
      };
    };

    services.nginx = lib.mkIf (cfg.s3Upstreams != [ ]) {
      enable = true;
      upstreams.lemmy_garage_s3 = {
        servers = lib.genAttrs cfg.s3Upstreams (_: {
          max_fails = 3;
          fail_timeout = "10s";
        });
        # Idle connections are dropped after 4 s: one kept open to a storage machine that then
        # crashed would hold a request until proxy_read_timeout.
        extraConfig = ''
          zone lemmy_garage_s3 64k;
          keepalive 16;
          keepalive_timeout 4s;
        '';
      };
      virtualHosts.lemmy-cluster-s3 = {
        serverName = "lemmy-cluster-s3";
        listen = [
          {
            addr = "127.0.0.1";
            port = cfg.s3ProxyPort;
          }
        ];
        extraConfig = "include ${./s3-balancer.conf};";
      };
    };

    services.lemmy-cluster.firewall.allow = [
      {
        inherit (cfg) port;
        from = cfg.allowedClients;
        description = "pict-rs";
      }
    ];
  };
}
