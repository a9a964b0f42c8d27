# The globals a NixOS test script finds defined, as nixos/lib/test-script-prepend.py of the pinned
# nixpkgs declares them for the driver build's type check (see README.md beside this file): the
# same names and types, written in today's spelling (list[...] for List[...], ...).
# tests/test_vm_tests.py puts this first, then one `<node>: QemuMachine` line per node, then the
# script that nixos-tests/lib.nix assembles, and runs ty, ruff and mypy over the result.
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol
from unittest import TestCase

from test_driver.debug import DebugAbstract
from test_driver.driver import Driver
from test_driver.logger import AbstractLogger
from test_driver.machine import BaseMachine, NspawnMachine, QemuMachine  # noqa: F401 (as the driver declares them)
from test_driver.vlan import VLan


class RetryProtocol(Protocol):
    def __call__(self, fn: Callable, timeout: int = 900) -> None: ...


class PollingConditionProtocol(Protocol):
    def __call__(
        self,
        fun_: Callable | None = None,
        *,
        seconds_interval: float = 2.0,
        description: str | None = None,
    ) -> Callable[[Callable], AbstractContextManager] | AbstractContextManager: ...


class CreateMachineProtocol(Protocol):
    # Returns a QemuMachine since nixpkgs PR #504626.
    def __call__(
        self,
        start_command: str | dict,
        *,
        name: str | None = None,
        keep_machine_state: bool = False,
        **kwargs: Any,
    ) -> QemuMachine: ...


start_all: Callable[[], None]
subtest: Callable[[str], AbstractContextManager[None]]
retry: RetryProtocol
test_script: Callable[[], None]
machines: list[BaseMachine]
vlans: list[VLan]
driver: Driver
log: AbstractLogger
create_machine: CreateMachineProtocol
run_tests: Callable[[], None]
join_all: Callable[[], None]
serial_stdout_off: Callable[[], None]
serial_stdout_on: Callable[[], None]
polling_condition: PollingConditionProtocol
debug: DebugAbstract
t: TestCase
