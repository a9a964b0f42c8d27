#!/usr/bin/env bash
# lemmy-cluster: take a member out of the running etcd cluster (etcd's runtime reconfiguration),
# run on one of the members that stay: lemmy-cluster-etcd-remove-member NAME.
#
#   remove-member.sh --name NAME --self SELF --endpoints URL[,URL...] [--patroni-api URL]
#
# SELF is this member (it cannot remove itself); ENDPOINTS: this member's client URL (loopback);
# --patroni-api: this machine's Patroni REST API, when it is a Patroni member.
# Says what it will do first, then:
# - NAME is not a member: nothing to do (exit 0), so running it twice is harmless;
# - NAME is SELF: refused (run it on a member that stays);
# - Patroni (asked at --patroni-api) still counts NAME as a member: refused (stop Patroni on NAME
#   first, so that it leaves the Patroni cluster before its etcd member goes);
# - a member that stays does not answer as healthy: refused, nothing changed (a removal then
#   could leave fewer healthy members than a majority: etcd would stop accepting writes, and
#   Patroni with it);
# - otherwise `etcdctl member remove` of NAME's ID; the removed member's etcd stops by itself.
# Removes one member per run, never this one, and never creates or re-creates a cluster.
set -euo pipefail

name="" self="" endpoints="" api=""
while [ $# -gt 0 ]; do
    case $1 in
        --name) name=$2 ;;
        --self) self=$2 ;;
        --endpoints) endpoints=$2 ;;
        --patroni-api) api=$2 ;;
        *) echo "etcd-remove-member: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
: "${name:?--name is required}" "${self:?--self is required}" "${endpoints:?--endpoints is required}"
export ETCDCTL_API=3
ctl() { etcdctl --dial-timeout=2s --command-timeout=5s "$@"; }

if [ "$name" = "$self" ]; then
    echo "etcd-remove-member: $name is this member; run lemmy-cluster-etcd-remove-member $name on a member" \
        "that stays. Nothing was changed." >&2
    exit 1
fi
# "ID, STATUS, NAME, PEER URLS, CLIENT URLS, IS LEARNER", one member a line.
if ! list=$(ctl --endpoints="$endpoints" member list 2>&1); then
    echo "etcd-remove-member: etcd does not answer at $endpoints ($list). Nothing was changed." >&2
    exit 1
fi
id=$(awk -F', ' -v n="$name" '$3 == n { print $1 }' <<<"$list")
if [ -z "$id" ]; then
    echo "etcd-remove-member: $name is not a member of the etcd cluster; nothing to do"
    exit 0
fi
total=$(grep -c . <<<"$list")
echo "etcd-remove-member: will remove $name (ID $id, $(awk -F', ' -v n="$name" '$3 == n { print $4 }' <<<"$list"))" \
    "from the etcd cluster: $total members now, $((total - 1)) after"
if [ -n "$api" ]; then
    if ! members=$(curl -sf --max-time 5 "$api/cluster" | jq -r '.members[]?.name'); then
        echo "etcd-remove-member: Patroni does not answer at $api; cannot tell whether $name still runs" \
            "Patroni. Nothing was changed." >&2
        exit 1
    fi
    if grep -qx -- "$name" <<<"$members"; then
        echo "etcd-remove-member: Patroni still counts $name as a member: stop Patroni on $name first" \
            "(systemctl stop patroni; its entry expires within 20 s). Nothing was changed." >&2
        exit 1
    fi
fi
# Every member that stays must be healthy (a member added but never started counts as not).
unhealthy=""
while IFS= read -r line; do
    member=$(awk -F', ' '{ print $3 }' <<<"$line")
    urls=$(awk -F', ' '{ print $5 }' <<<"$line")
    [ "$member" = "$name" ] && continue
    if [ -z "$urls" ] || ! ctl --endpoints="$urls" endpoint health >/dev/null 2>&1; then
        unhealthy+=" ${member:-$(awk -F', ' '{ print $1 }' <<<"$line")}"
    fi
done <<<"$list"
if [ -n "$unhealthy" ]; then
    echo "etcd-remove-member: members that stay are not healthy:$unhealthy. Removing $name now could leave" \
        "the cluster without a majority; bring them back first. Nothing was changed." >&2
    exit 1
fi
ctl --endpoints="$endpoints" member remove "$id" >/dev/null
if ctl --endpoints="$endpoints" member list | awk -F', ' -v id="$id" '$1 == id { found = 1 } END { exit !found }'; then
    echo "etcd-remove-member: $name ($id) is still listed after member remove" >&2
    exit 1
fi
echo "etcd-remove-member: removed $name; the etcd cluster has $((total - 1)) members"
