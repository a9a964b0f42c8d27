# TEST-ONLY Garage node keys of the storage machines of the VM tests, by machine name. NEVER use
# them anywhere else: they are public (in this repository and in the world-readable Nix store),
# and their seeds are guessable by construction.
#
# Each value is what `synth secrets init` writes to secrets/garage-node-key.<machine>: base64 of
# Garage's node key, the 32-byte ed25519 seed followed by the 32-byte public key. Here the seed is
# sha256("lemmy-cluster vm test <machine>"), so that the test TOMLs can record each key's public
# half (garage_node_id) before any VM exists. nixos-tests/secrets.nix writes the machine's key to
# its nodeKeyFile at boot; tests/test_vm_tests.py checks that every storage machine of every test
# TOML has a key here, made from that seed, whose public half is the TOML's garage_node_id, and the
# same of the one-node Garage `s3` of pictrs-shared (its id in pictrs-shared/s3-node.nix).
{
  s3 = "6MYQPgzAzB4xOL9+HxRqf4DtwkOLcJ9q8pFFE2nsp+M05RZMzdoL2BxUZQm/8YFpCoY6fFh8WmkTbVCWA9EF8w==";
  store1 = "N4aZCK7RggC+XehDzedAGc3VO6vDtCgpMJAtq4Gs01TYiMWR7oRig1q0S/w7ERTVXGduE2fksc/UFsnwI2dM8A==";
  store2 = "ANGYj0zadP2baHQBO3hO2CeGrJe7CcZ14jKK/yaJniRYoFzB6tds2OlVAt4KkdIJViij9HCFkRq6qYxO6Cvsng==";
  store3 = "Fxc+D7CM65RsrThqNMrvAu4r6cxi4+ys2jm27ak2s+7CpySDZp80xGQnHLK3qtG080tU4JsJDrpYpsZyQMjc6Q==";
}
