# VM test `cluster`: client, fe1, fe2, app1 (backend + pict-rs), db1 (primary), db2 (replica),
# from cluster.toml. Script: test.py. Asserts replication, routing through each frontend
# (lemmy-ui, API, nodeinfo, ActivityPub, POST), a community, post and image written through one
# frontend and read through the other, the post on the replica, and the firewall between roles.
{ pkgs, t }:
let
  cluster = import ../cluster-nodes.nix { inherit t; };
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-cluster";
  inherit (cluster) nodes;
  testScript =
    { nodes, ... }:
    t.script {
      file = ./test.py;
      params = cluster.params nodes;
    };
}
