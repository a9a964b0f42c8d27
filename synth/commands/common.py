"""What the commands share: the cluster argument and options, error reporting, the
edit-validate-write cycle of cluster.toml, SSH options and machine selection.

Every command module imports this one; none imports synth.cli (which only registers them), so
there is no import cycle. Importing it costs only click: the model, pydantic and testinfra are
imported inside the functions, so `synth --help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from synth.model import Cluster
    from synth.remote import SshOptions

F = TypeVar("F", bound=Callable[..., Any])

CLUSTER_ARG = click.argument(
    "cluster_file",
    metavar="[CLUSTER]",
    required=False,
    default="cluster.toml",
    type=click.Path(dir_okay=False, path_type=Path),
)

CLUSTER_OPTION = click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default="cluster.toml",
    show_default=True,
    help="The cluster file.",
)

OUT_OPTION = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder that receives hosts/ (default: the folder of CLUSTER).",
)


# --------------------------------------------------------------------------- error reporting


def user_errors(fn: F) -> F:
    """Turn SynthError into `FILE: path: message` lines on stderr and exit code 1 (with --json: a
    JSON object {"ok": false, "problems": [...]} on stdout)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from synth.errors import SynthError

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except SynthError as exc:
            if debug:
                raise
            if kwargs.get("as_json"):
                import json

                problems = [{"file": exc.file, "path": p.path, "message": p.message} for p in exc.problems]
                click.echo(json.dumps({"ok": False, "problems": problems}, indent=2))
                sys.exit(1)
            for problem in exc.problems:
                click.echo(problem.render(exc.file), err=True)
            n = len(exc.problems)
            click.echo(f"synth: {n} problem{'s' if n != 1 else ''} found; nothing was written.", err=True)
            sys.exit(1)
        except OSError as exc:
            if debug:
                raise
            click.echo(f"synth: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- the cluster file


def load_cluster(path: Path) -> Cluster:
    from synth.model import load

    return load(path)


def folder_of(file: Path) -> Path:
    return file.parent if str(file.parent) else Path(".")


def out_dir_for(cluster_file: Path, out_dir: Path | None) -> Path:
    """The folder that receives hosts/: OUT_DIR if given, else the folder of CLUSTER_FILE."""
    return out_dir if out_dir is not None else folder_of(cluster_file)


def write_hosts(cluster: Cluster, cluster_file: Path, out: Path) -> None:
    """Generate hosts/ for CLUSTER (already validated) and report what changed."""
    from synth import generate as gen
    from synth.render import render_files

    files = render_files(cluster, cluster_file.name)
    changes = gen.diff(out, files, str(cluster_file))
    gen.apply(out, files, changes)
    for label, items in (("added", changes.added), ("changed", changes.changed), ("removed", changes.removed)):
        for rel in items:
            click.echo(f"{label}: {out / rel}")
    for folder in changes.kept_folders:
        click.echo(f"kept {out / folder}: it still holds files synth did not write", err=True)
    click.echo(
        f"{len(changes.added)} added, {len(changes.changed)} changed, {len(changes.removed)} removed, "
        f"{len(changes.unchanged)} unchanged"
    )


def write_cluster_file(path: Path, text: str) -> None:
    """Replace PATH with TEXT atomically, keeping what the file was: a symlink stays one (its
    target is replaced), its permissions and owner stay, CRLF line endings stay CRLF."""
    import contextlib
    import os
    import tempfile

    target = path.resolve() if path.is_symlink() else path
    st = target.stat() if target.exists() else None
    mode = st.st_mode & 0o7777 if st is not None else 0o644
    if st is not None and b"\r\n" in target.read_bytes():
        text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".synth-tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        if st is not None and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            # Not ours to give away without the right: the file then belongs to whoever edits it.
            with contextlib.suppress(PermissionError):
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cluster_lock(cluster_file: Path) -> Any:
    """An exclusive lock on CLUSTER_FILE's edits, held while the context runs: concurrent
    `add-machine`s are serialised instead of losing each other's updates. The lock is flock(2) on
    the file's folder (the file itself is replaced by each edit; nothing is written for the lock)."""
    import contextlib
    import fcntl
    import os

    target = cluster_file.resolve() if cluster_file.is_symlink() else cluster_file
    folder = target.parent if str(target.parent) else Path(".")

    @contextlib.contextmanager
    def held() -> Any:
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    return held()


def edit_cluster(
    cluster_file: Path,
    edit: Callable[[str, Cluster], str],
    out_dir: Path | None,
    before_write: Callable[[], None] | None = None,
) -> Cluster:
    """Apply EDIT to the cluster file, validate the result, then write it and regenerate hosts/.

    An edit whose result is invalid writes nothing and reports the problems found in the result.
    BEFORE_WRITE runs once the result is known to be valid, before the cluster file is replaced
    (add-machine writes a storage machine's node key there). The whole read-edit-write, and the
    regeneration of hosts/ from its result, run under cluster_lock. When hosts/ cannot be written
    after the cluster file was, the message says so.
    """
    from synth.errors import SynthError
    from synth.model import parse

    with cluster_lock(cluster_file):
        current = load_cluster(cluster_file)
        text = cluster_file.read_text(encoding="utf-8")
        new_text = edit(text, current)
        try:
            new = parse(new_text, str(cluster_file))
        except SynthError as exc:
            click.echo(f"synth: {cluster_file} was not changed: the result would be invalid:", err=True)
            raise exc from None
        if before_write is not None:
            before_write()
        write_cluster_file(cluster_file, new_text)
        click.echo(f"updated {cluster_file}")
        # Still under the lock: an edit that finished later must not have its hosts/ overwritten by
        # this one's (older) cluster.
        out = out_dir_for(cluster_file, out_dir)
        try:
            write_hosts(new, cluster_file, out)
        except (OSError, SynthError) as exc:
            click.echo(
                f"synth: {cluster_file} WAS updated, but {out / 'hosts'} was not regenerated (nothing of it was "
                f"changed): {exc}. Fix that, then run `synth generate {cluster_file}`; deploy refuses until then.",
                err=True,
            )
            sys.exit(1)
    return new


# --------------------------------------------------------------------------- machines and SSH


def _remember_ssh_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    ctx.meta["synth.ssh_config"] = value


def ssh_options(fn: F) -> F:
    """--ssh-option (repeatable), --identity and --ssh-config (read by make_ssh_options)."""
    fn = click.option(
        "--ssh-config",
        "-F",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        expose_value=False,
        callback=_remember_ssh_config,
        help="ssh_config file instead of ~/.ssh/config (as for `ssh -F`); used for every connection.",
    )(fn)
    fn = click.option(
        "--identity",
        "-i",
        "identity",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="SSH private key to log in with.",
    )(fn)
    fn = click.option(
        "--ssh-option",
        "-o",
        "ssh_option",
        multiple=True,
        metavar="KEY=VALUE",
        help="An ssh_config option, as for `ssh -o` (repeatable), e.g. StrictHostKeyChecking=accept-new.",
    )(fn)
    return fn


def host_option(fn: F) -> F:
    return click.option(
        "--host",
        "hosts",
        multiple=True,
        metavar="NAME",
        help="Only this machine (repeatable; default: every machine).",
    )(fn)


def make_ssh_options(file: Path, ssh_option: Sequence[str], identity: Path | None) -> SshOptions:
    """The SSH options of the command line, checked by OpenSSH itself (`ssh -G`): an option it
    does not know, or a value it refuses, is an error before anything runs."""
    from synth.errors import Problem, SynthError
    from synth.remote import SshOptions, check_options, split_option

    problems = []
    for opt in ssh_option:
        try:
            split_option(opt)
        except ValueError as exc:
            problems.append(Problem("--ssh-option", str(exc)))
    if problems:
        raise SynthError(str(file), problems)
    ctx = click.get_current_context(silent=True)
    config = ctx.meta.get("synth.ssh_config") if ctx is not None else None
    if config is not None and not Path(config).is_file():
        raise SynthError.single(str(file), "--ssh-config", f"{config}: no such file")
    opts = SshOptions(
        tuple(ssh_option),
        str(identity) if identity is not None else None,
        config_file=str(config) if config is not None else None,
    )
    import shutil

    # Without ssh nothing can connect anyway: the command then says so when it tries.
    said = check_options(opts) if shutil.which("ssh") is not None else []
    if said:
        raise SynthError(
            str(file),
            [Problem("--ssh-option", f"OpenSSH refuses the SSH options: {line}") for line in said],
        )
    return opts


def select(c: Cluster, file: Path, hosts: Sequence[str], roles: Sequence[str] = ()) -> list[str]:
    """The machines named by HOSTS and/or having one of ROLES (file order); all when both are empty."""
    import difflib

    from synth.errors import Problem, SynthError
    from synth.model import ROLES

    problems = []
    for h in hosts:
        if h not in c.machines:
            close = difflib.get_close_matches(h, list(c.machines), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(Problem("--host", f"no machine named {h!r}; {hint}machines: {', '.join(c.machines)}"))
    for r in roles:
        if r not in ROLES:
            problems.append(Problem("--role", f"unknown role {r!r}; roles are: {', '.join(ROLES)}"))
    if problems:
        raise SynthError(str(file), problems)
    if not hosts and not roles:
        return list(c.machines)
    wanted = set(hosts) | {n for n, m in c.machines.items() if set(m.roles) & set(roles)}
    return [n for n in c.machines if n in wanted]
