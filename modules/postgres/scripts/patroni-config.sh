#!/usr/bin/env bash
# lemmy-cluster: apply the dynamic configuration to a running Patroni cluster.
#
#   patroni-config.sh --api URL --user USER --password-file FILE --config FILE.json [--timeout S]
#
# Patroni reads bootstrap.dcs only when it creates a cluster; afterwards the settings every member
# shares (timings, synchronous mode, failsafe mode, cluster-wide PostgreSQL parameters) live in
# etcd and change only through its REST API. This PATCHes /config with CONFIG (a merge: keys it
# does not name, such as a pause set with `patronictl pause`, stay), retrying while Patroni or etcd
# are not reachable yet. The REST API password is handed to curl on its standard input, never on a
# command line.
set -euo pipefail

api="" user="" pwfile="" config="" timeout=300
while [ $# -gt 0 ]; do
    case $1 in
        --api) api=$2 ;;
        --user) user=$2 ;;
        --password-file) pwfile=$2 ;;
        --config) config=$2 ;;
        --timeout) timeout=$2 ;;
        *) echo "patroni-config: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
: "${api:?--api is required}" "${user:?--user is required}" "${pwfile:?--password-file is required}" "${config:?--config is required}"
if [ ! -s "$pwfile" ]; then
    echo "patroni-config: the password file $pwfile is missing or empty" >&2
    exit 1
fi
password=$(cat "$pwfile"; printf x)
password=${password%x}
password=${password%$'\n'}
# curl's config syntax: a quoted string with \ and " escaped.
quote() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

deadline=$((SECONDS + timeout))
while :; do
    code=$(printf 'user = %s\n' "$(quote "$user:$password")" |
        curl -K - -s -o /dev/null -w '%{http_code}' --max-time 5 -X PATCH \
            -H 'Content-Type: application/json' --data-binary "@$config" "$api/config" || true)
    if [ "$code" = 200 ]; then
        echo "patroni-config: dynamic configuration applied"
        exit 0
    fi
    if [ $SECONDS -ge $deadline ]; then
        echo "patroni-config: PATCH $api/config answered ${code:-nothing} for ${timeout}s; see journalctl -u patroni" >&2
        exit 1
    fi
    sleep 2
done
