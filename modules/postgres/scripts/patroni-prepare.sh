#!/usr/bin/env bash
# lemmy-cluster: prepare a data directory for Patroni (before patroni.service starts).
#
#   patroni-prepare.sh DATA_DIR [--wait-for KEY --endpoints URL,URL]
#
# When a machine's PostgreSQL moves from nixpkgs' services.postgresql to Patroni (a cluster
# growing from one postgres machine to two, or from manual to automatic failover), its data
# directory holds postgresql.conf as a link into the Nix store. Patroni writes its own
# postgresql.conf there (it cannot write through a link into the read-only store), so the link is
# kept aside as postgresql.conf.before-patroni: nothing is deleted, and the database itself is
# untouched (Patroni takes it over as it is).
#
# --wait-for (every member but the one that creates the cluster): such a data directory is then
# an old replica, or an old primary that is not to lead. Patroni would take any existing database
# over as the cluster's first member when it finds no cluster in etcd yet, so this waits until
# KEY (the cluster's `initialize` key in etcd, at ENDPOINTS) exists, that is until the designated
# member has taken its database over; after 25 s it fails and systemd tries again.
# Does nothing for an empty, new or Patroni-managed data directory.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: patroni-prepare.sh DATA_DIR [--wait-for KEY --endpoints URL,URL]" >&2
    exit 2
fi
data=$1
shift
key="" endpoints=""
while [ $# -gt 0 ]; do
    case $1 in
        --wait-for) key=$2 ;;
        --endpoints) endpoints=$2 ;;
        *) echo "patroni-prepare: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
conf=$data/postgresql.conf
[ -L "$conf" ] || exit 0

if [ -n "$key" ]; then
    deadline=$((SECONDS + 25))
    until [ -n "$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=2s --command-timeout=3s \
        get "$key" --print-value-only 2>/dev/null)" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "patroni-prepare: $data holds a database of services.postgresql, and the cluster's first member" \
                "has not taken its own over yet (no $key in etcd at $endpoints); waiting for it (systemd retries)" >&2
            exit 1
        fi
        sleep 2
    done
    echo "patroni-prepare: the cluster exists ($key); this member follows it with its data"
fi
echo "patroni-prepare: keeping the configuration link $conf ($(readlink "$conf")) as $conf.before-patroni"
mv -f "$conf" "$conf.before-patroni"
