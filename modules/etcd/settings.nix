# lemmy-cluster: the options handed to nixpkgs' services.etcd, from the etcd role's options.
#
# A pure function (builtins only, no nixpkgs): the etcd module calls it, and the live tests
# evaluate this very file with `nix-instantiate --eval` and start the real etcd with the
# environment nixpkgs' module makes of these options (ETCD_NAME, ETCD_INITIAL_CLUSTER, ...).
#
#   import ./settings.nix cfg   where cfg = config.services.lemmy-cluster.etcd
cfg:
let
  hostPort =
    addr: port:
    if builtins.match ".*:.*" addr != null then "[${addr}]:${toString port}" else "${addr}:${toString port}";
  clientUrl = addr: "http://${hostPort addr cfg.clientPort}";
  peerUrl = addr: "http://${hostPort addr cfg.peerPort}";
in
{
  inherit (cfg) name;
  # The other members and Patroni reach it on the private address; local tools (etcdctl, the
  # join step) on loopback.
  listenClientUrls = [
    (clientUrl cfg.address)
    (clientUrl "127.0.0.1")
  ];
  advertiseClientUrls = [ (clientUrl cfg.address) ];
  listenPeerUrls = [ (peerUrl cfg.address) ];
  initialAdvertisePeerUrls = [ (peerUrl cfg.address) ];
  # Read only when the members create the cluster together; a member that joins a running
  # cluster gets the current list from lemmy-cluster-etcd-join (etcd's runtime reconfiguration).
  initialCluster = map (n: "${n}=${peerUrl cfg.members.${n}}") (builtins.attrNames cfg.members);
  initialClusterState = "new";
  initialClusterToken = cfg.clusterToken;
  extraConf = {
    # Raft timing for machines in different places and on slow disks: a heartbeat of 250 ms
    # (about the longest round trip expected between machines), a new etcd leader after 2.5 s
    # of silence; both far below Patroni's 20 s leader lock.
    HEARTBEAT_INTERVAL = "250";
    ELECTION_TIMEOUT = "2500";
    # Patroni writes every few seconds: keep one hour of history, so the database stays small
    # (a full etcd refuses writes, and Patroni then demotes the primary).
    AUTO_COMPACTION_MODE = "periodic";
    AUTO_COMPACTION_RETENTION = "1h";
  };
}
