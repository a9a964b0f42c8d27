"""Live test: `synth decommission` takes the leading database machine out of Patroni and etcd over
real SSH, under a write load.

tests/live/patroni-cluster.toml on 10.244.0.0/24: db1-db3 run Patroni (synchronous mode) and are
the etcd members, fe1 is a frontend, app1 writes through both clients all along; db1-db3 run sshd
and synth reaches them with the system OpenSSH client. `synth remove-machine db1` (db1 leads) makes
fe1 the third etcd member; then, as the README says:

- `synth decommission db1` before the deploy: a switchover to the synchronous standby (the module's
  switchover.sh, what lemmy-cluster-pg-switchover wraps), Patroni stopped on db1; fe1 is no etcd
  member yet, so db1 stays in etcd and the command says to deploy and run it again;
- the deploy: fe1's etcd joins the running cluster (join.sh), db2 and db3 reload Patroni;
- `synth decommission db1` again: remove-member.sh on a member that stays, etcd stopped on db1;
- a third run does nothing and says so.

The remote commands are the modules' scripts with this machine's paths (the lab runs Patroni and
etcd as processes, not systemd units: stopping one is SIGTERM to it, as systemd does). No
acknowledged commit is lost, and synth verify's etcd check sees exactly the new members.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth.cli import main
from synth.model import etcd_members, parse
from tests.conftest import require_tool
from tests.live.failover import CLIENTS, Writers, longest_gap, require_engines, start_lab
from tests.live.netns import Network
from tests.live.patroni import MODULES, PG_SCRIPTS, PatroniLab, options
from tests.live.ssh import SshKeys, start_sshd
from tests.live.test_etcd_membership import NamespaceHost, member_names

pytestmark = pytest.mark.live

HERE = Path(__file__).resolve().parent
SUBNET = "10.244.0."


@dataclass
class Lab:
    lab: PatroniLab
    toml: Path
    keys: SshKeys
    pids: dict[str, int]  # db1's Patroni and etcd, as the lab started them


@pytest.fixture(scope="module")
def live() -> Iterator[Lab]:
    require_engines()
    for tool in ("ssh", "ssh-keygen", "sshd"):
        require_tool(tool)
    workdir = Path(tempfile.mkdtemp(prefix="lcdecom-", dir="/tmp"))
    workdir.chmod(0o755)
    toml = workdir / "admin" / "cluster.toml"
    toml.parent.mkdir()
    text = (HERE / "patroni-cluster.toml").read_text(encoding="utf-8").replace("10.247.0.", SUBNET)
    toml.write_text(text.replace("version = 15 ", "synchronous = true\nversion = 15 ", 1))
    cluster = parse(toml.read_text(), str(toml))
    try:
        with Network(SUBNET + "0/24", bridge="lcbr-t5", prefix="lct5-") as net:
            lab = PatroniLab(net, workdir, cluster)
            try:
                start_lab(lab)
                keys = SshKeys.create(workdir / "ssh")
                for name in ("db1", "db2", "db3"):
                    start_sshd(lab.member(name).host, keys, workdir / "ssh")
                db1 = lab.members["db1"]
                assert db1.patroni is not None and db1.etcd is not None
                yield Lab(lab, toml, keys, {"patroni": db1.patroni.pid, "etcd": db1.etcd.pid})
            finally:
                lab.stop_all()
    finally:
        if not os.environ.get("LC_KEEP_WORKDIR"):
            shutil.rmtree(workdir, ignore_errors=True)


def alive(pid: int) -> str:
    """Shell: "active" while process PID runs (a zombie does not), else "inactive"."""
    return (
        f"$(s=$(awk '/^State:/ {{ print $2 }}' /proc/{pid}/status 2>/dev/null); "
        f'if [ -n "$s" ] && [ "$s" != Z ]; then echo active; else echo inactive; fi)'
    )


def stop(pid: int) -> str:
    """Shell: SIGTERM to PID (as systemctl stop), then wait until it has ended."""
    wait = f'for i in $(seq 600); do [ "{alive(pid)}" = inactive ] && break; sleep 0.1; done'
    return f"kill -TERM {pid} 2>/dev/null || true; {wait}"


def decommission(live: Lab, *extra: str) -> subprocess.CompletedProcess[str]:
    lab = live.lab
    patroni, etcd = live.pids["patroni"], live.pids["etcd"]
    pt = options(lab.cluster, "db2")["postgres"]["patroni"]
    commands = [
        "--state-command", f'echo "patroni {alive(patroni)}"; echo "etcd {alive(etcd)}"',
        "--stop-patroni-command", stop(patroni),
        "--stop-etcd-command", stop(etcd),
        "--switchover-command",
        f"bash {PG_SCRIPTS}/switchover.sh --api http://{{address}}:8008 --user {pt['restApiUser']} "
        f"--password-file {lab.secrets['patroni_api_password']} --candidate {{candidate}}",
        "--remove-member-command",
        f"bash {MODULES}/etcd/remove-member.sh --self {{self}} --endpoints http://127.0.0.1:2379 "
        "--patroni-api http://{address}:8008 --name {name}",
    ]  # fmt: skip
    ssh = ["-i", str(live.keys.client_key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return subprocess.run(
        [sys.executable, "-m", "synth", "decommission", "db1", "--cluster", str(live.toml),
         "--address", f"{SUBNET}31", "--yes", *commands, *ssh, "-o", "LogLevel=ERROR", *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )  # fmt: skip


def test_the_leader_is_decommissioned_over_ssh_under_a_write_load(live: Lab) -> None:
    lab = live.lab
    assert lab.wait_leader() == "db1"
    lab.wait_streaming(["db2", "db3"])
    sync = lab.wait_sync_standby()

    result = CliRunner().invoke(main, ["remove-machine", "db1", "--cluster", str(live.toml)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Next, before deploying: `synth decommission db1`" in result.output
    after = parse(live.toml.read_text(), str(live.toml))
    assert etcd_members(after) == ["db2", "db3", "fe1"]

    writers = Writers(lab, lab.workdir).start()
    try:
        writers.wait_acks(30)
        # Before the deploy: switchover and Patroni; db1 stays in etcd until fe1 has joined.
        dry = decommission(live, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"1. db1 leads: switch the leadership over to {sync}" in dry.stdout and lab.leader() == "db1"
        started = time.time()
        first = decommission(live)
        print(first.stdout)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"switchover: {sync} leads now" in first.stdout
        assert "fe1 is not an etcd member yet" in first.stdout
        assert "run `synth decommission db1` again: it takes db1 out of etcd" in first.stdout
        assert lab.leader() == sync
        members = {m["name"] for m in lab.cluster_state(sync)["members"]}
        assert members == {"db2", "db3"}, f"db1 left Patroni: {members}"
        assert member_names(lab, "db2") == ["db1", "db2", "db3"], "db1 is still an etcd member"
        lab.stop_patroni("db1")  # reap what the ssh session stopped
        writers.wait_acks(30, timeout=60, after=time.time())

        # The deploy: fe1's etcd joins the running cluster; db2 and db3 get the new configuration.
        lab.cluster = after
        lab.start_etcd(["fe1"])
        lab.wait_etcd(["fe1"])
        assert member_names(lab, "db2") == ["db1", "db2", "db3", "fe1"]
        for name in ("db2", "db3"):
            lab.reload_patroni(name)

        second = decommission(live)
        print(second.stdout)
        assert second.returncode == 0, second.stdout + second.stderr
        assert (
            "will remove db1 (ID " in second.stdout and "removed db1; the etcd cluster has 3 members" in second.stdout
        )
        assert "db1 is out of Patroni and etcd." in second.stdout and "switch db1 off" in second.stdout
        assert member_names(lab, "db2") == ["db2", "db3", "fe1"]
        db1_etcd = lab.members["db1"].etcd
        assert db1_etcd is not None
        db1_etcd.wait(timeout=30)

        third = decommission(live)
        assert third.returncode == 0, third.stdout + third.stderr
        assert "Nothing to do: db1 is out of Patroni and etcd already." in third.stdout
        writers.wait_acks(30, timeout=60, after=time.time())
    finally:
        logs = writers.stop()

    for kind in CLIENTS:
        pause = longest_gap(logs[kind], started, time.time())
        print(f"\n{kind}: longest pause while db1 was decommissioned: {pause:.2f}s")
        assert pause < 15, f"{kind}: writes stopped for {pause:.1f}s"
    lost = writers.lost(logs)
    assert not any(lost.values()), f"acknowledged commits lost: {lost}"
    health = lab.etcdctl("db2", "endpoint", "health", "--cluster", check=False)
    said = health.stdout + health.stderr
    assert health.returncode == 0 and said.count("is healthy") == 3, said

    from synth.checks.roles import checks_for
    from synth.topology import plan

    results = checks_for(lab.cluster, plan(lab.cluster)["db2"], NamespaceHost(lab, "db2"))
    etcd_check = next(r for r in results if r.name == "etcd: members")
    assert etcd_check.ok, etcd_check.detail
    assert json.dumps(lab.cluster_state(sync)).count('"leader"') == 1
