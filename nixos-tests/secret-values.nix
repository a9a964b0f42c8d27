# How the value of every test-only secret is derived: from a fixed seed and the secret file's
# NAME, so that any machine of a VM test can compute the value another machine holds.
# Used by secrets.nix on every node of a VM test.
#
# The seed is in the Nix store, which is world-readable: acceptable ONLY because these are tests
# whose machines live for minutes and hold nothing. The values themselves are computed at boot
# and never pass through Nix.
let
  seed = "lemmy-cluster VM test seed, not a secret";
in
{
  inherit seed;

  # Shell code defining `test_secret NAME [FORMAT]`, which prints the value of the secret file
  # named NAME, no newline, in FORMAT (the format the real secret has, so that what checks it
  # accepts it):
  #   hex32 (default): 32 hex characters (Lemmy wants 10 to 60 for the admin password);
  #   hex64: 64 hex characters (Garage's rpc_secret; a secret key that Garage imports);
  #   garage-key-id: "GK" and 24 hex characters (an access key id that Garage imports).
  # The hex characters are the first ones of sha256(seed ":" NAME). Machines that share a secret
  # must ask for it in the same format. Needs bash, sha256sum and cut (coreutils).
  shellFunction = ''
    test_secret() {
      local hash
      hash=$(printf '%s' "${seed}:$1" | sha256sum | cut -c1-64)
      case ''${2:-hex32} in
      hex32) printf '%s' "''${hash:0:32}" ;;
      hex64) printf '%s' "$hash" ;;
      garage-key-id) printf 'GK%s' "''${hash:0:24}" ;;
      *)
        echo "test_secret: unknown format $2" >&2
        return 1
        ;;
      esac
    }
  '';
}
