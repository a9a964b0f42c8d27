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

  # Everything Lemmy needs except the secrets (added by write-config.sh at start). The admin's
  # own settings go underneath: the keys this module writes are asserted absent from them.
  template = lib.recursiveUpdate cfg.settings ownSettings;
  ownSettings = {
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
  }
  // lib.optionalAttrs cfg.email.enable {
    # Lemmy 0.19 splits smtp_server at ':' into host and port; the password is added at start.
    email = {
      smtp_server = "${cfg.email.server}:${toString cfg.email.port}";
      smtp_from_address = cfg.email.fromAddress;
      tls_type = cfg.email.tls;
    }
    // lib.optionalAttrs (cfg.email.login != null) { smtp_login = cfg.email.login; };
  };
  templateFile = pkgs.writeText "lemmy-config-template.json" (builtins.toJSON template);

  dbHosts = lib.concatMapStringsSep "," (h: hostPort h cfg.database.port) cfg.database.hosts;
  # connect_timeout, keepalives and (with several hosts) target_session_attrs=read-write.
  database = import ./database-params.nix cfg.database;
  dbParams = lib.concatStringsSep "&" database.params;

  sending = cfg.federation.sending;

  # Settings this module writes itself (from its other options), refused in `settings`.
  ownedPaths = [
    [ "hostname" ]
    [ "bind" ]
    [ "port" ]
    [ "tls_enabled" ]
    [ "database" ]
    [ "setup" ]
    [ "email" ]
    [
      "pictrs"
      "url"
    ]
    [
      "pictrs"
      "api_key"
    ]
  ];
  ownedGiven = lib.filter (p: lib.hasAttrByPath p cfg.settings) ownedPaths;
  # Every key path of `settings` (tables and leaves).
  settingPaths =
    let
      go =
        prefix: value:
        lib.optional (prefix != [ ]) prefix
        ++ lib.optionals (builtins.isAttrs value) (
          lib.concatLists (lib.mapAttrsToList (k: go (prefix ++ [ k ])) value)
        );
    in
    go [ ] cfg.settings;
  # A key names a secret when one of its words does (api_key, smtp_password, auth_token, ...).
  looksSecret =
    k:
    let
      words = lib.splitString "_" (lib.replaceStrings [ "-" ] [ "_" ] (lib.toLower k));
    in
    lib.any (w: lib.elem w secretWords) words || lib.hasSuffix "key" (lib.toLower k);
  secretWords = [
    "password"
    "passwd"
    "pass"
    "pw"
    "secret"
    "secrets"
    "token"
    "credential"
    "credentials"
  ];
  secretGiven = lib.filter (p: looksSecret (lib.last p)) settingPaths;
  # Lemmy refuses to start on a key of its pictrs section that it does not know: these came later.
  newerSettings = {
    "pictrs.max_thumbnail_size" = "0.19.6";
    "pictrs.proxy_bypass_domains" = "0.19.8";
  };
  tooNew = lib.filterAttrs (
    name: since:
    lib.hasAttrByPath (lib.splitString "." name) cfg.settings
    && !(lib.versionAtLeast cfg.package.version since)
  ) newerSettings;
  showPaths = ps: lib.concatMapStringsSep ", " (lib.concatStringsSep ".") ps;
  isAre = ps: if lib.length ps == 1 then "is" else "are";

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
        ]
        ++ lib.optional (
          cfg.email.enable && cfg.email.passwordFile != null
        ) "smtp-password:${cfg.email.passwordFile}";
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
        default = 3;
        description = "Seconds to wait for a PostgreSQL host before trying the next one (libpq's minimum is 2).";
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
    email = {
      enable = lib.mkEnableOption "sending email (sign-up verification, password resets, notifications) through an SMTP server";
      server = mkOption {
        type = types.str;
        example = "smtp.example.org";
        description = "Host name of the SMTP server (Lemmy 0.19 cannot take an IPv6 address here).";
      };
      port = mkOption {
        type = types.port;
        default =
          {
            starttls = 587;
            tls = 465;
            none = 25;
          }
          .${cfg.email.tls};
        defaultText = lib.literalMD "587 with `tls = \"starttls\"`, 465 with `\"tls\"`, 25 with `\"none\"`";
        description = "Port of the SMTP server.";
      };
      tls = mkOption {
        type = types.enum [
          "starttls"
          "tls"
          "none"
        ];
        default = "starttls";
        description = ''
          Lemmy's `tls_type`: `starttls` upgrades a plain connection (submission, port 587), `tls`
          speaks TLS from the start (port 465), `none` sends in clear text (only for a relay
          without login).
        '';
      };
      login = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "lemmy@example.org";
        description = "SMTP login; null for a server that takes mail without one. Its password: passwordFile.";
      };
      passwordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/lemmy-cluster/secrets/smtp-password";
        description = "File holding the SMTP login's password (read at start through LoadCredential; never in the store).";
      };
      fromAddress = mkOption {
        type = types.str;
        example = "Example Lemmy <noreply@lemmy.example.org>";
        description = "Sender of Lemmy's mail: an address, or a name and an address in angle brackets.";
      };
    };
    settings = mkOption {
      type = (pkgs.formats.json { }).type;
      default = { };
      example = {
        pictrs.image_mode = "ProxyAllImages";
        federation.concurrent_sends_per_instance = 4;
        json_logging = true;
      };
      description = ''
        Other settings of Lemmy's config file, merged under what this module writes. The keys the
        module writes from its other options (hostname, bind, port, tls_enabled, database, setup,
        email, pictrs.url, pictrs.api_key) are refused, and so are keys that look like secrets:
        these settings are written into the Nix store, which every local user can read.
      '';
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
        assertion = lib.all (f: !(lib.hasPrefix "/nix/store" f)) (
          [
            cfg.database.passwordFile
            cfg.pictrsApiKeyFile
            cfg.setup.adminPasswordFile
          ]
          ++ lib.optional (cfg.email.passwordFile != null) cfg.email.passwordFile
        );
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
        assertion = ownedGiven == [ ];
        message = "services.lemmy-cluster.backend.settings: ${showPaths ownedGiven} ${isAre ownedGiven} written by this module from its own options (domain, listenAddress, port, tlsEnabled, database.*, setup.*, email.*, pictrsUrl, pictrsApiKeyFile); remove ${if lib.length ownedGiven == 1 then "it" else "them"} from settings and set those options instead.";
      }
      {
        assertion = secretGiven == [ ];
        message = "services.lemmy-cluster.backend.settings: ${showPaths secretGiven} ${if lib.length secretGiven == 1 then "looks like a secret" else "look like secrets"}, and settings are written into the world-readable Nix store; Lemmy takes secrets only where this module adds them from files (database.passwordFile, pictrsApiKeyFile, setup.adminPasswordFile, email.passwordFile).";
      }
      {
        assertion = tooNew == { };
        message = "services.lemmy-cluster.backend.settings: ${lib.concatStringsSep ", " (lib.mapAttrsToList (n: v: "${n} needs Lemmy ${v}") tooNew)}, but backend.package is ${cfg.package.version} (Lemmy refuses to start on a pictrs setting it does not know); remove the setting or use a newer Lemmy.";
      }
      {
        assertion =
          cfg.email.enable -> (cfg.email.login == null) == (cfg.email.passwordFile == null);
        message = "services.lemmy-cluster.backend.email: login and passwordFile go together (Lemmy logs in only with both); set both, or neither for a server that takes mail without login.";
      }
      {
        assertion = cfg.email.enable -> !(cfg.email.tls == "none" && cfg.email.login != null);
        message = "services.lemmy-cluster.backend.email: tls = \"none\" with a login would send the SMTP password unencrypted; set email.tls to \"starttls\" or \"tls\".";
      }
      {
        assertion = !config.services.lemmy.enable;
        message = "services.lemmy-cluster.backend and nixpkgs' services.lemmy both run lemmy_server; disable services.lemmy on this machine.";
      }
    ];

    # A database statement in flight when its server vanished fails after some 13 s instead of
    # some 15 minutes (see database-params.nix).
    boot.kernel.sysctl."net.ipv4.tcp_retries2" = lib.mkDefault database.tcpRetries2;

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
