#!/usr/bin/env bash
# lemmy-cluster: make a new Garage cluster usable for pict-rs, and take in storage machines added
# later. Runs on one storage machine (the first in cluster.toml) as root, through the garage CLI
# (which talks to the local Garage over RPC, with the rpc_secret of /etc/garage.toml, or of
# --rpc-secret-file: the unit's own copy of the secret, so that it does not depend on reading
# another unit's credentials).
#
# Usage: garage-setup.sh --bucket NAME --key-name NAME --access-key-file FILE --secret-key-file FILE
#                        [--read-only] [--rpc-secret-file FILE] [--interval SECONDS]
#                        NODE_ID:ZONE:CAPACITY...
#
# 1. Waits until the local Garage answers and every listed node is connected to it.
# 2. Gives every listed node that has no role yet its zone and capacity in the layout and applies
#    the new layout version (nodes that have a role are left alone: changing a zone or capacity,
#    or removing a node, is the admin's `garage layout` decision, as data moves).
# 3. Imports pict-rs's S3 key (the secret goes through stdin, never on a command line), creates
#    the bucket, and lets the key read, write and own it.
#    With --read-only (the backup machine's key for its copy of pict-rs's bucket): the bucket must
#    exist already (pict-rs's run creates it; the script fails if it is missing), and the key may
#    only read (and list) it: any write or owner permission it has there is denied, so that a
#    stolen key cannot delete or overwrite images.
# Every step is skipped when already done, so the script runs at each start of its unit. Exits 1
# on an error (its unit retries); waits as long as nodes are missing, saying which.
set -euo pipefail

GARAGE=${GARAGE:-garage}
bucket="" key_name="" access_key_file="" secret_key_file="" interval=5 read_only=0
nodes=()
while [ $# -gt 0 ]; do
    case $1 in
    --bucket) bucket=$2; shift 2 ;;
    --key-name) key_name=$2; shift 2 ;;
    --access-key-file) access_key_file=$2; shift 2 ;;
    --secret-key-file) secret_key_file=$2; shift 2 ;;
    --read-only) read_only=1; shift ;;
    --rpc-secret-file) export GARAGE_RPC_SECRET_FILE=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    -*) echo "garage-setup: unknown option $1" >&2; exit 2 ;;
    *) nodes+=("$1"); shift ;;
    esac
done
if [ -z "$bucket" ] || [ -z "$key_name" ] || [ -z "$access_key_file" ] || [ -z "$secret_key_file" ] \
    || [ ${#nodes[@]} -eq 0 ]; then
    echo "usage: garage-setup.sh --bucket NAME --key-name NAME --access-key-file FILE" \
        "--secret-key-file FILE [--read-only] [--rpc-secret-file FILE] [--interval SECONDS] NODE_ID:ZONE:CAPACITY..." >&2
    exit 2
fi

log() { echo "garage-setup: $*"; }
fail() {
    echo "garage-setup: $*" >&2
    exit 1
}

# A secret is its file's content without one trailing newline (as everywhere in lemmy-cluster, and
# as jq reads it below). read_secret FILE VAR sets VAR: a command substitution would strip every
# trailing newline, so that the value checked here would not be the one that Garage gets.
read_secret() {
    local v
    v=$(cat -- "$1" && printf x) || fail "cannot read $1"
    v=${v%x}
    printf -v "$2" '%s' "${v%$'\n'}"
}

for node in "${nodes[@]}"; do
    IFS=: read -r id zone capacity <<<"$node"
    if ! [[ $id =~ ^[0-9a-f]{64}$ ]] || [ -z "$zone" ] || [ -z "$capacity" ]; then
        fail "bad node $node: expected NODE_ID:ZONE:CAPACITY (a 64-digit hex id)"
    fi
done

# `garage status` shows each connected node on a row of its HEALTHY NODES table that starts with
# the first 16 hex digits of its id; a node without a role in the layout shows "NO ROLE ASSIGNED",
# a staged one "pending...". (Its FAILED NODES and STAGED ROLE CHANGES tables, which follow, have
# rows of such ids too, for nodes that need not be connected.)
row_of() {
    awk -v id="${2:0:16}" '/^==== / { healthy = ($0 == "==== HEALTHY NODES ====") } healthy && $1 == id' <<<"$1"
}

# 1. Every node connected.
rounds=0
while :; do
    if status=$("$GARAGE" status 2>&1); then
        missing=()
        for node in "${nodes[@]}"; do
            id=${node%%:*}
            [ -n "$(row_of "$status" "$id")" ] || missing+=("${id:0:16}")
        done
        [ ${#missing[@]} -eq 0 ] && break
        why="waiting for ${#missing[@]} of ${#nodes[@]} storage machines to connect: ${missing[*]}"
    else
        why="waiting for the local Garage to answer: ${status##*$'\n'}"
    fi
    if [ $((rounds % 12)) -eq 0 ]; then log "$why"; fi
    rounds=$((rounds + 1))
    sleep "$interval"
done
log "all ${#nodes[@]} storage machines are connected"

# 2. The layout.
staged=0
for node in "${nodes[@]}"; do
    IFS=: read -r id zone capacity <<<"$node"
    row=$(row_of "$status" "$id")
    case $row in
    *"NO ROLE ASSIGNED"*)
        log "assigning ${id:0:16}: zone $zone, capacity $capacity"
        "$GARAGE" layout assign -z "$zone" -c "$capacity" "$id" >/dev/null
        staged=1
        ;;
    *"pending..."*) staged=1 ;;
    esac
done
if [ $staged -eq 1 ]; then
    shown=$("$GARAGE" layout show)
    version=$(sed -n 's/^Current cluster layout version: \([0-9][0-9]*\).*/\1/p' <<<"$shown" | head -n 1)
    [ -n "$version" ] || fail "no 'Current cluster layout version' in the output of garage layout show"
    "$GARAGE" layout apply --version $((version + 1)) >/dev/null
    log "applied layout version $((version + 1))"
else
    log "every storage machine has its role in the layout"
fi

# 3. The key, the bucket, the permissions.
access_key_id=""
read_secret "$access_key_file" access_key_id
[[ $access_key_id =~ ^GK[0-9a-f]{24}$ ]] \
    || fail "$access_key_file does not hold a Garage access key id (GK and 24 hex digits; synth secrets init makes one)"
# A read-only key is given access to a bucket that another run made: checked before the key is
# imported, so that a run that fails here changes nothing.
if [ $read_only -eq 1 ] && ! err=$("$GARAGE" bucket info "$bucket" 2>&1 >/dev/null); then
    fail "bucket $bucket does not exist; --read-only gives a key access to an existing bucket" \
        "(pict-rs's setup creates it): ${err##*$'\n'}"
fi
if "$GARAGE" key info "$access_key_id" >/dev/null 2>&1; then
    log "key $access_key_id exists"
else
    secret=""
    read_secret "$secret_key_file" secret
    [[ $secret =~ ^[0-9a-f]{64}$ ]] || fail "$secret_key_file does not hold a Garage secret key (64 hex digits)"
    unset secret
    jq -n --rawfile id "$access_key_file" --rawfile secret "$secret_key_file" --arg name "$key_name" \
        '{accessKeyId: ($id | rtrimstr("\n")), secretAccessKey: ($secret | rtrimstr("\n")), name: $name}' \
        | "$GARAGE" json-api ImportKey - >/dev/null
    log "imported key $access_key_id ($key_name)"
fi
if [ $read_only -eq 1 ]; then
    # A key that was given more (reused by mistake) loses it. Garage's deny turns off only the
    # flags given and leaves a permission the key does not have as it is: safe at every run.
    "$GARAGE" bucket deny --write --owner "$bucket" --key "$access_key_id" >/dev/null
    "$GARAGE" bucket allow --read "$bucket" --key "$access_key_id" >/dev/null
    log "key $access_key_id may only read bucket $bucket (no write, no owner); done"
    exit 0
fi
if "$GARAGE" bucket info "$bucket" >/dev/null 2>&1; then
    log "bucket $bucket exists"
else
    "$GARAGE" bucket create "$bucket" >/dev/null
    log "created bucket $bucket"
fi
"$GARAGE" bucket allow --read --write --owner "$bucket" --key "$access_key_id" >/dev/null
log "key $access_key_id may read, write and own bucket $bucket; done"
