# lemmy-cluster NixOS VM tests; flake.nix exposes them as checks.x86_64-linux.<scenario>
# (`nix flake check`, or `nix build .#checks.x86_64-linux.<scenario> -L` for one). They need KVM.
#
# One folder per scenario, found here by its test.nix (a new folder needs no edit of this file):
#   <scenario>/test.nix      the scenario: nodes and the parameters its script reads from them
#   <scenario>/test.py       its test script (lib.nix drops the lint header above the marker line)
#   <scenario>/cluster.toml  the test cluster, when the scenario is built from one of its own
#   <scenario>/hosts/        generated from it: `synth generate nixos-tests/<scenario>/cluster.toml`
# frontend-failure and promotion boot the cluster of cluster/ (nodes in cluster-nodes.nix);
# promotion/cluster.toml is that cluster after db2's promotion (app1's specialisation).
# Shared pieces stay here at the top: lib.nix, lib.py, node.nix, secrets.nix, ...
{ pkgs, self }:
let
  t = import ./lib.nix { inherit pkgs self; };
  args = { inherit pkgs t; };
  entries = builtins.readDir ./.;
  scenarios = builtins.filter (
    name: entries.${name} == "directory" && builtins.pathExists (./. + "/${name}/test.nix")
  ) (builtins.attrNames entries);
in
builtins.listToAttrs (
  map (name: {
    inherit name;
    value = import (./. + "/${name}/test.nix") args;
  }) scenarios
)
