"""The command line. The only module that touches argv, stdout/stderr and exit codes.

Heavy imports (pydantic, the model) happen inside the commands so that `synth --help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from synth.model import Cluster

F = TypeVar("F", bound=Callable[..., Any])

CLUSTER_ARG = click.argument(
    "cluster_file",
    metavar="[CLUSTER]",
    required=False,
    default="cluster.toml",
    type=click.Path(dir_okay=False, path_type=Path),
)


def user_errors(fn: F) -> F:
    """Turn SynthError into `FILE: path: message` lines on stderr and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from synth.errors import SynthError

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except SynthError as exc:
            if debug:
                raise
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.version_option(package_name="lemmy-cluster-synth", prog_name="synth")
def main(debug: bool) -> None:
    """Compile a Lemmy cluster description (cluster.toml) into one NixOS module per machine."""


def _load(path: Path) -> Cluster:
    from synth.model import load

    return load(path)


@main.command()
@CLUSTER_ARG
@user_errors
def validate(cluster_file: Path) -> None:
    """Check CLUSTER (default ./cluster.toml) and report every problem."""
    c = _load(cluster_file)
    roles: dict[str, int] = {}
    for m in c.machines.values():
        for r in m.roles:
            roles[r] = roles.get(r, 0) + 1
    summary = ", ".join(f"{n} {r}" for r, n in sorted(roles.items()))
    click.echo(f"{cluster_file}: OK: cluster {c.cluster.name!r}, {len(c.machines)} machines ({summary})")


@main.command()
@CLUSTER_ARG
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder that receives hosts/ (default: the folder of CLUSTER).",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 and list the files that would change.")
@user_errors
def generate(cluster_file: Path, out_dir: Path | None, check: bool) -> None:
    """Generate hosts/<machine>/default.nix and hosts/machines.nix from CLUSTER."""
    from synth import generate as gen
    from synth.render import render_files

    c = _load(cluster_file)
    out = out_dir if out_dir is not None else (cluster_file.parent if str(cluster_file.parent) else Path("."))
    files = render_files(c, cluster_file.name)
    changes = gen.diff(out, files, str(cluster_file))
    if check:
        if not changes.any:
            click.echo(f"{out / 'hosts'}: up to date ({len(files)} files)")
            return
        for label, items in (("added", changes.added), ("changed", changes.changed), ("removed", changes.removed)):
            for rel in items:
                click.echo(f"would be {label}: {out / rel}")
        click.echo(f"synth: {out / 'hosts'} is out of date; run `synth generate {cluster_file}`", err=True)
        sys.exit(1)
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


def _add_operations_commands() -> None:
    # The modules import only click (their work is imported inside the commands): --help stays fast.
    from synth.commands.deploy import deploy
    from synth.commands.secrets import secrets
    from synth.commands.verify import verify

    main.add_command(secrets)
    main.add_command(verify)
    main.add_command(deploy)


_add_operations_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
