"""synth.activate's scripts, run for real with sh on stand-in systems: a system is a folder whose
bin/switch-to-configuration points the current-system link at itself (as NixOS's activation
does) and logs its goal; nix-env is a stand-in that points the profile link. What is proved:
activation then confirmation keeps the new system; no confirmation reverts by itself (system and
profile); a failed activation reverts at once; goal test never touches the boot default."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from synth import activate


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        (self.bin / "nix-env").write_text('#!/bin/sh\n# nix-env -p PROFILE --set PATH\nln -sfn "$4" "$2"\n')
        (self.bin / "nix-env").chmod(0o755)
        self.current = root / "current-system"
        self.profile = root / "profile"
        self.state_dir = root / "deploy"
        self.log = root / "log"
        self.old = self.system("old")
        self.current.symlink_to(self.old)
        self.profile.symlink_to(self.old)

    def system(self, name: str, fail: bool = False) -> Path:
        d = self.root / name
        (d / "bin").mkdir(parents=True)
        body = f'echo "{name} $1" >> {self.log}\n'
        body += "exit 1\n" if fail else f"ln -sfn {d} {self.current}\n"
        (d / "bin" / "switch-to-configuration").write_text("#!/bin/sh\n" + body)
        (d / "bin" / "switch-to-configuration").chmod(0o755)
        return d

    def launch(self, new: Path, goal: str, timeout: int, token: str) -> subprocess.CompletedProcess[str]:
        script = activate.launcher(
            str(new), goal, timeout, token, profile=str(self.profile), current_system=str(self.current),
            state_dir=str(self.state_dir), detach="setsid",
        )  # fmt: skip
        env = {"PATH": f"{self.bin}:/usr/bin:/bin"}
        return subprocess.run(["sh", "-s"], input=script, text=True, capture_output=True, env=env, timeout=60)

    def confirm(self, token: str) -> subprocess.CompletedProcess[str]:
        cmd = activate.confirm_command(token, str(self.state_dir))
        return subprocess.run(["sh", "-c", cmd], text=True, capture_output=True, timeout=60)

    def state(self, token: str) -> str:
        return (self.state_dir / token / "state").read_text().strip()

    def wait_state(self, token: str, want: str, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (self.state_dir / token / "state").exists() and self.state(token) == want:
                return
            time.sleep(0.1)
        raise AssertionError(f"state of {token} is not {want!r} within {within}s")


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def test_confirmed_switch_keeps_the_new_system(lab: Lab) -> None:
    new = lab.system("new")
    r = lab.launch(new, "switch", 10, "t1")
    assert r.returncode == 0, r.stderr
    assert f"activated {lab.old} -> {new}" in r.stdout
    assert lab.current.resolve() == new and lab.profile.resolve() == new
    c = lab.confirm("t1")
    assert c.returncode == 0, c.stderr
    assert lab.state("t1") == "done"
    assert lab.log.read_text().splitlines() == ["new switch"]


def test_unconfirmed_switch_reverts_by_itself(lab: Lab) -> None:
    new = lab.system("new")
    t0 = time.monotonic()
    r = lab.launch(new, "switch", 2, "t2")
    assert r.returncode == 0, r.stderr
    assert lab.current.resolve() == new
    lab.wait_state("t2", "reverted")
    # date +%s has whole seconds: a 2 s wait is at least 1 s.
    assert time.monotonic() - t0 >= 1, "it waited for the confirmation first"
    assert lab.current.resolve() == lab.old, "the running system went back"
    assert lab.profile.resolve() == lab.old, "and so did the boot default"
    assert lab.log.read_text().splitlines() == ["new switch", "old switch"]
    c = lab.confirm("t2")
    assert c.returncode == 1 and "reverted before the confirmation" in c.stderr


def test_failed_activation_reverts_at_once_and_reports_it(lab: Lab) -> None:
    broken = lab.system("broken", fail=True)
    r = lab.launch(broken, "switch", 30, "t3")
    assert r.returncode == 1
    assert "activation failed" in r.stderr
    assert lab.current.resolve() == lab.old and lab.profile.resolve() == lab.old
    assert lab.log.read_text().splitlines() == ["broken switch", "old switch"]


def test_goal_test_leaves_the_boot_default_alone(lab: Lab) -> None:
    new = lab.system("new")
    r = lab.launch(new, "test", 2, "t4")
    assert r.returncode == 0, r.stderr
    assert lab.current.resolve() == new and lab.profile.resolve() == lab.old
    lab.wait_state("t4", "reverted")
    assert lab.current.resolve() == lab.old and lab.profile.resolve() == lab.old
    assert lab.log.read_text().splitlines() == ["new test", "old test"]


def test_goal_boot_changes_only_the_boot_default_and_needs_no_confirmation(lab: Lab) -> None:
    new = lab.system("new")
    r = lab.launch(new, "boot", 1, "t5")
    assert r.returncode == 0, r.stderr
    assert lab.profile.resolve() == new and lab.state("t5") == "done"
    time.sleep(1.5)
    assert lab.profile.resolve() == new, "boot is not reverted: nothing that runs changed"


def test_rollback_script_goes_back_to_exactly_the_system_before() -> None:
    assert activate.rollback_script("/nix/store/abc-nixos", "switch") == (
        "nix-env -p /nix/var/nix/profiles/system --set /nix/store/abc-nixos && "
        "/nix/store/abc-nixos/bin/switch-to-configuration switch"
    )
    assert (
        activate.rollback_script("/nix/store/abc-nixos", "test")
        == "/nix/store/abc-nixos/bin/switch-to-configuration test"
    )
