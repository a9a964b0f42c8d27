# lemmy-cluster frontend role: nginx (TLS, routing) and lemmy-ui.
#
# Every frontend serves the whole domain, so any of them can take traffic (DNS round robin, a
# floating address or an outer load balancer in front). The routing rules live in plain nginx
# include files beside this module (routing-http.conf, routing.conf, acme-*.conf); the live tests
# run nginx on those very files.
#
# Upstreams, with passive health checks (max_fails / fail_timeout):
#   lemmy_backend  every backend
#   lemmy_ui       this machine's lemmy-ui, then the other frontends' lemmy-ui as backups, so a
#                  dead local lemmy-ui costs no request
# lemmy-ui renders pages by calling the API through this nginx (127.0.0.1:internalApiPort), so
# it too fails over between backends.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.frontend;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;

  inherit (import ../lib.nix { inherit lib; }) hostPort isIPv6;
  localUi = hostPort cfg.uiListenAddress cfg.uiPort;
  health = {
    max_fails = cfg.maxFails;
    fail_timeout = cfg.failTimeout;
  };
  https = cfg.tls != "none";

  routing = ''
    include ${./routing.conf};
  '';
  acme = ''
    set $lemmy_cluster_acme_root ${cfg.acmeWebroot};
    include ${./acme-challenge.conf};
    include ${if cfg.acmePeers != [ ] then ./acme-peers.conf else ./acme-no-peers.conf};
  '';
  realIp = lib.concatMapStrings (p: "set_real_ip_from ${p};\n") cfg.trustedProxies
    + lib.optionalString (cfg.trustedProxies != [ ]) ''
      real_ip_header X-Forwarded-For;
      real_ip_recursive on;
    '';
in
{
  options.services.lemmy-cluster.frontend = {
    enable = lib.mkEnableOption "the frontend role of lemmy-cluster (nginx and lemmy-ui)";
    uiPackage = lib.mkPackageOption pkgs "lemmy-ui" { };
    tls = mkOption {
      type = types.enum [
        "acme"
        "none"
        "manual"
      ];
      default = "acme";
      description = ''
        How HTTPS is served. `acme`: a Let's Encrypt certificate per frontend over HTTP-01 (a
        challenge that reaches the wrong frontend is fetched from the others). `manual`: the
        certificate and key files you name. `none`: plain HTTP on port 80, for tests and for
        setups where another proxy terminates TLS.
      '';
    };
    acmeEmail = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Contact address for the ACME account (required with tls = \"acme\").";
    };
    acmeWebroot = mkOption {
      type = types.str;
      default = "/var/lib/acme/acme-challenge";
      description = "Where the ACME client puts HTTP-01 tokens (served under /.well-known/acme-challenge/).";
    };
    tlsCertificateFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Certificate chain file, with tls = \"manual\" (a path on the machine, not in the store).";
    };
    tlsKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Private key file, with tls = \"manual\" (a path on the machine, not in the store).";
    };
    backends = mkOption {
      type = types.nonEmptyListOf types.str;
      example = [ "10.0.0.20:8536" ];
      description = "Lemmy backends as address:port.";
    };
    uiListenAddress = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = ''
        Address lemmy-ui listens on (the other frontends use it as a backup). IPv4 only: lemmy-ui
        reads it from LEMMY_UI_HOST with `split(":")`.
      '';
    };
    uiPort = mkOption {
      type = types.port;
      default = 1234;
      description = "Port lemmy-ui listens on.";
    };
    uiPeers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.11:1234" ];
      description = "The other frontends' lemmy-ui as address:port, used when the local one fails.";
    };
    uiClients = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.11" ];
      description = "Addresses of the frontends that use this lemmy-ui as their backup (firewall).";
    };
    acmePeers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.11:80" ];
      description = "The other frontends' HTTP address:port, asked for ACME tokens this one lacks.";
    };
    internalApiPort = mkOption {
      type = types.port;
      default = 8537;
      description = "Loopback port where this nginx forwards lemmy-ui's server-side API calls to the backends.";
    };
    trustedProxies = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "192.0.2.0/24" ];
      description = ''
        Addresses of load balancers in front of the frontends whose X-Forwarded-For is believed.
        Empty (the default): this nginx is the outermost proxy and the peer address is the client.
      '';
    };
    maxFails = mkOption {
      type = types.ints.positive;
      default = 3;
      description = "Failed attempts before nginx considers an upstream server down (passive health check).";
    };
    failTimeout = mkOption {
      type = types.str;
      default = "10s";
      description = "How long a server counts as down, and the window for maxFails.";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = !isIPv6 cfg.uiListenAddress;
        message = "services.lemmy-cluster.frontend.uiListenAddress is ${cfg.uiListenAddress}, an IPv6 address: lemmy-ui splits LEMMY_UI_HOST at ':' and cannot listen on it. Give the machine an IPv4 privateAddress (or set uiListenAddress to one).";
      }
      {
        # lemmy-ui 0.19's environment variables (LEMMY_UI_LEMMY_INTERNAL_HOST, ...); 1.0 renamed them.
        assertion = lib.versions.majorMinor cfg.uiPackage.version == "0.19";
        message = "services.lemmy-cluster.frontend: lemmy-cluster supports lemmy-ui 0.19, but frontend.uiPackage is ${cfg.uiPackage.version}; use the flake's nixpkgs (NixOS 26.05) or a lemmy-ui 0.19 build.";
      }
      {
        assertion = cfg.tls != "acme" || cfg.acmeEmail != null;
        message = "services.lemmy-cluster.frontend.tls = \"acme\" needs frontend.acmeEmail (the ACME account's contact).";
      }
      {
        assertion = cfg.tls != "manual" || (cfg.tlsCertificateFile != null && cfg.tlsKeyFile != null);
        message = "services.lemmy-cluster.frontend.tls = \"manual\" needs tlsCertificateFile and tlsKeyFile.";
      }
    ];

    security.acme = lib.mkIf (cfg.tls == "acme") {
      # Choosing tls = "acme" is the admin's agreement to the CA's terms.
      acceptTerms = true;
      certs.${top.domain} = {
        email = cfg.acmeEmail;
        webroot = cfg.acmeWebroot;
        group = config.services.nginx.group;
      };
    };

    services.nginx = {
      enable = true;
      recommendedOptimisation = true;
      recommendedGzipSettings = true;
      recommendedTlsSettings = https;
      commonHttpConfig = ''
        include ${./routing-http.conf};
      ''
      + realIp;

      upstreams = {
        lemmy_backend = {
          servers = lib.genAttrs cfg.backends (_: health);
          # Lemmy closes idle connections after 5 s; reusing one it is just closing would fail a
          # POST that nginx may not retry. Drop idle connections first.
          # zone: the passive health checks are counted once for all nginx workers.
          extraConfig = ''
            zone lemmy_backend 64k;
            keepalive 16;
            keepalive_timeout 4s;
          '';
        };
        lemmy_ui = {
          servers = {
            ${localUi} = health;
          }
          // lib.genAttrs cfg.uiPeers (_: health // { backup = true; });
          extraConfig = ''
            zone lemmy_ui 64k;
            keepalive 8;
            keepalive_timeout 4s;
          '';
        };
      }
      // lib.optionalAttrs (cfg.acmePeers != [ ]) {
        lemmy_acme_peers.servers = lib.genAttrs cfg.acmePeers (_: { });
      };

      virtualHosts = {
        # Port 80: ACME challenges, then either the site (tls = "none") or a redirect to HTTPS.
        "lemmy-cluster-http" = {
          serverName = top.domain;
          default = true;
          listenAddresses = [
            "0.0.0.0"
          ]
          ++ lib.optional config.networking.enableIPv6 "[::0]";
          extraConfig = acme + (if https then "location / { return 301 https://$host$request_uri; }\n" else routing);
        };
        # lemmy-ui's server-side rendering reaches the backends through here.
        "lemmy-cluster-internal-api" = {
          serverName = "lemmy-cluster-internal-api";
          listen = [
            {
              addr = "127.0.0.1";
              port = cfg.internalApiPort;
            }
          ];
          extraConfig = ''
            location / {
              proxy_pass http://lemmy_backend;
              proxy_http_version 1.1;
              proxy_set_header Host ${top.domain};
              proxy_set_header Connection "";
              proxy_next_upstream error timeout http_502 http_503 http_504;
            }
          '';
        };
      }
      // lib.optionalAttrs https {
        ${top.domain} = {
          onlySSL = true;
          default = true;
          useACMEHost = lib.mkIf (cfg.tls == "acme") top.domain;
          sslCertificate = lib.mkIf (cfg.tls == "manual") cfg.tlsCertificateFile;
          sslCertificateKey = lib.mkIf (cfg.tls == "manual") cfg.tlsKeyFile;
          extraConfig = routing;
        };
      };
    };

    systemd.services.lemmy-ui = {
      description = "lemmy-ui (lemmy-cluster ${top.clusterName})";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      environment = {
        LEMMY_UI_HOST = localUi;
        LEMMY_UI_LEMMY_INTERNAL_HOST = "127.0.0.1:${toString cfg.internalApiPort}";
        LEMMY_UI_LEMMY_EXTERNAL_HOST = top.domain;
        LEMMY_UI_HTTPS = lib.boolToString https;
        NODE_ENV = "production";
      };
      serviceConfig = {
        DynamicUser = true;
        # lemmy-ui serves ./dist relative to its working directory.
        WorkingDirectory = "${cfg.uiPackage}";
        ExecStart = "${lib.getExe pkgs.nodejs-slim} ${cfg.uiPackage}/dist/js/server.js";
        Restart = "always";
        RestartSec = "2s";
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectSystem = "strict";
        ProtectHome = true;
      };
    };

    services.lemmy-cluster.firewall.allow = [
      {
        port = cfg.uiPort;
        from = cfg.uiClients;
        description = "lemmy-ui";
      }
    ];
  };
}
