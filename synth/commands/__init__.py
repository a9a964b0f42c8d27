"""The commands of `synth`, one module each (named after the command), registered by synth.cli.

What they share (the cluster argument, error reporting, the edit-validate-write cycle, SSH
options) is in synth.commands.common. Importing a command module costs only click: the model,
pydantic and testinfra are imported inside the commands, so `synth --help` stays fast.
"""
