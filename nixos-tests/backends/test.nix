# VM test `backends`: client, fe1, two Lemmy backends (api1, api2), pict-rs on media1, a
# PostgreSQL primary (db1) and a replica (db2), from cluster.toml: api1 runs the scheduled tasks,
# each backend sends one outgoing-federation shard in a dedicated lemmy-federate process.
# Script: test.py. Asserts that exactly one Lemmy process runs the scheduled tasks and each
# shard 1..2 is sent once (unit and process environments, the listening socket, the journal),
# that fe1 answers every API request while api1 crashes and stays down, that a write through fe1
# succeeds with only api2 up, and that api1 serves again after it boots.
#
# Node names decide the addresses: 192.168.1.N for the N-th name in alphabetical order
# (api1 .1, api2 .2, client .3, db1 .4, db2 .5, fe1 .6, media1 .7), which cluster.toml repeats.
{ pkgs, t }:
let
  node =
    machine: memorySize:
    t.clusterNode {
      dir = ./.;
      inherit machine memorySize;
    };
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-backends";

  nodes = {
    client = t.clientNode;
    fe1 = node "fe1" 1024;
    # lemmy_server and lemmy-federate (two Lemmy processes each).
    api1 = node "api1" 2048;
    api2 = node "api2" 2048;
    # pict-rs alone wants more than 1 GB.
    media1 = node "media1" 2048;
    db1 = node "db1" 1024;
    db2 = node "db2" 1024;
  };

  testScript =
    { nodes, ... }:
    let
      lc = name: nodes.${name}.services.lemmy-cluster;
      api1 = lc "api1";
    in
    t.script {
      file = ./test.py;
      params = {
        DOMAIN = api1.domain;
        ADMIN_USER = api1.backend.setup.adminUsername;
        ADMIN_PASSWORD_FILE = api1.backend.setup.adminPasswordFile;
        API1 = api1.privateAddress;
        API2 = (lc "api2").privateAddress;
        FE1 = (lc "fe1").privateAddress;
        BACKEND_PORT = api1.backend.port;
      };
    };
}
