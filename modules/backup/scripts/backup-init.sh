#!/usr/bin/env bash
# lemmy-cluster: make the repository usable by the primary, once: create the stanza, check that
# WAL reaches the repository, and take a first full backup when the repository has none (a
# point-in-time recovery needs a backup before the point). Every step is skipped when done, so
# the unit runs at each start of PostgreSQL (or Patroni) on the machine that leads.
#
# Usage: backup-init.sh --stanza NAME -- PGBACKREST-COMMAND...
#   (the command: lemmy-cluster-pgbackrest, or pgbackrest.sh with its arguments and --)
set -euo pipefail

stanza=""
while [ $# -gt 0 ]; do
    case $1 in
    --stanza) stanza=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "backup-init: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$stanza" ] && [ $# -gt 0 ] || { echo "usage: backup-init.sh --stanza NAME -- PGBACKREST-COMMAND..." >&2; exit 2; }

"$@" --stanza="$stanza" --log-level-console=warn stanza-create
"$@" --stanza="$stanza" --log-level-console=warn check
info=$("$@" --stanza="$stanza" --output=json info)
if grep -q '"backup":\[\]' <<<"$info"; then
    echo "backup-init: the repository has no backup of stanza $stanza yet: taking a full backup"
    "$@" --stanza="$stanza" --type=full backup
else
    echo "backup-init: stanza $stanza is ready"
fi
