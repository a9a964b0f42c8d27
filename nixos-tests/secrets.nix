# Test-only secrets for a lemmy-cluster machine of a VM test.
#
# The generated host modules name secret files (under the TOML's secrets.dir) that an admin
# creates by hand on real machines. Here a oneshot writes them at boot, before any service that
# reads them (LoadCredential fails on a missing file). Every machine must hold the same value for
# the same secret (the db password on the backend and on PostgreSQL, the pict-rs key on the
# backend and pict-rs), so each value is derived from a fixed seed and the file's name.
#
# The derivation (seed and name) is in secret-values.nix, shared with s3.nix: the seed is in the
# Nix store, which is world-readable, acceptable ONLY because this is a test whose machines live
# for minutes and hold nothing. The derived values themselves never pass through Nix, so the
# `single` test can check that no secret value is in the store.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  lc = config.services.lemmy-cluster;
  values = import ./secret-values.nix;
  pictrsShared = lc.pictrs.store == "object_storage";

  files = lib.unique (
    lib.optionals lc.backend.enable [
      lc.backend.database.passwordFile
      lc.backend.pictrsApiKeyFile
      lc.backend.setup.adminPasswordFile
    ]
    ++ lib.optionals lc.pictrs.enable (
      [ lc.pictrs.apiKeyFile ]
      # null while unset: the pictrs module's assertion names the missing option.
      ++ lib.optionals pictrsShared (
        lib.filter (f: f != null) [
          lc.pictrs.repo.passwordFile
          lc.pictrs.objectStorage.accessKeyFile
          lc.pictrs.objectStorage.secretKeyFile
        ]
      )
    )
    ++ lib.optionals lc.postgres.enable (
      [
        lc.postgres.passwordFile
        lc.postgres.replicationPasswordFile
      ]
      ++ lib.optional (
        lc.postgres.pictrsDatabase.enable && lc.postgres.pictrsDatabase.passwordFile != null
      ) lc.postgres.pictrsDatabase.passwordFile
    )
  );

  # Every unit that reads one of the files (pict-rs.service: also the repository password and
  # the S3 keys; lemmy-cluster-pg-setup.service: also pict-rs's database password).
  consumers =
    lib.optional lc.backend.enable "lemmy.service"
    ++ lib.optional (lc.backend.enable && lc.backend.federation.sending == "dedicated") "lemmy-federate.service"
    ++ lib.optional lc.pictrs.enable "pict-rs.service"
    ++ lib.optionals lc.postgres.enable [
      "lemmy-cluster-pg-passfile.service"
      "lemmy-cluster-pg-setup.service"
      "postgresql.service"
    ]
    ++ lib.optional (lc.postgres.enable && lc.postgres.role == "replica") "lemmy-cluster-pg-bootstrap.service";
in
{
  config = lib.mkIf (lc.enable && files != [ ]) {
    systemd.services.lemmy-cluster-test-secrets = {
      description = "lemmy-cluster VM test: write the test secrets";
      wantedBy = [ "multi-user.target" ];
      requiredBy = consumers;
      before = consumers;
      path = [ pkgs.coreutils ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        UMask = "0077";
      };
      # 32 hex characters per secret, no newline (secret-values.nix).
      script = ''
        ${values.shellFunction}
        for f in ${lib.escapeShellArgs files}; do
          mkdir -p "$(dirname "$f")"
          if [ ! -s "$f" ]; then
            test_secret "$(basename "$f")" >"$f.tmp"
            mv "$f.tmp" "$f"
          fi
          chmod 0400 "$f"
        done
      '';
    };
  };
}
