#!/usr/bin/env bash
# lemmy-cluster: refuse to start a primary while another PostgreSQL machine already accepts writes.
#
# Shared by the NixOS postgres module (ExecStartPre of postgresql.service on the machine whose
# configuration says "primary") and the live tests. Run as the database's OS user.
#
#   check-no-other-primary.sh --peers HOST[,HOST...] [--port 5432] [--user replicator]
#                             --passfile PGPASS [--bin-dir DIR] [--timeout 3]
#
# After a failover the old primary may boot again with its old configuration. Started as a
# primary it would accept writes that the new primary never sees (split brain), and backends that
# list every PostgreSQL machine might connect to it. So: ask each peer whether it is in recovery;
# if one answers "no" (it is a writable primary), exit 1 with the way out. Peers that cannot be
# reached do not block the start (a whole cluster booting at once must come up).
set -euo pipefail

peers="" port=5432 user=replicator passfile="" bindir="" timeout=3
while [ $# -gt 0 ]; do
    case $1 in
        --peers) peers=$2 ;;
        --port) port=$2 ;;
        --user) user=$2 ;;
        --passfile) passfile=$2 ;;
        --bin-dir) bindir=$2 ;;
        --timeout) timeout=$2 ;;
        *) echo "check-no-other-primary: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
psql=${bindir:+$bindir/}psql
[ -n "$passfile" ] || { echo "check-no-other-primary: --passfile is required" >&2; exit 2; }

IFS=, read -r -a hosts <<<"$peers"
for peer in "${hosts[@]}"; do
    [ -n "$peer" ] || continue
    if state=$(PGPASSFILE=$passfile PGCONNECT_TIMEOUT=$timeout "$psql" -w -XAt \
        -d "host=$peer port=$port user=$user dbname=postgres" -c "SELECT pg_is_in_recovery()" 2>/dev/null); then
        if [ "$state" = "f" ]; then
            echo "check-no-other-primary: $peer:$port is already a writable primary." >&2
            echo "This machine's configuration still says primary: after a failover, deploy the regenerated" >&2
            echo "configuration (synth promote set the new primary), then run lemmy-cluster-pg-rejoin here." >&2
            exit 1
        fi
        echo "check-no-other-primary: $peer:$port is a standby"
    else
        echo "check-no-other-primary: $peer:$port did not answer; not blocking the start"
    fi
done
