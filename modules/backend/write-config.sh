#!/usr/bin/env bash
# lemmy-cluster: write Lemmy's runtime config.hjson from a secret-free template and secret files.
#
#   write-config.sh TEMPLATE OUTPUT SECRETS_DIR
#
# TEMPLATE is the JSON config from the Nix store (no secrets). SECRETS_DIR holds the files
# db-password, pictrs-api-key and admin-password (systemd's $CREDENTIALS_DIRECTORY), and
# smtp-password when the template has an SMTP login (email.smtp_login). The environment gives
# the non-secret parts of the database URL:
#   LEMMY_CLUSTER_DB_USER, LEMMY_CLUSTER_DB_HOSTS (host:port,host:port,...), LEMMY_CLUSTER_DB_NAME,
#   LEMMY_CLUSTER_DB_PARAMS (query string without '?', may be empty).
# Secrets are read by jq from files: none is ever on a command line. OUTPUT gets mode 0600.
# A secret is its file's content without one trailing newline (the rule of every lemmy-cluster
# script, and of psql's `\set x `cat file``).
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: write-config.sh TEMPLATE OUTPUT SECRETS_DIR" >&2
    exit 2
fi
template=$1 output=$2 secrets=$3
needed=(db-password pictrs-api-key admin-password)
# With an SMTP login Lemmy needs its password (email.smtp_password); without one it sends unauthenticated.
smtp_login=$(jq -r '.email.smtp_login // empty' "$template")
if [ -n "$smtp_login" ]; then
    needed+=(smtp-password)
fi
for f in "${needed[@]}"; do
    if [ ! -s "$secrets/$f" ]; then
        echo "write-config: the secret $f is missing or empty in $secrets" >&2
        exit 1
    fi
done
: "${LEMMY_CLUSTER_DB_USER:?}" "${LEMMY_CLUSTER_DB_HOSTS:?}" "${LEMMY_CLUSTER_DB_NAME:?}"

umask 077
tmp=$(mktemp "$output.XXXXXX")
trap 'rm -f "$tmp"' EXIT
smtp_args=() smtp_filter=""
if [ -n "$smtp_login" ]; then
    smtp_args=(--rawfile smtppw "$secrets/smtp-password")
    smtp_filter='| .email.smtp_password = ($smtppw | secret)'
fi
jq \
    "${smtp_args[@]}" \
    --rawfile dbpw "$secrets/db-password" \
    --rawfile apikey "$secrets/pictrs-api-key" \
    --rawfile adminpw "$secrets/admin-password" \
    --arg user "$LEMMY_CLUSTER_DB_USER" \
    --arg hosts "$LEMMY_CLUSTER_DB_HOSTS" \
    --arg db "$LEMMY_CLUSTER_DB_NAME" \
    --arg params "${LEMMY_CLUSTER_DB_PARAMS:-}" \
    'def secret: rtrimstr("\n");
     .database.uri = "postgresql://\($user | @uri):\($dbpw | secret | @uri)@\($hosts)/\($db | @uri)"
                     + (if $params == "" then "" else "?\($params)" end)
     | .pictrs.api_key = ($apikey | secret)
     | .setup.admin_password = ($adminpw | secret)'"$smtp_filter" \
    "$template" >"$tmp"
mv -f "$tmp" "$output"
trap - EXIT
