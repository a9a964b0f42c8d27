# lemmy-cluster: the parameters of the backends' PostgreSQL connection string, from the backend
# role's database options.
#
# A pure function (builtins only, no nixpkgs): the backend module calls it, and the live tests
# evaluate this very file with `nix-instantiate --eval` and connect their clients with the result.
# Lemmy opens the string with libpq (its migrations at start) and with tokio-postgres (its pool),
# so only parameters that both read the same way are used: `tcp_user_timeout`, for one, is
# milliseconds to libpq and seconds to tokio-postgres, and tokio-postgres has no
# `keepalives_count`.
#
#   import ./database-params.nix cfg.database   →  { params = [ "k=v" ... ]; tcpRetries2; }
database:
{
  params = [
    # A host that drops packets (a crashed machine, a cut link) is given up after this many
    # seconds, and the next host is tried.
    "connect_timeout=${toString database.connectTimeout}"
    # An idle pooled connection to a vanished server is noticed within 5 s + 9 probes x 1 s.
    "keepalives=1"
    "keepalives_idle=5"
    "keepalives_interval=1"
  ]
  # Several PostgreSQL hosts: the one that accepts writes, so a new leader is found without a
  # redeploy (libpq and tokio-postgres try the hosts in order).
  ++ (if builtins.length database.hosts > 1 then [ "target_session_attrs=read-write" ] else [ ]);

  # A statement in flight when its server vanished waits for TCP to give up on the unacknowledged
  # data: after 15 retransmissions by default (some 15 minutes), after 5 here (some 13 s on a LAN,
  # before Patroni's new leader is there), since the connection string cannot set a TCP user
  # timeout that both clients read alike. The kernel setting net.ipv4.tcp_retries2 of the backend
  # machines. (With 6, a link cut to the leader cost the backends 27 s of writes, measured.)
  tcpRetries2 = 5;
}
