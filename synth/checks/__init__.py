"""Role checks: plain functions that assert a host's state through a testinfra Host.

The same functions run in the live tests (against network-namespace hosts over SSH) and from ops
tooling against real machines. Each returns a list of CheckResult rather than raising, so a caller
can report every problem of a host at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    """One check on one host: NAME says what was checked, DETAIL what was expected and what was seen."""

    name: str
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        mark = "ok" if self.ok else "FAIL"
        return f"[{mark}] {self.name}" + (f": {self.detail}" if self.detail else "")


def failures(results: Iterable[CheckResult]) -> list[CheckResult]:
    """The results that did not pass."""
    return [r for r in results if not r.ok]


__all__ = ["CheckResult", "failures"]
