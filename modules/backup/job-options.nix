# lemmy-cluster: the retention and schedule options that the backup role (a postgres machine with
# a repository of its own) and the backup machine (./repository.nix) share.
{ lib }:
let
  inherit (lib) mkOption types;
in
{
  retention = {
    full = mkOption {
      type = types.ints.between 1 100;
      default = 2;
      description = "Full backups kept (older ones expire, with the WAL only they needed).";
    };
    diff = mkOption {
      type = types.ints.between 1 100;
      default = 6;
      description = "Differential backups kept.";
    };
  };
  schedule = {
    full = mkOption {
      type = types.str;
      default = "Sun *-*-* 01:00:00";
      description = "When the full backup runs (systemd OnCalendar).";
    };
    diff = mkOption {
      type = types.str;
      default = "Mon..Sat *-*-* 01:00:00";
      description = "When the differential backup runs (systemd OnCalendar).";
    };
  };
}
