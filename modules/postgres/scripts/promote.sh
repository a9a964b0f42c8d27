#!/usr/bin/env bash
# lemmy-cluster: promote this hot standby to a writable primary.
#
# Shared by the NixOS postgres module (as lemmy-cluster-pg-promote), `synth promote` and the
# live tests. Run as the database's OS user on the replica.
#
#   promote.sh [--host /run/postgresql] [--port 5432] [--timeout 60] [--slots a,b,...] [--bin-dir DIR]
#
# Exit codes: 0 promoted (or --slots created on an existing primary with --allow-primary),
# 1 failure, 3 this server is not a standby (nothing was changed).
# --slots: physical replication slots to create on the new primary for the machines that will
# follow it (the other replicas, and the old primary once it rejoins).
set -euo pipefail

host=/run/postgresql port=5432 timeout=60 slots="" bindir=""
while [ $# -gt 0 ]; do
    case $1 in
        --host) host=$2 ;;
        --port) port=$2 ;;
        --timeout) timeout=$2 ;;
        --slots) slots=$2 ;;
        --bin-dir) bindir=$2 ;;
        *) echo "promote: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
tool() { if [ -n "$bindir" ]; then echo "$bindir/$1"; else echo "$1"; fi; }
sql() { "$(tool psql)" -w -XAt -v ON_ERROR_STOP=1 -h "$host" -p "$port" -d postgres -c "$1"; }

[[ $timeout =~ ^[0-9]+$ ]] || { echo "promote: --timeout must be a number of seconds" >&2; exit 2; }
# Only psql's stdout is the answer: its warnings (e.g. "could not change directory" when run
# from root's home as postgres) go to stderr and must not be mistaken for it.
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
if ! state=$(sql "SELECT pg_is_in_recovery()" 2>"$errors"); then
    echo "promote: cannot query the local server on $host:$port: $(cat "$errors")" >&2
    exit 1
fi
if [ "$state" != "t" ]; then
    echo "promote: this server is not a standby (it already accepts writes); nothing changed" >&2
    exit 3
fi

start=$(date +%s.%N)
if [ "$(sql "SELECT pg_promote(true, $timeout)")" != "t" ]; then
    echo "promote: the server did not finish promotion within ${timeout}s" >&2
    exit 1
fi
[ "$(sql "SELECT pg_is_in_recovery()")" = "f" ] || { echo "promote: still in recovery after promotion" >&2; exit 1; }
# Tell bootstrap-replica.sh (which runs at every start while this machine's configuration still
# says replica) that this primary's data comes from a promotion, not from an old primary.
touch "$(sql "SHOW data_directory")/lemmy-cluster-promoted"
end=$(date +%s.%N)

IFS=, read -r -a wanted <<<"$slots"
for s in "${wanted[@]}"; do
    [ -n "$s" ] || continue
    [[ $s =~ ^[a-z0-9_]{1,63}$ ]] || { echo "promote: invalid slot name '$s'" >&2; exit 1; }
    sql "SELECT pg_create_physical_replication_slot('$s') WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$s')" >/dev/null
done
awk -v a="$start" -v b="$end" -v s="${slots:+; slots ensured: $slots}" \
    'BEGIN { printf "promote: promoted to primary in %.2f s%s\n", b - a, s }'
