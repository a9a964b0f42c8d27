#!/usr/bin/env bash
# lemmy-cluster: the roles, databases, passwords and grants of the cluster's PostgreSQL, set on
# the server that accepts writes. Idempotent: creates what is missing, sets every password from
# its file again (so a rotated secret takes effect), changes nothing else.
#
#   setup-roles.sh --database DB --user ROLE --password-file F
#                  --replication-user ROLE --replication-password-file F
#                  [--superuser ROLE --superuser-password-file F]
#                  [--rewind-user ROLE --rewind-password-file F]
#                  [--pictrs-database DB --pictrs-user ROLE --pictrs-password-file F]
#                  [--slots NAME,NAME]
#
# Runs psql as the superuser on the local server (PGHOST/PGPORT from the environment, peer
# authentication over the socket). Passwords are read by psql itself from the files (`\set x
# `cat file``: the file's content without one trailing newline); none is ever on a command line
# or in the server's log. Used by the postgres role module (lemmy-cluster-pg-setup,
# lemmy-cluster-patroni-setup) and, unchanged, by the live tests.
set -euo pipefail

vars=()
rewind=0 superuser=0 pictrs=0 slots=""
while [ $# -gt 0 ]; do
    case $1 in
        --database) vars+=(-v "lemmy_db=$2") ;;
        --user) vars+=(-v "lemmy_user=$2") ;;
        --password-file) vars+=(-v "lemmy_pw_file=$2") ;;
        --replication-user) vars+=(-v "repl_user=$2") ;;
        --replication-password-file) vars+=(-v "repl_pw_file=$2") ;;
        --superuser) superuser=1 vars+=(-v "super_user=$2") ;;
        --superuser-password-file) vars+=(-v "super_pw_file=$2") ;;
        --rewind-user) rewind=1 vars+=(-v "rewind_user=$2") ;;
        --rewind-password-file) vars+=(-v "rewind_pw_file=$2") ;;
        --pictrs-database) pictrs=1 vars+=(-v "pictrs_db=$2") ;;
        --pictrs-user) vars+=(-v "pictrs_user=$2") ;;
        --pictrs-password-file) vars+=(-v "pictrs_pw_file=$2") ;;
        --slots) slots=$2 ;;
        *)
            echo "setup-roles: unknown argument $1" >&2
            exit 2
            ;;
    esac
    shift 2
done

# A missing or empty password file would set an empty password: refuse instead.
check_file() {
    if [ ! -s "$1" ]; then
        echo "setup-roles: the password file $1 is missing or empty" >&2
        exit 1
    fi
}
for ((i = 0; i < ${#vars[@]}; i += 2)); do
    case ${vars[i + 1]} in
        *_pw_file=*) check_file "${vars[i + 1]#*=}" ;;
    esac
done

# role NAME_VAR PASSWORD_VAR OPTIONS: create the role when it is missing, then set its password.
role() {
    cat <<SQL
SELECT format('CREATE ROLE %I', :'$1') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'$1') \gexec
\\set pw \`cat :'$2'\`
ALTER ROLE :"$1" WITH $3 PASSWORD :'pw';
\\unset pw
SQL
}
# database NAME_VAR OWNER_VAR: create it when missing; its owner is the role (the application
# creates its tables and extensions, e.g. pict-rs's pgcrypto).
database() {
    cat <<SQL
SELECT format('CREATE DATABASE %I OWNER %I', :'$1', :'$2')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'$1') \gexec
ALTER DATABASE :"$1" OWNER TO :"$2";
SQL
}

{
    cat <<'SQL'
SET log_statement = 'none';
-- One set-up at a time (Patroni's callback and lemmy-cluster-patroni-setup may run together):
-- the lock is held until this session ends.
SELECT pg_advisory_lock(hashtext('lemmy-cluster setup-roles')) \gset
-- With synchronous standbys configured a commit waits for one of them, but on a first start they
-- can only connect once this very script has set the replication password.
SET synchronous_commit = local;
SQL
    role lemmy_user lemmy_pw_file LOGIN
    database lemmy_db lemmy_user
    role repl_user repl_pw_file "LOGIN REPLICATION"
    if [ $superuser = 1 ]; then
        role super_user super_pw_file "LOGIN SUPERUSER"
    fi
    if [ $rewind = 1 ]; then
        role rewind_user rewind_pw_file LOGIN
        # What pg_rewind reads on the source server (PostgreSQL's documentation of pg_rewind).
        for f in 'pg_ls_dir(text, boolean, boolean)' 'pg_stat_file(text, boolean)' \
            'pg_read_binary_file(text)' 'pg_read_binary_file(text, bigint, bigint, boolean)'; do
            printf 'GRANT EXECUTE ON FUNCTION pg_catalog.%s TO :"rewind_user";\n' "$f"
        done
    fi
    if [ $pictrs = 1 ]; then
        role pictrs_user pictrs_pw_file LOGIN
        database pictrs_db pictrs_user
    fi
    IFS=, read -ra slot_list <<<"$slots"
    for s in "${slot_list[@]}"; do
        printf "SELECT pg_create_physical_replication_slot('%s') WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '%s');\n" "$s" "$s"
    done
} | psql -X -q -v ON_ERROR_STOP=1 "${vars[@]}" -d postgres -f -
