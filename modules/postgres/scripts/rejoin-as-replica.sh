#!/usr/bin/env bash
# lemmy-cluster: make a former primary (or a broken replica) follow the current primary.
#
# Shared by the NixOS postgres module (as lemmy-cluster-pg-rejoin) and the live tests. Run as the
# database's OS user with PostgreSQL stopped. It keeps the old data directory as
# DIR.old-<timestamp> (nothing is deleted) and clones afresh with bootstrap-replica.sh, taking the
# same arguments.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

pgdata="" bindir=""
args=("$@")
while [ $# -gt 0 ]; do
    case $1 in
        --wait-for-primary) shift; continue ;;
        --pgdata) pgdata=${2%/} ;;
        --bin-dir) bindir=$2 ;;
    esac
    shift 2 || break
done
[ -n "$pgdata" ] || { echo "rejoin-as-replica: --pgdata is required" >&2; exit 2; }
tool() { if [ -n "$bindir" ]; then echo "$bindir/$1"; else echo "$1"; fi; }

if [ -e "$pgdata/postmaster.pid" ] && "$(tool pg_ctl)" status -D "$pgdata" >/dev/null 2>&1; then
    echo "rejoin-as-replica: PostgreSQL is running on $pgdata; stop it first" >&2
    exit 1
fi
if [ -e "$pgdata" ]; then
    keep="$pgdata.old-$(date +%Y%m%d%H%M%S)"
    mv "$pgdata" "$keep"
    echo "rejoin-as-replica: kept the old data directory as $keep"
fi
exec "$BASH" "$here/bootstrap-replica.sh" "${args[@]}"
