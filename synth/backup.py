"""cluster.toml [backup]: pgBackRest's repository, retention and schedule, and their validation.

The section is optional: without it the cluster has no backup (and `synth verify` says so). With
it, every postgres machine archives its WAL to one pgBackRest repository (whichever machine leads)
and the leader takes the scheduled full and differential backups:

    [backup]
    repository = "s3"            # "s3": a bucket of its own on the cluster's storage machines (Garage)
                                 # "external-s3": a bucket at the [pictrs] endpoint
                                 # "posix": a folder (path) on the machine with role "backup"
                                 #   (pgBackRest's repository host, over TLS), or on every
                                 #   postgres machine (one machine, or shared_mount)
    full_retention = 2           # full backups kept (each with the WAL that follows it)
    diff_retention = 6           # differential backups kept
    full_schedule = "Sun *-*-* 01:00:00"          # systemd OnCalendar
    diff_schedule = "Mon..Sat *-*-* 01:00:00"

The repository is encrypted (aes-256-cbc) with the passphrase in secrets/backup-cipher-pass.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from synth.errors import Problem

if TYPE_CHECKING:
    from synth.model import Cluster

RepositoryKind = Literal["s3", "external-s3", "posix"]

# pgBackRest's stanza: the one database cluster this repository holds.
STANZA = "lemmy"
# The bucket of the repository on the cluster's own storage machines, and its Garage key's name.
DEFAULT_BUCKET = "pgbackrest"
GARAGE_BACKUP_KEY_NAME = "pgbackrest"
# A posix repository's default folder on the postgres machines.
DEFAULT_PATH = "/var/lib/pgbackrest"
CIPHER_TYPE = "aes-256-cbc"

DEFAULT_FULL_SCHEDULE = "Sun *-*-* 01:00:00"
DEFAULT_DIFF_SCHEDULE = "Mon..Sat *-*-* 01:00:00"


class BackupSection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    repository: RepositoryKind
    # posix: the repository's folder on the postgres machines.
    path: str | None = None
    # posix with several postgres machines: path is one shared filesystem (NFS, ...) mounted on
    # every one of them, so that whichever machine leads archives into the same repository.
    shared_mount: bool = False
    # s3: default "pgbackrest" on the storage machines; external-s3: required (not pict-rs's bucket).
    bucket: str | None = None
    full_retention: int = Field(default=2, ge=1, le=100)
    diff_retention: int = Field(default=6, ge=1, le=100)
    full_schedule: str = DEFAULT_FULL_SCHEDULE
    diff_schedule: str = DEFAULT_DIFF_SCHEDULE
    # With a backup machine and pict-rs's object storage: copy pict-rs's bucket to the backup
    # machine (rclone sync with a read-only key, objects deleted or replaced kept aside).
    images: bool = True


# --------------------------------------------------------------------------- OnCalendar

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WEEKDAY_NAMES = {d.lower() for d in _WEEKDAYS} | {
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
}
_SHORTHANDS = {"minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "quarterly", "semiannually"}
_NUM = r"(\*|\d+(\.\.\d+)?(/\d+)?)(,(\*|\d+(\.\.\d+)?(/\d+)?))*"
_DATE_RE = re.compile(rf"^{_NUM}-{_NUM}-{_NUM}\Z|^{_NUM}-{_NUM}\Z")
_TIME_RE = re.compile(rf"^{_NUM}:{_NUM}(:{_NUM})?\Z")


def _weekday_ok(token: str) -> bool:
    for part in token.split(","):
        for day in part.split(".."):
            if day.lower() not in _WEEKDAY_NAMES:
                return False
        if part.count("..") > 1:
            return False
    return True


def calendar_problem(text: str) -> str | None:
    """Why TEXT is not a systemd OnCalendar expression of the forms systemd.time(7) documents
    (a shorthand such as "daily", or `[WEEKDAYS] [DATE] TIME`), or None when it is one."""
    words = text.split()
    if not words:
        return "empty"
    if len(words) == 1 and words[0].lower() in _SHORTHANDS:
        return None
    rest = list(words)
    consumed = False
    if rest and not _TIME_RE.match(rest[0]) and not _DATE_RE.match(rest[0]):
        if not _weekday_ok(rest[0]):
            return f"{rest[0]!r} is not a weekday list such as 'Mon..Sat' or 'Sun'"
        rest, consumed = rest[1:], True
    if rest and _DATE_RE.match(rest[0]) and not _TIME_RE.match(rest[0]):
        rest, consumed = rest[1:], True
    # systemd takes 00:00:00 when the time is left out.
    if (rest or not consumed) and (len(rest) != 1 or not _TIME_RE.match(rest[0])):
        return "expected [weekdays] [year-month-day] hour:minute[:second], e.g. 'Sun *-*-* 01:00:00' or 'daily'"
    return None


# --------------------------------------------------------------------------- rules


def _bucket_ok(name: str) -> bool:
    return re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z", name) is not None


def repository_host(c: Cluster) -> str | None:
    """The machine with role "backup" (pgBackRest's repository host), or None."""
    hosts = c.machines_with("backup")
    return hosts[0] if hosts else None


def _check_hosts(c: Cluster) -> list[Problem]:
    p: list[Problem] = []
    hosts = c.machines_with("backup")
    b = c.backup
    for name in hosts:
        where = f"machines.{name}.roles"
        if b is None:
            p.append(
                Problem(
                    where,
                    'role "backup" keeps pgBackRest\'s repository, and the cluster has no [backup] section; '
                    'add [backup] with repository = "posix", or remove the role',
                )
            )
        elif b.repository != "posix":
            p.append(
                Problem(
                    where,
                    f'role "backup" keeps a posix repository (a folder on {name}), and [backup] repository is '
                    f'{b.repository!r}; set repository = "posix", or remove the role',
                )
            )
        if "postgres" in c.machines[name].roles:
            p.append(
                Problem(
                    where,
                    f"{name} has role 'postgres' too: losing it would lose a database machine and the backups "
                    "at once; give role 'backup' to a machine without 'postgres'",
                )
            )
    for name in hosts[1:]:
        p.append(
            Problem(
                f"machines.{name}.roles",
                f"one machine keeps the repository, and {hosts[0]!r} has role 'backup' already; remove it from "
                f"{name} (or from {hosts[0]})",
            )
        )
    return p


def images_backup(c: Cluster) -> bool:
    """Whether the backup machine copies pict-rs's bucket (see IMAGES_*)."""
    b = c.backup
    return b is not None and b.images and repository_host(c) is not None and c.pictrs.store == "object_storage"


# The copy of pict-rs's bucket on the backup machine: its folder under the repository's path,
# when it runs (systemd OnCalendar: every six hours), and its Garage key's name.
IMAGES_FOLDER = "pictrs-bucket"
IMAGES_SCHEDULE = "*-*-* 00/6:30:00"
GARAGE_IMAGES_KEY_NAME = "images-backup"


def images_keep_days(c: Cluster) -> int:
    """How long objects deleted from the bucket stay in the copy: as long as the oldest database
    backup kept can be restored (a full backup a week, full_retention of them, and a week more)."""
    b = c.backup
    assert b is not None
    return 7 * (b.full_retention + 1)


def check(c: Cluster) -> list[Problem]:
    p = _check_hosts(c)
    b = c.backup
    if b is None:
        return p
    if "images" in b.model_fields_set and b.images and not images_backup(c):
        p.append(
            Problem(
                "backup.images",
                'copies pict-rs\'s bucket to the backup machine: it needs a machine of role "backup" and '
                '[pictrs] store = "object_storage"; remove it (with a local pict-rs its folder is snapshotted '
                "on its own machine, see the README)",
            )
        )
    pgs = c.machines_with("postgres")
    storage = c.machines_with("storage")
    host = repository_host(c)
    if b.repository == "posix":
        if b.bucket is not None:
            p.append(Problem("backup.bucket", 'only used with an S3 repository; remove it, or set repository = "s3"'))
        path = b.path if b.path is not None else DEFAULT_PATH
        if not path.startswith("/") or path.startswith("/nix/store") or path.rstrip("/") in ("", "/var", "/var/lib"):
            p.append(
                Problem("backup.path", f"{path!r}: give an absolute folder outside /nix/store, e.g. {DEFAULT_PATH!r}")
            )
        if host is not None and "shared_mount" in b.model_fields_set:
            p.append(
                Problem(
                    "backup.shared_mount",
                    f"the repository is on the backup machine {host!r} alone (the postgres machines reach it "
                    "over TLS); remove shared_mount",
                )
            )
        elif host is None and len(pgs) > 1 and not b.shared_mount:
            p.append(
                Problem(
                    "backup.shared_mount",
                    f"a posix repository with {len(pgs)} postgres machines must be on a machine of its own "
                    "or one shared filesystem, or a new leader would archive into a repository of its own: "
                    'give a machine role "backup" (the repository is then on it), or mount one filesystem '
                    "(NFS, ...) at path on every postgres machine and set shared_mount = true, or use "
                    'repository = "s3"',
                )
            )
    else:
        for key in ("path", "shared_mount"):
            if key in b.model_fields_set:
                p.append(Problem(f"backup.{key}", 'only used with repository = "posix"; remove it'))
        if b.repository == "s3":
            if not storage:
                p.append(
                    Problem(
                        "backup.repository",
                        '"s3" keeps the backups on the cluster\'s storage machines (Garage), and this cluster '
                        'has none; add machines with role "storage", or use "external-s3" (the [pictrs] '
                        'endpoint) or "posix"',
                    )
                )
            bucket = b.bucket or DEFAULT_BUCKET
            if storage and bucket == (c.pictrs.bucket or "pictrs"):
                p.append(Problem("backup.bucket", "must differ from pict-rs's bucket; e.g. 'pgbackrest'"))
        else:  # external-s3
            # (object storage without endpoint or storage machines: [pictrs] reports that already)
            pictrs_reports = c.pictrs.store == "object_storage" and c.pictrs.endpoint is None and not storage
            if (c.pictrs.store != "object_storage" or c.pictrs.endpoint is None) and not pictrs_reports:
                p.append(
                    Problem(
                        "backup.repository",
                        '"external-s3" uses the S3 service of [pictrs] endpoint, and this cluster has none; set '
                        '[pictrs] store = "object_storage" with endpoint, or use "s3" or "posix"',
                    )
                )
            if b.bucket is None:
                p.append(Problem("backup.bucket", "required with external-s3: a bucket of its own at your S3 provider"))
            elif b.bucket == c.pictrs.bucket:
                p.append(
                    Problem("backup.bucket", "must differ from [pictrs] bucket: the backups get a bucket of their own")
                )
        if b.bucket is not None and not _bucket_ok(b.bucket):
            p.append(
                Problem(
                    "backup.bucket",
                    f"{b.bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')",
                )
            )
    for key in ("full_schedule", "diff_schedule"):
        why = calendar_problem(getattr(b, key))
        if why is not None:
            p.append(Problem(f"backup.{key}", f"not a systemd OnCalendar expression: {why}"))
    if not pgs:
        p.append(Problem("backup", "there is no machine with role 'postgres' to back up; remove [backup]"))
    return p


# --------------------------------------------------------------------------- derived values


def repository_options(c: Cluster) -> dict[str, object]:
    """services.lemmy-cluster.backup.repository: pgBackRest's repo1-* settings (without secrets)."""
    from synth.topology import GARAGE_S3_PORT, hostport

    b = c.backup
    assert b is not None
    if b.repository == "posix":
        return {"type": "posix", "path": b.path or DEFAULT_PATH}
    if b.repository == "s3":
        first = c.machines_with("storage")[0]
        return {
            "type": "s3",
            # pgBackRest >= 2.58 speaks plain HTTP to an http:// endpoint (inside the private network).
            "endpoint": "http://" + hostport(c.private_address(first), GARAGE_S3_PORT),
            "bucket": b.bucket or DEFAULT_BUCKET,
            "region": c.pictrs.region,
            "uriStyle": "path",
            "path": "/",
        }
    assert c.pictrs.endpoint is not None and b.bucket is not None
    return {
        "type": "s3",
        "endpoint": c.pictrs.endpoint,
        "bucket": b.bucket,
        "region": c.pictrs.region,
        "uriStyle": "path" if c.pictrs.path_style else "host",
        "path": "/",
    }


def pictrs_files_destination(c: Cluster) -> str:
    """Where a local pict-rs's snapshots go: beside the posix repository's own folders."""
    b = c.backup
    assert b is not None
    return (b.path or DEFAULT_PATH).rstrip("/") + "/pictrs-files"
