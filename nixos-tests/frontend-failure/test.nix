# VM test `frontend-failure`: the cluster of cluster.toml; fe1 crashes while a client keeps
# requesting through fe2 (no request may fail), then fe1 boots and serves again, and fe2 serves
# pages through fe1's lemmy-ui while its own is stopped. Script: test.py.
{ pkgs, t }:
let
  cluster = import ../cluster-nodes.nix { inherit t; };
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-frontend-failure";
  inherit (cluster) nodes;
  testScript =
    { nodes, ... }:
    t.script {
      file = ./test.py;
      params = cluster.params nodes;
    };
}
