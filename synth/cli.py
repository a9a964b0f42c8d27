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


def _out_dir(cluster_file: Path, out_dir: Path | None) -> Path:
    return out_dir if out_dir is not None else (cluster_file.parent if str(cluster_file.parent) else Path("."))


def _write_hosts(cluster: Cluster, cluster_file: Path, out: Path) -> None:
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


def _write_cluster_file(path: Path, text: str) -> None:
    """Replace PATH with TEXT atomically, keeping its permissions."""
    import os
    import tempfile

    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".synth-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _edit_cluster(
    cluster_file: Path,
    edit: Callable[[str, Cluster], str],
    out_dir: Path | None,
    before_write: Callable[[], None] | None = None,
) -> Cluster:
    """Apply EDIT to the cluster file, validate the result, then write it and regenerate hosts/.

    An edit whose result is invalid writes nothing and reports the problems found in the result.
    BEFORE_WRITE runs once the result is known to be valid, before the cluster file is replaced
    (add-machine writes a storage machine's node key there).
    """
    from synth.errors import SynthError
    from synth.model import parse

    current = _load(cluster_file)
    text = cluster_file.read_text(encoding="utf-8")
    new_text = edit(text, current)
    try:
        new = parse(new_text, str(cluster_file))
    except SynthError as exc:
        click.echo(f"synth: {cluster_file} was not changed: the result would be invalid:", err=True)
        raise exc from None
    if before_write is not None:
        before_write()
    _write_cluster_file(cluster_file, new_text)
    click.echo(f"updated {cluster_file}")
    _write_hosts(new, cluster_file, _out_dir(cluster_file, out_dir))
    return new


OUT_OPTION = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder that receives hosts/ (default: the folder of CLUSTER).",
)
CLUSTER_OPTION = click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default="cluster.toml",
    show_default=True,
    help="The cluster file.",
)


@main.command()
@CLUSTER_ARG
@OUT_OPTION
@click.option("--check", is_flag=True, help="Write nothing; exit 1 and list the files that would change.")
@user_errors
def generate(cluster_file: Path, out_dir: Path | None, check: bool) -> None:
    """Generate hosts/<machine>/default.nix and hosts/machines.nix from CLUSTER."""
    from synth import generate as gen
    from synth.render import render_files

    c = _load(cluster_file)
    out = _out_dir(cluster_file, out_dir)
    if not check:
        _write_hosts(c, cluster_file, out)
        return
    files = render_files(c, cluster_file.name)
    changes = gen.diff(out, files, str(cluster_file))
    if not changes.any:
        click.echo(f"{out / 'hosts'}: up to date ({len(files)} files)")
        return
    for label, items in (("added", changes.added), ("changed", changes.changed), ("removed", changes.removed)):
        for rel in items:
            click.echo(f"would be {label}: {out / rel}")
    click.echo(f"synth: {out / 'hosts'} is out of date; run `synth generate {cluster_file}`", err=True)
    sys.exit(1)


@main.command("add-machine")
@click.argument("name")
@click.option(
    "--role", "roles", multiple=True, required=True, help="frontend, backend, pictrs, postgres or storage (repeat)."
)
@click.option("--address", required=True, help="How the deployer reaches it: IP address or DNS name.")
@click.option("--private-address", default=None, help="Its cluster-internal IP (default: --address, if an IP).")
@click.option("--system", default=None, help="Nix system, if not the cluster's default.")
@click.option("--capacity", default=None, help='Role storage: disk space Garage may use, e.g. "500G".')
@click.option("--zone", default=None, help="Role storage: its zone (default: the machine's name).")
@CLUSTER_OPTION
@OUT_OPTION
@user_errors
def add_machine(
    name: str,
    roles: tuple[str, ...],
    address: str,
    private_address: str | None,
    system: str | None,
    capacity: str | None,
    zone: str | None,
    cluster_file: Path,
    out_dir: Path | None,
) -> None:
    """Add machine NAME to the cluster file (keeping its comments), then regenerate hosts/.

    A machine with role storage gets its Garage node key in secrets/ (beside the cluster file; an
    existing key of that name is kept) and its id in the cluster file.
    """
    from synth.edit import add_machine as edit
    from synth.errors import SynthError

    file = str(cluster_file)
    storage: dict[str, str] | None = None
    before_write = None
    if "storage" in roles:
        if capacity is None:
            raise SynthError.single(
                file, f"machines.{name}.storage_capacity", "role storage needs --capacity, e.g. --capacity 500G"
            )
        from synth.commands.secrets import node_key_for

        node_id, before_write, key_note = node_key_for(cluster_file, name)
        storage = {"storage_capacity": capacity}
        if zone is not None:
            storage["storage_zone"] = zone
        storage["garage_node_id"] = node_id
    elif capacity is not None or zone is not None:
        raise SynthError.single(
            file, f"machines.{name}", "--capacity and --zone are only for machines with --role storage"
        )

    _edit_cluster(
        cluster_file,
        lambda text, _c: edit(text, file, name, roles, address, private_address, system, storage),
        out_dir,
        before_write,
    )
    if storage is not None:
        click.echo(key_note)
        click.echo(f"Next: `synth secrets push --host {name} {cluster_file}` installs its secrets.")
    click.echo(
        f"Next: `synth plan` shows which machines to deploy; deploy {name} and every machine whose hosts/ changed."
    )


@main.command("remove-machine")
@click.argument("name")
@CLUSTER_OPTION
@OUT_OPTION
@user_errors
def remove_machine(name: str, cluster_file: Path, out_dir: Path | None) -> None:
    """Remove machine NAME from the cluster file (refusing unsafe removals), then regenerate hosts/."""
    from synth.edit import remove_machine as edit

    before = _load(cluster_file)
    _edit_cluster(cluster_file, lambda text, c: edit(text, str(cluster_file), c, name), out_dir)
    node_id = before.machines[name].garage_node_id if name in before.machines else None
    if node_id is not None:
        click.echo(
            f"Before switching {name} off, move its data: on another storage machine run "
            f"`garage layout remove {node_id}`, then `garage layout apply --version N` (N: the version "
            "that `garage layout show` proposes), and wait until `garage status` no longer lists it as "
            "draining (Garage copies its objects to the remaining machines)."
        )
    click.echo(f"Next: deploy the machines whose hosts/ changed, then switch {name} off.")


@main.command("plan")
@CLUSTER_ARG
@OUT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--since",
    metavar="REV",
    default=None,
    help="Compare with hosts/ as committed at this git revision (e.g. HEAD: what is deployed) instead of the disk.",
)
@user_errors
def plan_command(cluster_file: Path, out_dir: Path | None, as_json: bool, since: str | None) -> None:
    """Show what `synth generate` and a deploy would change, per machine, and in what order.

    Without --since: compared with hosts/ on disk (a preview of `synth generate`). With --since
    REV: compared with hosts/ at that git revision, e.g. after `synth add-machine` regenerated.
    """
    import json
    import subprocess

    from synth.changes import compute, files_at_revision
    from synth.errors import SynthError

    c = _load(cluster_file)
    out = _out_dir(cluster_file, out_dir)
    old = None
    if since is not None:
        try:
            old = files_at_revision(out, since)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise SynthError.single(
                str(cluster_file), "--since", f"cannot read {since} with git: {detail.strip()}"
            ) from None
    p = compute(c, str(cluster_file), out, old)
    if as_json:
        click.echo(json.dumps(p.to_json(), indent=2))
        return
    if not p.files:
        against = f"hosts/ at {since}" if since else "hosts/"
        click.echo(f"No changes: {against} matches the cluster file; nothing to deploy.")
        return
    for f in p.files:
        click.echo(f"== {f.status}: {f.path}")
        click.echo(f.diff, nl=False)
    click.echo()
    if p.decommission:
        click.echo(
            f"Machines leaving the cluster (switch them off after the others are deployed): {', '.join(p.decommission)}"
        )
    if p.batches:
        lead = "Deploy" if since else "Run `synth generate`, then deploy"
        click.echo(f"{lead} in this order (each batch after the previous one is healthy):")
        for i, b in enumerate(p.batches, 1):
            click.echo(f"  {i}. {b.stage}: {', '.join(b.machines)}")


@main.command()
@CLUSTER_ARG
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["svg", "png", "dot", "mermaid"]),
    default="svg",
    show_default=True,
    help="svg and png are laid out by Graphviz's dot; dot is the graph itself; mermaid is for GitHub.",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default: stdout)."
)
@user_errors
def diagram(cluster_file: Path, fmt: str, output: Path | None) -> None:
    """Draw the cluster: machines, roles, traffic and replication.

    \b
    Needs Graphviz's `dot` for svg and png (Debian/Ubuntu: apt install
    graphviz; Nix: pkgs.graphviz, which the flake's synth has on its PATH).
    """
    from synth import diagram as d
    from synth.model import load

    if fmt == "png" and output is None:
        click.echo("synth: PNG is binary; give -o FILE", err=True)
        sys.exit(1)
    c = load(cluster_file, pending_node_ids=True)  # a picture needs no Garage node ids yet
    if fmt == "mermaid":
        data = d.mermaid(c).encode()
    elif fmt == "dot":
        data = d.with_digest(d.dot_source(c)).encode()
    else:
        try:
            data = d.render(c, fmt)
        except d.GraphvizError as exc:
            click.echo(f"synth: {exc}", err=True)
            sys.exit(1)
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        output.write_bytes(data)
        click.echo(f"wrote {output}")


def _add_operations_commands() -> None:
    # The modules import only click (their work is imported inside the commands): --help stays fast.
    from synth.commands.deploy import deploy
    from synth.commands.promote import promote
    from synth.commands.secrets import secrets
    from synth.commands.verify import verify

    main.add_command(secrets)
    main.add_command(verify)
    main.add_command(deploy)
    main.add_command(promote)


_add_operations_commands()
