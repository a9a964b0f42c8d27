# lemmy-cluster: the TLS files of pgBackRest on a postgres machine or the backup machine, and its
# TLS server's unit.
#
#   import ./tls-files.nix { inherit lib pkgs; tls = { caFile; certFile; keyFile; }; owner = "postgres"; }
#
# The secrets are root's (0400, `synth secrets push`); pgBackRest runs as OWNER (archive_command as
# postgres, the server, the backup jobs), so lemmy-cluster-backup-tls.service copies them into
# /run/lemmy-cluster-backup-tls (tmpfs, 0700 OWNER), where pgbackrest.conf names them.
{
  lib,
  pkgs,
  tls,
  owner,
}:
let
  dir = "/run/lemmy-cluster-backup-tls";
  paths = {
    caFile = "${dir}/ca.crt";
    certFile = "${dir}/machine.crt";
    keyFile = "${dir}/machine.key";
  };
  copy = pkgs.writeShellScript "lemmy-cluster-backup-tls" ''
    set -eu
    ${pkgs.coreutils}/bin/install -d -m 0700 -o ${owner} -g ${owner} ${dir}
    ${lib.concatMapStrings (
      n:
      "${pkgs.coreutils}/bin/install -m 0400 -o ${owner} -g ${owner} ${lib.escapeShellArg tls.${n}} ${
        lib.escapeShellArg paths.${n}
      }\n"
    ) (lib.attrNames paths)}
  '';
in
{
  inherit paths;

  unit = {
    description = "lemmy-cluster: pgBackRest's TLS certificate and key, readable by ${owner}";
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      ExecStart = copy;
    };
  };

  # pgBackRest's `server` command (its settings: pgbackrest.conf's [global:server]).
  server =
    {
      command,
      user,
      credentials,
      description,
      restartTriggers ? [ ],
    }:
    {
      inherit description restartTriggers;
      wantedBy = [ "multi-user.target" ];
      requires = [ "lemmy-cluster-backup-tls.service" ];
      after = [ "lemmy-cluster-backup-tls.service" ];
      serviceConfig = {
        User = user;
        Group = user;
        LoadCredential = credentials;
        ExecStart = "${command} server";
        Restart = "always";
        RestartSec = "5s";
      };
    };
}
