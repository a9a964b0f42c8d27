# lemmy-cluster: the way in. Every machine of the cluster runs sshd with key-only login, the
# admins' keys (cluster.toml's [ssh] keys) authorised for the deploy user, and port 22 open to
# where the deployers come from ([ssh] allow_from; default: everywhere). Evaluation-time
# assertions refuse a configuration that would leave a machine without a way in (no sshd, no key
# for the deploy user) or without a boot loader, each saying what to add and where.
#
# Options set here, as nixpkgs declares them (nixos/modules/services/networking/ssh/sshd.nix):
# services.openssh.{enable, openFirewall, ports, settings.PasswordAuthentication,
# settings.KbdInteractiveAuthentication, settings.PermitRootLogin} and
# users.users.<name>.openssh.authorizedKeys.{keys, keyFiles}; the boot loaders' enables
# (nixos/modules/system/boot/loader/grub/grub.nix: boot.loader.grub.enable defaults to
# !boot.isContainer, and grub.mirroredBoots is derived from boot.loader.grub.devices).
{
  config,
  lib,
  ...
}:
let
  top = config.services.lemmy-cluster;
  cfg = top.access;
  inherit (lib) mkOption types;
  host = config.networking.hostName;
  user = cfg.deployUser;
  noKeys.openssh.authorizedKeys = {
    keys = [ ];
    keyFiles = [ ];
  };
  userCfg = config.users.users.${user} or noKeys;
  # Read with defaults: a loader whose module is not part of the evaluation counts as off (in
  # NixOS every one is declared, off by default; an evaluation of parts of NixOS may lack them).
  loader = config.boot.loader or { };
  # A VM profile (nixos-rebuild build-vm, NixOS tests: qemu-vm.nix) boots without a boot loader;
  # qemu-vm.nix is the module that declares virtualisation.useBootLoader.
  vmProfile = (config.virtualisation or { }) ? useBootLoader;
  enabledIf = path: lib.attrByPath (path ++ [ "enable" ]) false loader;
  bootable =
    config.boot.isContainer
    || vmProfile
    || enabledIf [ "systemd-boot" ]
    || (enabledIf [ "grub" ] && lib.attrByPath [ "grub" "mirroredBoots" ] [ ] loader != [ ])
    || enabledIf [ "generic-extlinux-compatible" ]
    || enabledIf [ "limine" ];
in
{
  options.services.lemmy-cluster.access = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether lemmy-cluster runs sshd on this machine with key-only login and the admins' keys.
        Turning it off does not turn sshd off; an assertion still requires services.openssh.enable.
      '';
    };
    deployUser = mkOption {
      type = types.strMatching "[a-z_][a-z0-9_-]*";
      default = "root";
      description = ''
        The user `synth deploy` logs in as (cluster.toml's ssh_user). When it is not root, the
        user is created (a normal user in group wheel), may run any command with sudo without a
        password (deploy's activation and `synth secrets push` run `sudo -n`), and is one of nix's
        trusted users (the deploy copies the new system as this user).
      '';
    };
    authorizedKeys = mkOption {
      type = types.listOf types.singleLineStr;
      default = [ ];
      example = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... admin@laptop" ];
      description = "The admins' OpenSSH public keys, authorised for the deploy user (cluster.toml's [ssh] keys).";
    };
    allowFrom = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "198.51.100.0/24" ];
      description = ''
        Networks (addresses or CIDR prefixes) allowed to reach sshd's ports. Empty: everyone
        (services.openssh.openFirewall).
      '';
    };
    evaluationOnly = mkOption {
      type = types.bool;
      default = false;
      internal = true;
      description = ''
        Set by modules/no-hardware.nix: the system has no hardware configuration and refuses to
        switch, so it can lock nobody out; the key and boot loader assertions are skipped.
      '';
    };
  };

  config = lib.mkIf top.enable (
    lib.mkMerge [
      (lib.mkIf cfg.enable {
        services.openssh = {
          enable = lib.mkDefault true;
          openFirewall = lib.mkDefault (cfg.allowFrom == [ ]);
          settings = {
            PasswordAuthentication = lib.mkDefault false;
            KbdInteractiveAuthentication = lib.mkDefault false;
            PermitRootLogin = lib.mkDefault "prohibit-password";
          };
        };
        users.users.${user} = {
          openssh.authorizedKeys.keys = cfg.authorizedKeys;
        }
        // lib.optionalAttrs (user != "root") {
          isNormalUser = lib.mkDefault true;
          extraGroups = [ "wheel" ];
        };
        # `synth deploy` copies the new system as this user (nix copy --to ssh-ng://user@machine):
        # nix accepts unsigned store paths from trusted users only (nixos/modules/config/nix.nix).
        # (A definition replaces the option's default [ "root" ]: root is listed again; with root as
        # the deploy user there is no definition at all.)
        nix.settings.trusted-users = lib.mkIf (user != "root") [
          "root"
          user
        ];
        security.sudo.extraRules = lib.mkIf (user != "root") [
          {
            users = [ user ];
            commands = [
              {
                command = "ALL";
                options = [ "NOPASSWD" ];
              }
            ];
          }
        ];
        services.lemmy-cluster.firewall.allow = lib.optionals (cfg.allowFrom != [ ]) (
          map (port: {
            inherit port;
            from = cfg.allowFrom;
            description = "sshd, for the deployers";
          }) config.services.openssh.ports
        );
      })
      {
        assertions = [
          {
            assertion = config.services.openssh.enable;
            message = ''
              services.lemmy-cluster: services.openssh.enable is false on ${host}: after a switch
              nobody could log in, and `synth deploy` could neither check nor roll back the machine.
              Remove `services.openssh.enable = false` (from hosts/${host}/configuration.nix), or
              set services.lemmy-cluster.access.enable = true.
            '';
          }
          {
            assertion =
              cfg.evaluationOnly
              || userCfg.openssh.authorizedKeys.keys != [ ]
              || userCfg.openssh.authorizedKeys.keyFiles != [ ];
            message = ''
              services.lemmy-cluster: no SSH key is authorised for ${user}, the user `synth deploy`
              logs in as on ${host}, and passwords are refused: after a switch nobody could log in.
              Add the admins' public keys to cluster.toml, `[ssh] keys = [ "ssh-ed25519 AAAA... you@laptop" ]`,
              and run `synth generate`; or set users.users.${user}.openssh.authorizedKeys.keys in
              hosts/${host}/configuration.nix.
            '';
          }
          {
            assertion = cfg.evaluationOnly || bootable;
            message = ''
              services.lemmy-cluster: ${host} has no boot loader: the system would not boot again.
              Put the boot loader that nixos-generate-config wrote into the machine's
              /etc/nixos/configuration.nix into hosts/${host}/configuration.nix (synth never writes
              that file; hosts/${host}/default.nix imports it), for example
                boot.loader.grub.devices = [ "/dev/sda" ];   # BIOS: the disk GRUB installs to
              or
                boot.loader.systemd-boot.enable = true;      # UEFI
                boot.loader.efi.canTouchEfiVariables = true;
              Containers (boot.isContainer) and VM profiles need none.
            '';
          }
        ];
      }
    ]
  );
}
