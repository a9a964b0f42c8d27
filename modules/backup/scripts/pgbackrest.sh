#!/usr/bin/env bash
# lemmy-cluster: run pgbackrest with the repository's secrets, read from files at run time.
#
# Usage: pgbackrest.sh --bin PGBACKREST --cipher-pass-file FILE [--s3-key-file FILE
#                      --s3-key-secret-file FILE] [--run-as USER] -- PGBACKREST-ARGUMENTS...
#
# The passphrase (and an S3 repository's key) go to pgbackrest as PGBACKREST_REPO1_CIPHER_PASS
# (PGBACKREST_REPO1_S3_KEY, PGBACKREST_REPO1_S3_KEY_SECRET) in its own environment only: never
# in the Nix store, the configuration file or a command line. A file is read from the
# unit's credentials ($CREDENTIALS_DIRECTORY/backup-cipher-pass, backup-s3-key,
# backup-s3-key-secret: systemd's LoadCredential, readable by the unit's user, which PostgreSQL's
# archive_command inherits) when they are there, else from the path given (root: an admin's
# command). With --run-as, root runs pgbackrest as USER (the owner of the data directory and of a
# posix repository), keeping the environment.
set -euo pipefail

bin="" cipher="" s3key="" s3secret="" run_as=""
while [ $# -gt 0 ]; do
    case $1 in
    --bin) bin=$2; shift 2 ;;
    --cipher-pass-file) cipher=$2; shift 2 ;;
    --s3-key-file) s3key=$2; shift 2 ;;
    --s3-key-secret-file) s3secret=$2; shift 2 ;;
    --run-as) run_as=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "lemmy-cluster-pgbackrest: unknown option $1 (pgbackrest's own arguments go after --)" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ] || [ -z "$cipher" ]; then
    echo "usage: pgbackrest.sh --bin PGBACKREST --cipher-pass-file FILE [--s3-key-file F --s3-key-secret-file F] [--run-as USER] -- ARGS" >&2
    exit 2
fi

# secret NAME FILE VAR: VAR = the credential NAME, or FILE's content (without one trailing newline).
secret() {
    local from=$2 v
    if [ -n "${CREDENTIALS_DIRECTORY:-}" ] && [ -r "$CREDENTIALS_DIRECTORY/$1" ]; then
        from=$CREDENTIALS_DIRECTORY/$1
    fi
    if ! v=$(cat -- "$from" 2>/dev/null && printf x); then
        echo "lemmy-cluster-pgbackrest: cannot read $from (run as root, or from a unit with the credential $1)" >&2
        exit 1
    fi
    v=${v%x}
    v=${v%$'\n'}
    if [ -z "$v" ]; then
        echo "lemmy-cluster-pgbackrest: $from is empty" >&2
        exit 1
    fi
    printf -v "$3" '%s' "$v"
}

secret backup-cipher-pass "$cipher" PGBACKREST_REPO1_CIPHER_PASS
export PGBACKREST_REPO1_CIPHER_PASS
if [ -n "$s3key" ]; then
    secret backup-s3-key "$s3key" PGBACKREST_REPO1_S3_KEY
    secret backup-s3-key-secret "$s3secret" PGBACKREST_REPO1_S3_KEY_SECRET
    export PGBACKREST_REPO1_S3_KEY PGBACKREST_REPO1_S3_KEY_SECRET
fi
if [ -n "$run_as" ] && [ "$(id -u)" -eq 0 ] && [ "$(id -un)" != "$run_as" ]; then
    cd / # root's folder may be closed to USER
    exec runuser -u "$run_as" -- "$bin" "$@"
fi
exec "$bin" "$@"
