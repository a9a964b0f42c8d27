#!/usr/bin/env bash
# lemmy-cluster: move the leadership of the Patroni cluster to CANDIDATE (a planned switchover).
#
#   switchover.sh --api URL --user USER --password-file FILE --candidate NAME [--timeout 60]
#
# URL is a member's REST API (http://address:8008). Refuses, changing nothing, when CANDIDATE is
# not a member that streams from the leader; does nothing when CANDIDATE leads already (exit 0).
# Otherwise asks Patroni (POST /switchover): the leader stops taking writes, CANDIDATE catches up
# and is promoted, the old leader follows it; then waits until CANDIDATE accepts writes. The REST
# API password goes to curl on its standard input, never on a command line.
# Exit codes: 0 done (or nothing to do), 1 refused or failed, 2 usage.
set -euo pipefail

api="" user="" pwfile="" candidate="" timeout=60
while [ $# -gt 0 ]; do
    case $1 in
        --api) api=$2 ;;
        --user) user=$2 ;;
        --password-file) pwfile=$2 ;;
        --candidate) candidate=$2 ;;
        --timeout) timeout=$2 ;;
        *) echo "switchover: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
: "${api:?--api is required}" "${user:?--user is required}" "${pwfile:?--password-file is required}" "${candidate:?--candidate is required}"
if [ ! -s "$pwfile" ]; then
    echo "switchover: the password file $pwfile is missing or empty" >&2
    exit 1
fi

cluster=$(curl -s --max-time 5 "$api/cluster") || {
    echo "switchover: Patroni's REST API does not answer at $api; nothing was changed" >&2
    exit 1
}
leader=$(jq -r '[.members[] | select(.role == "leader")][0].name // empty' <<<"$cluster")
if [ -z "$leader" ]; then
    echo "switchover: the cluster has no leader right now ($(jq -c '[.members[] | {name, role, state}]' <<<"$cluster")); nothing was changed" >&2
    exit 1
fi
if [ "$leader" = "$candidate" ]; then
    echo "switchover: $candidate leads already; nothing to do"
    exit 0
fi
state=$(jq -r --arg c "$candidate" '[.members[] | select(.name == $c)][0].state // "not a member"' <<<"$cluster")
if [ "$state" != streaming ]; then
    echo "switchover: $candidate is not a replica streaming from $leader (its state: $state); nothing was changed" >&2
    exit 1
fi
# Synchronous mode: Patroni hands the leadership only to the synchronous standby, the one replica
# known to have every acknowledged commit.
sync=$(jq -r '[.members[] | select(.role == "sync_standby") | .name] | join(", ")' <<<"$cluster")
if [ -n "$sync" ] && ! jq -e --arg c "$candidate" 'any(.members[]; .name == $c and .role == "sync_standby")' \
    <<<"$cluster" >/dev/null; then
    echo "switchover: in synchronous mode only the synchronous standby ($sync) may take over without risking" \
        "acknowledged commits, and $candidate is not it; choose $sync. Nothing was changed" >&2
    exit 1
fi

password=$(cat "$pwfile"; printf x)
password=${password%x}
password=${password%$'\n'}
quote() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}
body=$(jq -cn --arg l "$leader" --arg c "$candidate" '{leader: $l, candidate: $c}')
echo "switchover: moving the leadership from $leader to $candidate"
start=$EPOCHREALTIME
reply=$(mktemp)
trap 'rm -f "$reply"' EXIT
code=$(printf 'user = %s\n' "$(quote "$user:$password")" |
    curl -K - -s -o "$reply" -w '%{http_code}' --max-time "$timeout" -X POST \
        -H 'Content-Type: application/json' --data-binary "$body" "$api/switchover" || true)
answer=$(cat "$reply")
if [ "$code" != 200 ]; then
    echo "switchover: Patroni refused (HTTP ${code:-none}): $answer" >&2
    exit 1
fi
candidate_api=$(jq -r --arg c "$candidate" '[.members[] | select(.name == $c)][0].api_url // empty' <<<"$cluster")
candidate_api=${candidate_api%/patroni}
deadline=$((SECONDS + timeout))
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$candidate_api/primary" || true)" = 200 ]; do
    if [ $SECONDS -ge $deadline ]; then
        echo "switchover: $candidate does not lead ${timeout}s after Patroni accepted the switchover; see journalctl -u patroni" >&2
        exit 1
    fi
    sleep 0.2
done
elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
echo "switchover: $candidate leads now (${elapsed} s after the request); $leader follows it"
