# lemmy-cluster: the options naming the files of pgBackRest's TLS connections (a backup machine):
# the backup CA's certificate and this machine's certificate and key, made by `synth secrets init`.
{ lib }:
let
  file =
    what:
    lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "File holding ${what} (root-owned, outside the Nix store; copied at boot to a folder only pgBackRest's user reads).";
    };
in
{
  caFile = file "the cluster's backup CA certificate";
  certFile = file "this machine's certificate for pgBackRest's TLS connections";
  keyFile = file "this machine's private key for pgBackRest's TLS connections";
}
