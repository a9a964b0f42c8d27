# lemmy-cluster: the arguments of scripts/setup-roles.sh for a PostgreSQL machine, from the
# postgres role's options.
#
# A pure function (builtins only, no nixpkgs), used by ./streaming.nix and ./patroni.nix, and by
# the live tests, which run setup-roles.sh with exactly these arguments.
#
#   import ./setup-args.nix { inherit cfg; credentials = "%d"; }
#
# credentials: the folder of the unit's credentials (systemd's LoadCredential), holding
# db-password, replication-password and, as the options ask, pictrs-db-password,
# superuser-password and rewind-password.
{ cfg, credentials }:
let
  patroni = cfg.patroni.enable or false;
  pictrs = cfg.pictrsDatabase.enable or false;
in
[
  "--database"
  cfg.database
  "--user"
  cfg.user
  "--password-file"
  "${credentials}/db-password"
  "--replication-user"
  cfg.replicationUser
  "--replication-password-file"
  "${credentials}/replication-password"
]
++ (
  if patroni then
    [
      "--superuser"
      cfg.patroni.superuser
      "--superuser-password-file"
      "${credentials}/superuser-password"
      "--rewind-user"
      cfg.patroni.rewindUser
      "--rewind-password-file"
      "${credentials}/rewind-password"
    ]
  else
    [ ]
)
++ (
  if pictrs then
    [
      "--pictrs-database"
      cfg.pictrsDatabase.name
      "--pictrs-user"
      cfg.pictrsDatabase.user
      "--pictrs-password-file"
      "${credentials}/pictrs-db-password"
    ]
  else
    [ ]
)
# Without Patroni the primary keeps a slot per peer (Patroni keeps its own).
++ (
  if !patroni && (cfg.replicationSlots or [ ]) != [ ] then
    [
      "--slots"
      (builtins.concatStringsSep "," cfg.replicationSlots)
    ]
  else
    [ ]
)
