# lemmy-cluster pg-proxy: a local HAProxy that forwards to the PostgreSQL leader of a Patroni
# cluster, for clients that take a single database URL (pict-rs). nixpkgs' services.haproxy,
# configured by ./haproxy.nix (the same file the live tests run the real HAProxy with): it sends
# each connection to the member whose REST API answers `OPTIONS /primary` with 200, and closes the
# sessions to a member as soon as it stops being the leader.
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.lemmy-cluster.pgProxy;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;
in
{
  options.services.lemmy-cluster.pgProxy = {
    enable = lib.mkEnableOption "a local proxy to the PostgreSQL leader (HAProxy following Patroni)";
    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address the proxy listens on (loopback: only this machine's clients).";
    };
    port = mkOption {
      type = types.port;
      default = 5433;
      description = "Port the proxy listens on.";
    };
    servers = mkOption {
      type = types.nonEmptyListOf (
        types.submodule {
          options = {
            name = mkOption {
              type = types.strMatching "[A-Za-z0-9_.-]+";
              description = "The member's name (HAProxy's server name).";
            };
            address = mkOption {
              type = types.str;
              description = "The member's address.";
            };
          };
        }
      );
      example = [
        {
          name = "db1";
          address = "10.0.0.30";
        }
      ];
      description = "Every PostgreSQL machine of the Patroni cluster.";
    };
    postgresPort = mkOption {
      type = types.port;
      default = 5432;
      description = "PostgreSQL's port on the members.";
    };
    checkPort = mkOption {
      type = types.port;
      default = 8008;
      description = "Patroni's REST API port on the members (the leader check).";
    };
    maxConnections = mkOption {
      type = types.ints.positive;
      default = 100;
      description = "Connections the proxy accepts at once.";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    services.haproxy = {
      enable = true;
      config = import ./haproxy.nix cfg;
    };
  };
}
