# lemmy-cluster: the pgBackRest settings that the postgres machines and the backup machine share
# (a pure function, like ./pgbackrest-settings.nix and ./repository-settings.nix, which use it).
#
#   import ./pgbackrest-common.nix { cfg = { retention = { full; diff; }; ... }; }
{ cfg }:
{
  global = {
    # Backups and restores copy with two processes; a checkpoint at once instead of waiting.
    process-max = 2;
    start-fast = "y";
    # zst: fast, and small enough (pgBackRest's default gz costs most of a backup's time).
    compress-type = "zst";
    compress-level = 3;
    # How long archive-push and `check` wait for a WAL segment to reach the repository.
    archive-timeout = 60;
  };

  # The repository's encryption and retention. pgBackRest encrypts and decrypts on the side that
  # reads or writes the files' contents (the postgres machine that archives or restores, the
  # backup machine that backs up), so every one of them has the passphrase.
  repo = {
    cipher-type = "aes-256-cbc";
    retention-full-type = "count";
    retention-full = cfg.retention.full;
    retention-diff = cfg.retention.diff;
  };
}
