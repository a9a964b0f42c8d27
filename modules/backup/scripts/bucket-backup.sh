#!/usr/bin/env bash
# lemmy-cluster: a copy of pict-rs's bucket in a local folder, with rclone and a key that can only
# read. DEST/current is a mirror of the bucket; what a run would delete or overwrite there (an
# object purged from the bucket, the old version of an overwritten one) is moved to that run's
# DEST/deleted/<UTC time>/ instead (rclone sync --backup-dir), and those folders expire after
# KEEP-DAYS days (the time is read from the folder's name; other names are left alone; 0 keeps them
# forever). The bucket is never written.
#
# Usage: bucket-backup.sh --endpoint URL --region REGION --bucket NAME --dest DIR --keep-days N
#                         --access-key-file F --secret-key-file F [--path-style] [--ca-cert FILE]
#                         [--rclone BIN]
#
# rclone's configuration (remote `src`: type s3, provider Other, the endpoint, the region,
# force_path_style when --path-style, no_check_bucket) is written without keys to a private
# temporary folder, removed on exit. The key goes to rclone as RCLONE_CONFIG_SRC_ACCESS_KEY_ID /
# RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY in its own environment only: never in the Nix store, a file
# or a command line. The key is read from the unit's credentials
# ($CREDENTIALS_DIRECTORY/images-backup-access-key, images-backup-secret-key: systemd's
# LoadCredential) when they are there, else from the files given (root: an admin's command).
# Restore: `rclone copyto DEST/deleted/<time>/<key> <remote>:<bucket>/<key>` or
# `rclone copy DEST/current <remote>:<bucket>` with a key that can write (README, Images).
set -euo pipefail

endpoint="" region="" bucket="" dest="" keep="" akfile="" skfile="" path_style=false ca="" rclone=rclone
usage() {
    echo "usage: bucket-backup.sh --endpoint URL --region REGION --bucket NAME --dest DIR --keep-days N --access-key-file F --secret-key-file F [--path-style] [--ca-cert FILE] [--rclone BIN]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
    --endpoint | --region | --bucket | --dest | --keep-days | --access-key-file | --secret-key-file | --ca-cert | --rclone)
        [ $# -ge 2 ] || { echo "bucket-backup: $1 needs a value" >&2; usage; }
        case $1 in
        --endpoint) endpoint=$2 ;;
        --region) region=$2 ;;
        --bucket) bucket=$2 ;;
        --dest) dest=${2%/} ;;
        --keep-days) keep=$2 ;;
        --access-key-file) akfile=$2 ;;
        --secret-key-file) skfile=$2 ;;
        --ca-cert) ca=$2 ;;
        --rclone) rclone=$2 ;;
        esac
        shift 2 ;;
    --path-style) path_style=true; shift ;;
    *) echo "bucket-backup: unknown option $1" >&2; usage ;;
    esac
done
for v in endpoint region bucket dest keep akfile skfile; do
    [ -n "${!v}" ] || usage
done
[[ $keep =~ ^[0-9]+$ ]] || { echo "bucket-backup: --keep-days $keep: give a whole number of days (0 keeps every deleted/ folder)" >&2; exit 2; }
keep=$((10#$keep))
[[ $endpoint =~ ^https?://[^[:space:]]+$ ]] || { echo "bucket-backup: --endpoint $endpoint: give the S3 API's URL (http:// or https://)" >&2; exit 2; }
[[ $region =~ ^[^[:space:]]+$ ]] || { echo "bucket-backup: --region '$region': no spaces" >&2; exit 2; }
[[ $bucket =~ ^[A-Za-z0-9._-]+$ ]] || { echo "bucket-backup: --bucket $bucket: not a bucket name" >&2; exit 2; }
[ "${dest:0:1}" = / ] || { echo "bucket-backup: --dest $dest: give an absolute path" >&2; exit 2; }
if [ -n "$ca" ] && [ ! -r "$ca" ]; then
    echo "bucket-backup: --ca-cert $ca: cannot read it" >&2
    exit 1
fi

# secret NAME FILE VAR: VAR = the credential NAME, or FILE's content (without one trailing newline).
secret() {
    local from=$2 v
    if [ -n "${CREDENTIALS_DIRECTORY:-}" ] && [ -r "$CREDENTIALS_DIRECTORY/$1" ]; then
        from=$CREDENTIALS_DIRECTORY/$1
    fi
    if ! v=$(cat -- "$from" 2>/dev/null && printf x); then
        echo "bucket-backup: cannot read $from (run as root, or from a unit with the credential $1)" >&2
        exit 1
    fi
    v=${v%x}
    v=${v%$'\n'}
    if [ -z "$v" ]; then
        echo "bucket-backup: $from is empty (put the images-backup key's ${1#images-backup-} in it)" >&2
        exit 1
    fi
    printf -v "$3" '%s' "$v"
}
access_key="" secret_key=""
secret images-backup-access-key "$akfile" access_key
secret images-backup-secret-key "$skfile" secret_key

umask 027
confdir=$(mktemp -d "${TMPDIR:-/tmp}/bucket-backup.XXXXXXXX")
trap 'rm -rf -- "$confdir"' EXIT
chmod 0700 "$confdir"
{
    echo "[src]"
    echo "type = s3"
    echo "provider = Other"
    echo "endpoint = $endpoint"
    echo "region = $region"
    if $path_style; then echo "force_path_style = true"; fi
    echo "no_check_bucket = true"
} >"$confdir/rclone.conf"
export RCLONE_CONFIG=$confdir/rclone.conf

mkdir -p -m 0750 -- "$dest"
for d in "$dest/current" "$dest/deleted"; do
    [ -d "$d" ] || mkdir -m 0750 -- "$d"
done

# The run's folder for what it moves aside; never one an earlier run (in the same second) made.
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
while [ -e "$dest/deleted/$stamp" ]; do
    sleep 0.2
    stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
done

args=(sync "src:$bucket" "$dest/current" --backup-dir "$dest/deleted/$stamp" --stats 1h --stats-log-level NOTICE)
if [ -n "$ca" ]; then args+=(--ca-cert "$ca"); fi
rc=0
RCLONE_CONFIG_SRC_ACCESS_KEY_ID=$access_key RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY=$secret_key \
    "$rclone" "${args[@]}" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "bucket-backup: rclone sync failed (exit $rc); $dest/current may be partly updated; nothing was deleted: the objects it replaced or removed so far are in $dest/deleted/$stamp" >&2
    exit 1
fi

# Objects moved aside by this run.
moved=0
if [ -d "$dest/deleted/$stamp" ]; then
    moved=$(find "$dest/deleted/$stamp" -type f | wc -l)
fi

# Expire deleted/<stamp> folders older than KEEP days (by the time in their name).
pruned=0
if [ "$keep" -gt 0 ]; then
    cutoff=$(date -u -d "@$(($(date -u +%s) - keep * 86400))" +%Y-%m-%dT%H%M%SZ)
    for d in "$dest/deleted"/*; do
        name=${d##*/}
        [[ $name =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{6}Z$ ]] || continue
        [ -d "$d" ] && [ ! -L "$d" ] || continue
        if [[ $name < $cutoff ]]; then
            rm -rf -- "$d"
            pruned=$((pruned + 1))
        fi
    done
    kept="older than $keep days"
else
    kept="none: --keep-days 0 keeps them all"
fi

read -r objects bytes < <(find "$dest/current" -type f -printf '%s\n' | awk '{n++; s+=$1} END {printf "%d %d\n", n, s}')
echo "bucket-backup: src:$bucket copied to $dest/current ($objects objects, $bytes bytes); $moved object(s) replaced or removed moved to $dest/deleted/$stamp; $pruned deleted/ folder(s) expired ($kept)"
