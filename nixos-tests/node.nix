# What every lemmy-cluster machine of a VM test adds to its generated host module: tools the test
# scripts call, and a check that the test TOML's address is the one the test framework assigns.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  lc = config.services.lemmy-cluster;
in
{
  imports = [ ./secrets.nix ];

  # modules/access.nix refuses a machine without an SSH key for its deploy user; the test driver
  # logs in through its own backdoor, so the key authorised here is one whose private half was
  # thrown away when it was made.
  users.users.root.openssh.authorizedKeys.keys = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGrl8AuPnxeS6eyTV/ynztTS46134itta0Gzwg3qiI3J nixos-tests-nobody"
  ];

  environment.systemPackages = [
    pkgs.curl
    pkgs.jq
    pkgs.netcat
  ];

  assertions = [
    {
      # With the mesh the private address is the mesh address (test.nix of the mesh scenario
      # checks the peers' endpoints against the framework's addresses instead).
      assertion = !lc.enable || lc.mesh.enable || lc.privateAddress == config.networking.primaryIPAddress;
      message = ''
        nixos-tests: machine ${config.networking.hostName} has privateAddress ${lc.privateAddress}
        in its generated host module, but the test framework gives it
        ${config.networking.primaryIPAddress}: node N of the alphabetically sorted node names
        (the `client` node included) is 192.168.1.N. Fix the address in the test TOML and run
        `synth generate nixos-tests/<scenario>/cluster.toml`.
      '';
    }
  ];
}
