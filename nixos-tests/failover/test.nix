# VM test `failover`: automatic failover of PostgreSQL under Patroni (issue 10). client, fe1
# (frontend), app1 (backend + pict-rs), db1, db2, db3 (PostgreSQL under Patroni, and the three etcd
# members), from cluster.toml beside this file. Script: test.py. Asserts that the cluster comes up
# (etcd healthy on its three members, one Patroni leader and two streaming replicas, Lemmy
# answering through fe1); that after the leader's VM crashes, with no command on any machine, a
# post written through fe1 succeeds within a stated bound and every post written before is still
# there; and that the crashed VM, started again, comes back as a streaming replica of the new
# leader on its timeline, with the posts written after the crash.
#
# Node names decide the addresses: 192.168.1.N for the N-th name in alphabetical order
# (app1 .1, client .2, db1 .3, db2 .4, db3 .5, fe1 .6), which cluster.toml repeats.
{ pkgs, t }:
let
  inherit (pkgs) lib;
  inherit (import ../../modules/lib.nix { inherit lib; }) hostPort;
  node =
    machine: memorySize:
    t.clusterNode {
      dir = ./.;
      inherit machine memorySize;
    };
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-failover";

  nodes = {
    client = t.clientNode;
    fe1 = node "fe1" 1024;
    # lemmy_server and pict-rs (pict-rs alone wants more than 1 GB).
    app1 = node "app1" 2048;
    # Patroni, PostgreSQL and etcd.
    db1 = node "db1" 1024;
    db2 = node "db2" 1024;
    db3 = node "db3" 1024;
  };

  testScript =
    { nodes, ... }:
    let
      lc = name: nodes.${name}.services.lemmy-cluster;
      app1 = lc "app1";
      # The nodes whose PostgreSQL runs under Patroni, and the etcd members (the client node has
      # no lemmy-cluster options).
      patroniNodes = lib.filterAttrs (
        _: n: n.services.lemmy-cluster.postgres.patroni.enable or false
      ) nodes;
      etcdNodes = lib.filterAttrs (_: n: n.services.lemmy-cluster.etcd.enable or false) nodes;
      bootstrapNodes = lib.attrValues (
        lib.filterAttrs (_: n: n.services.lemmy-cluster.postgres.patroni.bootstrap) patroniNodes
      );
      bootstrap = lib.head bootstrapNodes;
      pgOf = n: n.services.lemmy-cluster.postgres;
      etcdOf = n: n.services.lemmy-cluster.etcd;
      pgPorts = lib.unique (lib.mapAttrsToList (_: n: (pgOf n).port) patroniNodes);
    in
    t.script {
      file = ./test.py;
      checks = [
        {
          ok = lib.length bootstrapNodes == 1;
          msg = "expected exactly one Patroni member with postgres.patroni.bootstrap (the cluster's first member), got ${toString (lib.length bootstrapNodes)}";
        }
        {
          ok = lib.length pgPorts == 1;
          msg = "the Patroni members listen on different PostgreSQL ports (${toString pgPorts}); the script expects one";
        }
      ];
      params = {
        DOMAIN = app1.domain;
        ADMIN_USER = app1.backend.setup.adminUsername;
        ADMIN_PASSWORD_FILE = app1.backend.setup.adminPasswordFile;
        APP1 = app1.privateAddress;
        FE1 = (lc "fe1").privateAddress;
        BACKEND_PORT = app1.backend.port;
        # Each member's Patroni REST API, from its own configuration, and PostgreSQL's port.
        PATRONI_APIS = lib.mapAttrs (
          _: n: "http://${hostPort (pgOf n).listenAddress (pgOf n).patroni.restApiPort}"
        ) patroniNodes;
        PG_PORT = lib.head pgPorts;
        LEMMY_DB = (pgOf bootstrap).database;
        # Each etcd member's client URL, and the membership the etcd module was given.
        ETCD_CLIENT_URLS = lib.mapAttrs (
          _: n: "http://${hostPort (etcdOf n).address (etcdOf n).clientPort}"
        ) etcdNodes;
        ETCD_MEMBERS = lib.attrNames (etcdOf (lib.head (lib.attrValues etcdNodes))).members;
        # The leader lock's lifetime that the cluster is created with (patroni-settings.nix).
        PATRONI_TTL = bootstrap.services.patroni.settings.bootstrap.dcs.ttl;
      };
    };
}
