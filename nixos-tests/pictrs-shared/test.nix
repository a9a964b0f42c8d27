# VM test `pictrs-shared`: client, fe1 (frontend), app1 (backend), media1 and media2 (pict-rs with
# [pictrs] store = "object_storage"), db1 (PostgreSQL primary, also holding pict-rs's repository)
# from cluster.toml, and s3 (MinIO, nixos-tests/pictrs-shared/s3.nix), the object storage that the TOML
# names only by its endpoint. Script: test.py. Asserts that an image uploaded through
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
    s3 = {
      imports = [ ./s3.nix ];
      lemmy-cluster-test.s3 = { inherit (toml.pictrs) bucket region; };
      # MinIO wants at least 1 GiB free on its drive, and memory for its buffers.
      virtualisation = {
        memorySize = 2048;
        diskSize = 4096;
      };
    };
  };

  testScript =
    { nodes, ... }:
    let
      lc = name: nodes.${name}.services.lemmy-cluster;
      app1 = lc "app1";
      media1 = (lc "media1").pictrs;
      db1 = (lc "db1").postgres;
      s3 = nodes.s3.lemmy-cluster-test.s3;
      endpoint = "http://${nodes.s3.networking.primaryIPAddress}:${toString s3.port}";
      checks = [
        {
          ok = lib.all (m: (lc m).pictrs.objectStorage.endpoint == endpoint) [
            "media1"
            "media2"
          ];
          msg = "the pict-rs machines' objectStorage.endpoint is ${toString media1.objectStorage.endpoint}, but the s3 node serves ${endpoint}: fix [pictrs] endpoint in cluster.toml and regenerate";
        }
        {
          ok = media1.objectStorage.bucket == s3.bucket;
          msg = "pict-rs uses bucket ${toString media1.objectStorage.bucket}, the s3 node creates ${s3.bucket}";
        }
        {
          ok =
            baseNameOf media1.objectStorage.accessKeyFile == s3.accessKeyName
            && baseNameOf media1.objectStorage.secretKeyFile == s3.secretKeyName;
          msg = "MinIO's root credentials are derived from the secret names ${s3.accessKeyName} and ${s3.secretKeyName}, but pict-rs reads ${toString media1.objectStorage.accessKeyFile} and ${toString media1.objectStorage.secretKeyFile}: set lemmy-cluster-test.s3.accessKeyName/secretKeyName on the s3 node";
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
        S3_TARGET = "${s3.mcAlias}/${s3.bucket}";
      };
    };
}
