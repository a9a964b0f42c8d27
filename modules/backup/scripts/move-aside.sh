#!/usr/bin/env bash
# lemmy-cluster: move a stopped PostgreSQL data directory aside (DIR.before-restore-<UTC time>),
# never deleting it: a replica of a restored cluster then clones the restored primary afresh
# (lemmy-cluster-pg-bootstrap without Patroni, Patroni's own clone under it).
# Usage: move-aside.sh --data-dir DIR
set -euo pipefail
data=""
while [ $# -gt 0 ]; do
    case $1 in
    --data-dir) data=${2%/}; shift 2 ;;
    *) echo "move-aside: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$data" ] || { echo "usage: move-aside.sh --data-dir DIR" >&2; exit 2; }
if [ -f "$data/postmaster.pid" ]; then
    pid=$(head -n 1 "$data/postmaster.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "move-aside: PostgreSQL is running on $data (pid $pid); stop it (or Patroni) first" >&2
        exit 1
    fi
fi
if [ ! -e "$data" ]; then
    echo "move-aside: $data does not exist; nothing to move"
    exit 0
fi
aside="$data.before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
mv -- "$data" "$aside"
echo "move-aside: $data is kept in $aside"
