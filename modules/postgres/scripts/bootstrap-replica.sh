#!/usr/bin/env bash
# lemmy-cluster: turn an empty PostgreSQL data directory into a hot standby of the primary.
#
# Shared by the NixOS postgres module (lemmy-cluster-pg-bootstrap.service, which runs before
# postgresql.service on a replica) and the live tests. Run as the database's OS user.
#
#   bootstrap-replica.sh --pgdata DIR --primary-host HOST [--primary-port 5432]
#                        [--user replicator] (--password-file FILE | --passfile PGPASS)
#                        [--slot NAME]
#                        [--application-name NAME] [--bin-dir DIR] [--wait-for-primary]
#
# - A data directory that already is a standby (standby.signal): nothing to do, exit 0.
# - A data directory without standby.signal holds a primary's history. If promote.sh promoted it
#   (its marker file is there), the configuration has not caught up yet: start it as the primary
#   it is (exit 0). Otherwise this machine is an old primary: refuse (exit 1), since starting it
#   would fork the cluster; rejoin-as-replica.sh clones afresh and keeps it aside.
# - Otherwise: check that the primary answers and accepts the credentials (clear message if not;
#   with --wait-for-primary, say so and try again every 10 s: a replica may boot before its
#   primary, or before the primary has set the replication password),
#   make sure the replication slot exists, clone with pg_basebackup into a temporary directory
#   beside DIR and rename it into place only when complete. A failure leaves no data directory
#   behind that PostgreSQL (or NixOS's initdb step) would start on.
# The password is read from FILE (the bare secret) into a temporary libpq password file, or taken
# from an existing libpq password file PGPASS; it is never on a command line.
set -euo pipefail

pgdata="" host="" port=5432 user=replicator password_file="" pgpass="" slot="" appname="" bindir="" wait=0
while [ $# -gt 0 ]; do
    case $1 in
        --wait-for-primary) wait=1; shift; continue ;;
        --pgdata) pgdata=$2 ;;
        --primary-host) host=$2 ;;
        --primary-port) port=$2 ;;
        --user) user=$2 ;;
        --password-file) password_file=$2 ;;
        --passfile) pgpass=$2 ;;
        --slot) slot=$2 ;;
        --application-name) appname=$2 ;;
        --bin-dir) bindir=$2 ;;
        *) echo "bootstrap-replica: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done

die() {
    echo "bootstrap-replica: $*" >&2
    exit 1
}
tool() { if [ -n "$bindir" ]; then echo "$bindir/$1"; else echo "$1"; fi; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Left in the data directory by promote.sh, removed by lemmy-cluster-pg-setup once the machine's
# configuration says primary.
PROMOTED_MARKER=lemmy-cluster-promoted

[ -n "$pgdata" ] || die "--pgdata is required"
[ -n "$host" ] || die "--primary-host is required"
[ -n "$password_file$pgpass" ] || die "--password-file or --passfile is required"
pgdata=${pgdata%/}
if [ -n "$slot" ] && ! [[ $slot =~ ^[a-z0-9_]{1,63}$ ]]; then
    die "invalid slot name '$slot': use lowercase letters, digits and '_'"
fi

if [ -e "$pgdata/PG_VERSION" ]; then
    if [ -e "$pgdata/standby.signal" ]; then
        echo "bootstrap-replica: $pgdata is already a standby; nothing to do"
        exit 0
    fi
    # A primary's data, but this machine is configured as a replica of $host: either it was just
    # promoted (promote.sh leaves a marker; the configuration has not caught up yet), or it is an
    # old primary, which must not start: the cluster's history would fork.
    if [ -e "$pgdata/$PROMOTED_MARKER" ]; then
        echo "bootstrap-replica: $pgdata was promoted to primary (promote.sh) and this machine's" \
            "configuration has not caught up yet; starting it as the primary it is (deploy the" \
            "regenerated configuration)"
        exit 0
    fi
    die "$pgdata holds a database that is not a standby (no standby.signal): this machine was a primary." \
        "Refusing to start it as a replica of $host, which would fork the cluster's history." \
        "To make it follow $host, run rejoin-as-replica (it keeps the old data beside it)."
fi
if [ -d "$pgdata" ] && [ -n "$(ls -A "$pgdata")" ]; then
    die "$pgdata is not empty but holds no database (no PG_VERSION); move it away and run again"
fi

parent=$(dirname "$pgdata")
mkdir -p "$parent"
work=$(mktemp -d "$parent/.$(basename "$pgdata").bootstrap.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ -n "$password_file" ]; then
    "$BASH" "$here/write-pgpass.sh" "$user" "$password_file" "$work/pgpass"
    pgpass="$work/pgpass"
elif [ ! -r "$pgpass" ]; then
    die "cannot read the password file $pgpass"
fi
export PGPASSFILE="$pgpass" PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
conn="host=$host port=$port user=$user"

while ! out=$("$(tool psql)" -w -XAt -d "$conn dbname=replication replication=true" -c "IDENTIFY_SYSTEM" 2>&1); do
    if [ "$wait" -eq 0 ]; then
        die "cannot reach the primary $host:$port as '$user': ${out//$'\n'/ }"
    fi
    echo "bootstrap-replica: primary $host:$port not ready (${out//$'\n'/ }); trying again in 10 s" >&2
    sleep 10
done

if [ -n "$slot" ]; then
    if ! out=$("$(tool pg_receivewal)" -w -d "$conn" --slot="$slot" --create-slot --if-not-exists 2>&1); then
        die "cannot create the replication slot '$slot' on $host:$port: ${out//$'\n'/ }"
    fi
fi

echo "bootstrap-replica: cloning $host:$port into $pgdata"
args=(-w -d "$conn${appname:+ application_name=$appname}" -D "$work/data" -X stream --checkpoint=fast)
[ -z "$slot" ] || args+=(-S "$slot")
if ! "$(tool pg_basebackup)" "${args[@]}"; then
    die "pg_basebackup from $host:$port failed (see above); $pgdata was left untouched"
fi
touch "$work/data/standby.signal"
chmod 0700 "$work/data"
if [ -d "$pgdata" ]; then
    rmdir "$pgdata"
fi
mv "$work/data" "$pgdata"
echo "bootstrap-replica: $pgdata is now a standby of $host:$port${slot:+ (slot $slot)}"
