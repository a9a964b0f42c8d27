# VM test `promotion`: the cluster of cluster/cluster.toml loses its PostgreSQL primary db1; db2 is
# promoted with lemmy-cluster-pg-promote, and app1 switches to the configuration synth generates
# once db2 is the primary (promotion/cluster.toml), built here as app1's specialisation
# "promoted". Script: test.py. Asserts that posts written before are all there and that a
# new post succeeds.
{ pkgs, t }:
let
  cluster = import ../cluster-nodes.nix { inherit t; };
  specialisation = "promoted";
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-promotion";

  nodes = cluster.nodes // {
    app1 = {
      imports = [ cluster.nodes.app1 ];
      # The same machine with the host module generated from promotion/cluster.toml instead of
      # cluster/cluster.toml (they differ in backend.database.hosts only).
      specialisation.${specialisation}.configuration = {
        disabledModules = [ (t.hostModule ../cluster "app1") ];
        imports = [ (t.hostModule ./. "app1") ];
      };
    };
  };

  testScript =
    { nodes, ... }:
    t.script {
      file = ./test.py;
      params = cluster.params nodes // {
        PROMOTED_SYSTEM = "/run/current-system/specialisation/${specialisation}";
      };
    };
}
