# TEST-ONLY WireGuard private keys of the machines of the VM tests with the mesh, by machine name.
# NEVER use them anywhere else: they are public (in this repository and in the world-readable Nix
# store), and guessable by construction: each is base64 of sha256("lemmy-cluster vm test wireguard
# <machine>"), so that the test TOMLs can record each key's public half (wireguard_public_key)
# before any VM exists. nixos-tests/secrets.nix writes the machine's key to its mesh
# privateKeyFile at boot; tests/test_vm_tests.py checks that every machine of every test TOML with
# the mesh has a key here, made from that seed, whose public half is the TOML's.
{
  app1 = "on+6KkfFx1WWyp1djeaEzLLT5LkNzvHIlQKKwTpHms0=";
  db1 = "xy80j6bb98spIj1x0m+NxYQvbBYUzykgIkhl3I2t9gA=";
  fe1 = "M8eyExwHqSq0UioA8xDNfQEGyZTx1n/THneNl44JyWk=";
}
