# VM test `single`: every role on one machine (cluster.toml), and a client.
# Script: test.py. Asserts the units, the API and lemmy-ui through nginx, the firewall, the
# runtime config's mode and owner, and that no secret value is in the system's store closure.
{ pkgs, t }:
pkgs.testers.runNixOSTest {
  name = "lemmy-cluster-single";

  # Addresses: client = 192.168.1.1, lemmy1 = 192.168.1.2 (alphabetical order of the names).
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
      # Every path of the machine's system, for the "no secret in the store" check.
      closure = pkgs.closureInfo { rootPaths = [ nodes.lemmy1.system.build.toplevel ]; };
    in
    t.script {
      file = ./test.py;
      params = {
        DOMAIN = lc.domain;
        SITE_NAME = lc.backend.setup.siteName;
        ADMIN_USER = lc.backend.setup.adminUsername;
        DB_PASSWORD_FILE = lc.backend.database.passwordFile;
        SECRET_FILES = pkgs.lib.unique [
          lc.backend.database.passwordFile
          lc.backend.pictrsApiKeyFile
          lc.backend.setup.adminPasswordFile
          lc.postgres.replicationPasswordFile
        ];
        RUNTIME_CONFIG = nodes.lemmy1.systemd.services.lemmy.environment.LEMMY_CONFIG_LOCATION;
        STORE_PATHS = "${closure}/store-paths";
        LEMMY1 = lc.privateAddress;
        BACKEND_PORT = lc.backend.port;
        UI_PORT = lc.frontend.uiPort;
        PICTRS_PORT = lc.pictrs.port;
        PG_PORT = lc.postgres.port;
      };
    };
}
