#!/usr/bin/env bash
# lemmy-cluster: decide how this etcd member starts (before etcd.service), by etcd's runtime
# reconfiguration when the cluster already runs.
#
#   join.sh --name NAME --data-dir DIR --peer-url URL --initial-cluster NAME=URL,... \
#           --endpoints URL,URL --env-file FILE
#
# Writes FILE (an EnvironmentFile of etcd.service, empty when there is nothing to change):
# - DIR already holds a member: nothing (etcd ignores the initial-cluster settings then).
# - None of the other members (ENDPOINTS: their client URLs) answers: the members are creating
#   the cluster together; nothing (the configured initial cluster, state "new").
# - The cluster runs with exactly the configured members and this one never started: a member of
#   the initial cluster starting late; nothing.
# - The cluster runs and does not list this member: `etcdctl member add` it, then start with
#   ETCD_INITIAL_CLUSTER_STATE=existing and the cluster's current members as ETCD_INITIAL_CLUSTER
#   (a member replaced or added after the cluster was created).
# - The cluster lists this member as started before, but DIR is empty (its data was lost): refuse,
#   with etcd's documented recovery to run by hand (`member remove`, then this step adds it again).
# A new cluster is never created while another member answers, and no member is ever removed.
set -euo pipefail

name="" data="" peer="" initial_cluster="" endpoints="" envfile=""
while [ $# -gt 0 ]; do
    case $1 in
        --name) name=$2 ;;
        --data-dir) data=$2 ;;
        --peer-url) peer=$2 ;;
        --initial-cluster) initial_cluster=$2 ;;
        --endpoints) endpoints=$2 ;;
        --env-file) envfile=$2 ;;
        *) echo "etcd-join: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
: "${name:?}" "${data:?}" "${peer:?}" "${initial_cluster:?}" "${envfile:?}"
export ETCDCTL_API=3

umask 077
: >"$envfile"
if [ -d "$data/member" ]; then
    exit 0
fi

ctl() { etcdctl --endpoints="$endpoints" --dial-timeout=2s --command-timeout=5s "$@"; }

# `member list` in etcdctl's simple format, one member a line: "ID, STATUS, NAME, PEER URLS,
# CLIENT URLS, IS LEARNER" (IDs in hex). A member that never ran has no client URLs (and no name
# if it was added at run time rather than in the initial cluster).
list=""
if [ -n "$endpoints" ]; then
    list=$(ctl member list 2>/dev/null) || list=""
fi
if [ -z "$list" ]; then
    echo "etcd-join: no other member answers ($endpoints): starting with the initial cluster"
    exit 0
fi
field() { awk -F', ' -v peer="$peer" -v n="$1" '$4 == peer { print $n }' <<<"$list"; }
peers() { awk -F', ' '{ print $4 }' | sort; }

changed=0
listed=$(field 4)
if [ -n "$listed" ] && [ -n "$(field 5)" ]; then
    # It published client URLs, so it ran before; its data is gone.
    echo "etcd-join: the cluster counts this member ($(field 1)) as one that ran before, but $data holds no" \
        "data: its data was lost. Remove the old member on a healthy one (etcdctl member remove $(field 1))," \
        "then restart lemmy-cluster-etcd-join and etcd: it joins again as a new member." >&2
    exit 1
fi
if [ -z "$listed" ]; then
    echo "etcd-join: adding this member to the running cluster (etcdctl member add $name --peer-urls=$peer)"
    # etcd refuses a new member while its cluster is not healthy by its own measure (a member
    # started or added in the last seconds, one unreachable): "unhealthy cluster". That passes; try
    # again for a minute, and give up on anything else at once.
    deadline=$((SECONDS + 60))
    until out=$(ctl member add "$name" --peer-urls="$peer" 2>&1); do
        if ! grep -q "unhealthy cluster" <<<"$out" || [ $SECONDS -ge $deadline ]; then
            echo "etcd-join: etcdctl member add failed: $out" >&2
            exit 1
        fi
        echo "etcd-join: the cluster is not healthy yet (etcd: unhealthy cluster); trying again in 2 s"
        sleep 2
    done
    list=$(ctl member list)
    changed=1
fi
configured=$(tr ',' '\n' <<<"$initial_cluster" | sed 's/^[^=]*=//' | sort)
if [ $changed = 0 ] && [ "$(peers <<<"$list")" = "$configured" ]; then
    echo "etcd-join: a member of the initial cluster, starting for the first time"
    exit 0
fi
# Every member by name = its peer URL. A member that never started has no name in the list: this
# one is NAME, another one is named as in the configured initial cluster.
initial=$(awk -F', ' -v peer="$peer" -v me="$name" -v conf="$initial_cluster" '
    BEGIN { n = split(conf, c, ","); for (i = 1; i <= n; i++) { split(c[i], kv, "="); known[kv[2]] = kv[1] } }
    {
        who = ($4 == peer) ? me : ($3 != "" ? $3 : known[$4])
        if (who == "") { print "etcd-join: member " $1 " (" $4 ") was added but never started; start or remove it first" > "/dev/stderr"; exit 1 }
        printf "%s%s=%s", (NR > 1 ? "," : ""), who, $4
    }' <<<"$list")
printf 'ETCD_INITIAL_CLUSTER_STATE=existing\nETCD_INITIAL_CLUSTER=%s\n' "$initial" >"$envfile"
echo "etcd-join: joining the running cluster: $initial"
