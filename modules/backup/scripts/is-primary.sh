#!/usr/bin/env bash
# lemmy-cluster: exit 0 when the local PostgreSQL accepts writes (the primary, or Patroni's
# leader), 1 when it is a standby or does not answer: the backup units' ExecCondition, so that
# only the machine that leads takes backups. With --wait, waits up to SECONDS for PostgreSQL to
# answer at all (a unit started with PostgreSQL, or Patroni, at boot).
# Usage: is-primary.sh --socket-dir DIR --port PORT [--bin-dir DIR] [--wait SECONDS]
set -euo pipefail
socket="" port="" bindir="" wait=0
while [ $# -gt 0 ]; do
    case $1 in
    --socket-dir) socket=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --bin-dir) bindir=$2/; shift 2 ;;
    --wait) wait=$2; shift 2 ;;
    *) echo "is-primary: unknown option $1" >&2; exit 2 ;;
    esac
done
deadline=$((SECONDS + wait))
while :; do
    if r=$("${bindir}psql" -h "$socket" -p "$port" -d postgres -XAtqc 'SELECT pg_is_in_recovery()' 2>/dev/null); then
        [ "$r" = f ]
        exit
    fi
    [ "$SECONDS" -lt "$deadline" ] || exit 1
    sleep 2
done
