"""The one error type a user sees.

Every problem is reported as ``FILE: dotted.path: message``; the CLI prints them all and exits 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input, located by a dotted path inside the file."""

    path: str
    message: str

    def render(self, file: str) -> str:
        return f"{file}: {self.path}: {self.message}" if self.path else f"{file}: {self.message}"


class SynthError(Exception):
    """A user-facing failure: a file and the list of problems found in it."""

    def __init__(self, file: str, problems: Sequence[Problem]) -> None:
        self.file = file
        self.problems = list(problems)
        super().__init__("\n".join(p.render(file) for p in self.problems))

    @classmethod
    def single(cls, file: str, path: str, message: str) -> SynthError:
        return cls(file, [Problem(path, message)])


def dotted(parts: Iterable[object]) -> str:
    """Join a location such as ("machines", "fe1", "roles", 0) into machines.fe1.roles[0]."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if out:
                out += "."
            out += text if text and all(c.isalnum() or c in "-_" for c in text) else f'"{text}"'
    return out
