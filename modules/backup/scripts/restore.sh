#!/usr/bin/env bash
# lemmy-cluster: restore this machine's PostgreSQL data directory from the pgBackRest repository,
# to a point in time (--time) or to the end of the archive (--latest), keeping the current data
# directory aside (DATA.before-restore-<UTC time>), never deleting it.
#
# Usage: restore.sh --data-dir DIR --stanza NAME (--time 'YYYY-MM-DD HH:MM:SS[.ffffff]+ZZ' | --latest)
#                   [--check-only] [--owner USER] [--finish-with BIN_DIR] [--credential NAME=FILE]...
#                   -- PGBACKREST-COMMAND...
#
# PostgreSQL must be stopped. First every check that needs no change (the repository answers, the
# passphrase decrypts it, a backup ended before the time asked for, the newest archived WAL segment
# reached the repository after it, PostgreSQL is not running);
# a failed check exits 1 and changes nothing. Then pgbackrest restores into DIR.restoring-<time>,
# and only when that succeeded the folders are swapped: DIR becomes DIR.before-restore-<time>, the
# restored one becomes DIR. Its restore_command is the same PGBACKREST-COMMAND (the wrapper that
# reads the passphrase), and at the target it promotes: started, PostgreSQL replays the archive to
# the target and opens as a primary on a new timeline.
#
# --owner: run as root, the restored folder is made USER's (PostgreSQL's user).
# --finish-with: then start PostgreSQL from BIN_DIR on the restored folder, with no TCP listener,
# until it has replayed to the target and promoted, and stop it cleanly (a checkpoint): what
# Patroni needs, which takes over a cleanly stopped primary but would otherwise treat a folder in
# recovery as a replica's. The recovery settings that pgbackrest wrote are reset then.
# --credential: a copy of FILE, readable by USER only, is $CREDENTIALS_DIRECTORY/NAME of that
# PostgreSQL (as systemd's LoadCredential gives postgresql.service), so that its restore_command
# and archive_command (the wrapper) read the passphrase; the copies are removed at the end.
set -euo pipefail

data="" stanza="" target="" latest=0 check_only=0 owner="" finish="" credentials=()
while [ $# -gt 0 ]; do
    case $1 in
    --data-dir) data=${2%/}; shift 2 ;;
    --stanza) stanza=$2; shift 2 ;;
    --time) target=$2; shift 2 ;;
    --latest) latest=1; shift ;;
    --check-only) check_only=1; shift ;;
    --owner) owner=$2; shift 2 ;;
    --finish-with) finish=$2; shift 2 ;;
    --credential) credentials+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "restore: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$data" ] || [ -z "$stanza" ] || [ $# -eq 0 ] || { [ -z "$target" ] && [ $latest -eq 0 ]; } \
    || { [ -n "$target" ] && [ $latest -eq 1 ]; }; then
    echo "usage: restore.sh --data-dir DIR --stanza NAME (--time TIME | --latest) [--check-only] -- PGBACKREST-COMMAND..." >&2
    exit 2
fi
fail() {
    echo "restore: $*" >&2
    exit 1
}

# 1. Checks (nothing changes). --check-only runs them while PostgreSQL still runs.
if [ $check_only -eq 0 ] && [ -f "$data/postmaster.pid" ]; then
    pid=$(head -n 1 "$data/postmaster.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        fail "PostgreSQL is running on $data (pid $pid); stop it (or Patroni) first"
    fi
fi
# What pgbackrest said, printable (a wrong passphrase decrypts to bytes that are not text).
clean() { LC_ALL=C tr -c '[:print:]' ' ' <<<"$1" | head -c 600; }
if ! info=$("$@" --stanza="$stanza" --output=json --log-level-console=error info 2>&1); then
    fail "cannot read the repository (unreachable, or a wrong passphrase in the cipher pass file); pgbackrest: $(clean "$info")"
fi
info=$(LC_ALL=C tr -cd '[:print:]\n' <<<"$info")
status=$(jq -r '.[0].status.message // "missing"' <<<"$info" 2>/dev/null) || status="unreadable"
if [ "$status" != ok ]; then
    fail "cannot read the repository: stanza $stanza reports '$status' (a wrong passphrase in the cipher pass file, an unreachable repository, or no stanza yet); pgbackrest: $(clean "$info")"
fi
first_stop=$(jq -r '[.[0].backup[].timestamp.stop] | min // empty' <<<"$info")
[ -n "$first_stop" ] || fail "the repository holds no backup of stanza $stanza; nothing to restore"
if [ -n "$target" ]; then
    when=$(date -d "$target" +%s 2>/dev/null) || fail "--time $target: not a time (give e.g. '2026-12-01 14:00:00+00')"
    if [ "$when" -gt "$(date +%s)" ]; then
        fail "--time $target is in the future; give a time that has passed, or --latest"
    fi
    if [ "$when" -le "$first_stop" ]; then
        fail "--time $target is before the end of the first backup ($(date -u -d "@$first_stop" '+%Y-%m-%d %H:%M:%S+00')): no backup can reach it; choose a later time"
    fi
    # The end of the archive. The newest archived WAL segment (info's archive max, of the newest
    # database: a major upgrade starts a new archive id) was complete when it reached the
    # repository, so a commit after that moment is in a later segment, which is not archived: the
    # replay could not reach the target ("recovery ended before configured recovery target was
    # reached", after the data directory was swapped). The moment is the segment's time in the
    # repository (repo-ls lists an encrypted repository's names and times in clear; the file is
    # <24-char WAL name>-<checksum>[.<compression>]). That time is the repository's clock (the
    # NFS server's, Garage's): a skew against this machine's moves the limit by as much.
    # Not caught here: a target between the last archived commit and that moment. PostgreSQL stops
    # a time-target replay at the first commit after the target; with none archived it reaches the
    # end of the archive first and fails the same way, at step 4 (the restored folder is in place,
    # the old one kept as DIR.before-restore-<time>; see the message of that step).
    archive=$(jq -c '[.[0].archive[]? | select(.max != null)] | max_by(.database.id // 0) // empty' <<<"$info")
    archive_id=$(jq -r '.id // empty' <<<"${archive:-null}")
    newest=$(jq -r '.max // empty' <<<"${archive:-null}")
    if ! [[ $newest =~ ^[0-9A-F]{24}$ ]] || ! [[ $archive_id =~ ^[0-9]+-[0-9]+$ ]]; then
        fail "the repository's WAL archive of stanza $stanza is empty or unreadable (archive '$archive_id', newest segment '$newest'): no replay can reach --time $target; try --latest"
    fi
    folder="archive/$stanza/$archive_id/${newest:0:16}"
    if ! listing=$("$@" --stanza="$stanza" --output=json --log-level-console=error --log-level-stderr=off repo-ls "$folder" 2>&1); then
        fail "cannot list $folder in the repository, to find when the newest archived WAL segment $newest was archived; pgbackrest: $(clean "$listing")"
    fi
    # (No warning on stderr mixed into the JSON: --log-level-stderr=off; an error still shows.)
    listing=$(LC_ALL=C tr -cd '[:print:]\n' <<<"$listing")
    archived=$(jq -r --arg w "$newest-" \
        '[to_entries[] | select(.value.type == "file" and (.key | startswith($w))) | .value.time] | max // empty' \
        <<<"$listing" 2>/dev/null) || archived=""
    [[ $archived =~ ^[0-9]+$ ]] \
        || fail "the newest archived WAL segment $newest is not in $folder of the repository (or pgbackrest gave no time for it); pgbackrest: $(clean "$listing")"
    if [ "$when" -gt "$archived" ]; then
        fail "--time $target is after the end of the archive: its newest WAL segment ($newest) was archived at $(date -u -d "@$archived" '+%Y-%m-%d %H:%M:%S+00'), and no commit after that is in the repository; give a time before it, or --latest (restores to the end of the archive), or, if the primary still runs, wait until archiving has caught up (synth backup shows the last archived WAL)"
    fi
    type=(--type=time "--target=$target" --target-action=promote)
    echo "restore: to $target, from the latest backup that ended before it"
else
    type=(--type=default)
    echo "restore: to the end of the archive (the last archived commit)"
fi
[ $check_only -eq 0 ] || { echo "restore: checks passed; nothing changed (--check-only)"; exit 0; }

# 2. Restore into a new folder beside the data directory.
stamp=$(date -u +%Y%m%dT%H%M%SZ)
new="$data.restoring-$stamp"
aside="$data.before-restore-$stamp"
mkdir -m 0700 "$new"
if [ -n "$owner" ] && [ "$(id -u)" -eq 0 ]; then
    chown "$owner:" "$new"
fi
printf -v restore_command '%q ' "$@"
restore_command="${restore_command}--stanza=$stanza archive-get %f \"%p\""
if ! "$@" --stanza="$stanza" "--pg1-path=$new" "${type[@]}" "--recovery-option=restore_command=$restore_command" restore; then
    fail "pgbackrest restore failed; $data is unchanged (the partial restore stays in $new: remove it once read)"
fi

# 3. Swap: the old data directory stays beside the new one.
if [ -e "$data" ]; then
    mv -- "$data" "$aside"
    echo "restore: the data directory before the restore is kept in $aside"
fi
mv -- "$new" "$data"
if [ -z "$finish" ]; then
    echo "restore: $data restored; start PostgreSQL: it replays the archive and then opens as the primary"
    exit 0
fi

# 4. Replay and promote here, then stop cleanly.
as_owner() {
    if [ -n "$owner" ] && [ "$(id -u)" -eq 0 ]; then
        runuser -u "$owner" -- "$@"
    else
        "$@"
    fi
}
sock=$(mktemp -d /tmp/lemmy-cluster-restore.XXXXXX)
[ -z "$owner" ] || [ "$(id -u)" -ne 0 ] || chown "$owner:" "$sock"
creds=""
cleanup() {
    [ -z "$creds" ] || rm -rf -- "$creds"
    rmdir -- "$sock" 2>/dev/null || true
}
trap cleanup EXIT
if [ ${#credentials[@]} -gt 0 ]; then
    creds=$(mktemp -d "$( [ -w /run ] && echo /run || echo /tmp)/lemmy-cluster-restore-credentials.XXXXXX")
    for c in "${credentials[@]}"; do
        install -m 0400 -- "${c#*=}" "$creds/${c%%=*}"
    done
    if [ -n "$owner" ] && [ "$(id -u)" -eq 0 ]; then
        chown -R "$owner:" "$creds"
    fi
    export CREDENTIALS_DIRECTORY=$creds
fi
log="$data.restore-$stamp.log"
as_owner touch "$log" 2>/dev/null || log=/dev/null
echo "restore: replaying the archive in $data (PostgreSQL without a TCP listener; log: $log)"
as_owner "$finish/pg_ctl" start -w -t 86400 -D "$data" -l "$log" \
    -o "-c listen_addresses= -c unix_socket_directories=$sock" >/dev/null \
    || fail "PostgreSQL did not start on the restored folder (see $log); the old data directory is $aside"
port=$(sed -n 4p "$data/postmaster.pid")
sql() { as_owner "$finish/psql" -h "$sock" -p "$port" -d postgres -XAtqc "$1"; }
until [ "$(sql 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
    if ! as_owner "$finish/pg_ctl" status -D "$data" >/dev/null 2>&1; then
        fail "PostgreSQL stopped during the replay (see $log); the old data directory is $aside"
    fi
    sleep 1
done
for setting in restore_command recovery_target_time recovery_target_action recovery_target_timeline; do
    sql "ALTER SYSTEM RESET $setting" >/dev/null
done
sql CHECKPOINT >/dev/null
timeline=$(sql 'SELECT timeline_id FROM pg_control_checkpoint()')
as_owner "$finish/pg_ctl" stop -m fast -w -t 600 -D "$data" >/dev/null
echo "restore: $data replayed to the target and promoted (timeline $timeline), stopped cleanly; start Patroni (or PostgreSQL) on it"
