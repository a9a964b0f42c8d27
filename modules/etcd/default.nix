# lemmy-cluster etcd role: a member of the etcd cluster that Patroni keeps its leader lock and
# state in (API v3), on nixpkgs' services.etcd, configured by ./settings.nix (the same file the
# live tests run the real etcd with).
#
# Members create the cluster together on their first start. A member added later (a machine
# replacing another) joins the running cluster through etcd's runtime reconfiguration: before
# etcd.service, lemmy-cluster-etcd-join (./join.sh) adds it with `etcdctl member add` and starts
# it with the current membership; it never creates a second cluster while another member answers,
# and never removes a member by itself: `lemmy-cluster-etcd-remove-member NAME` (./remove-member.sh),
# which `synth plan` and `synth remove-machine` print for a member that leaves, does. Client and peer ports are open only to the members and to the Patroni members.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.etcd;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;
  settings = import ./settings.nix cfg;
  others = lib.filterAttrs (n: _: n != cfg.name) cfg.members;
  package = pkgs.etcd_3_6;
  runtimeDir = "/run/lemmy-cluster-etcd";
in
{
  options.services.lemmy-cluster.etcd = {
    enable = lib.mkEnableOption "an etcd member (Patroni's consensus store)";
    name = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "This member's name (a key of `members`).";
    };
    address = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      description = "Address etcd listens on for the other members and its clients.";
    };
    members = mkOption {
      type = types.attrsOf types.str;
      example = {
        db1 = "10.0.0.30";
        db2 = "10.0.0.31";
        fe1 = "10.0.0.10";
      };
      description = "Every member of the etcd cluster, this one included, and its address (3 or 5 of them).";
    };
    clientPort = mkOption {
      type = types.port;
      default = 2379;
      description = "etcd's client port (the same on every member).";
    };
    peerPort = mkOption {
      type = types.port;
      default = 2380;
      description = "etcd's peer port (the same on every member).";
    };
    clients = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.32" ];
      description = "Addresses of the Patroni members that are not etcd members: allowed to the client port.";
    };
    clusterToken = mkOption {
      type = types.str;
      default = top.clusterName;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.clusterName";
      description = "etcd's initial cluster token (distinguishes clusters created from the same addresses).";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = cfg.members ? ${cfg.name};
        message = "services.lemmy-cluster.etcd.members must name this member (${cfg.name}) too.";
      }
      {
        # etcd 3.6 upgrades one minor version at a time: a jump of the package is a decision.
        assertion = lib.versions.majorMinor package.version == "3.6";
        message = "services.lemmy-cluster.etcd: lemmy-cluster is tested with etcd 3.6, but pkgs.etcd_3_6 is ${package.version}.";
      }
    ];
    warnings = lib.optional (lib.length (lib.attrNames cfg.members) < 3) ''
      services.lemmy-cluster.etcd: ${toString (lib.length (lib.attrNames cfg.members))} member(s): etcd keeps a quorum through one machine's loss only with 3 (or 5).
    '';

    services.etcd = settings // {
      enable = true;
      inherit package;
    };

    systemd.services = {
      etcd.serviceConfig.EnvironmentFile = "-${runtimeDir}/join.env";
      lemmy-cluster-etcd-join = {
        description = "lemmy-cluster: how this etcd member starts (join a running cluster)";
        before = [ "etcd.service" ];
        requiredBy = [ "etcd.service" ];
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        path = [
          package
          pkgs.gawk
          pkgs.gnugrep
          pkgs.coreutils
        ];
        # A member that cannot join yet (no quorum to add it) tries again.
        unitConfig.StartLimitIntervalSec = 0;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          Restart = "on-failure";
          RestartSec = "10s";
          User = "etcd";
          Group = "etcd";
          RuntimeDirectory = "lemmy-cluster-etcd";
          RuntimeDirectoryMode = "0700";
          RuntimeDirectoryPreserve = true;
          ExecStart = "${pkgs.bash}/bin/bash ${./join.sh} ${
            lib.escapeShellArgs [
              "--name"
              cfg.name
              "--data-dir"
              config.services.etcd.dataDir
              "--peer-url"
              (lib.head settings.initialAdvertisePeerUrls)
              "--initial-cluster"
              (lib.concatStringsSep "," settings.initialCluster)
              "--endpoints"
              (lib.concatMapStringsSep "," (a: "http://${(import ../lib.nix { inherit lib; }).hostPort a cfg.clientPort}") (
                lib.attrValues others
              ))
              "--env-file"
              "${runtimeDir}/join.env"
            ]
          }";
        };
      };
    };

    # `lemmy-cluster-etcd-remove-member NAME`, run on a member that stays: takes NAME out of the
    # running cluster (./remove-member.sh: says what it does first, refuses while a member that
    # stays is unhealthy). `synth remove-machine` and `synth plan` print it for a member that leaves.
    environment.systemPackages = [
      (pkgs.writeShellScriptBin "lemmy-cluster-etcd-remove-member" ''
        set -euo pipefail
        if [ $# -ne 1 ]; then
          echo "usage: lemmy-cluster-etcd-remove-member NAME   (the member that leaves)" >&2
          exit 2
        fi
        export PATH=${
          lib.makeBinPath [
            package
            pkgs.gawk
            pkgs.gnugrep
            pkgs.coreutils
            pkgs.curl
            pkgs.jq
          ]
        }:$PATH
        exec ${pkgs.bash}/bin/bash ${./remove-member.sh} ${
          lib.escapeShellArgs (
            [
              "--self"
              cfg.name
              "--endpoints"
              "http://127.0.0.1:${toString cfg.clientPort}"
            ]
            # On a Patroni member: refuse while Patroni still counts the leaving machine as a member.
            ++ lib.optionals (top.postgres.enable && top.postgres.patroni.enable) [
              "--patroni-api"
              "http://${(import ../lib.nix { inherit lib; }).hostPort top.postgres.listenAddress top.postgres.patroni.restApiPort}"
            ]
          )
        } --name "$1"
      '')
    ];

    services.lemmy-cluster.firewall.allow = [
      {
        port = cfg.clientPort;
        from = lib.unique (lib.attrValues others ++ cfg.clients);
        description = "etcd clients";
      }
      {
        port = cfg.peerPort;
        from = lib.attrValues others;
        description = "etcd peers";
      }
    ];
  };
}
