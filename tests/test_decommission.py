"""synth decommission: the plan, the order of the steps, the refusals and a second run, against a
scripted remote (synth.remote.ssh_run replaced by a fake that keeps the machines' state)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_tool
from tests.test_cli import run, snapshot

LIVE = ROOT / "tests" / "live"
ADDR = {"db1": "10.247.0.31", "db2": "10.247.0.32", "db3": "10.247.0.33", "fe1": "10.247.0.11"}
BY_ADDR = {a: n for n, a in ADDR.items()}


@dataclass
class Machines:
    """The state the fake remote keeps, and every command it was given, in order."""

    leader: str = "db1"
    sync: str = "db2"
    patroni: set[str] = field(default_factory=lambda: {"db1", "db2", "db3"})
    etcd: set[str] = field(default_factory=lambda: {"db1", "db2", "db3"})
    # After the deploy: fe1, which takes db3's place, has joined.
    etcd_members: list[str] = field(default_factory=lambda: ["db1", "db2", "db3", "fe1"])
    down: set[str] = field(default_factory=set)  # no ssh
    listed: set[str] = field(default_factory=set)  # stopped, still listed by Patroni (for LISTED_FOR reads)
    listed_for: int = 0
    refuse_removal: str = ""
    ran: list[tuple[str, str]] = field(default_factory=list)

    def cluster(self) -> str:
        members = []
        if self.listed_for > 0:
            self.listed_for -= 1
        else:
            self.listed.clear()
        for n in sorted(self.patroni | self.listed):
            role = "leader" if n == self.leader else "sync_standby" if n == self.sync else "replica"
            members.append({"name": n, "role": role, "state": "running" if role == "leader" else "streaming"})
        return json.dumps({"members": members})

    def ssh_run(self, user: str, address: str, command: str, opts: object, timeout: float = 60) -> object:
        host = BY_ADDR[address]
        self.ran.append((host, command))

        def done(rc: int = 0, out: str = "", err: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.CompletedProcess(["ssh"], rc, out, err)

        if host in self.down:
            return done(255, err=f"ssh: connect to host {address} port 22: Connection refused")
        if command.startswith("for u in patroni etcd"):
            up = lambda u, s: "active" if host in s else "inactive"  # noqa: E731
            return done(out=f"patroni {up('p', self.patroni)}\netcd {up('e', self.etcd)}\n")
        if command.startswith("curl") and command.endswith("/cluster"):
            return done(out=self.cluster())
        if "member list" in command:
            lines = [f"{i:x}, started, {n}, http://{ADDR[n]}:2380, http://{ADDR[n]}:2379, false" for i, n in
                     enumerate(self.etcd_members, 11)]  # fmt: skip
            return done(out="\n".join(lines) + "\n")
        if command.startswith("lemmy-cluster-pg-switchover "):
            self.leader, self.sync = command.split()[1], self.leader
            return done(out=f"switchover: {self.leader} leads now")
        if command == "systemctl stop patroni":
            self.patroni.discard(host)
            return done()
        if command.startswith("lemmy-cluster-etcd-remove-member "):
            if self.refuse_removal:
                return done(1, err=self.refuse_removal)
            self.etcd_members.remove(command.split()[1])
            return done(out=f"etcd-remove-member: removed {command.split()[1]}")
        if command == "systemctl stop etcd":
            self.etcd.discard(host)
            return done()
        raise AssertionError(f"unexpected command on {host}: {command}")


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    shutil.copy(LIVE / "patroni-cluster.toml", tmp_path / "cluster.toml")
    return tmp_path / "cluster.toml"


@pytest.fixture
def removed(toml: Path) -> Path:
    """The cluster file after `synth remove-machine db3`, committed before the removal (git HEAD has db3)."""
    # The command reads the removed machine's address from the cluster file at git HEAD (the flake's
    # sandbox check has no git: skipped there, as the other tests that need it).
    git = [require_tool("git"), "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(toml.parent)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "cluster.toml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "cluster"], check=True)
    code, _out, err = run("remove-machine", "db3", "--cluster", str(toml))
    assert code == 0, err
    return toml


@pytest.fixture
def machines(monkeypatch: pytest.MonkeyPatch) -> Machines:
    m = Machines()
    monkeypatch.setattr("synth.remote.ssh_run", m.ssh_run)
    monkeypatch.setattr("synth.commands.decommission.time.sleep", lambda _s: None)
    return m


def changes(m: Machines) -> list[tuple[str, str]]:
    reads = ("for u in", "curl", "ETCDCTL_API=3 etcdctl")
    return [(h, c) for h, c in m.ran if not c.startswith(reads)]


def test_a_leading_member_is_switched_over_then_stopped_then_removed_from_etcd(
    removed: Path, machines: Machines
) -> None:
    machines.leader, machines.sync = "db3", "db2"
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 0, err
    assert changes(machines) == [
        ("db2", "lemmy-cluster-pg-switchover db2"),  # on the candidate, as synth promote runs it
        ("db3", "systemctl stop patroni"),
        ("db1", "lemmy-cluster-etcd-remove-member db3"),  # a member that stays
        ("db3", "systemctl stop etcd"),
    ]
    # Every step is printed before it runs: the plan first, then each step as it runs.
    plan = out.index("  1. db3 leads: switch the leadership over to db2")
    assert plan < out.index("  4. stop etcd on db3") < out.index("\n1. db3 leads") < out.index("db2: switchover: db2")
    assert out.index("2. stop Patroni on db3") < out.index("3. take db3 out of the etcd cluster, on db1")
    assert out.index("3. take db3 out") < out.index("db1: etcd-remove-member: removed db3")
    assert "Left to do: switch db3 off" in out and "member_slots_ttl" in out
    assert machines.etcd_members == ["db1", "db2", "fe1"] and "db3" not in machines.patroni


def test_in_synchronous_mode_the_switchover_goes_to_the_synchronous_standby(removed: Path, machines: Machines) -> None:
    machines.leader, machines.sync = "db3", "db1"
    code, _out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 0, err
    assert changes(machines)[0] == ("db1", "lemmy-cluster-pg-switchover db1")


def test_a_replica_is_not_switched_over_and_a_second_run_does_nothing(removed: Path, machines: Machines) -> None:
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 0, err
    assert [c for _, c in changes(machines)] == [
        "systemctl stop patroni",
        "lemmy-cluster-etcd-remove-member db3",
        "systemctl stop etcd",
    ]
    machines.ran.clear()
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 0, err
    assert changes(machines) == [], "a second run changes nothing"
    assert "Nothing to do: db3 is out of Patroni and etcd already." in out
    assert "db3 is not a member of the etcd cluster" in out


def test_dry_run_prints_the_steps_and_does_none(removed: Path, machines: Machines) -> None:
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--dry-run")
    assert code == 0, err
    assert changes(machines) == []
    assert "dry run: none is done" in out
    assert "  2. take db3 out of the etcd cluster, on db1 (a member that stays): " in out


def test_the_etcd_refusal_is_passed_on_verbatim_and_etcd_is_not_stopped(removed: Path, machines: Machines) -> None:
    said = "etcd-remove-member: members that stay are not healthy: db2. Nothing was changed."
    machines.refuse_removal = said
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 1
    assert f"db1: {said}" in out
    assert "step 2 failed on db1 (exit code 1" in err
    assert ("db3", "systemctl stop etcd") not in machines.ran and "db3" in machines.etcd


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda m: m.down.add("db3"), "db3 (root@10.247.0.33) does not answer over SSH: ssh: connect to host"),
        (lambda m: m.down.update({"db1", "db2"}), "no postgres machine that stays answers with Patroni's state"),
        (
            lambda m: (setattr(m, "leader", "db3"), m.patroni.discard("db2"), m.patroni.discard("db1")),
            "db3 leads and no postgres machine that stays is a healthy replica",
        ),
    ],
)
def test_refusals_do_nothing(removed: Path, machines: Machines, setup: object, expected: str) -> None:
    assert callable(setup)
    setup(machines)
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 1, out
    assert expected in err and "nothing was done" in err
    assert changes(machines) == []


def test_refused_while_the_machine_is_still_in_the_cluster_file(toml: Path, machines: Machines) -> None:
    before = snapshot(toml.parent)
    code, _out, err = run("decommission", "db3", "--cluster", str(toml), "--yes")
    assert code == 1
    assert "db3 is still in" in err and "run `synth remove-machine db3` first" in err
    assert machines.ran == [] and snapshot(toml.parent) == before


def test_an_unknown_address_is_refused(toml: Path, machines: Machines) -> None:
    code, _, err = run("remove-machine", "db3", "--cluster", str(toml))
    assert code == 0, err
    code, _, err = run("decommission", "db3", "--cluster", str(toml), "--yes")
    assert code == 1
    assert "db3's address is not known: give --address" in err
    assert machines.ran == []
    code, _out, err = run("decommission", "db3", "--cluster", str(toml), "--address", ADDR["db3"], "--dry-run")
    assert code == 0, err


def test_before_the_deploy_only_patroni_steps_run_and_the_second_run_does_the_etcd_ones(
    removed: Path, machines: Machines
) -> None:
    machines.leader, machines.sync = "db3", "db1"
    machines.etcd_members = ["db1", "db2", "db3"]  # fe1 is not deployed yet: not a member
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 0, err
    assert [c for _, c in changes(machines)] == ["lemmy-cluster-pg-switchover db1", "systemctl stop patroni"]
    assert "fe1 is not an etcd member yet" in out and machines.etcd_members == ["db1", "db2", "db3"]
    assert "run `synth decommission db3` again: it takes db3 out of etcd" in out
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 0, err
    assert "Nothing to do now: db3 is out of Patroni." in out
    machines.etcd_members.append("fe1")  # the deploy
    machines.ran.clear()
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 0, err
    assert changes(machines) == [("db1", "lemmy-cluster-etcd-remove-member db3"), ("db3", "systemctl stop etcd")]
    assert "db3 is out of Patroni and etcd." in out


def test_a_stopped_member_still_listed_is_waited_for_before_the_etcd_removal(removed: Path, machines: Machines) -> None:
    machines.patroni.discard("db3")
    machines.listed, machines.listed_for = {"db3"}, 3  # its entry expires a few reads later
    code, out, err = run("decommission", "db3", "--cluster", str(removed), "--yes")
    assert code == 0, err
    assert "Patroni is stopped on db3 already; Patroni still lists it" in out
    assert [c for _, c in changes(machines)] == ["lemmy-cluster-etcd-remove-member db3", "systemctl stop etcd"]
    assert machines.listed_for == 0
    machines.patroni.add("db3")


def test_the_etcd_removal_waits_no_longer_than_asked(removed: Path, machines: Machines) -> None:
    machines.patroni.discard("db3")
    machines.listed, machines.listed_for = {"db3"}, 10**6
    code, _, err = run("decommission", "db3", "--cluster", str(removed), "--yes", "--wait", "0")
    assert code == 1
    assert "Patroni still lists db3 0 s after it was stopped; the etcd removal was not done" in err
    assert changes(machines) == []


def test_without_yes_it_asks_and_no_does_nothing(removed: Path, machines: Machines) -> None:
    from click.testing import CliRunner

    from synth.cli import main

    result = CliRunner().invoke(main, ["decommission", "db3", "--cluster", str(removed)], input="n\n")
    assert result.exit_code == 1 and "Do them now?" in result.output
    assert changes(machines) == []
