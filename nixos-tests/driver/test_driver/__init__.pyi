# Typing stub of nixpkgs' NixOS test driver package (see nixos-tests/driver/README.md).
