# VM test `backup`: backups and point-in-time recovery (issue 14) on one machine with every role
# and a posix pgBackRest repository (cluster.toml), and a client. Script: test.py. Asserts that
# the first full backup is taken by itself, then: posts through the API, a table dropped through
# psql (the mistake), `lemmy-cluster-restore --time <before the drop>` (the commands `synth
# restore` runs for this cluster, in its order), and Lemmy serves the old posts again; the data
# directory from before the restore is kept; a snapshot of the local pict-rs's folder, with
# pict-rs running again after it.
{ pkgs, t }:
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-backup";

  nodes = {
    client = t.clientNode;
    lemmy1 = t.clusterNode {
      dir = ./.;
      machine = "lemmy1";
      memorySize = 2048;
    };
  };

  testScript =
    { nodes, ... }:
    let
      lc = nodes.lemmy1.services.lemmy-cluster;
    in
    t.script {
      file = ./test.py;
      checks = [
        {
          ok = lc.backup.enable && lc.backup.repository.type == "posix";
          msg = "the backup VM test needs services.lemmy-cluster.backup with a posix repository on lemmy1";
        }
      ];
      params = {
        DOMAIN = lc.domain;
        ADMIN_USER = lc.backend.setup.adminUsername;
        ADMIN_PASSWORD_FILE = lc.backend.setup.adminPasswordFile;
        LEMMY1 = lc.privateAddress;
        LEMMY_DB = lc.postgres.database;
        DATA_DIR = nodes.lemmy1.services.postgresql.dataDir;
        STANZA = lc.backup.stanza;
        REPOSITORY = lc.backup.repository.path;
      };
    };
}
