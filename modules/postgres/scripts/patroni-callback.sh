#!/usr/bin/env bash
# lemmy-cluster: Patroni's on_start and on_role_change callback: when this member starts as the
# leader or is promoted, set up the roles, databases and passwords (setup-roles.sh).
#
#   patroni-callback.sh SETUP-ROLES-ARGUMENTS... ACTION ROLE SCOPE
#
# Patroni appends ACTION ROLE SCOPE to the command it is configured with. Runs inside
# patroni.service, as its user, with its credentials (the setup arguments name them) and
# PGHOST/PGPORT of the local server. This is what makes a new leader (the first one on a new
# cluster, while the deploy of the other members is still to come, or one elected after a
# failover) set up what it must without anyone acting; lemmy-cluster-patroni-setup does the same
# when a deploy changes the roles or passwords.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: patroni-callback.sh SETUP-ROLES-ARGUMENTS... ACTION ROLE SCOPE" >&2
    exit 2
fi
args=("$@")
n=${#args[@]}
action=${args[n - 3]} role=${args[n - 2]}
setup=("${args[@]:0:n-3}")
case "$action/$role" in
    on_start/primary | on_role_change/primary) ;;
    *) exit 0 ;;
esac
here=$(dirname "$0")
# Promotion ends recovery a moment after Patroni calls back.
for _ in $(seq 60); do
    if [ "$(psql -XAtc 'SELECT pg_is_in_recovery()' -d postgres 2>/dev/null)" = f ]; then
        echo "patroni-callback: $action as $role: setting up roles and databases"
        exec bash "$here/setup-roles.sh" "${setup[@]}"
    fi
    sleep 1
done
echo "patroni-callback: $action as $role, but the server did not accept writes within 60 s" >&2
exit 1
