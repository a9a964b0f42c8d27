#!/usr/bin/env bash
# lemmy-cluster: clone this Patroni member afresh from the leader, keeping its old data aside.
#
#   reinit.sh DATA_DIR          (as root: lemmy-cluster-pg-reinit)
#
# For a former leader that pg_rewind could not bring back (Patroni then leaves it stopped, with
# its data: the module never lets Patroni delete a data directory). Stops Patroni on this
# machine, renames DATA_DIR to DATA_DIR.before-reinit-<time> (nothing is deleted: remove it
# yourself once the member streams again) and starts Patroni, which clones the leader into the
# empty directory. Refuses on the leader.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: reinit.sh DATA_DIR" >&2
    exit 2
fi
data=$1
role=$(curl -s --max-time 3 "${LEMMY_CLUSTER_PATRONI_API:?}/patroni" | jq -r '.role // empty' || true)
if [ "$role" = primary ]; then
    echo "reinit: this member is the leader; switch the leadership to another member first (synth promote)" >&2
    exit 1
fi
aside="$data.before-reinit-$(date -u +%Y%m%dT%H%M%SZ)"
echo "reinit: stopping Patroni, keeping $data as $aside, then cloning the leader"
systemctl stop patroni.service
if [ -e "$data" ]; then
    mv "$data" "$aside"
fi
install -d -m 0750 -o postgres -g postgres "$data"
systemctl start patroni.service
echo "reinit: Patroni started; it clones the leader (journalctl -fu patroni). The old data stays in $aside."
