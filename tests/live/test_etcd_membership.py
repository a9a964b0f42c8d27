"""Live test: etcd's runtime reconfiguration when a database machine leaves, as synth says to do it.

tests/live/patroni-cluster.toml on 10.243.0.0/24: db1-db3 run Patroni (synchronous mode) and are
the etcd members, fe1 is a frontend, app1 writes through both clients all along. `synth
remove-machine db3` (the real command, on a copy of the file) makes fe1 the third etcd member and
prints what to do; the test does exactly that, with the modules' own scripts:

- Patroni stops on db3 (`systemctl stop patroni`): it leaves cleanly, writes go on;
- fe1's etcd starts with the new configuration: lemmy-cluster-etcd-join (join.sh) adds it to the
  running cluster (`member add`, state "existing": the same cluster, never a new one), trying
  again while etcd refuses it because a member is down ("unhealthy cluster");
- `lemmy-cluster-etcd-remove-member db3` on the member it names (remove-member.sh, with the
  wrapper's arguments) takes db3 out; it refuses while Patroni still counts db3 as a member and
  while a member that stays is down, and does nothing for a name that is no member; db3's etcd
  stops by itself;
- db3's replication slot stays on the leader (member_slots_ttl: Patroni keeps it 30 minutes, in
  case the member comes back) and Patroni drops it by itself once that retention ends (the test
  shortens it through the REST API to see it happen).

No acknowledged commit is lost, and synth verify's etcd check sees exactly the new members.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from synth.cli import main
from synth.model import etcd_members, parse
from tests.live import writeload
from tests.live.failover import CLIENTS, Writers, longest_gap, require_engines, start_lab
from tests.live.netns import Network
from tests.live.patroni import MODULES, PatroniLab, options
from tests.live.pg import SYS_PATH

pytestmark = pytest.mark.live

HERE = Path(__file__).resolve().parent


@dataclass
class Lab:
    lab: PatroniLab
    toml: Path


@pytest.fixture(scope="module")
def live() -> Iterator[Lab]:
    require_engines()
    workdir = Path(tempfile.mkdtemp(prefix="lcetcd-", dir="/tmp"))
    toml = workdir / "admin" / "cluster.toml"
    toml.parent.mkdir()
    text = (HERE / "patroni-cluster.toml").read_text(encoding="utf-8").replace("10.247.0.", "10.243.0.")
    toml.write_text(text.replace("version = 15 ", "synchronous = true\nversion = 15 ", 1))
    cluster = parse(toml.read_text(), str(toml))
    assert cluster.postgres.synchronous
    try:
        with Network("10.243.0.0/24", bridge="lcbr-t4", prefix="lct4-") as net:
            lab = PatroniLab(net, workdir, cluster)
            try:
                start_lab(lab)
                yield Lab(lab, toml)
            finally:
                lab.stop_all()
    finally:
        if not os.environ.get("LC_KEEP_WORKDIR"):
            shutil.rmtree(workdir, ignore_errors=True)


def remove_member(lab: PatroniLab, on: str, name: str) -> Any:
    """`lemmy-cluster-etcd-remove-member NAME` on ON: remove-member.sh with the wrapper's arguments
    (modules/etcd/default.nix: this member's name, its loopback client URL and, on a Patroni
    member, its REST API)."""
    # (a machine already out of the cluster file has the configuration it was deployed with)
    etcd = options(lab.cluster, on)["etcd"] if on in lab.cluster.machines else {"name": on, "clientPort": 2379}
    api = ["--patroni-api", lab.api_url(on)] if on in lab.cluster.machines_with("postgres") else []
    return lab.member(on).host.run(
        [
            "bash", str(MODULES / "etcd" / "remove-member.sh"),
            "--self", etcd["name"],
            "--endpoints", f"http://127.0.0.1:{etcd['clientPort']}",
            *api,
            "--name", name,
        ],
        check=False,
        timeout=60,
        env={"PATH": SYS_PATH},
    )  # fmt: skip


def member_names(lab: PatroniLab, on: str) -> list[str]:
    out = lab.etcdctl(on, "member", "list", "-w", "json").stdout
    return sorted(m.get("name", "") for m in json.loads(out)["members"])


def cluster_id(lab: PatroniLab, on: str) -> int:
    out = lab.etcdctl(on, "endpoint", "status", "-w", "json").stdout
    return int(json.loads(out)[0]["Status"]["header"]["cluster_id"])


def slots(lab: PatroniLab, leader: str) -> dict[str, str]:
    out = lab.sql(leader, "SELECT slot_name || ' ' || active::text FROM pg_replication_slots")
    return dict(line.split() for line in out.splitlines())


def patch_config(lab: PatroniLab, machine: str, change: dict[str, Any]) -> None:
    pt = options(lab.cluster, machine)["postgres"]["patroni"]
    req = urllib.request.Request(lab.api_url(machine) + "/config", data=json.dumps(change).encode(), method="PATCH")
    auth = base64.b64encode(f"{pt['restApiUser']}:{lab.passwords['patroni_api_password']}".encode()).decode()
    req.add_header("Authorization", f"Basic {auth}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


@dataclass
class NamespaceHost:
    """What synth verify's checks need of a testinfra Host, for a host of the lab."""

    lab: PatroniLab
    machine: str

    def run(self, command: str) -> Any:
        r = self.lab.member(self.machine).host.run(["sh", "-c", command], check=False, timeout=30)
        return type("Result", (), {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr})()


def test_a_database_machine_leaves_patroni_and_etcd_as_synth_says(live: Lab) -> None:
    lab = live.lab
    assert etcd_members(lab.cluster) == ["db1", "db2", "db3"]
    leader = lab.wait_leader()
    assert leader == "db1"
    lab.wait_streaming(["db2", "db3"])
    before_id = cluster_id(lab, "db1")

    result = CliRunner().invoke(main, ["remove-machine", "db3", "--cluster", str(live.toml)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    said = result.output
    after = parse(live.toml.read_text(), str(live.toml))
    assert etcd_members(after) == ["db1", "db2", "fe1"], "fe1, the first other machine, takes db3's place"
    assert "if it leads, move the leadership first" in said and "`systemctl stop patroni` on db3" in said
    assert "fe1 takes its place (it joins by itself on its first start)" in said
    command = re.search(r"run `(lemmy-cluster-etcd-remove-member \S+)` on (\S+) ", said)
    assert command, said
    remove_cmd, remove_on = command.group(1), command.group(2)
    assert remove_cmd == "lemmy-cluster-etcd-remove-member db3" and remove_on == "db1"

    writers = Writers(lab, lab.workdir).start()
    try:
        writers.wait_acks(30)
        # 0. Out of order: db3's etcd member is not removed while db3 still runs Patroni.
        early = remove_member(lab, remove_on, "db3")
        assert early.returncode == 1, early.stdout + early.stderr
        assert "Patroni still counts db3 as a member: stop Patroni on db3 first" in early.stderr
        assert member_names(lab, "db1") == ["db1", "db2", "db3"]
        # 1. Patroni stops on db3 (it does not lead: nothing to move).
        assert lab.leader() != "db3"
        stopped = time.time()
        lab.stop_patroni("db3")
        writers.wait_acks(30, timeout=30, after=stopped)
        # Its slot stays for now (member_slots_ttl), inactive.
        deadline = time.monotonic() + 20
        while slots(lab, leader).get("db3") != "false" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert slots(lab, leader).get("db3") == "false", f"db3's slot is kept, inactive: {slots(lab, leader)}"
        # A stopped member says so, and its member key expires with its etcd lease (ttl, 20 s).
        deadline = time.monotonic() + 40
        members = {m["name"]: m["state"] for m in lab.cluster_state()["members"]}
        assert members.get("db3") in ("stopped", None), members
        while "db3" in members and time.monotonic() < deadline:
            time.sleep(0.5)
            members = {m["name"]: m["state"] for m in lab.cluster_state()["members"]}
        assert set(members) == {"db1", "db2"}, f"db3 left Patroni: {members}"
        assert slots(lab, leader).get("db3") == "false", "its slot outlives its member key (member_slots_ttl)"

        # 2. The deploy: fe1 starts its etcd with the new configuration and joins the running cluster.
        #    While a member is down etcd refuses a new one ("unhealthy cluster": 2 of 4 would be
        #    started, short of a majority); the join step tries again until it is back.
        lab.cluster = after
        lab.stop_etcd("db2")
        fe1 = lab.member("fe1")
        joining = threading.Thread(target=lab.start_etcd, args=(["fe1"],))
        joining.start()
        time.sleep(5)  # a few refused tries (the step logs when it ends)
        assert joining.is_alive(), "the join step did not wait while db2 was down"
        lab.start_etcd(["db2"])
        joining.join(timeout=90)
        assert fe1.etcd is not None and fe1.etcd.poll() is None, fe1.log_tail("etcd-join")
        joined = fe1.log("etcd-join").read_text()
        assert "the cluster is not healthy yet (etcd: unhealthy cluster); trying again" in joined, joined
        assert "adding this member to the running cluster (etcdctl member add fe1" in joined, joined
        assert "ETCD_INITIAL_CLUSTER_STATE=existing" in (fe1.base / "etcd-join.env").read_text()
        lab.wait_etcd(["fe1", "db2"])
        assert member_names(lab, "db1") == ["db1", "db2", "db3", "fe1"]
        assert cluster_id(lab, "fe1") == before_id, "fe1 joined the running cluster, not a new one"
        for name in ("db1", "db2"):
            lab.reload_patroni(name)  # the deploy's new Patroni configuration (etcd hosts db1, db2, fe1)

        # 3. The removal: refused while a member that stays is down; a no-op for a non-member.
        lab.stop_etcd("db2")
        refused = remove_member(lab, remove_on, "db3")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "members that stay are not healthy: db2" in refused.stderr and "Nothing was changed" in refused.stderr
        lab.start_etcd(["db2"])
        lab.wait_etcd(["db2"])
        assert member_names(lab, "db2") == ["db1", "db2", "db3", "fe1"]
        itself = remove_member(lab, "db3", "db3")
        assert itself.returncode == 1 and "on a member that stays" in itself.stderr
        done = remove_member(lab, remove_on, "db3")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "will remove db3 (ID " in done.stdout and "4 members now, 3 after" in done.stdout
        assert "removed db3; the etcd cluster has 3 members" in done.stdout
        again = remove_member(lab, remove_on, "db3")
        assert again.returncode == 0 and "db3 is not a member of the etcd cluster; nothing to do" in again.stdout
        assert member_names(lab, "db1") == ["db1", "db2", "fe1"]
        db3_etcd = lab.members["db3"].etcd
        assert db3_etcd is not None
        db3_etcd.wait(timeout=30)  # a removed member's etcd stops by itself
        health = lab.etcdctl("db1", "endpoint", "health", "--cluster", check=False)
        said_health = health.stdout + health.stderr  # etcdctl reports health on stderr
        assert health.returncode == 0 and said_health.count("is healthy") == 3, said_health
        writers.wait_acks(30, timeout=30, after=time.time())
    finally:
        logs = writers.stop()

    for kind in CLIENTS:
        pause = longest_gap(logs[kind], stopped, time.time())
        print(f"\n{kind}: longest pause while db3 left: {pause:.2f}s")
        assert pause < 10, f"{kind}: writes stopped for {pause:.1f}s while db3 left"
        assert writeload.first_ack_after(logs[kind], stopped) is not None
    lost = writers.lost(logs)
    assert not any(lost.values()), f"acknowledged commits lost: {lost}"

    # synth verify's etcd check: exactly the members of the new cluster file, all started.
    from synth.checks.roles import checks_for
    from synth.topology import plan

    results = checks_for(lab.cluster, plan(lab.cluster)["db1"], NamespaceHost(lab, "db1"))
    etcd_check = next(r for r in results if r.name == "etcd: members")
    assert etcd_check.ok, etcd_check.detail

    # 4. The slot: still there (30 minutes of retention); gone by itself once the retention ends.
    assert "db3" in slots(lab, leader)
    patch_config(lab, leader, {"member_slots_ttl": 4})
    try:
        deadline = time.monotonic() + 30
        while "db3" in slots(lab, leader) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "db3" not in slots(lab, leader), f"Patroni did not drop db3's slot: {slots(lab, leader)}"
        assert "Replication slot 'db3' for absent cluster member is expired" in lab.members[leader].log(
            "patroni"
        ).read_text(errors="replace")
        assert set(slots(lab, leader)) == {"db2"}
    finally:
        patch_config(lab, leader, {"member_slots_ttl": None})
