{
  description = "lemmy-cluster: one Lemmy instance on several NixOS machines";

  # NixOS stable: Lemmy 0.19 (lemmy-server, lemmy-ui), pict-rs 0.5, PostgreSQL 14-18.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Written by `synth generate` from cluster.toml; adding a machine needs no edit here.
      machines = if builtins.pathExists ./hosts/machines.nix then import ./hosts/machines.nix else { };

      # The role modules, the machine's generated module and its platform. The generated module
      # imports the machine's own files itself (hosts/<name>/hardware-configuration.nix, or
      # modules/no-hardware.nix while it is missing, and hosts/<name>/configuration.nix), so that
      # it is the same machine however it is evaluated; see synth/render.py's HOST_IMPORTS.
      hostModules = name: machine: [
        self.nixosModules.default
        (./hosts + "/${name}")
        { nixpkgs.hostPlatform = lib.mkDefault machine.system; }
      ];

      # pyproject.toml's dependencies and the test dependencies the non-live tests import
      # (tests/test_flake_sandbox.py checks that they match).
      pythonTestInputs =
        ps: with ps; [
          pydantic
          click
          tomlkit
          pytest-testinfra
          cryptography
          pytest
          hypothesis
        ];
    in
    {
      nixosModules = {
        common = ./modules/common.nix;
        access = ./modules/access.nix;
        frontend = ./modules/frontend;
        backend = ./modules/backend;
        pictrs = ./modules/pictrs;
        postgres = ./modules/postgres;
        etcd = ./modules/etcd;
        pg-proxy = ./modules/pg-proxy;
        storage = ./modules/storage;
        mesh = ./modules/mesh;
        backup = ./modules/backup;
        default = ./modules;
      };

      nixosConfigurations = lib.mapAttrs (
        name: machine: lib.nixosSystem { modules = hostModules name machine; }
      ) machines;

      packages = forAllSystems (pkgs: {
        synth = pkgs.python3Packages.buildPythonApplication {
          pname = "lemmy-cluster-synth";
          version = "0.1.0";
          pyproject = true;
          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions [
              ./pyproject.toml
              ./README.md
              ./synth
            ];
          };
          build-system = [ pkgs.python3Packages.setuptools ];
          dependencies = with pkgs.python3Packages; [
            pydantic
            click
            tomlkit
            pytest-testinfra
            cryptography
          ];
          # `synth diagram` lays its pictures out with Graphviz's dot.
          makeWrapperArgs = [
            "--prefix"
            "PATH"
            ":"
            (lib.makeBinPath [ pkgs.graphviz ])
          ];
          pythonImportsCheck = [ "synth.cli" ];
          meta.mainProgram = "synth";
        };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.synth;
      });

      apps = forAllSystems (pkgs: {
        synth = {
          type = "app";
          program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.synth;
        };
        default = self.apps.${pkgs.stdenv.hostPlatform.system}.synth;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: pythonTestInputs ps ++ [ ps.mypy ]))
            pkgs.ruff
            pkgs.nixfmt
            pkgs.nginx
            pkgs.postgresql_17
            pkgs.jq
            pkgs.graphviz
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          # Evaluating a machine's whole system (assertions, option types, unit files) without
          # building it: the check's output is the toplevel's derivation path.
          evalChecks = lib.mapAttrs' (
            name: machine:
            lib.nameValuePair "eval-${name}" (
              pkgs.writeText "lemmy-cluster-eval-${name}" (
                builtins.unsafeDiscardStringContext self.nixosConfigurations.${name}.config.system.build.toplevel.drvPath
              )
            )
          ) (lib.filterAttrs (_: m: m.system == system) machines);
        in
        evalChecks
        // {
          # The Python test suite; tests that need nginx, PostgreSQL, namespaces or Nix itself skip
          # in the sandbox (they run in the repository's CI, see .ci/run; tests/test_flake_sandbox.py
          # runs this check's way there). gixy: the nginx checks of tests/test_gixy.py, with the
          # gixy that nixpkgs' own nginx builds run.
          synth-tests =
            pkgs.runCommand "lemmy-cluster-synth-tests"
              {
                nativeBuildInputs = [
                  (pkgs.python3.withPackages pythonTestInputs)
                  pkgs.graphviz
                  pkgs.gixy
                ];
                # dot measures its labels with real fonts; the sandbox has none of its own.
                FONTCONFIG_FILE = pkgs.makeFontsConf { fontDirectories = [ pkgs.dejavu_fonts ]; };
              }
              ''
                cp -r ${self}/. source && chmod -R u+w source && cd source
                HOME=$TMPDIR PYTHONPATH=$PWD python -m pytest -q -p no:cacheprovider -m "not live" tests
                touch $out
              '';
        }
        // lib.optionalAttrs (system == "x86_64-linux") (import ./nixos-tests { inherit pkgs self; })
      );
    };
}
