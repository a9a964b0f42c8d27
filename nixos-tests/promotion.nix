# VM test `promotion`: the cluster of cluster.toml loses its PostgreSQL primary db1; db2 is
# promoted with lemmy-cluster-pg-promote, and app1 switches to the configuration synth generates
# once db2 is the primary (cluster-promoted.toml), built here as app1's specialisation
# "promoted". Script: promotion.py. Asserts that posts written before are all there and that a
# new post succeeds.
{ pkgs, t }:
let
  cluster = import ./cluster-nodes.nix { inherit t; };
  specialisation = "promoted";
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-promotion";

  nodes = cluster.nodes // {
    app1 = {
      imports = [ cluster.nodes.app1 ];
      # The same machine with the host module generated from cluster-promoted.toml instead of
      # cluster.toml (they differ in backend.database.hosts only).
      specialisation.${specialisation}.configuration = {
        disabledModules = [ (t.hostModule ./cluster "app1") ];
        imports = [ (t.hostModule ./cluster-promoted "app1") ];
      };
    };
  };

  testScript =
    { nodes, ... }:
    t.script {
      file = ./promotion.py;
      params = cluster.params nodes // {
        PROMOTED_SYSTEM = "/run/current-system/specialisation/${specialisation}";
      };
    };
}
