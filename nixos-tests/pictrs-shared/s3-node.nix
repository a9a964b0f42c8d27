# The Garage node id of the `s3` node (s3.nix): the public half of its TEST-ONLY node key in
# ../garage-keys.nix (checked by tests/test_vm_tests.py).
{
  name = "s3";
  nodeId = "34e5164ccdda0bd81c546509bff181690a863a7c587c5a69136d509603d105f3";
}
