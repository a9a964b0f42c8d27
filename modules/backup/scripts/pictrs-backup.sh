#!/usr/bin/env bash
# lemmy-cluster: a snapshot of a local pict-rs's folder (its sled repository and its files) in a
# backup folder, consistent: copied once while pict-rs runs (the bulk), then again with pict-rs
# stopped for the few seconds the second pass takes (sled is closed, nothing changes under it),
# then pict-rs is started again, whatever happened. Each snapshot is DEST/<UTC time>/, files
# unchanged since the previous one hard-linked to it (rsync --link-dest), so a snapshot costs
# what changed. The KEEP newest snapshots stay; older ones expire (they are backup copies; pict-rs's
# own folder is never written).
#
# Usage: pictrs-backup.sh --source DIR --dest DIR [--keep N] [--stop-command CMD --start-command CMD]
#   (the module: --stop-command 'systemctl stop pict-rs.service', --start-command 'systemctl start pict-rs.service')
# Restore: stop pict-rs, move its folder aside, `cp -a DEST/<snapshot> <its folder>`, start it.
set -euo pipefail

source="" dest="" keep=7 stop="" start=""
while [ $# -gt 0 ]; do
    case $1 in
    --source) source=${2%/}; shift 2 ;;
    --dest) dest=${2%/}; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --stop-command) stop=$2; shift 2 ;;
    --start-command) start=$2; shift 2 ;;
    *) echo "pictrs-backup: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$source" ] && [ -n "$dest" ] || { echo "usage: pictrs-backup.sh --source DIR --dest DIR [--keep N] [--stop-command CMD --start-command CMD]" >&2; exit 2; }
[[ $keep =~ ^[1-9][0-9]*$ ]] || { echo "pictrs-backup: --keep $keep: give a whole number of snapshots, 1 or more" >&2; exit 2; }
[ -d "$source" ] || { echo "pictrs-backup: $source is not a folder (is pict-rs's store local here?)" >&2; exit 1; }
case "$dest/" in "$source"/*) echo "pictrs-backup: $dest is inside $source" >&2; exit 1 ;; esac

mkdir -p -- "$dest"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
partial="$dest/.partial-$stamp"
latest=$(find "$dest" -mindepth 1 -maxdepth 1 -type d -name '20*' | sort | tail -n 1)
link=()
[ -z "$latest" ] || link=("--link-dest=$latest")

rsync -a --delete "${link[@]}" -- "$source/" "$partial/"
if [ -n "$stop" ]; then
    restart() { bash -c "$start" || echo "pictrs-backup: could not start pict-rs again: $start" >&2; }
    bash -c "$stop"
    trap restart EXIT
    rsync -a --delete "${link[@]}" -- "$source/" "$partial/"
    trap - EXIT
    restart
fi
mv -- "$partial" "$dest/$stamp"
echo "pictrs-backup: $source copied to $dest/$stamp"

old=$(find "$dest" -mindepth 1 -maxdepth 1 -type d -name '20*' | sort | head -n -"$keep")
for snapshot in $old; do
    rm -rf -- "$snapshot"
    echo "pictrs-backup: expired $snapshot (more than $keep snapshots)"
done
