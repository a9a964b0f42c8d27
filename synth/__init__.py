"""synth: compile a Lemmy cluster description (cluster.toml) into per-host NixOS modules."""

__version__ = "0.1.0"
