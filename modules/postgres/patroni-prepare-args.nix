# lemmy-cluster: the arguments of scripts/patroni-prepare.sh (patroni.service's ExecStartPre), from
# the postgres role's options. A pure function (builtins only): ./patroni.nix and the live tests.
#
#   import ./patroni-prepare-args.nix { inherit cfg scope dataDir; }
#
# Every member but the one that creates the cluster waits, with an existing database of
# services.postgresql, until the cluster's `initialize` key is in etcd (see the script).
# The key lives under nixpkgs' services.patroni namespace ("/service") and the scope.
{
  cfg,
  scope,
  dataDir,
}:
[ dataDir ]
++ (
  if cfg.patroni.bootstrap then
    [ ]
  else
    [
      "--wait-for"
      "/service/${scope}/initialize"
      "--endpoints"
      (builtins.concatStringsSep "," (map (h: "http://${h}") cfg.patroni.etcdHosts))
    ]
)
