# VM test `storage`: client, fe1 (frontend), app1 (backend), media1 and media2 (pict-rs with
# [pictrs] store = "object_storage" and no endpoint), store1, store2 and store3 (role storage:
# Garage 2, replication_factor 3) and db1 (PostgreSQL primary, also holding pict-rs's repository)
# from cluster.toml. Script: test.py. Asserts that the storage machines run Garage with the node
# keys that the TOML names (installed from their key files), that lemmy-cluster-garage-setup on
# store1 gives all three their role in layout version 1 and creates the bucket with pict-rs's key,
# that each pict-rs machine reaches Garage only through its own nginx balancer on 127.0.0.1:3909,
# that an image uploaded through fe1 is served through fe1 while pict-rs is stopped on media1
# (media2 answers through app1's pict-rs balancer, from the shared repository and bucket), and
# that with Garage stopped on store2, and then store2 crashed, images are still read and written
# (quorum: two of three copies) and counted in the bucket.
#
# Node names decide the addresses: 192.168.1.N for the N-th name in alphabetical order
# (app1 .1, client .2, db1 .3, fe1 .4, media1 .5, media2 .6, store1 .7, store2 .8, store3 .9),
# which cluster.toml repeats. The storage machines' node keys are TEST-ONLY keys from
# garage-keys.nix (secrets.nix installs them); tests/test_vm_tests.py checks them against the
# TOML's garage_node_id values.
{ pkgs, t }:
let
  inherit (pkgs) lib;
  node =
    machine: memorySize:
    t.clusterNode {
      dir = ./.;
      inherit machine memorySize;
    };
  # Garage keeps its metadata (LMDB) and data blocks on the root disk.
  storageNode =
    machine:
    t.clusterNode {
      dir = ./.;
      inherit machine;
      memorySize = 1024;
      extraModules = [ { virtualisation.diskSize = 2048; } ];
    };
  storageMachines = [
    "store1"
    "store2"
    "store3"
  ];
  pictrsMachines = [
    "media1"
    "media2"
  ];
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-storage";

  nodes = {
    client = t.clientNode;
    fe1 = node "fe1" 1024;
    # lemmy_server and nginx balancing the two pict-rs machines.
    app1 = node "app1" 2048;
    # pict-rs alone wants more than 1 GB.
    media1 = node "media1" 2048;
    media2 = node "media2" 2048;
    store1 = storageNode "store1";
    store2 = storageNode "store2";
    store3 = storageNode "store3";
    db1 = node "db1" 1024;
  };

  testScript =
    { nodes, ... }:
    let
      lc = name: nodes.${name}.services.lemmy-cluster;
      app1 = lc "app1";
      media1 = (lc "media1").pictrs;
      db1 = (lc "db1").postgres;
      store1 = (lc "store1").storage;
      nodeIds = lib.genAttrs storageMachines (m: (lc m).storage.nodeId);
      garageS3 = map (m: "${(lc m).privateAddress}:${toString (lc m).storage.s3Port}") storageMachines;
      checks = [
        {
          ok = store1.setup.enable && lib.all (m: !(lc m).storage.setup.enable) [
            "store2"
            "store3"
          ];
          msg = "store1 (the first storage machine) runs lemmy-cluster-garage-setup, and only store1; test.py waits for it there";
        }
        {
          ok = lib.sort lib.lessThan (map (n: n.id) store1.setup.nodes) == lib.sort lib.lessThan (lib.attrValues nodeIds);
          msg = "store1's setup.nodes are not the three storage machines' node ids";
        }
        {
          ok = lib.all (m: (lc m).pictrs.s3Upstreams == garageS3) pictrsMachines;
          msg = "the pict-rs machines' s3Upstreams are ${toString media1.s3Upstreams}, not the storage machines' S3 APIs ${toString garageS3}";
        }
        {
          ok = lib.all (
            m: (lc m).pictrs.objectStorage.endpoint == "http://127.0.0.1:${toString (lc m).pictrs.s3ProxyPort}"
          ) pictrsMachines;
          msg = "pict-rs's objectStorage.endpoint is ${toString media1.objectStorage.endpoint}, not its local S3 balancer";
        }
        {
          ok = lib.all (m: (lc m).pictrs.objectStorage.bucket == store1.setup.bucket) pictrsMachines;
          msg = "pict-rs uses bucket ${toString media1.objectStorage.bucket}, Garage's setup creates ${store1.setup.bucket}";
        }
        {
          # The test secrets are derived from the file names (secret-values.nix).
          ok =
            baseNameOf media1.objectStorage.accessKeyFile == baseNameOf store1.setup.accessKeyFile
            && baseNameOf media1.objectStorage.secretKeyFile == baseNameOf store1.setup.secretKeyFile;
          msg = "pict-rs reads its S3 key from ${toString media1.objectStorage.accessKeyFile} and ${toString media1.objectStorage.secretKeyFile}, Garage's setup imports ${toString store1.setup.accessKeyFile} and ${toString store1.setup.secretKeyFile}: the test secrets need the same file names";
        }
        {
          ok = media1.objectStorage.region == store1.s3Region;
          msg = "pict-rs signs for region ${media1.objectStorage.region}, Garage's S3 API is ${store1.s3Region}";
        }
      ];
    in
    t.script {
      file = ./test.py;
      inherit checks;
      params = {
        DOMAIN = app1.domain;
        ADMIN_USER = app1.backend.setup.adminUsername;
        ADMIN_PASSWORD_FILE = app1.backend.setup.adminPasswordFile;
        APP1 = app1.privateAddress;
        FE1 = (lc "fe1").privateAddress;
        DB1 = (lc "db1").privateAddress;
        MEDIA1 = (lc "media1").privateAddress;
        MEDIA2 = (lc "media2").privateAddress;
        STORE1 = (lc "store1").privateAddress;
        STORE2 = (lc "store2").privateAddress;
        STORE3 = (lc "store3").privateAddress;
        BACKEND_PORT = app1.backend.port;
        PICTRS_PORT = media1.port;
        PICTRS_PROXY_PORT = app1.backend.pictrsProxyPort;
        PG_PORT = db1.port;
        PICTRS_DB = db1.pictrsDatabase.name;
        S3_PROXY_PORT = media1.s3ProxyPort;
        GARAGE_S3_PORT = store1.s3Port;
        GARAGE_RPC_PORT = store1.rpcPort;
        GARAGE_ADMIN_PORT = store1.adminPort;
        GARAGE_BUCKET = store1.setup.bucket;
        GARAGE_ACCESS_KEY_FILE = store1.setup.accessKeyFile;
        GARAGE_META_DIR = nodes.store1.services.garage.settings.metadata_dir;
        NODE_IDS = nodeIds;
        NODE_ZONES = lib.listToAttrs (map (n: lib.nameValuePair n.id n.zone) store1.setup.nodes);
      };
    };
}
