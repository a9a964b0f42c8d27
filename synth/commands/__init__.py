"""Operations commands (`synth secrets`, `synth verify`, `synth deploy`), registered by synth.cli.

Importing these modules costs only click: the model, pydantic, paramiko and testinfra are imported
inside the commands, so `synth --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from synth.model import Cluster
    from synth.remote import SshOptions

F = TypeVar("F", bound=Callable[..., Any])


def ssh_options(fn: F) -> F:
    """--ssh-option (repeatable) and --identity."""
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
    from synth.errors import Problem, SynthError
    from synth.remote import SshOptions, split_option

    problems = []
    for opt in ssh_option:
        try:
            split_option(opt)
        except ValueError as exc:
            problems.append(Problem("--ssh-option", str(exc)))
    if problems:
        raise SynthError(str(file), problems)
    return SshOptions(tuple(ssh_option), str(identity) if identity is not None else None)


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


def folder_of(file: Path) -> Path:
    return file.parent if str(file.parent) else Path(".")
