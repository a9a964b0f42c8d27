"""`synth secrets init` and `synth secrets push`: the cluster's secret files, made here and installed there."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from synth.commands.common import (
    CLUSTER_ARG,
    folder_of,
    host_option,
    make_ssh_options,
    select,
    ssh_options,
    user_errors,
    write_cluster_file,
)

if TYPE_CHECKING:
    from synth.model import Cluster

SECRETS_DIR = "secrets"


def _secrets_dir(cluster_file: Path) -> Path:
    return folder_of(cluster_file) / SECRETS_DIR


def _unusable(key: str, data: bytes) -> str | None:
    """Why a kept secret file cannot work ("is empty; ..."), or None."""
    value = data.decode("utf-8", errors="replace")
    value = value[:-1] if value.endswith("\n") else value
    if not value.strip():
        return "is empty; put the secret in it, or delete it and run `synth secrets init` again"
    if key == "admin_password" and not 10 <= len(value) <= 60:
        return (
            f"has {len(value)} characters, and Lemmy refuses an admin password outside 10-60 characters; "
            "replace it, or delete it and run `synth secrets init` again"
        )
    return None


def _repo_path(folder: Path) -> str:
    """FOLDER as a path from its git repository's root (what a root .gitignore entry needs)."""
    import subprocess

    try:
        r = subprocess.run(
            ["git", "-C", str(folder.parent), "rev-parse", "--show-prefix"], capture_output=True, text=True, check=False
        )
    except OSError:
        return folder.name
    return f"{r.stdout.strip()}{folder.name}" if r.returncode == 0 else folder.name


def _git_ignored(folder: Path) -> bool | None:
    """Whether git ignores FOLDER: True/False, or None outside a git work tree (or without git)."""
    import subprocess

    try:
        r = subprocess.run(
            ["git", "-C", str(folder.parent), "check-ignore", "-q", "--", f"{folder.name}/"],
            capture_output=True,
            check=False,
        )
    except OSError:
        return None
    if r.returncode == 0:
        return True
    if r.returncode == 1:
        return False
    return None  # 128: not a git repository


@click.group("secrets")
def secrets() -> None:
    """Create the cluster's secrets here (init) and install them on the machines (push)."""


# Secrets that come from elsewhere (an external S3 provider) and that init therefore never invents.
PROVIDED = frozenset(
    {
        "s3_access_key",
        "s3_secret_key",
        "backup_s3_access_key",
        "backup_s3_secret_key",
        "images_backup_access_key",
        "images_backup_secret_key",
    }
)


def _new_value(key: str, own_storage: bool) -> str:
    from synth import garage

    if key == "garage_rpc_secret":
        return garage.new_rpc_secret()
    if key in ("s3_access_key", "backup_s3_access_key", "images_backup_access_key") and own_storage:
        return garage.new_access_key_id()
    if key in ("s3_secret_key", "backup_s3_secret_key", "images_backup_secret_key") and own_storage:
        return garage.new_secret_key()
    import secrets as rnd

    # 32 random bytes: 43 URL-safe characters (Lemmy's admin password must be 10-60 characters).
    return rnd.token_urlsafe(32)


def write_secret(path: Path, text: str) -> None:
    """Create PATH with TEXT, mode 0600; never overwrite (FileExistsError)."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def node_key_for(cluster_file: Path, name: str) -> tuple[str, Callable[[], None] | None, str]:
    """(node id, what writes the key file, what to tell) for a new storage machine NAME: a key
    already in secrets/ is kept (a machine added again keeps its identity), else a new one is made,
    written only when the caller runs the returned function."""
    from synth import garage
    from synth.errors import SynthError
    from synth.topology import local_secret_name

    folder = _secrets_dir(cluster_file)
    path = folder / local_secret_name("garage_node_key", name)
    if path.exists():
        try:
            return garage.read_node_id(path), None, f"kept: {path} (the existing node key of {name})"
        except garage.NodeKeyError as exc:
            raise SynthError.single(
                str(cluster_file), f"machines.{name}", f"{path} is not a Garage node key ({exc}); move it away"
            ) from None
    key = garage.new_node_key()

    def write() -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        write_secret(path, garage.encode(key))

    return key[32:].hex(), write, f"created: {path} (the node key of {name})"


def _check_node_keys(c: Cluster, folder: Path, file: str) -> dict[str, str]:
    """The node id of every storage machine's existing key file; SynthError when a key file is
    broken or disagrees with the id recorded in the cluster file, or a recorded key is lost."""
    from synth import garage
    from synth.errors import Problem, SynthError
    from synth.topology import local_secret_name

    ids: dict[str, str] = {}
    problems = []
    for name in c.machines_with("storage"):
        path = folder / local_secret_name("garage_node_key", name)
        recorded = c.machines[name].garage_node_id
        where = f"machines.{name}.garage_node_id"
        if path.exists():
            try:
                ids[name] = garage.read_node_id(path)
            except garage.NodeKeyError as exc:
                problems.append(Problem(where, f"{path} is not a Garage node key ({exc}); restore it from your backup"))
                continue
            if recorded is not None and recorded != ids[name]:
                problems.append(
                    Problem(
                        where,
                        f"{recorded} is not the id of the key in {path} ({ids[name]}); restore the key that "
                        "belongs to this id from your backup, or, if the machine never ran Garage, delete the "
                        "line and run `synth secrets init` again",
                    )
                )
        elif recorded is not None:
            problems.append(
                Problem(
                    where,
                    f"recorded, but its key {path} is missing; restore the file from your backup of secrets/, "
                    "or, if the machine never ran Garage, delete the line and run `synth secrets init` again",
                )
            )
    if problems:
        raise SynthError(file, problems)
    return ids


def _backup_tls(c: Cluster, folder: Path, wanted: dict[str, tuple[str, str]]) -> tuple[set[str], list[str]]:
    """Make the backup CA and the machines' certificates that WANTED names and that are missing
    (synth.backuptls); check the ones kept. (file names created, problems)."""
    from synth import backuptls as bt
    from synth.topology import local_secret_name, plan

    machines = sorted({m for key, m in wanted.values() if key == "backup_tls_cert"})
    if not machines:
        return set(), []
    made: set[str] = set()
    bad: list[str] = []
    ca_key = folder / bt.CA_KEY_FILE
    ca_cert = folder / local_secret_name("backup_tls_ca", "")
    start_over = (
        f"to start over, move every backup-tls-* file of {folder} away, run `synth secrets init` and push the "
        "secrets to the postgres machines and the backup machine"
    )
    if ca_key.exists() and ca_cert.exists():
        try:
            bt.check_ca(ca_key.read_bytes(), ca_cert.read_bytes())
        except bt.TlsFileError as exc:
            return made, [f"{ca_key}, {ca_cert}: {exc}; restore both from your backup of secrets/, or {start_over}"]
    elif ca_key.exists() or ca_cert.exists():
        gone = ca_cert if ca_key.exists() else ca_key
        return made, [f"{gone} is missing (the backup CA); restore it from your backup of secrets/, or {start_over}"]
    else:
        key_pem, cert_pem = bt.new_ca(c.cluster.name)
        write_secret(ca_key, key_pem.decode())
        write_secret(ca_cert, cert_pem.decode())
        made.add(ca_cert.name)
        click.echo(f"created: {ca_key} (the backup CA's key: it stays here, never pushed; keep a copy)")
    ca_pem = ca_cert.read_bytes()
    hosts = plan(c)
    for m in machines:
        key_path = folder / local_secret_name("backup_tls_key", m)
        cert_path = folder / local_secret_name("backup_tls_cert", m)
        address = hosts[m].private_address
        renew = (
            f"move {key_path.name} and {cert_path.name} away, run `synth secrets init` (a new pair) and "
            f"`synth secrets push --host {m}`"
        )
        if key_path.exists() and cert_path.exists():
            try:
                bt.check_machine_cert(ca_pem, key_path.read_bytes(), cert_path.read_bytes(), m, address)
            except bt.TlsFileError as exc:
                bad.append(f"{cert_path} {exc}; {renew}")
        elif key_path.exists() or cert_path.exists():
            gone = cert_path if key_path.exists() else key_path
            bad.append(f"{gone} is missing; {renew}")
        else:
            key_pem, cert_pem = bt.new_machine_cert(ca_key.read_bytes(), ca_pem, m, address)
            write_secret(key_path, key_pem.decode())
            write_secret(cert_path, cert_pem.decode())
            made.update({key_path.name, cert_path.name})
    return made, bad


@secrets.command("init")
@CLUSTER_ARG
@user_errors
def init(cluster_file: Path) -> None:
    """Create secrets/ beside CLUSTER with every secret the cluster needs; never overwrite one.

    For machines with role "storage" it also creates each one's Garage node key and records the
    key's public id in CLUSTER (garage_node_id), keeping the file's comments and layout.
    """
    import os
    import stat

    from synth import garage
    from synth.edit import set_machine_keys
    from synth.model import load, parse
    from synth.topology import BACKUP_TLS_SECRETS, local_secret_name, plan

    c = load(cluster_file, pending_node_ids=True)
    own_storage = bool(c.machines_with("storage"))
    folder = _secrets_dir(cluster_file)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    node_ids = _check_node_keys(c, folder, str(cluster_file))
    from synth.commands.mesh import check_mesh_keys, mesh_records

    wg_keys = check_mesh_keys(c, folder, str(cluster_file))
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    wanted = {local_secret_name(key, name): (key, name) for name, hp in plan(c).items() for key in hp.secrets}
    created = kept = missing = 0
    tls_made, bad = _backup_tls(c, folder, wanted)
    for filename, (key, machine) in sorted(wanted.items()):
        path = folder / filename
        if filename in tls_made:
            click.echo(f"created: {path}")
            created += 1
            continue
        if key in BACKUP_TLS_SECRETS and not path.exists():
            continue  # _backup_tls said why it could not make it
        if path.exists():
            why = _unusable(key, path.read_bytes())
            if why is not None:
                bad.append(f"{path} {why}")
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                os.chmod(path, 0o600)
                click.echo(f"kept: {path} (mode {mode:04o} tightened to 0600)")
            else:
                click.echo(f"kept: {path}")
            kept += 1
            continue
        if key == "smtp_password":
            # The mail provider's password of the login; a made-up one could never log in.
            login = c.lemmy.email.login if c.lemmy.email else None
            click.echo(f"missing: {path}: put the password of the SMTP login {login!r} there (one line, mode 0600)")
            missing += 1
            continue
        if key in PROVIDED and not own_storage:
            # The S3 provider issues these keys; a made-up one would only fail later, at pict-rs.
            click.echo(f"missing: {path}: put the key your S3 provider gave you there (one line, mode 0600)")
            missing += 1
            continue
        if key == "garage_node_key":
            node_key = garage.new_node_key()
            write_secret(path, garage.encode(node_key))
            node_ids[machine] = node_key[32:].hex()
        elif key == "wireguard_key":
            from synth import mesh

            private = mesh.new_private_key()
            write_secret(path, private + "\n")
            wg_keys[machine] = mesh.public_key(private)
        else:
            write_secret(path, _new_value(key, own_storage) + "\n")
        click.echo(f"created: {path}")
        created += 1
    click.echo(f"{created} created, {kept} kept" + (f", {missing} to provide" if missing else "") + f" in {folder}")
    for line in bad:
        click.echo(f"problem: {line}", err=True)
    record = {
        name: {"garage_node_id": node_id}
        for name, node_id in node_ids.items()
        if c.machines[name].garage_node_id is None
    }
    for name, keys in mesh_records(c, wg_keys).items():
        record.setdefault(name, {}).update(keys)
    if record:
        text = cluster_file.read_text(encoding="utf-8")
        new_text = set_machine_keys(text, str(cluster_file), record)
        parse(new_text, str(cluster_file))  # the ids are all that was missing
        write_cluster_file(cluster_file, new_text)
        for name, keys in record.items():
            for k in keys:
                click.echo(f"recorded: machines.{name}.{k} in {cluster_file}")
        click.echo(f"Next: `synth generate {cluster_file}` puts them into hosts/.")
    if _git_ignored(folder) is False:
        click.echo(
            f"warning: {folder} is not ignored by git; add `/{_repo_path(folder)}/` to the repository's "
            ".gitignore (its root's) so that the secrets are never committed",
            err=True,
        )
    if bad:
        sys.exit(1)


@secrets.command("push")
@CLUSTER_ARG
@host_option
@ssh_options
@click.option("--parallel", type=click.IntRange(min=1), default=8, show_default=True, help="Machines at once.")
@user_errors
def push(
    cluster_file: Path, hosts: tuple[str, ...], ssh_option: tuple[str, ...], identity: Path | None, parallel: int
) -> None:
    """Install on each machine exactly the secrets it needs (root:root 0400, folder 0700).

    One SSH connection per machine; the contents travel through ssh's stdin, never on a command
    line. Each file is compared by sha256 on the machine and only rewritten (atomically) when it
    differs. Exit 1 when any machine failed.
    """
    from concurrent.futures import ThreadPoolExecutor

    from synth.errors import Problem, SynthError
    from synth.model import load
    from synth.remote import PushResult, push_secrets
    from synth.topology import local_secret_name, plan

    c = load(cluster_file)
    opts = make_ssh_options(cluster_file, ssh_option, identity)
    names = select(c, cluster_file, hosts)
    plans = plan(c)
    folder = _secrets_dir(cluster_file)
    _check_node_keys(c, folder, str(cluster_file))  # a wrong key would keep Garage from starting
    from synth.commands.mesh import check_mesh_keys

    check_mesh_keys(c, folder, str(cluster_file))  # a wrong key would cut the machine off the mesh
    local: dict[str, bytes] = {}
    problems = []
    wanted = {local_secret_name(k, n): k for n in names for k in plans[n].secrets}
    for filename, key in sorted(wanted.items()):
        path = folder / filename
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if key == "smtp_password":
                fix = "put the password of [lemmy.email] login there (your mail provider's; init never makes it up)"
            else:
                fix = f"create it with `synth secrets init {cluster_file}`"
            problems.append(Problem("", f"{path} is missing; {fix}"))
            continue
        why = _unusable(key, data)
        if why is not None:
            problems.append(Problem("", f"{path} {why}"))
            continue
        local[filename] = data
    if problems:
        raise SynthError(str(cluster_file), problems)

    def one(name: str) -> PushResult:
        hp = plans[name]
        files = {remote: local[local_secret_name(key, name)] for key, remote in hp.secrets.items()}
        if not files:
            return PushResult(name, {})
        m = c.machines[name]
        return push_secrets(name, m.ssh_user, m.address, files, opts)

    with ThreadPoolExecutor(max_workers=min(parallel, max(1, len(names)))) as pool:
        results = list(pool.map(one, names))
    failed = 0
    for r in results:
        if not plans[r.host].secrets:
            click.echo(f"{r.host}: no secrets needed")
        for remote, st in sorted(r.statuses.items()):
            click.echo(f"{r.host}: {st}: {remote}")
        if not r.ok:
            failed += 1
            click.echo(f"{r.host}: FAILED: {r.error}", err=True)
    counts: dict[str, int] = {}
    for r in results:
        for st in r.statuses.values():
            counts[st] = counts.get(st, 0) + 1
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("created", "changed", "unchanged"))
    click.echo(f"{len(results) - failed} of {len(results)} machines done: {summary}")
    if failed:
        sys.exit(1)
