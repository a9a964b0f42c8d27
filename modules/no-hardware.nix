# lemmy-cluster: stand-in for a machine whose hosts/<name>/hardware-configuration.nix is missing.
#
# It lets the flake evaluate and build every configuration (for `nix flake check` and CI) before
# the machines exist, and it refuses to be switched to: a system without the machine's real file
# systems and boot loader must never be activated on a real host.
{ config, lib, ... }:
{
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  boot.loader.grub.enable = lib.mkDefault false;
  # It refuses to switch (below), so it can lock nobody out: the key and boot loader assertions of
  # modules/access.nix are skipped.
  services.lemmy-cluster.access.evaluationOnly = true;

  warnings = [
    "lemmy-cluster: hosts/${config.networking.hostName}/hardware-configuration.nix is missing; this system is for evaluation only and refuses to switch. Create it with `nixos-generate-config --show-hardware-config` on the machine."
  ];

  system.preSwitchChecks.lemmy-cluster-hardware = ''
    echo "lemmy-cluster: hosts/${config.networking.hostName}/hardware-configuration.nix is missing." >&2
    echo "This system was built without the machine's file systems and boot loader; refusing to switch." >&2
    echo "Create it with 'nixos-generate-config --show-hardware-config' on the machine, commit it, and deploy again." >&2
    exit 1
  '';
}
