# lemmy-cluster: the settings of pgBackRest's TLS server (the `server` command's section): on the
# postgres machines for the backup machine, on the backup machine for the postgres machines.
#
#   import ./tls-server.nix { tls = { caFile; certFile; keyFile; listenAddress; }; port; clients; stanza; }
#
# A client gets in only with a certificate signed by the cluster's backup CA (caFile) whose
# common name is in clients, and only for the stanza.
{
  tls,
  port,
  clients,
  stanza,
}:
{
  tls-server-address = tls.listenAddress;
  tls-server-port = port;
  tls-server-ca-file = tls.caFile;
  tls-server-cert-file = tls.certFile;
  tls-server-key-file = tls.keyFile;
  tls-server-auth = map (name: "${name}=${stanza}") clients;
}
