# lemmy-cluster NixOS VM tests, one scenario per file; flake.nix exposes them as
# checks.x86_64-linux.<scenario> (`nix flake check`, or
# `nix build .#checks.x86_64-linux.<scenario> -L` for one). They need KVM.
#
# Each scenario is <scenario>.nix (nodes, parameters) with its test script in <scenario>.py; the
# machines are built from the host modules that synth generated from the test TOMLs:
#   single.toml            -> single/hosts/            (single)
#   cluster.toml           -> cluster/hosts/           (cluster, frontend-failure, promotion)
#   cluster-promoted.toml  -> cluster-promoted/hosts/  (promotion: app1 after the failover)
#   backends.toml          -> backends/hosts/          (backends)
#   pictrs-shared.toml     -> pictrs-shared/hosts/     (pictrs-shared; its S3 server: s3.nix)
#   storage.toml           -> storage/hosts/           (storage; node keys: garage-keys.nix)
# Regenerate with `synth generate nixos-tests/<x>.toml --out nixos-tests/<x>` and commit.
{ pkgs, self }:
let
  t = import ./lib.nix { inherit pkgs self; };
  args = { inherit pkgs t; };
in
{
  single = import ./single.nix args;
  cluster = import ./cluster.nix args;
  frontend-failure = import ./frontend-failure.nix args;
  promotion = import ./promotion.nix args;
  backends = import ./backends.nix args;
  pictrs-shared = import ./pictrs-shared.nix args;
  storage = import ./storage.nix args;
}
