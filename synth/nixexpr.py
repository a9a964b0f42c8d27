"""The one place that writes Nix text.

Values are plain Python data: dict (attribute set, keys are str), list, str, bool, int and None
(null). Floats are refused: nothing synth writes needs one, and a lossless round trip through
Nix's float printing is not guaranteed. Output is deterministic: keys keep insertion order, which
the renderer chooses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
# Identifiers that are Nix keywords must be quoted when used as attribute names.
_KEYWORDS = frozenset({"if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or"})


_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def string(value: str) -> str:
    """A double-quoted Nix string literal whose value is exactly VALUE."""
    # Escape backslash, quote and control characters, then "${" (antiquotation) as "\${".
    return '"' + value.translate(_ESCAPES).replace("${", "\\${") + '"'


def attr_name(name: str) -> str:
    """An attribute name, quoted when it is not a plain identifier."""
    if _IDENT_RE.fullmatch(name) and name not in _KEYWORDS:
        return name
    return string(name)


def _scalar(value: object) -> str | None:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"integer out of Nix range: {value}")
        if value == -(2**63):
            return f"({value + 1} - 1)"  # the literal 9223372036854775808 does not exist
        # A negative number is unary minus applied to a literal: it needs parentheses in a list.
        return f"({value})" if value < 0 else str(value)
    if isinstance(value, str):
        return string(value)
    return None


def render(value: object, indent: int = 0) -> str:
    """VALUE as Nix text, attribute sets and lists laid out one element per line."""
    scalar = _scalar(value)
    if scalar is not None:
        return scalar
    pad = "  " * (indent + 1)
    end = "  " * indent
    if isinstance(value, Mapping):
        if not value:
            return "{ }"
        lines = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"attribute names must be strings, got {key!r}")
            lines.append(f"{pad}{attr_name(key)} = {render(item, indent + 1)};")
        return "{\n" + "\n".join(lines) + "\n" + end + "}"
    if isinstance(value, Sequence):
        if not value:
            return "[ ]"
        if len(value) == 1 and _scalar(value[0]) is not None:
            return f"[ {_scalar(value[0])} ]"  # nixfmt keeps one-element lists on one line
        items = []
        for item in value:
            items.append(pad + render(item, indent + 1))
        return "[\n" + "\n".join(items) + "\n" + end + "]"
    raise TypeError(f"cannot write {type(value).__name__} as Nix: {value!r}")
