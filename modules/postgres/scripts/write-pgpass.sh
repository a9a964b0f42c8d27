#!/usr/bin/env bash
# lemmy-cluster: write a libpq password file for one user from a secret file.
# Usage: write-pgpass.sh USER PASSWORD_FILE OUTPUT
# The password never appears on a command line; OUTPUT is created with mode 0600.
# Shared by the NixOS postgres module and bootstrap-replica.sh (and so by the live tests).
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: write-pgpass.sh USER PASSWORD_FILE OUTPUT" >&2
    exit 2
fi
user=$1 password_file=$2 output=$3

if [ ! -r "$password_file" ]; then
    echo "write-pgpass: cannot read the password file $password_file" >&2
    exit 1
fi
# The value is the file's content without one trailing newline: the same rule as psql's
# `\set x `cat file`` (lemmy-cluster-pg-setup sets the role's password that way) and jq's
# rtrimstr("\n") in the backend's write-config.sh. (A plain $(<file) would drop every newline.)
password=$(cat "$password_file"; printf x)
password=${password%x}
password=${password%$'\n'}
if [ -z "$password" ]; then
    echo "write-pgpass: the password file $password_file is empty" >&2
    exit 1
fi

# In a password file, ':' and '\' are escaped with '\'. Any host, port and database.
escape() {
    local s=${1//\\/\\\\}
    printf '%s' "${s//:/\\:}"
}
umask 077
tmp=$(mktemp "${output}.XXXXXX")
printf '*:*:*:%s:%s\n' "$(escape "$user")" "$(escape "$password")" >"$tmp"
mv -f "$tmp" "$output"
