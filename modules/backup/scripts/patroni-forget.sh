#!/usr/bin/env bash
# lemmy-cluster: remove a stopped Patroni cluster's state from etcd (what `patronictl remove`
# does: its keys under /service/<scope>/), so that the member restored from a backup takes its
# data over as a new cluster instead of following the old cluster's history. Refuses while a
# member holds the leader lock (Patroni still runs somewhere: stop it on every member first).
# Usage: patroni-forget.sh --endpoints http://H:2379,... --scope NAME [--namespace /service]
set -euo pipefail
endpoints="" scope="" namespace=/service
while [ $# -gt 0 ]; do
    case $1 in
    --endpoints) endpoints=$2; shift 2 ;;
    --scope) scope=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    *) echo "patroni-forget: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$endpoints" ] && [ -n "$scope" ] || { echo "usage: patroni-forget.sh --endpoints URLS --scope NAME" >&2; exit 2; }
etcd() { ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=3s --command-timeout=10s "$@"; }
prefix="$namespace/$scope/"
leader=$(etcd get "${prefix}leader" --print-value-only) || { echo "patroni-forget: etcd does not answer at $endpoints" >&2; exit 1; }
if [ -n "$leader" ]; then
    echo "patroni-forget: $leader still holds the leader lock of $scope; stop Patroni on every member first" >&2
    exit 1
fi
removed=$(etcd del --prefix "$prefix")
echo "patroni-forget: removed $removed keys of cluster $scope from etcd"
