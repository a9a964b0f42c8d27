"""An sshd in each test host, so tests (and testinfra) reach hosts exactly as they reach real ones.

keys = SshKeys.create(tmp_path)            # one client key, one host key
start_sshd(host, keys, tmp_path)           # sshd on host.address:22 inside the namespace
ti = testinfra_host(host, keys)            # testinfra.host.Host over OpenSSH (testinfra's ssh backend)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.live.netns import Host


@dataclass(frozen=True)
class SshKeys:
    client_key: Path
    host_key: Path
    known_hosts: Path

    @classmethod
    def create(cls, folder: Path) -> SshKeys:
        folder.mkdir(parents=True, exist_ok=True)
        client = folder / "id_ed25519"
        host = folder / "ssh_host_ed25519_key"
        for key in (client, host):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        return cls(client, host, folder / "known_hosts")


def start_sshd(host: Host, keys: SshKeys, folder: Path, extra: Sequence[str] = ()) -> subprocess.Popen[Any]:
    """Start sshd on HOST's address, root login by key only; wait until it accepts connections.
    EXTRA: more sshd_config lines (e.g. SetEnv PATH=... for the sessions)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"sshd_config.{host.name}"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {host.address}",
                "Port 22",
                f"HostKey {keys.host_key}",
                f"AuthorizedKeysFile {keys.client_key}.pub",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                f"PidFile {folder}/sshd.{host.name}.pid",
                "LogLevel ERROR",
                *extra,
                "",
            ]
        )
    )
    proc = host.popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.address, 22), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd on {host.name} ({host.address}) did not start")


def ssh_command(host_address: str, keys: SshKeys, command: str) -> list[str]:
    """argv for running COMMAND on a test host with the system ssh client."""
    return [
        "ssh",
        "-i",
        str(keys.client_key),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={keys.known_hosts}",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        f"root@{host_address}",
        command,
    ]


def testinfra_host(host: Host, keys: SshKeys) -> Any:  # not a test, despite its name
    """A testinfra Host for HOST over the system ssh client, as synth reaches real machines."""
    import shlex

    import testinfra

    extra = ["-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={keys.known_hosts}"]
    extra += ["-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]
    return testinfra.get_host(
        f"ssh://root@{host.address}",
        ssh_identity_file=str(keys.client_key),
        ssh_extra_args=shlex.join(extra),
        controlpersist=0,
    )


testinfra_host.__test__ = False  # type: ignore[attr-defined]  # pytest: not a test function
