# The nodes of the scenarios built on cluster/cluster.toml (cluster, frontend-failure, promotion), and
# the test-script parameters read from their configuration.
#
# Node names decide the addresses: 192.168.1.N for the N-th name in alphabetical order
# (app1 .1, client .2, db1 .3, db2 .4, fe1 .5, fe2 .6), which cluster/cluster.toml repeats.
{ t }:
let
  node =
    machine: memorySize:
    t.clusterNode {
      dir = ./cluster;
      inherit machine memorySize;
    };
in
{
  nodes = {
    client = t.clientNode;
    fe1 = node "fe1" 1024;
    fe2 = node "fe2" 1024;
    # lemmy_server and pict-rs (pict-rs alone wants more than 1 GB).
    app1 = node "app1" 2048;
    db1 = node "db1" 1024;
    db2 = node "db2" 1024;
  };

  params =
    nodes:
    let
      lc = name: nodes.${name}.services.lemmy-cluster;
      app1 = lc "app1";
    in
    {
      DOMAIN = app1.domain;
      SITE_NAME = app1.backend.setup.siteName;
      ADMIN_USER = app1.backend.setup.adminUsername;
      ADMIN_PASSWORD_FILE = app1.backend.setup.adminPasswordFile;
      APP1 = app1.privateAddress;
      DB1 = (lc "db1").privateAddress;
      DB2 = (lc "db2").privateAddress;
      FE1 = (lc "fe1").privateAddress;
      FE2 = (lc "fe2").privateAddress;
      BACKEND_PORT = app1.backend.port;
      PICTRS_PORT = app1.pictrs.port;
      UI_PORT = (lc "fe1").frontend.uiPort;
      PG_PORT = (lc "db1").postgres.port;
    };
}
