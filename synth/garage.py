"""Garage node keys and S3 keys, made here so that the cluster's configuration can name them.

Garage authenticates its machines by ed25519 keys: a storage machine only accepts a peer whose
public key (its node id) it was told, so every storage machine's generated module lists the ids of
the others (bootstrap_peers). synth makes each machine's key in secrets/ and records the public
half in cluster.toml; the storage module installs the key before Garage first starts.

A node key file here holds base64 of Garage's own node_key format: the 32-byte seed followed by
the 32-byte public key (libsodium's secret-key layout), on one line. The node id is the lowercase
hex of the public key.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class NodeKeyError(ValueError):
    """A node key file that is not a valid Garage node key."""


def public_key(seed: bytes) -> bytes:
    """The ed25519 public key of a 32-byte SEED."""
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def new_node_key() -> bytes:
    """A fresh node key in Garage's format: seed || public key (64 bytes)."""
    seed = secrets.token_bytes(32)
    return seed + public_key(seed)


def encode(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii") + "\n"


def node_id(text: str) -> str:
    """The node id of a node key file's TEXT; NodeKeyError when it is not a consistent key."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise NodeKeyError("not base64") from None
    if len(key) != 64:
        raise NodeKeyError(f"{len(key)} bytes instead of 64 (seed and public key)")
    seed, pub = key[:32], key[32:]
    if public_key(seed) != pub:
        raise NodeKeyError("its public half does not belong to its seed")
    return pub.hex()


def read_node_id(path: Path) -> str:
    try:
        return node_id(path.read_text(encoding="ascii"))
    except UnicodeDecodeError:
        raise NodeKeyError("not base64") from None


def new_access_key_id() -> str:
    """An S3 access key id that `garage key import` accepts: "GK" and 24 hex digits."""
    return "GK" + secrets.token_hex(12)


def new_secret_key() -> str:
    """An S3 secret key that `garage key import` accepts: 64 hex digits."""
    return secrets.token_hex(32)


def new_rpc_secret() -> str:
    """Garage's rpc_secret: 32 bytes as 64 hex digits, the same on every storage machine."""
    return secrets.token_hex(32)
