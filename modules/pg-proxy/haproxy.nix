# lemmy-cluster: HAProxy's configuration for the local proxy to the PostgreSQL leader, from the
# pg-proxy options.
#
# A pure function (builtins only, no nixpkgs): the pg-proxy module hands its result to nixpkgs'
# services.haproxy.config (which puts it after its own `global` line and stats socket), and the
# live tests evaluate this very file with `nix-instantiate --eval` and run the real HAProxy with
# it. The proxy forwards to the one member whose Patroni REST API answers `OPTIONS /primary`
# with 200: the leader that holds the lock. Sessions to a member that stops answering so are
# closed at once (on-marked-down shutdown-sessions), so the client reconnects to the new leader.
#
#   import ./haproxy.nix cfg   where cfg = config.services.lemmy-cluster.pgProxy
cfg:
let
  hostPort =
    addr: port:
    if builtins.match ".*:.*" addr != null then "[${addr}]:${toString port}" else "${addr}:${toString port}";
  server =
    s:
    "  server ${s.name} ${hostPort s.address cfg.postgresPort} check port ${toString cfg.checkPort}\n";
in
''
    maxconn ${toString cfg.maxConnections}

  defaults
    mode tcp
    timeout connect 3s
    # Idle database connections of a client's pool stay open (TCP keepalives notice dead peers).
    timeout client 24h
    timeout server 24h
    timeout check 1s
    option tcpka

  listen postgres-leader
    bind ${hostPort cfg.listenAddress cfg.port}
    option httpchk OPTIONS /primary
    http-check expect status 200
    # A new leader is used within half a second of taking the lock, a lost one is given up after
    # two failed checks, at most a second (a switchover through this proxy measured 3.3 s, with
    # outliers of 6.5 s, when the checks ran every second).
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
''
+ builtins.concatStringsSep "" (map server cfg.servers)
