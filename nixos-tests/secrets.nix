# Test-only secrets for a lemmy-cluster machine of a VM test.
#
# The generated host modules name secret files (under the TOML's secrets.dir) that an admin
# creates by hand on real machines. Here a oneshot writes them at boot, before any service that
# reads them (LoadCredential fails on a missing file). Every machine must hold the same value for
# the same secret (the db password on the backend and on PostgreSQL, the pict-rs key on the
# backend and pict-rs), so each value is derived from a fixed seed and the file's name.
#
# The derivation (seed and name) is in secret-values.nix: the seed is in the
# Nix store, which is world-readable, acceptable ONLY because this is a test whose machines live
# for minutes and hold nothing. The derived values themselves never pass through Nix, so the
# `single` test can check that no secret value is in the store.
#
# Each value has the format that the real secret has where something checks it: Garage's
# rpc_secret is 64 hex digits, and pict-rs's S3 key is imported into a Garage in every VM test
# that uses object storage (the cluster's storage machines, or the one-node Garage of
# pictrs-shared), so on the machines that import it and on every pict-rs machine with
# store = "object_storage" the access key id is "GK" and 24 hex digits and the secret key 64 hex
# digits, as `synth secrets init` makes them.
#
# The exception: a storage machine's Garage node key is an ed25519 key that the test TOML names
# by its public half (garage_node_id), so it cannot be derived at boot; it is the TEST-ONLY key
# of garage-keys.nix, and so it is in the Nix store.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  lc = config.services.lemmy-cluster;
  values = import ./secret-values.nix;
  garageKeys = import ./garage-keys.nix;
  wireguardKeys = import ./wireguard-keys.nix;
  mesh = lc.mesh.enable;
  pictrsShared = lc.pictrs.store == "object_storage";
  patroni = lc.postgres.enable && lc.postgres.patroni.enable;
  storage = lc.storage.enable;
  backup = lc.backup.enable;

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
      # Under Patroni: the superuser's, pg_rewind's and the REST API's passwords (the same on
      # every member, like every value here).
      ++ lib.optionals patroni [
        lc.postgres.patroni.superuserPasswordFile
        lc.postgres.patroni.rewindPasswordFile
        lc.postgres.patroni.restApiPasswordFile
      ]
    )
    ++ lib.optionals storage (
      [ lc.storage.rpcSecretFile ]
      ++ lib.optionals lc.storage.setup.enable (
        lib.filter (f: f != null) [
          lc.storage.setup.accessKeyFile
          lc.storage.setup.secretKeyFile
        ]
      )
      ++ lib.optionals (lc.storage.setup.enable && lc.storage.setup.backup != null) [
        lc.storage.setup.backup.accessKeyFile
        lc.storage.setup.backup.secretKeyFile
      ]
    )
    # [backup]: the repository's passphrase, and an S3 repository's key (the same on every
    # postgres machine and on the storage machine that imports it into Garage).
    ++ lib.optionals backup (
      lib.filter (f: f != null) [
        lc.backup.cipherPassFile
        lc.backup.s3AccessKeyFile
        lc.backup.s3SecretKeyFile
      ]
    )
  );

  # test_secret's format of each file (secret-values.nix); hex32 when not listed. pict-rs's S3 key
  # is in Garage's formats where a Garage imports it (the storage machine that runs the setup) and
  # on every pict-rs machine that uses object storage (the S3 server of every VM test is Garage).
  formats = lib.listToAttrs (
    map (x: lib.nameValuePair x.file x.format) (
      lib.filter (x: x.file != null) (
        lib.optional storage {
          file = lc.storage.rpcSecretFile;
          format = "hex64";
        }
        ++ lib.optionals (storage && lc.storage.setup.enable) [
          {
            file = lc.storage.setup.accessKeyFile;
            format = "garage-key-id";
          }
          {
            file = lc.storage.setup.secretKeyFile;
            format = "hex64";
          }
        ]
        # The backups' S3 key where it is Garage's (the VM tests' only S3 server).
        ++ lib.optionals (storage && lc.storage.setup.enable && lc.storage.setup.backup != null) [
          {
            file = lc.storage.setup.backup.accessKeyFile;
            format = "garage-key-id";
          }
          {
            file = lc.storage.setup.backup.secretKeyFile;
            format = "hex64";
          }
        ]
        ++ lib.optionals (backup && lc.backup.repository.type == "s3") [
          {
            file = lc.backup.s3AccessKeyFile;
            format = "garage-key-id";
          }
          {
            file = lc.backup.s3SecretKeyFile;
            format = "hex64";
          }
        ]
        ++ lib.optionals (lc.pictrs.enable && pictrsShared) [
          {
            file = lc.pictrs.objectStorage.accessKeyFile;
            format = "garage-key-id";
          }
          {
            file = lc.pictrs.objectStorage.secretKeyFile;
            format = "hex64";
          }
        ]
      )
    )
  );
  formatOf = f: formats.${f} or "hex32";

  hostName = config.networking.hostName;
  wireguardKey =
    wireguardKeys.${hostName}
      or (throw "nixos-tests: machine ${hostName} has no test WireGuard key in nixos-tests/wireguard-keys.nix");
  nodeKey =
    garageKeys.${hostName}
      or (throw "nixos-tests: storage machine ${hostName} has no test node key in nixos-tests/garage-keys.nix");

  # Every unit that reads one of the files (pict-rs.service: also the repository password and
  # the S3 keys; lemmy-cluster-pg-setup.service and lemmy-cluster-patroni-setup.service: also
  # pict-rs's database password).
  consumers =
    lib.optional lc.backend.enable "lemmy.service"
    ++ lib.optional (lc.backend.enable && lc.backend.federation.sending == "dedicated") "lemmy-federate.service"
    ++ lib.optional lc.pictrs.enable "pict-rs.service"
    ++ lib.optionals (lc.postgres.enable && !patroni) [
      "lemmy-cluster-pg-passfile.service"
      "lemmy-cluster-pg-setup.service"
      "postgresql.service"
    ]
    ++ lib.optional (lc.postgres.enable && lc.postgres.role == "replica") "lemmy-cluster-pg-bootstrap.service"
    ++ lib.optionals patroni [
      "patroni.service"
      "lemmy-cluster-patroni-config.service"
      "lemmy-cluster-patroni-setup.service"
    ]
    ++ lib.optionals backup [
      "lemmy-cluster-backup-init.service"
      "pgbackrest-${lc.backup.stanza}-full.service"
      "pgbackrest-${lc.backup.stanza}-diff.service"
    ]
    ++ lib.optional storage "garage.service"
    # nixpkgs' interface unit reads the private key file.
    ++ lib.optional mesh "wireguard-${lc.mesh.interface}.service"
    ++ lib.optional (storage && lc.storage.setup.enable) "lemmy-cluster-garage-setup.service";
in
{
  config = lib.mkIf (lc.enable && (files != [ ] || mesh)) {
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
      # Each value in its file's format, no newline (secret-values.nix); a storage machine's node
      # key from garage-keys.nix, as `synth secrets init` writes it (base64 and a newline).
      script = ''
        ${values.shellFunction}
        # write_secret FILE FORMAT
        write_secret() {
          mkdir -p "$(dirname "$1")"
          if [ ! -s "$1" ]; then
            test_secret "$(basename "$1")" "$2" >"$1.tmp"
            mv "$1.tmp" "$1"
          fi
          chmod 0400 "$1"
        }
        ${lib.concatMapStrings (f: "write_secret ${lib.escapeShellArgs [ f (formatOf f) ]}\n") files}
      ''
      + lib.optionalString storage ''
        key=${lib.escapeShellArg lc.storage.nodeKeyFile}
        mkdir -p "$(dirname "$key")"
        if [ ! -s "$key" ]; then
          printf '%s\n' ${lib.escapeShellArg nodeKey} >"$key.tmp"
          mv "$key.tmp" "$key"
        fi
        chmod 0400 "$key"
      ''
      + lib.optionalString mesh ''
        wg_key=${lib.escapeShellArg lc.mesh.privateKeyFile}
        mkdir -p "$(dirname "$wg_key")"
        if [ ! -s "$wg_key" ]; then
          printf '%s\n' ${lib.escapeShellArg wireguardKey} >"$wg_key.tmp"
          mv "$wg_key.tmp" "$wg_key"
        fi
        chmod 0400 "$wg_key"
      '';
    };
  };
}
