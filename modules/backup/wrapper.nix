# lemmy-cluster: `lemmy-cluster-pgbackrest`, pgbackrest with the repository's secrets read from files
# (./scripts/pgbackrest.sh), and the systemd credentials its units load: the backup role's (a
# postgres machine, running as postgres) and the backup machine's (running as pgBackRest's user).
#
#   import ./wrapper.nix { inherit lib pkgs; cipherPassFile = ...; runAs = "postgres"; s3 = null | { accessKeyFile; secretKeyFile; }; }
#
# Returns { package; command; credentials; }.
{
  lib,
  pkgs,
  cipherPassFile,
  runAs,
  s3 ? null,
}:
let
  package = pkgs.writeShellScriptBin "lemmy-cluster-pgbackrest" ''
    exec ${pkgs.bash}/bin/bash ${./scripts}/pgbackrest.sh ${
      lib.escapeShellArgs (
        [
          "--bin"
          (lib.getExe pkgs.pgbackrest)
          "--cipher-pass-file"
          cipherPassFile
          "--run-as"
          runAs
        ]
        ++ lib.optionals (s3 != null) [
          "--s3-key-file"
          s3.accessKeyFile
          "--s3-key-secret-file"
          s3.secretKeyFile
        ]
      )
    } -- "$@"
  '';
in
{
  inherit package;
  command = "${package}/bin/lemmy-cluster-pgbackrest";
  # The names pgbackrest.sh looks for in $CREDENTIALS_DIRECTORY.
  credentials = [
    "backup-cipher-pass:${cipherPassFile}"
  ]
  ++ lib.optionals (s3 != null) [
    "backup-s3-key:${s3.accessKeyFile}"
    "backup-s3-key-secret:${s3.secretKeyFile}"
  ];
}
