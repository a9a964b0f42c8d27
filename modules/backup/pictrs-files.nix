# lemmy-cluster backup role, for a local pict-rs (store = "local"): snapshots of its folder (sled
# repository and image files) on a timer, beside the posix repository of the database backups
# (./scripts/pictrs-backup.sh: pict-rs stops only for the second, short copy pass).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.lemmy-cluster.backup.pictrsFiles;
  top = config.services.lemmy-cluster;
  inherit (lib) mkOption types;
in
{
  options.services.lemmy-cluster.backup.pictrsFiles = {
    enable = lib.mkEnableOption "snapshots of a local pict-rs's folder (its sled repository and files)";
    source = mkOption {
      type = types.str;
      default = config.services.pict-rs.dataDir;
      defaultText = lib.literalExpression "config.services.pict-rs.dataDir";
      description = "pict-rs's folder.";
    };
    destination = mkOption {
      type = types.str;
      example = "/var/lib/pgbackrest/pictrs-files";
      description = "Where the snapshots go (a folder per snapshot, unchanged files hard-linked).";
    };
    schedule = mkOption {
      type = types.str;
      default = "*-*-* 01:30:00";
      description = "When a snapshot is taken (systemd OnCalendar).";
    };
    keep = mkOption {
      type = types.ints.between 1 1000;
      default = 7;
      description = "Snapshots kept.";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = top.pictrs.enable && top.pictrs.store == "local";
        message = "services.lemmy-cluster.backup.pictrsFiles backs up a local pict-rs (pictrs.store = \"local\") on this machine; with object storage back the bucket up instead.";
      }
    ];
    systemd.services.lemmy-cluster-pictrs-backup = {
      description = "lemmy-cluster: a snapshot of pict-rs's folder";
      after = [ "pict-rs.service" ];
      path = [
        pkgs.rsync
        pkgs.coreutils
        pkgs.findutils
        pkgs.bash
        config.systemd.package
      ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${pkgs.bash}/bin/bash ${./scripts}/pictrs-backup.sh ${
          lib.escapeShellArgs [
            "--source"
            cfg.source
            "--dest"
            cfg.destination
            "--keep"
            (toString cfg.keep)
            "--stop-command"
            "systemctl stop pict-rs.service"
            "--start-command"
            "systemctl start pict-rs.service"
          ]
        }";
      };
    };
    systemd.timers.lemmy-cluster-pictrs-backup = {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.schedule;
        Persistent = true;
      };
    };
  };
}
