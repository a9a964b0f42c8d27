# VM test `mesh`: the WireGuard mesh (issue 13). fe1 (frontend), app1 (backend + pict-rs) and db1
# (PostgreSQL), from cluster.toml beside this file, whose only inter-machine traffic is the mesh.
# Script: test.py. Asserts that every interface has a handshake with each of its peers, that
# Lemmy answers through fe1 (fe1 -> app1 -> db1, all over the mesh), that the internal ports are
# closed on the underlay and open over the mesh only to the peers that need them (asserted from
# the other nodes), and that the underlay carries WireGuard and no PostgreSQL.
#
# Node names decide the underlay addresses: 192.168.1.N for the N-th name in alphabetical order
# (app1 .1, db1 .2, fe1 .3), which cluster.toml repeats; the checks below compare them with the
# peers' endpoints of the generated host modules.
{ pkgs, t }:
let
  inherit (pkgs) lib;
  node =
    machine: memorySize:
    t.clusterNode {
      dir = ./.;
      inherit machine memorySize;
      extraModules = [ { environment.systemPackages = [ pkgs.tcpdump ]; } ];
    };
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-mesh";

  nodes = {
    fe1 = node "fe1" 1024;
    # lemmy_server and pict-rs (pict-rs alone wants more than 1 GB).
    app1 = node "app1" 2048;
    db1 = node "db1" 1024;
  };

  testScript =
    { nodes, ... }:
    let
      lc = name: nodes.${name}.services.lemmy-cluster;
      meshOf = name: (lc name).mesh;
      names = lib.attrNames nodes;
      ports = lib.unique (map (n: (meshOf n).listenPort) names);
      endpointsOk = lib.all (
        n:
        lib.all (
          p: p.endpoint == "${nodes.${p.name}.networking.primaryIPAddress}:${toString (meshOf p.name).listenPort}"
        ) (meshOf n).peers
      ) names;
    in
    t.script {
      file = ./test.py;
      checks = [
        {
          ok = lib.all (n: (meshOf n).enable) names;
          msg = "every node of the mesh scenario needs services.lemmy-cluster.mesh.enable (generate hosts/ from its cluster.toml)";
        }
        {
          ok = endpointsOk;
          msg = "a peer's endpoint in the generated host modules is not its node's address 192.168.1.N; fix cluster.toml's addresses and regenerate";
        }
        {
          ok = lib.length ports == 1 && lib.length (lib.unique (map (n: (meshOf n).interface) names)) == 1;
          msg = "the script expects one WireGuard port and one interface name on every node";
        }
      ];
      params = {
        DOMAIN = (lc "fe1").domain;
        SITE_NAME = (lc "app1").backend.setup.siteName;
        MESH_INTERFACE = (meshOf "fe1").interface;
        MESH_PORT = lib.head ports;
        MESH_ADDRESSES = lib.genAttrs names (n: (meshOf n).address);
        UNDERLAY_ADDRESSES = lib.genAttrs names (n: nodes.${n}.networking.primaryIPAddress);
        # Each node's peers, comma-separated (a parameter is a string, an integer or a list or set of them).
        MESH_PEERS = lib.genAttrs names (n: lib.concatMapStringsSep "," (p: p.name) (meshOf n).peers);
        BACKEND_PORT = (lc "app1").backend.port;
        PICTRS_PORT = (lc "app1").pictrs.port;
        UI_PORT = (lc "fe1").frontend.uiPort;
        PG_PORT = (lc "db1").postgres.port;
      };
    };
}
