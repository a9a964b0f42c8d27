"""The command line: the `synth` group, and every command of synth/commands/ registered on it.

The commands live in synth/commands/, one module each; what they share is in
synth.commands.common. Those modules import only click at the top (their work is imported inside
the commands), so `synth --help` stays fast. No command imports this module.
"""

from __future__ import annotations

import click

from synth.commands.add_machine import add_machine
from synth.commands.backup import backup
from synth.commands.decommission import decommission
from synth.commands.deploy import deploy
from synth.commands.diagram import diagram
from synth.commands.generate import generate
from synth.commands.mesh import mesh_group
from synth.commands.plan import plan
from synth.commands.promote import promote
from synth.commands.remove_machine import remove_machine
from synth.commands.restore import restore
from synth.commands.secrets import secrets
from synth.commands.validate import validate
from synth.commands.verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.version_option(package_name="lemmy-cluster-synth", prog_name="synth")
def main(debug: bool) -> None:
    """Compile a Lemmy cluster description (cluster.toml) into one NixOS module per machine."""


COMMANDS = (
    validate,
    generate,
    add_machine,
    remove_machine,
    plan,
    diagram,
    secrets,
    verify,
    deploy,
    promote,
    decommission,
    backup,
    restore,
)
for command in (*COMMANDS, mesh_group):
    main.add_command(command)
