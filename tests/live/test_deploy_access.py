"""Live tests of `synth deploy` to machines behind a bastion, over real SSH.

Topology (two bridges, nothing leaves the machine):
- 10.237.0.0/24 (lcbr-d1): the deployer (.1) and the bastion (.2);
- 10.238.0.0/24 (lcbr-d2): the bastion's second interface (.2) and the deployed machines dt1
  (.11) and dt2 (.12). The deployer has NO address there: it reaches dt1 and dt2 only through
  the bastion, with `ProxyJump` from an ssh config file given with --ssh-config (no -o, no -i).

Each host runs its own sshd (tests/live/ssh.py) in a private mount namespace where a tmpfs covers
/var/lib/lemmy-cluster: there live its running-system link (--current-system) and the
activation's reports (--state-dir), as /run/current-system and /run/lemmy-cluster do on NixOS.

What is real: OpenSSH (client, ProxyJump, sshd), synth's activation scripts (synth.activate) run
on the machines by sh, the role checks (testinfra over the same ssh). STAND-INS, NOT NixOS: the
"systems" are folders whose bin/switch-to-configuration points the host's running-system link at
itself and starts or stops the ROUTING FIXTURES (not Lemmy, not pict-rs: they answer 200 to
everything) where lemmy_server and pict-rs would listen; the build is a shell command printing
such a folder (--build-command) and the copy is `true` (the folders are on the shared disk).
Goal `test` throughout: goal switch would point the real /nix system profile (test_activate.py
covers switch and boot on stand-in profiles).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from synth.model import load
from synth.topology import BACKEND_PORT, PICTRS_PORT
from tests.conftest import ROOT, require, require_root, require_tool
from tests.live.frontend import RoutingFixture
from tests.live.netns import Host, Network, sh
from tests.live.ssh import SshKeys, start_sshd
from tests.live.test_operations import _PrivateMounts

pytestmark = pytest.mark.live

CLUSTER_TOML = Path(__file__).with_name("deploy-cluster.toml")
OUTER = "10.237.0.0/24"
INNER = "10.238.0.0/24"
BASTION_OUTER = "10.237.0.2"
BASTION_INNER = "10.238.0.2"
MOUNT = "/var/lib/lemmy-cluster"
CURRENT = f"{MOUNT}/current-system"
STATE_DIR = f"{MOUNT}/deploy"
TARGETS = ("dt1", "dt2")


@dataclass
class Lab:
    workdir: Path
    cluster: Path
    hosts: dict[str, Host]
    keys: SshKeys
    config: Path
    fixtures: dict[str, list[RoutingFixture]] = field(default_factory=dict)

    def leave_inner(self) -> None:
        sh(["ip", "addr", "del", "10.238.0.1/24", "dev", "lcbr-d2"])

    def join_inner(self) -> None:
        """Back on the inner network for a moment (a routing fixture's restart waits for its port from here)."""
        sh(["ip", "addr", "add", "10.238.0.1/24", "dev", "lcbr-d2"])

    def synth(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        try:
            return subprocess.run(
                [sys.executable, "-m", "synth", *args],
                text=True, capture_output=True, timeout=timeout, env=env, cwd=self.workdir, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            raise AssertionError(f"synth {args[0]} still running after {timeout}s; its output:\n{out}") from None

    def on(self, name: str, command: str) -> subprocess.CompletedProcess[str]:
        """COMMAND on NAME through the bastion, as the deployer reaches it."""
        address = self.hosts[name].address
        argv = ["ssh", "-F", str(self.config), "-o", "BatchMode=yes", f"root@{address}", command]
        return subprocess.run(argv, text=True, capture_output=True, timeout=60, check=False)

    def running(self, name: str) -> str:
        r = self.on(name, f"readlink -e {CURRENT}")
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def system(self, label: str, *, fail: bool = False, cut_off: bool = False) -> Path:
        """A stand-in system folder: its switch-to-configuration points the running-system link at it
        and brings the machine's link up; CUT_OFF: it then takes the link down (the system it
        reverts to brings it up again); FAIL: it exits 1 before changing anything."""
        d = self.workdir / "systems" / label
        (d / "bin").mkdir(parents=True, exist_ok=True)
        lines = ["#!/bin/sh", f'echo "{label} $1" >> {MOUNT}/activations']
        if fail:
            lines.append("exit 1")
        lines.append(f"ln -sfn {d} {CURRENT}")
        lines.append("ip link set eth0 up; ip route replace default via 10.238.0.1 2>/dev/null || true")
        if cut_off:
            lines.append("ip link set eth0 down")
        script = d / "bin" / "switch-to-configuration"
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o755)
        return d

    def deploy(self, *args: str, build: str) -> subprocess.CompletedProcess[str]:
        return self.synth(
            "deploy", str(self.cluster), "--ssh-config", str(self.config), "--host", "dt1", "--host", "dt2",
            "--goal", "test", "--build-command", build, "--copy-command", "true",
            "--current-system", CURRENT, "--state-dir", STATE_DIR,
            "--check-timeout", "10", "--check-interval", "1", *args,
        )  # fmt: skip


def _ssh_config(path: Path, keys: SshKeys) -> None:
    common = [
        "  User root",
        f"  IdentityFile {keys.client_key}",
        "  StrictHostKeyChecking no",
        f"  UserKnownHostsFile {keys.known_hosts}",
        "  LogLevel ERROR",
        "  ConnectTimeout 3",
    ]
    path.write_text(
        "\n".join(
            [
                "Host bastion",
                f"  HostName {BASTION_OUTER}",
                *common,
                "",
                "Host 10.238.0.*",
                "  ProxyJump bastion",
                *common,
            ]
        )
        + "\n"
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    for tool in ("ip", "unshare", "ssh", "ssh-keygen", "curl", "ss", "setsid"):
        require_tool(tool)
    require(shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists(), "sshd is not installed")
    c = load(CLUSTER_TOML)
    workdir = Path(tempfile.mkdtemp(prefix="lcdeploy-", dir="/tmp"))
    workdir.chmod(0o755)
    Path(MOUNT).mkdir(parents=True, exist_ok=True)
    cluster = workdir / "cluster.toml"
    shutil.copy(CLUSTER_TOML, cluster)
    try:
        with (
            Network(OUTER, bridge="lcbr-d1", prefix="lcd1-") as outer,
            Network(INNER, bridge="lcbr-d2", prefix="lcd2-") as inner,
        ):
            keys = SshKeys.create(workdir / "ssh")
            bastion = outer.add("bastion", BASTION_OUTER)
            # The bastion's leg on the inner network.
            sh(["ip", "link", "add", "lcd2-bastion", "type", "veth", "peer", "name", "eth1", "netns", bastion.ns])
            sh(["ip", "link", "set", "lcd2-bastion", "master", "lcbr-d2", "up"])
            bastion.run(["ip", "addr", "add", f"{BASTION_INNER}/24", "dev", "eth1"])
            bastion.run(["ip", "link", "set", "eth1", "up"])
            start_sshd(bastion, keys, workdir / "ssh")
            hosts: dict[str, Host] = {"bastion": bastion}
            for name in TARGETS:
                host = inner.add(name, c.machines[name].address)
                mounted = _PrivateMounts(
                    host.name, host.address, host.ns, setup=f"mount -t tmpfs -o mode=0755 lc-{name} {MOUNT}"
                )
                start_sshd(mounted, keys, workdir / "ssh")
                host.procs += mounted.procs
                hosts[name] = host
            config = workdir / "ssh" / "config"
            _ssh_config(config, keys)
            lab = Lab(workdir, cluster, hosts, keys, config)
            lab.fixtures["dt1"] = [
                RoutingFixture.start(hosts["dt1"], "dt1-backend", hosts["dt1"].address, BACKEND_PORT),
                RoutingFixture.start(hosts["dt1"], "dt1-pictrs", hosts["dt1"].address, PICTRS_PORT),
            ]
            lab.fixtures["dt2"] = [
                RoutingFixture.start(hosts["dt2"], "dt2-backend", hosts["dt2"].address, BACKEND_PORT)
            ]
            # The deployer leaves the inner network: only the bastion leads there now.
            lab.leave_inner()
            assert lab.synth("generate", str(cluster)).returncode == 0
            for name in TARGETS:  # the stand-in of what nixos-generate-config writes
                (workdir / "hosts" / name / "hardware-configuration.nix").write_text("{ }\n")
            first = lab.system("first")
            for name in TARGETS:
                r = lab.on(name, f"{first}/bin/switch-to-configuration test")
                assert r.returncode == 0, r.stderr
            yield lab
            for fixtures in lab.fixtures.values():
                for f in fixtures:
                    f.kill()
    finally:
        # The empty mount point stays: test_operations and test_deploy_access both mount a tmpfs of
        # their own on it in each host's private mount namespace, and removing the directory here
        # while the other module runs detaches that module's mounts (Linux >= 3.18 lets rmdir take
        # a directory that is a mount point in another namespace): its hosts' current-system links
        # vanished mid-test (CI: "running system unreadable", then `readlink -e` failing).
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_deployer_reaches_the_machines_only_through_the_bastion(lab: Lab) -> None:
    direct = subprocess.run(
        ["ssh", "-i", str(lab.keys.client_key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=2",
         "-o", "StrictHostKeyChecking=no", f"-oUserKnownHostsFile={lab.keys.known_hosts}", "root@10.238.0.11", "true"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert direct.returncode == 255, "without ProxyJump dt1 is out of reach"
    assert lab.on("dt1", "true").returncode == 0


def test_deploy_builds_activates_confirms_and_checks_through_the_bastion(lab: Lab) -> None:
    new = lab.system("v2")
    before = {n: lab.running(n) for n in TARGETS}
    r = lab.deploy("--confirm-timeout", "20", build=f"echo {new}")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    lines = out.splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    assert at("dt2  build: done") < at("dt1  activate (test)"), "every machine built before any activation"
    for name in TARGETS:
        assert f"{name}  running system: {before[name]}" in out
        assert f"{name}  confirmed over a new ssh connection" in out
        assert f"{name}  checks passed" in out, out
        assert lab.running(name) == str(new)
    assert at("dt1  checks passed") < at("dt2  activate (test)"), "the next batch waits for the checks"
    assert "summary:\n  dt1  deployed\n  dt2  deployed\n" in out


def test_a_build_that_fails_to_evaluate_activates_nothing_and_rolls_nothing_back(lab: Lab) -> None:
    before = {n: lab.running(n) for n in TARGETS}
    log = lab.workdir / "rollbacks.log"
    new = lab.system("v3")
    build = f"if [ {{name}} = dt2 ]; then echo \"error: undefined variable 'oops'\" >&2; exit 1; fi; echo {new}"
    r = lab.deploy("--rollback-command", f"echo {{name}} >> {log}", build=build)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the build of dt2 (exit 1) failed; no machine was activated" in r.stderr
    assert "activate (" not in r.stdout and "running system" not in r.stdout, "no machine was touched"
    assert not log.exists(), "no rollback ran"
    assert {n: lab.running(n) for n in TARGETS} == before


def test_a_failed_activation_rolls_nothing_back(lab: Lab) -> None:
    """dt1's new system refuses to activate: the machine stays on its system, nothing is rolled
    back (its running system did not change), and dt2 is not started."""
    before = {n: lab.running(n) for n in TARGETS}
    log = lab.workdir / "rollbacks-2.log"
    broken = lab.system("broken", fail=True)
    r = lab.deploy("--rollback-command", f"echo {{name}} >> {log}", build=f"echo {broken}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"dt1  running system unchanged ({before['dt1']}): not rolled back" in r.stdout
    assert not log.exists(), "no rollback ran"
    assert "summary:\n  dt1  unchanged, not rolled back\n  dt2  not started\n" in r.stdout
    assert {n: lab.running(n) for n in TARGETS} == before


def test_a_machine_cut_off_by_its_activation_reverts_by_itself(lab: Lab) -> None:
    """The new system takes dt1's link down: the deployer can neither confirm nor roll back, and
    dt1 goes back to its previous system by itself after --confirm-timeout (which brings its link
    up again); the run stops before dt2."""
    before = {n: lab.running(n) for n in TARGETS}
    log = lab.workdir / "rollbacks-3.log"
    cutoff = lab.system("cutoff", cut_off=True)
    r = lab.deploy("--confirm-timeout", "6", "--rollback-command", f"echo {{name}} >> {log}", build=f"echo {cutoff}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "dt1  cannot confirm over a new ssh connection" in r.stdout
    assert "the machine reverts by itself within 6s" in r.stdout
    # synth waits for the machine's own report of the revert before it reads the running system
    # (a revert read half-way would be rolled back on top of it).
    assert "dt1  the machine reverted by itself (its activation reports reverted)" in r.stdout, r.stdout
    assert f"dt1  running system unchanged ({before['dt1']}): not rolled back" in r.stdout
    assert not log.exists(), "the machine reverted by itself; synth rolled nothing back"
    assert lab.running("dt1") == before["dt1"]
    acts = lab.on("dt1", f"cat {MOUNT}/activations").stdout.splitlines()
    assert acts[-2:] == ["cutoff test", f"{Path(before['dt1']).name} test"], acts
    assert lab.running("dt2") == before["dt2"]


def test_failed_checks_roll_back_only_the_machine_that_changed(lab: Lab) -> None:
    """dt1's new system is fine but its pict-rs stops answering: its checks fail, and the rollback
    (to exactly the system that ran before) brings it back."""
    before = lab.running("dt1")
    new = lab.system("v4")
    lab.fixtures["dt1"][1].kill()  # pict-rs's stand-in is gone
    try:
        r = lab.deploy("--check-timeout", "3", build=f"echo {new}")
    finally:
        lab.join_inner()
        try:
            lab.fixtures["dt1"][1].restart()
        finally:
            lab.leave_inner()
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"dt1  running system changed: {before} -> {new}" in r.stdout
    assert "dt1  rollback: done" in r.stdout
    assert lab.running("dt1") == before
    assert "summary:\n  dt1  rolled back\n  dt2  not started\n" in r.stdout
