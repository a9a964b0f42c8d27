#!/usr/bin/env bash
# lemmy-cluster: once Patroni on this machine has decided its role, set up the roles and
# databases if it is the leader (setup-roles.sh); a replica has nothing to do (it gets them from
# the leader by replication). It counts as a replica only once another member leads.
#
#   patroni-setup.sh --api URL [--timeout SECONDS] -- SETUP-ROLES-ARGUMENTS...
#
# URL is this machine's Patroni REST API (http://address:8008). Waits while Patroni is starting,
# bootstrapping or waiting for etcd; a replica that is still cloning counts as decided. After
# SECONDS (default 600) without a decision it exits 0 with a notice when Patroni does not answer at
# all or has not initialised the cluster (a new cluster waiting for etcd's quorum, or for the
# member that creates it): Patroni's callback sets up the roles on whichever member becomes the
# leader (patroni-callback.sh). A member that answers as a stopped or failed server fails.
set -euo pipefail

api="" timeout=600
while [ $# -gt 0 ]; do
    case $1 in
        --api) api=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "patroni-setup: unknown argument $1" >&2; exit 2 ;;
    esac
done
: "${api:?--api is required}"
here=$(dirname "$0")

deadline=$((SECONDS + timeout))
last=""
while :; do
    status=$(curl -s --max-time 3 "$api/patroni" || true)
    role=$(jq -r '.role // empty' <<<"$status" 2>/dev/null || true)
    state=$(jq -r '.state // empty' <<<"$status" 2>/dev/null || true)
    case $role in
        replica)
            # Patroni also starts an existing data directory (a database taken over, a member
            # restarting) as a replica before it may take the leader lock: this is a replica only
            # once another member leads.
            me=$(jq -r '.patroni.name // empty' <<<"$status" 2>/dev/null || true)
            leader=$(curl -s --max-time 3 "$api/cluster" |
                jq -r '[.members[]? | select(.role == "leader" or .role == "standby_leader") | .name][0] // empty' \
                    2>/dev/null || true)
            if [ -n "$leader" ] && [ "$leader" != "$me" ]; then
                echo "patroni-setup: this member is a replica of $leader ($state); the leader sets up roles and databases"
                exit 0
            fi
            ;;
        primary)
            # The leader that holds the lock, its server accepting writes.
            if [ "$state" = running ] &&
                [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$api/primary")" = 200 ]; then
                echo "patroni-setup: this member is the leader: setting up roles and databases"
                exec bash "$here/setup-roles.sh" "$@"
            fi
            ;;
    esac
    if [ "$role/$state" != "$last" ]; then
        echo "patroni-setup: waiting for Patroni to decide (role: ${role:-unknown}, state: ${state:-no answer})"
        last="$role/$state"
    fi
    if [ $SECONDS -ge $deadline ]; then
        case "${role:-none}/${state:-none}" in
            none/none | uninitialized/stopped | uninitialized/none)
                echo "patroni-setup: Patroni at $api has not joined a cluster yet (role: ${role:-unknown}," \
                    "state: ${state:-no answer}; etcd may have no quorum yet): the member that becomes the leader" \
                    "sets up roles and databases by its callback"
                exit 0
                ;;
        esac
        echo "patroni-setup: Patroni at $api is neither the leader nor a replica after ${timeout}s" \
            "(role: ${role:-unknown}, state: ${state:-no answer}); see journalctl -u patroni" >&2
        exit 1
    fi
    sleep 1
done
