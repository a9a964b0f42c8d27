# VM test `pictrs-shared`: client, fe1 (frontend), app1 (backend), media1 and media2 (pict-rs with
# [pictrs] store = "object_storage"), db1 (PostgreSQL primary, also holding pict-rs's repository)
# from cluster.toml, and s3 (a one-node Garage, nixos-tests/pictrs-shared/s3.nix), the object
# storage that the TOML names only by its endpoint. Script: test.py. Asserts that an image uploaded through
# fe1 is served through fe1 while pict-rs is stopped on media1 (media2 answers through app1's
# pict-rs balancer, from the shared repository and bucket), that the image is an object in the
# bucket and rows in the pictrs database, and that with media1 back and media2 crashed a second
# upload and both images work.
#
# Node names decide the addresses: 192.168.1.N for the N-th name in alphabetical order
# (app1 .1, client .2, db1 .3, fe1 .4, media1 .5, media2 .6, s3 .7), which cluster.toml
# repeats (the s3 address in its [pictrs] endpoint).
{ pkgs, t }:
let
  inherit (pkgs) lib;
  toml = builtins.fromTOML (builtins.readFile ./cluster.toml);
  node =
    machine: memorySize:
    t.clusterNode {
      dir = ./.;
      inherit machine memorySize;
    };
in
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-pictrs-shared";

  nodes = {
    client = t.clientNode;
    fe1 = node "fe1" 1024;
    # lemmy_server and nginx balancing the two pict-rs machines.
    app1 = node "app1" 2048;
    # pict-rs alone wants more than 1 GB.
    media1 = node "media1" 2048;
    media2 = node "media2" 2048;
    db1 = node "db1" 1024;
    # A one-node Garage (s3.nix), open to the two pict-rs machines.
    s3 = t.testNode {
      modules = [
        ./s3.nix
        {
          lemmy-cluster-test.s3 = {
            inherit (toml.pictrs) bucket region;
            inherit (toml.cluster) domain;
            clients = map (m: toml.machines.${m}.address) [
              "media1"
              "media2"
            ];
          };
          # Garage keeps its metadata (LMDB) and data blocks on the root disk.
          virtualisation.diskSize = 2048;
        }
      ];
    };
  };

  testScript =
    { nodes, ... }:
    let
      lc = name: nodes.${name}.services.lemmy-cluster;
      app1 = lc "app1";
      media1 = (lc "media1").pictrs;
      db1 = (lc "db1").postgres;
      s3 = (lc "s3").storage;
      endpoint = "http://${nodes.s3.networking.primaryIPAddress}:${toString s3.s3Port}";
      checks = [
        {
          ok = lib.all (m: (lc m).pictrs.objectStorage.endpoint == endpoint) [
            "media1"
            "media2"
          ];
          msg = "the pict-rs machines' objectStorage.endpoint is ${toString media1.objectStorage.endpoint}, but the s3 node serves ${endpoint}: fix [pictrs] endpoint in cluster.toml and regenerate";
        }
        {
          ok = media1.objectStorage.bucket == s3.setup.bucket;
          msg = "pict-rs uses bucket ${toString media1.objectStorage.bucket}, the s3 node creates ${s3.setup.bucket}";
        }
        {
          # The test secrets are derived from the file names (secret-values.nix).
          ok =
            baseNameOf media1.objectStorage.accessKeyFile == baseNameOf s3.setup.accessKeyFile
            && baseNameOf media1.objectStorage.secretKeyFile == baseNameOf s3.setup.secretKeyFile;
          msg = "pict-rs reads its S3 key from ${toString media1.objectStorage.accessKeyFile} and ${toString media1.objectStorage.secretKeyFile}, the s3 node's Garage imports ${toString s3.setup.accessKeyFile} and ${toString s3.setup.secretKeyFile}: the test secrets need the same file names";
        }
        {
          ok = media1.objectStorage.region == s3.s3Region;
          msg = "pict-rs signs for region ${media1.objectStorage.region}, the s3 node's Garage is ${s3.s3Region}";
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
        BACKEND_PORT = app1.backend.port;
        PICTRS_PORT = media1.port;
        PICTRS_PROXY_PORT = app1.backend.pictrsProxyPort;
        PG_PORT = db1.port;
        PICTRS_DB = db1.pictrsDatabase.name;
        S3_BUCKET = s3.setup.bucket;
      };
    };
}
