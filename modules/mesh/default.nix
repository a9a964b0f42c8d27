# lemmy-cluster: the WireGuard mesh between the machines (cluster.toml [network] mesh = "wireguard").
#
# One interface (nixpkgs' networking.wireguard.interfaces) whose peers are the machines this one
# exchanges traffic with. With it, services.lemmy-cluster.privateAddress is the mesh address (synth
# renders it so), every internal service binds to it, and the per-peer firewall rules of
# services.lemmy-cluster.firewall.allow only match on the mesh interface: a packet there carries
# its peer's mesh address only if WireGuard authenticated the peer. Only WireGuard's UDP port is
# opened on the underlay (and the frontends' public 80/443 stay as they are).
{
  config,
  lib,
  ...
}:
let
  top = config.services.lemmy-cluster;
  cfg = top.mesh;
  inherit (lib) mkOption types;

  peerType = types.submodule {
    options = {
      name = mkOption {
        type = types.strMatching "[a-z0-9]([a-z0-9-]*[a-z0-9])?";
        description = "The peer machine's name (names its systemd unit).";
      };
      publicKey = mkOption {
        type = types.strMatching "[A-Za-z0-9+/]{43}=";
        description = "The peer's WireGuard public key (base64, as `wg pubkey` prints it).";
      };
      address = mkOption {
        type = types.str;
        example = "10.100.0.2";
        description = "The peer's mesh address: its only allowed IP.";
      };
      endpoint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "203.0.113.7:51820";
        description = "Where the peer's WireGuard listens; null for a peer behind NAT (it reaches out to us).";
      };
      persistentKeepalive = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 25;
        description = "Seconds between keepalives to the peer: set when this machine is behind NAT.";
      };
    };
  };
in
{
  options.services.lemmy-cluster.mesh = {
    enable = mkOption {
      type = types.bool;
      default = false;
      description = "Whether the cluster's internal traffic goes through a WireGuard mesh.";
    };
    interface = mkOption {
      type = types.strMatching "[a-zA-Z0-9_-]{1,15}";
      default = "wg-lemmy";
      description = "The WireGuard interface's name.";
    };
    address = mkOption {
      type = types.str;
      default = top.privateAddress;
      defaultText = lib.literalExpression "config.services.lemmy-cluster.privateAddress";
      example = "10.100.0.1";
      description = "This machine's mesh address.";
    };
    prefixLength = mkOption {
      type = types.ints.between 8 32;
      default = 24;
      description = "The prefix length of the mesh subnet.";
    };
    listenPort = mkOption {
      type = types.port;
      default = 51820;
      description = "WireGuard's UDP port, opened on every interface (WireGuard answers only known keys).";
    };
    mtu = mkOption {
      type = types.ints.between 1280 9000;
      default = 1420;
      description = "The interface's MTU: the underlay's MTU minus WireGuard's 80 bytes of overhead.";
    };
    privateKeyFile = mkOption {
      type = types.strMatching "/.*";
      example = "/var/lib/lemmy-cluster/secrets/wireguard-private-key";
      description = "This machine's private key (`wg genkey` format), a file outside the store.";
    };
    peers = mkOption {
      type = types.listOf peerType;
      default = [ ];
      description = "The machines this one exchanges traffic with.";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = !lib.hasPrefix "/nix/store" cfg.privateKeyFile;
        message = "services.lemmy-cluster.mesh.privateKeyFile is in /nix/store, which everyone can read; keep the key in the secrets folder (`synth secrets push`).";
      }
      {
        assertion = cfg.address == top.privateAddress;
        message = "services.lemmy-cluster.mesh.address (${cfg.address}) differs from services.lemmy-cluster.privateAddress (${top.privateAddress}): with the mesh, the internal services listen on the mesh address; regenerate hosts/ with `synth generate`.";
      }
    ];

    networking.wireguard.interfaces.${cfg.interface} = import ./wireguard-settings.nix cfg;

    networking.firewall.allowedUDPPorts = [ cfg.listenPort ];
    # Internal ports: only on the mesh interface (modules/common.nix adds -i to every rule).
    services.lemmy-cluster.firewall.interface = cfg.interface;
  };
}
