# lemmy-cluster backend role: lemmy_server on its own unit.
#
# nixpkgs' services.lemmy is single-host by construction (loopback addresses, lemmy-ui requires
# the backend unit, pict-rs forced on), so this module runs `pkgs.lemmy-server` itself. The config
# file is built at start from a secret-free template in the Nix store plus secret files read
# through systemd's LoadCredential, into /run/lemmy/config.hjson (mode 0600, the dynamic user's).
#
# Horizontal-scaling switches of Lemmy 0.19 (environment variables since 0.19.4) are set
# explicitly: exactly one backend of a cluster runs the scheduled tasks, and the outgoing
# federation shards 1..count are each run once.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.backend;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;

  inherit (import ../lib.nix { inherit lib; }) hostPort;

  # Everything Lemmy needs except the secrets (added by write-config.sh at start).
  template = {
    hostname = top.domain;
    bind = cfg.listenAddress;
    inherit (cfg) port;
    tls_enabled = cfg.tlsEnabled;
    database.pool_size = cfg.database.poolSize;
    pictrs.url = cfg.pictrsUrl;
    setup = {
      admin_username = cfg.setup.adminUsername;
      admin_email = cfg.setup.adminEmail;
      site_name = cfg.setup.siteName;
    };
  };
  templateFile = pkgs.writeText "lemmy-config-template.json" (builtins.toJSON template);

  dbHosts = lib.concatMapStringsSep "," (h: hostPort h cfg.database.port) cfg.database.hosts;
  # With several PostgreSQL hosts the driver tries them in order and keeps the one that accepts
  # writes, so the backend follows a promoted replica without a redeploy.
  # A dead host (a crashed primary drops packets) must not hang a new connection for minutes.
  dbParams = lib.concatStringsSep "&" (
    [ "connect_timeout=${toString cfg.database.connectTimeout}" ]
    ++ lib.optional (lib.length cfg.database.hosts > 1) "target_session_attrs=read-write"
  );

  sending = cfg.federation.sending;

  # lemmy_server and (with sending = "dedicated") the lemmy-federate process share everything
  # but their switches and their runtime folder.
  lemmyUnit =
    {
      description,
      runtimeDirectory,
      switches,
    }:
    {
      inherit description;
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      path = [ pkgs.jq ];
      environment = {
        LEMMY_CONFIG_LOCATION = "/run/${runtimeDirectory}/config.hjson";
        LEMMY_CLUSTER_DB_USER = cfg.database.user;
        LEMMY_CLUSTER_DB_HOSTS = dbHosts;
        LEMMY_CLUSTER_DB_NAME = cfg.database.name;
        LEMMY_CLUSTER_DB_PARAMS = dbParams;
      }
      // switches;
      serviceConfig = {
        DynamicUser = true;
        RuntimeDirectory = runtimeDirectory;
        RuntimeDirectoryMode = "0700";
        LoadCredential = [
          "db-password:${cfg.database.passwordFile}"
          "pictrs-api-key:${cfg.pictrsApiKeyFile}"
          "admin-password:${cfg.setup.adminPasswordFile}"
        ];
        ExecStartPre = "${pkgs.bash}/bin/bash ${./write-config.sh} ${templateFile} /run/${runtimeDirectory}/config.hjson %d";
        ExecStart = "${lib.getBin cfg.package}/bin/lemmy_server";
        Restart = "on-failure";
        RestartSec = "5s";
        PrivateTmp = true;
        NoNewPrivileges = true;
        MemoryDenyWriteExecute = true;
        ProtectSystem = "strict";
        ProtectHome = true;
      };
    };

  shard = {
    LEMMY_FEDERATE_PROCESS_INDEX = toString cfg.federation.index;
    LEMMY_FEDERATE_PROCESS_COUNT = toString cfg.federation.count;
  };
  # Lemmy's switches are clap flags read from the environment: set only the ones that are on.
  on = name: { ${name} = "true"; };
in
{
  options.services.lemmy-cluster.backend = {
    enable = lib.mkEnableOption "the Lemmy backend role of lemmy-cluster";
    package = lib.mkPackageOption pkgs "lemmy-server" { };
    listenAddress = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = "Address lemmy_server listens on.";
    };
    port = mkOption {
      type = types.port;
      default = 8536;
      description = "Port lemmy_server listens on.";
    };
    tlsEnabled = mkOption {
      type = types.bool;
      default = true;
      description = "Lemmy's `tls_enabled`: generate https:// URLs (needed for federation).";
    };
    database = {
      hosts = mkOption {
        type = types.nonEmptyListOf types.str;
        example = [ "10.0.0.30" ];
        description = ''
          PostgreSQL server addresses. One: the primary. Several: every PostgreSQL machine, and
          the connection goes to the one that accepts writes (`target_session_attrs=read-write`).
        '';
      };
      port = mkOption {
        type = types.port;
        default = 5432;
        description = "PostgreSQL port.";
      };
      name = mkOption {
        type = types.str;
        default = "lemmy";
        description = "Database name.";
      };
      user = mkOption {
        type = types.str;
        default = "lemmy";
        description = "Database role.";
      };
      passwordFile = mkOption {
        type = types.str;
        example = "/var/lib/lemmy-cluster/secrets/lemmy-db-password";
        description = "File holding the database role's password (read at start; never in the store).";
      };
      connectTimeout = mkOption {
        type = types.ints.positive;
        default = 10;
        description = "Seconds to wait for a PostgreSQL host before trying the next one.";
      };
      poolSize = mkOption {
        type = types.ints.between 2 1000;
        default = 30;
        description = "Connections in this backend's pool (the sum over backends must fit max_connections).";
      };
    };
    pictrsUrl = mkOption {
      type = types.str;
      example = "http://10.0.0.20:8080/";
      description = "URL of pict-rs.";
    };
    pictrsUpstreams = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "10.0.0.41:8080"
        "10.0.0.42:8080"
      ];
      description = ''
        Several pict-rs machines (sharing object storage) as address:port. When set, nginx on this
        machine balances them on 127.0.0.1:pictrsProxyPort (with passive health checks), and
        pictrsUrl should point there: Lemmy takes a single pict-rs URL.
      '';
    };
    pictrsProxyPort = mkOption {
      type = types.port;
      default = 8079;
      description = "Loopback port of the pict-rs load balancer (with pictrsUpstreams).";
    };
    pictrsApiKeyFile = mkOption {
      type = types.str;
      description = "File holding the pict-rs API key (the same file content as pict-rs's).";
    };
    setup = {
      adminUsername = mkOption {
        type = types.str;
        default = "admin";
        description = "Name of the admin account created at first start.";
      };
      adminEmail = mkOption {
        type = types.str;
        description = "Email address of the admin account.";
      };
      adminPasswordFile = mkOption {
        type = types.str;
        description = "File holding the admin account's password (10 to 60 characters), used at first start.";
      };
      siteName = mkOption {
        type = types.str;
        description = "Name of the site, set at first start (1 to 20 characters).";
      };
    };
    scheduledTasks = mkOption {
      type = types.bool;
      default = true;
      description = "Run Lemmy's scheduled tasks here. Exactly one backend of a cluster must.";
    };
    federation = {
      sending = mkOption {
        type = types.enum [
          "inline"
          "dedicated"
          "off"
        ];
        default = "inline";
        description = ''
          Outgoing federation on this machine: `inline` in lemmy_server, `dedicated` in a second
          process (lemmy-federate.service: no HTTP server, no scheduled tasks), or `off` (another
          backend sends). Every shard index of the cluster must be sent by exactly one machine.
        '';
      };
      index = mkOption {
        type = types.ints.unsigned;
        default = 1;
        description = "This machine's outgoing-federation shard (1..count) when it sends.";
      };
      count = mkOption {
        type = types.ints.positive;
        default = 1;
        description = "Number of outgoing-federation shards in the cluster.";
      };
    };
    allowedClients = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.10" ];
      description = "Addresses of the frontends allowed to reach the backend port (firewall).";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = sending == "off" || (cfg.federation.index >= 1 && cfg.federation.index <= cfg.federation.count);
        message = "services.lemmy-cluster.backend.federation.index (${toString cfg.federation.index}) must be between 1 and federation.count (${toString cfg.federation.count}) on a machine that sends.";
      }
      {
        assertion = lib.all (f: !(lib.hasPrefix "/nix/store" f)) [
          cfg.database.passwordFile
          cfg.pictrsApiKeyFile
          cfg.setup.adminPasswordFile
        ];
        message = "services.lemmy-cluster.backend: a secret file points into the Nix store, which is world-readable; keep secrets in root-owned files outside it.";
      }
      {
        # The pinned Lemmy major: the config file shape, the LEMMY_* switches (from 0.19.4) and
        # /api/v3 that this module and the tests rely on.
        assertion =
          lib.versions.majorMinor cfg.package.version == "0.19" && lib.versionAtLeast cfg.package.version "0.19.4";
        message = "services.lemmy-cluster.backend: lemmy-cluster supports Lemmy 0.19.4 to 0.19.x, but backend.package is ${cfg.package.version}. Use the flake's nixpkgs (NixOS 26.05) or set backend.package to a Lemmy 0.19 build.";
      }
      {
        assertion = !config.services.lemmy.enable;
        message = "services.lemmy-cluster.backend and nixpkgs' services.lemmy both run lemmy_server; disable services.lemmy on this machine.";
      }
    ];

    systemd.services = {
      lemmy = lemmyUnit {
        description = "Lemmy backend (lemmy-cluster ${top.clusterName})";
        runtimeDirectory = "lemmy";
        switches =
          lib.optionalAttrs (!cfg.scheduledTasks) (on "LEMMY_DISABLE_SCHEDULED_TASKS")
          // (if sending == "inline" then shard else on "LEMMY_DISABLE_ACTIVITY_SENDING");
      };
    }
    // lib.optionalAttrs (sending == "dedicated") {
      # Outgoing federation in its own process: no HTTP server, no scheduled tasks, one shard.
      lemmy-federate = lemmyUnit {
        description = "Lemmy federation sender, shard ${toString cfg.federation.index}/${toString cfg.federation.count} (lemmy-cluster ${top.clusterName})";
        runtimeDirectory = "lemmy-federate";
        switches = on "LEMMY_DISABLE_HTTP_SERVER" // on "LEMMY_DISABLE_SCHEDULED_TASKS" // shard;
      }
      // {
        # Both processes run pending migrations at start; let lemmy_server go first.
        after = [
          "network-online.target"
          "lemmy.service"
        ];
      };
    };

    services.lemmy-cluster.firewall.allow = [
      {
        inherit (cfg) port;
        from = cfg.allowedClients;
        description = "Lemmy backend";
      }
    ];

    services.nginx = lib.mkIf (cfg.pictrsUpstreams != [ ]) {
      enable = true;
      upstreams.lemmy_pictrs = {
        servers = lib.genAttrs cfg.pictrsUpstreams (_: {
          max_fails = 3;
          fail_timeout = "10s";
        });
        extraConfig = "zone lemmy_pictrs 64k;";
      };
      virtualHosts.lemmy-cluster-pictrs = {
        serverName = "lemmy-cluster-pictrs";
        listen = [
          {
            addr = "127.0.0.1";
            port = cfg.pictrsProxyPort;
          }
        ];
        extraConfig = "include ${./pictrs-balancer.conf};";
      };
    };
  };
}
