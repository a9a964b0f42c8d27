# How the value of every test-only secret is derived: from a fixed seed and the secret file's
# NAME, so that any machine of a VM test can compute the value another machine holds.
# Used by secrets.nix (the lemmy-cluster machines) and s3.nix (the S3 server, whose root
# credentials are the S3 keys the pict-rs machines read).
#
# The seed is in the Nix store, which is world-readable: acceptable ONLY because these are tests
# whose machines live for minutes and hold nothing. The values themselves are computed at boot
# and never pass through Nix.
let
  seed = "lemmy-cluster VM test seed, not a secret";
in
{
  inherit seed;

  # Shell code defining `test_secret NAME`, which prints the value of the secret file named NAME:
  # 32 hex characters, no newline (Lemmy wants 10 to 60 for the admin password; MinIO at least 3
  # for an access key and 8 for a secret key). Needs sha256sum and cut (coreutils).
  shellFunction = ''
    test_secret() {
      printf '%s' "${seed}:$1" | sha256sum | cut -c1-32 | tr -d '\n'
    }
  '';
}
