# lemmy-cluster: what every machine of the cluster shares: its identity in the cluster, name
# resolution for its peers, and a firewall that opens each internal port only to the peers that
# need it. The role modules (frontend, backend, pictrs, postgres) add their rules through
# `services.lemmy-cluster.firewall.allow`.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster;
  inherit (lib) mkOption types;

  inherit (import ./lib.nix { inherit lib; }) isIPv6;

  # The units that bind the private address: each starts only once the address is assigned
  # (lemmy-cluster-private-address.service), since a late address (DHCP, networkd) would leave
  # PostgreSQL listening on localhost only and make the others fail to bind.
  addressUnit = "lemmy-cluster-private-address.service";
  bindingUnits =
    lib.optional (cfg.postgres.enable or false) (if cfg.postgres.patroni.enable or false then "patroni" else "postgresql")
    ++ lib.optional (cfg.etcd.enable or false) "etcd"
    ++ lib.optional (cfg.pictrs.enable or false) "pict-rs"
    ++ lib.optional (cfg.backend.enable or false) "lemmy"
    ++ lib.optional (cfg.frontend.enable or false) "lemmy-ui"
    ++ lib.optional (cfg.storage.enable or false) "garage"
    # pgBackRest's TLS server: on the backup machine, and on a postgres machine that uses it
    ++ lib.optional (
      (cfg.backupRepository.enable or false)
      || ((cfg.backup.enable or false) && (cfg.backup.repository.host or null) != null)
    ) "lemmy-cluster-pgbackrest-server";
  ruleType = types.submodule {
    options = {
      port = mkOption {
        type = types.port;
        description = "TCP port to open.";
      };
      from = mkOption {
        type = types.listOf types.str;
        description = "IP addresses allowed to connect to the port (an empty list opens nothing).";
      };
      description = mkOption {
        type = types.str;
        default = "";
        description = "What the port serves, for the rule's comment.";
      };
    };
  };

  inInterface = if cfg.firewall.interface != null then " -i ${cfg.firewall.interface}" else "";

  # One iptables rule per (port, peer); IPv6 peers go to ip6tables. Rules are appended to
  # nixos-fw, whose final rule refuses everything else.
  iptablesRules = lib.concatMapStrings (
    rule:
    lib.concatMapStrings (
      addr:
      let
        cmd = if isIPv6 addr then "ip6tables" else "iptables";
      in
      "${cmd} -A nixos-fw -p tcp${inInterface} -s ${addr} --dport ${toString rule.port} -j nixos-fw-accept"
      + " -m comment --comment ${lib.escapeShellArg "lemmy-cluster ${rule.description}"}\n"
    ) rule.from
  ) cfg.firewall.allow;

in
{
  options.services.lemmy-cluster = {
    enable = mkOption {
      type = types.bool;
      default = false;
      description = "Whether this machine is part of a lemmy-cluster (enable one or more roles too).";
    };
    clusterName = mkOption {
      type = types.strMatching "[a-z0-9]([a-z0-9-]*[a-z0-9])?";
      example = "example";
      description = "Name of the cluster (lowercase letters, digits and '-').";
    };
    domain = mkOption {
      type = types.str;
      example = "lemmy.example.org";
      description = "Public host name of the Lemmy instance.";
    };
    privateAddress = mkOption {
      type = types.str;
      example = "10.0.0.10";
      description = ''
        This machine's cluster-internal IP address. Internal services (lemmy-ui, the backend,
        pict-rs, PostgreSQL) listen on it, never on a public address.
      '';
    };
    peers = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        db1 = "10.0.0.30";
      };
      description = "The other machines of the cluster and their private addresses (added to /etc/hosts).";
    };
    publicPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      example = [
        80
        443
      ];
      description = "TCP ports opened to everyone (a frontend's HTTP and HTTPS).";
    };
    privateAddressTimeout = mkOption {
      type = types.ints.positive;
      default = 120;
      description = ''
        Seconds lemmy-cluster-private-address.service waits for privateAddress to be assigned to
        an interface (and, for IPv6, to finish duplicate address detection) before it fails; the
        services that bind the address (PostgreSQL or Patroni, etcd, pict-rs, Lemmy, lemmy-ui,
        Garage) require it and start after it.
      '';
    };
    firewall.allow = mkOption {
      type = types.listOf ruleType;
      default = [ ];
      description = ''
        Internal TCP ports and the peers allowed to reach them. The role modules fill this from
        their `allowedClients`-style options; every other internal port stays closed.
      '';
    };
    firewall.interface = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "wg-lemmy";
      description = ''
        When set, the internal ports are opened only on this interface (the WireGuard mesh's:
        modules/mesh sets it), never on the underlay.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = config.networking.firewall.enable;
        message = ''
          services.lemmy-cluster: networking.firewall.enable is false, so PostgreSQL, pict-rs,
          lemmy-ui and the backend would be reachable by anyone who can reach this machine.
          Keep the firewall on (lemmy-cluster opens each internal port only to the peers that need it).
        '';
      }
      {
        # The per-peer rules are iptables commands (networking.firewall.extraCommands), which
        # the nftables firewall refuses; an nftables variant would use extraInputRules.
        assertion = !config.networking.nftables.enable;
        message = ''
          services.lemmy-cluster: networking.nftables.enable is true, but lemmy-cluster's per-peer
          firewall rules are written for the iptables firewall backend. Leave nftables disabled
          on cluster machines.
        '';
      }
    ];

    # The role checks of `synth verify` and `synth deploy` probe services with curl and ss.
    environment.systemPackages = [ pkgs.curl ];

    # The peers, and this machine's own private address (a reverse lookup of it, which Patroni's
    # REST API and others make when they start, is then answered without DNS: with a dead
    # resolver it took 10 s at every start).
    networking.hosts =
      lib.mapAttrs' (name: addr: lib.nameValuePair addr [ name ]) cfg.peers
      // {
        ${cfg.privateAddress} = [ config.networking.hostName ];
      };

    systemd.services = {
      lemmy-cluster-private-address = {
        description = "lemmy-cluster: wait until ${cfg.privateAddress} is assigned";
        wantedBy = [ "multi-user.target" ];
        after = [ "network-pre.target" ];
        path = [ pkgs.iproute2 ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          TimeoutStartSec = cfg.privateAddressTimeout + 30;
        };
        # The same script the tests run (tests/live/test_private_address.py).
        script = "exec ${pkgs.runtimeShell} ${./wait-address.sh} ${lib.escapeShellArg cfg.privateAddress} ${toString cfg.privateAddressTimeout}";
      };
    }
    // lib.genAttrs bindingUnits (_: {
      after = [ addressUnit ];
      requires = [ addressUnit ];
    });

    networking.firewall = {
      allowedTCPPorts = cfg.publicPorts;
      extraCommands = iptablesRules;
    };
  };
}
