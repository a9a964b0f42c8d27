# lemmy-cluster: the pg_hba.conf lines of a PostgreSQL machine, from the postgres role's options.
#
# A pure function (builtins only, no nixpkgs): the role module calls it, and the live tests
# evaluate the same file with `nix-instantiate --eval` on the options synth renders, so the lines
# the real PostgreSQL runs with in the tests are the module's own. First match wins; every remote
# access is scram-sha-256 and names one database, one role and one address.
#
#   import ./hba.nix cfg   where cfg = config.services.lemmy-cluster.postgres
cfg:
let
  cidr = addr: if builtins.match ".*:.*" addr != null then "${addr}/128" else "${addr}/32";
  hosts = db: user: map (a: "host ${db} ${user} ${cidr a} scram-sha-256") ;
  pictrs = cfg.pictrsDatabase;
  pictrsOn = cfg.pictrsDatabase.enable or false;
  patroni = cfg.patroni.enable or false;
in
# Patroni connects to its own server, and the setup and check tools run, as the superuser over
# the Unix socket (peer authentication: the OS user postgres only). Without Patroni nixpkgs'
# default lines follow these and provide the same.
(if patroni then [ "local all ${cfg.patroni.superuser} peer" ] else [ ])
++ hosts cfg.database cfg.user cfg.allowedClients
++ (if pictrsOn then hosts pictrs.name pictrs.user pictrs.allowedClients else [ ])
# Replicas stream from the others; under Patroni a member also opens replication connections to
# its own server, on its own address.
++ hosts "replication" cfg.replicationUser (
  cfg.replicationPeers ++ (if patroni then [ cfg.listenAddress ] else [ ])
)
++ (
  if patroni then
    # pg_rewind of a former leader reads the new leader's files through the "postgres" database.
    hosts "postgres" cfg.patroni.rewindUser cfg.replicationPeers
  else
    # Without Patroni, peers ask each other "are you in recovery?" before starting as a primary.
    hosts "postgres" cfg.replicationUser cfg.replicationPeers
)
