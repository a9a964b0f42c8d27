# lemmy-cluster: the WireGuard interface of a machine, from the mesh options.
#
# A pure function (builtins only, no nixpkgs): modules/mesh/default.nix hands its result to
# nixpkgs' networking.wireguard.interfaces.<interface>, and the live tests (tests/live/mesh.py)
# evaluate the same file with `nix-instantiate --eval` on the options synth renders, then set up
# wireguard-go with exactly these values, the way nixpkgs' wireguard-<interface> units do.
#
#   import ./wireguard-settings.nix cfg   where cfg = config.services.lemmy-cluster.mesh
cfg:
let
  cidr = addr: if builtins.match ".*:.*" addr != null then "${addr}/128" else "${addr}/32";
  # An endpoint by host name ("home.example.org:51820", not an IPv4 or [IPv6] address).
  byName = e: e != null && builtins.match "([0-9.]+|[[][^]]*[]]):[0-9]+" e == null;
  named = builtins.any (p: byName (p.endpoint or null)) cfg.peers;
in
{
  ips = [ "${cfg.address}/${toString cfg.prefixLength}" ];
  # WireGuard resolves a host name once; with a peer named so (a dynamic address), nixpkgs' peer
  # units set it again every 5 minutes. 0: no refresh (every endpoint is an address).
  dynamicEndpointRefreshSeconds = if named then 300 else 0;
  listenPort = cfg.listenPort;
  mtu = cfg.mtu;
  # A file read at run time (root only): the key never enters the store.
  privateKeyFile = cfg.privateKeyFile;
  peers = map (
    peer:
    {
      # the unit wireguard-<interface>-peer-<name>
      inherit (peer) name publicKey;
      # A peer's only allowed source (and route): its mesh address. WireGuard drops any other.
      allowedIPs = [ (cidr peer.address) ];
    }
    # A peer behind NAT has no endpoint: it reaches out to us.
    // (if (peer.endpoint or null) != null then { inherit (peer) endpoint; } else { })
    # Set when this machine is behind NAT: keeps its mapping open toward every peer.
    // (
      if (peer.persistentKeepalive or null) != null then
        { inherit (peer) persistentKeepalive; }
      else
        { }
    )
  ) cfg.peers;
}
