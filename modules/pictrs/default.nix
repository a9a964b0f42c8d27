# lemmy-cluster pict-rs role: the image server behind Lemmy's /pictrs routes.
#
# Built on nixpkgs' services.pict-rs (sled repo and file store under /var/lib/pict-rs, so exactly
# one pict-rs machine per cluster). This module binds it to the private address, gives it the API
# key that the backend shares (read from a file at start, never in the Nix store) and opens its
# port only to the backends. Clients never talk to pict-rs directly: the Lemmy backend checks
# who uploads and proxies /pictrs to it.
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
in
{
  options.services.lemmy-cluster.pictrs = {
    enable = lib.mkEnableOption "the pict-rs role of lemmy-cluster";
    listenAddress = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = "Address pict-rs listens on (IPv4, as nixpkgs' pict-rs module expects).";
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
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
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
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = {
        LoadCredential = [ "api-key:${cfg.apiKeyFile}" ];
        # The key becomes an environment variable only inside the service's own process.
        ExecStart = lib.mkForce (
          pkgs.writeShellScript "pict-rs-with-api-key" ''
            PICTRS__SERVER__API_KEY="$(< "$CREDENTIALS_DIRECTORY/api-key")"
            export PICTRS__SERVER__API_KEY
            exec ${lib.getBin config.services.pict-rs.package}/bin/pict-rs run
          ''
        );
        Restart = "on-failure";
        RestartSec = "5s";
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
