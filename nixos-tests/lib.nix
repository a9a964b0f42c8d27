# Shared pieces of the lemmy-cluster VM tests (one scenario per file beside this one).
#
# - clusterNode: a test node built like a real machine: the role modules
#   (self.nixosModules.default) plus the host module that synth generated from a test TOML into
#   nixos-tests/<scenario>/hosts/<machine>/default.nix, plus the test secrets and tools (node.nix).
#   The host module imports its folder's hardware-configuration.nix and configuration.nix, of which
#   a scenario has none, and otherwise ../../modules/no-hardware.nix only where that exists: not
#   under nixos-tests/<scenario>/, so a node imports nothing more and stays switchable (its file
#   systems come from qemu-vm.nix); tests/test_nix_files.py checks that it imports nothing.
# - testNode: a node with the role modules set by hand (no generated host module).
# - clientNode: a machine outside the cluster that plays the user's browser.
# - script: the test script the driver runs: lib.py, then the scenario's parameters (read from
#   the nodes' configuration by the caller), then the scenario's test.py without its lint header.
#   tests/test_vm_tests.py assembles the same text to check it as the driver build does.
{ pkgs, self }:
let
  inherit (pkgs) lib;

  # Everything above this line in a scenario's .py file exists only for ruff (imports that
  # declare the driver's globals, the helpers of lib.py and the Nix parameters).
  bodyMarker = "# ---- test body (nixos-tests/lib.nix drops everything above this line) ----\n";

  body =
    file:
    let
      parts = lib.splitString bodyMarker (builtins.readFile file);
    in
    if lib.length parts == 2 then
      lib.elemAt parts 1
    else
      throw "nixos-tests: ${toString file} must contain the line `${lib.removeSuffix "\n" bodyMarker}` exactly once";

  # A Nix value as a Python literal (strings, integers and lists or attribute sets of them).
  pythonLiteral =
    v:
    if lib.isBool v || v == null then
      throw "nixos-tests: pass strings or integers as test parameters, not ${builtins.toJSON v}"
    else
      builtins.toJSON v;

  # The generated host module of MACHINE, from DIR (nixos-tests/<scenario>). The same path value must be
  # used wherever it is disabled again (see promotion.nix).
  hostModule = dir: machine: dir + "/hosts/${machine}/default.nix";
in
{
  inherit hostModule;

  clusterNode =
    {
      dir,
      machine,
      memorySize ? 1024,
      extraModules ? [ ],
    }:
    {
      imports = [
        self.nixosModules.default
        (hostModule dir machine)
        ./node.nix
      ]
      ++ extraModules;
      virtualisation.memorySize = memorySize;
    };

  # A test node that runs role modules configured by hand instead of a generated host module
  # (e.g. the one-node Garage of pictrs-shared), with the test secrets and tools of node.nix.
  testNode =
    {
      modules,
      memorySize ? 1024,
    }:
    {
      imports = [
        self.nixosModules.default
        ./node.nix
      ]
      ++ modules;
      virtualisation.memorySize = memorySize;
    };

  clientNode =
    { pkgs, ... }:
    {
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.netcat
      ];
    };

  script =
    {
      file,
      params ? { },
      # Conditions on the nodes' configuration that the script relies on: { ok; msg; } each; the
      # first one that fails stops the evaluation with its message.
      checks ? [ ],
    }:
    let
      scenario = baseNameOf (dirOf file);
      failed = lib.filter (c: !c.ok) checks;
    in
    if failed != [ ] then
      throw "nixos-tests/${scenario}: ${(lib.head failed).msg}"
    else
      lib.concatStringsSep "\n" [
        (builtins.readFile ./lib.py)
        "# ---- parameters of this test, from the nodes' configuration (nixos-tests/lib.nix) ----"
        (lib.concatStrings (lib.mapAttrsToList (name: value: "${name} = ${pythonLiteral value}\n") params))
        "# ---- nixos-tests/${scenario}/${baseNameOf file} ----"
        (body file)
      ];
}
