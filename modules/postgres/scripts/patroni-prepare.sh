#!/usr/bin/env bash
# lemmy-cluster: prepare a data directory for Patroni (before patroni.service starts).
#
#   patroni-prepare.sh DATA_DIR
#
# When a machine's PostgreSQL moves from nixpkgs' services.postgresql to Patroni (a cluster
# growing from one postgres machine to two, or from manual to automatic failover), its data
# directory holds postgresql.conf as a link into the Nix store. Patroni writes its own
# postgresql.conf there (it cannot write through a link into the read-only store), so the link is
# kept aside as postgresql.conf.before-patroni: nothing is deleted, and the database itself is
# untouched (Patroni takes it over as it is). Does nothing for an empty, new or Patroni-managed
# data directory.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: patroni-prepare.sh DATA_DIR" >&2
    exit 2
fi
conf=$1/postgresql.conf
if [ -L "$conf" ]; then
    echo "patroni-prepare: keeping the configuration link $conf ($(readlink "$conf")) as $conf.before-patroni"
    mv -f "$conf" "$conf.before-patroni"
fi
