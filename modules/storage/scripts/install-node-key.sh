#!/usr/bin/env bash
# lemmy-cluster: put this storage machine's Garage node key where Garage reads it.
# Usage: install-node-key.sh METADATA_DIR NODE_ID KEY_FILE
#
# KEY_FILE holds base64 of Garage's node key (32-byte seed, then the 32-byte public key), as made
# by `synth secrets init`; NODE_ID is the public key in hex, as the other storage machines know
# this one (their bootstrap_peers). Writes METADATA_DIR/node_key (0600, read by the server) and
# METADATA_DIR/node_key.pub (read by the garage CLI) when they are missing, and refuses to start
# Garage when the key does not match NODE_ID or when METADATA_DIR already holds another key (the
# cluster knows this machine by its id: a silently different key would make it a stranger).
# Runs as Garage's service user before each start (ExecStartPre), so the live tests run it too.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: install-node-key.sh METADATA_DIR NODE_ID KEY_FILE" >&2
    exit 2
fi
meta=$1 node_id=$2 key_file=$3

fail() {
    echo "install-node-key: $*" >&2
    exit 1
}

hex_of() { od -An -v -tx1 | tr -d ' \n'; }

[ -r "$key_file" ] || fail "cannot read the node key $key_file"
key_hex=$(base64 -d <"$key_file" 2>/dev/null | hex_of) || fail "$key_file is not base64"
[ "${#key_hex}" -eq 128 ] || fail "$key_file does not hold a Garage node key (64 bytes in base64)"
have_id=${key_hex:64}
if [ "$have_id" != "$node_id" ]; then
    fail "the key in $key_file has the id $have_id, but this machine's configured garage node id is" \
        "$node_id: push the key that belongs to this machine (synth secrets push)"
fi

umask 077
mkdir -p "$meta"
if [ -e "$meta/node_key" ]; then
    current=$(hex_of <"$meta/node_key")
    if [ "$current" != "$key_hex" ]; then
        fail "$meta/node_key holds another key (id ${current:64}) than this machine's configured" \
            "one ($node_id). The other storage machines know it by $node_id; if this machine's" \
            "data belongs to the other key, put that key's id in cluster.toml instead"
    fi
else
    base64 -d <"$key_file" >"$meta/node_key.new"
    mv "$meta/node_key.new" "$meta/node_key"
    echo "install-node-key: installed the node key of $node_id in $meta"
fi
if [ ! -e "$meta/node_key.pub" ] || [ "$(hex_of <"$meta/node_key.pub")" != "$node_id" ]; then
    base64 -d <"$key_file" | tail -c 32 >"$meta/node_key.pub.new"
    mv "$meta/node_key.pub.new" "$meta/node_key.pub"
fi
