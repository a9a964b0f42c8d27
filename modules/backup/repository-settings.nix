# lemmy-cluster: pgBackRest's settings on the backup machine (the repository host), from
# services.lemmy-cluster.backupRepository. A pure function, evaluated by the live tests too.
#
#   import ./repository-settings.nix { inherit cfg; tls = { caFile; certFile; keyFile; listenAddress; }; }
#
# Returns { global; repo; instances; server; }: instances are the postgres machines (pgN-*; each
# reached through its own pgBackRest server over TLS; the backup is taken from whichever is the
# primary, so a failover needs no change here), server the section of this machine's `server`
# command, which lets in the postgres machines' certificates only.
{ cfg, tls }:
let
  common = import ./pgbackrest-common.nix { inherit cfg; };
in
{
  inherit (common) global;

  repo = common.repo // {
    type = "posix";
    inherit (cfg) path;
  };

  instances = builtins.listToAttrs (
    map (db: {
      inherit (db) name;
      value = {
        host = db.address;
        host-type = "tls";
        host-port = cfg.tlsPort;
        host-ca-file = tls.caFile;
        host-cert-file = tls.certFile;
        host-key-file = tls.keyFile;
        path = db.dataDir;
        socket-path = db.socketDir;
        inherit (db) port;
        user = "postgres";
      };
    }) cfg.databases
  );

  server = import ./tls-server.nix {
    inherit tls;
    port = cfg.tlsPort;
    clients = map (db: db.name) cfg.databases;
    inherit (cfg) stanza;
  };
}
