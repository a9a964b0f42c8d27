"""The storage role's scripts: install-node-key.sh and garage-setup.sh.

install-node-key.sh runs as is, on node keys made by synth.garage. garage-setup.sh drives the
`garage` CLI; here it drives tests/fake_garage.py, a stand-in (not Garage) that prints what Garage
2.0's CLI prints, keeps its cluster in a JSON file and logs every call, so that the tests can say
what the script asked of Garage, and change the cluster (machines joining) while the script waits.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from synth import garage
from tests.conftest import ROOT, require_tool
from tests.fake_garage import new_state, save

SCRIPTS = ROOT / "modules" / "storage" / "scripts"
INSTALL_NODE_KEY = SCRIPTS / "install-node-key.sh"
GARAGE_SETUP = SCRIPTS / "garage-setup.sh"
FAKE_GARAGE = Path(__file__).with_name("fake_garage.py")
TIMEOUT = 15  # seconds for any one run of a script: a hanging script fails the test


# ---- install-node-key.sh ----


def run_install(meta: Path, node_id: str, key_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_NODE_KEY), str(meta), node_id, str(key_file)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def key_file(tmp_path: Path, key: bytes, name: str = "node-key") -> Path:
    path = tmp_path / name
    path.write_text(garage.encode(key))  # base64 and a newline, as synth secrets init writes it
    return path


def test_install_node_key_installs_once(tmp_path: Path) -> None:
    key = garage.new_node_key()
    node_id = key[32:].hex()
    meta = tmp_path / "meta"
    out = run_install(meta, node_id, key_file(tmp_path, key))
    assert out.returncode == 0, out.stderr
    assert node_id in out.stdout
    assert (meta / "node_key").read_bytes() == key, "the 64 raw bytes, as Garage reads them"
    assert stat.S_IMODE((meta / "node_key").stat().st_mode) == 0o600
    assert (meta / "node_key.pub").read_bytes() == key[32:]
    assert not list(meta.glob("*.new")), "no leftovers"

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in meta.iterdir()}
    again = run_install(meta, node_id, key_file(tmp_path, key))
    assert again.returncode == 0, again.stderr
    assert again.stdout == "", "nothing to do the second time"
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in meta.iterdir()} == before


def test_install_node_key_refuses_a_key_of_another_id(tmp_path: Path) -> None:
    key, configured = garage.new_node_key(), garage.new_node_key()[32:].hex()
    meta = tmp_path / "meta"
    out = run_install(meta, configured, key_file(tmp_path, key))
    assert out.returncode == 1
    assert key[32:].hex() in out.stderr and configured in out.stderr, "both ids named"
    assert not meta.exists(), "nothing written"


def test_install_node_key_refuses_to_replace_an_installed_key(tmp_path: Path) -> None:
    installed, key = garage.new_node_key(), garage.new_node_key()
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "node_key").write_bytes(installed)
    out = run_install(meta, key[32:].hex(), key_file(tmp_path, key))
    assert out.returncode == 1
    assert "holds another key" in out.stderr
    assert installed[32:].hex() in out.stderr and key[32:].hex() in out.stderr
    assert (meta / "node_key").read_bytes() == installed, "the existing key is untouched"
    assert not (meta / "node_key.pub").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("this is not base64 !\n", "is not base64"),
        (base64.b64encode(bytes(32)).decode() + "\n", "does not hold a Garage node key"),
        (base64.b64encode(bytes(65)).decode() + "\n", "does not hold a Garage node key"),
        ("", "does not hold a Garage node key"),
    ],
    ids=["not-base64", "32-bytes", "65-bytes", "empty"],
)
def test_install_node_key_rejects_a_file_that_is_no_node_key(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "node-key"
    path.write_text(content)
    meta = tmp_path / "meta"
    out = run_install(meta, garage.new_node_key()[32:].hex(), path)
    assert out.returncode == 1
    assert message in out.stderr
    assert not meta.exists()


def test_install_node_key_needs_a_readable_key_file(tmp_path: Path) -> None:
    out = run_install(tmp_path / "meta", garage.new_node_key()[32:].hex(), tmp_path / "missing")
    assert out.returncode == 1
    assert "cannot read the node key" in out.stderr


@pytest.mark.parametrize("pub", [None, b"", bytes(32)], ids=["missing", "empty", "other"])
def test_install_node_key_repairs_the_public_key_file(tmp_path: Path, pub: bytes | None) -> None:
    key = garage.new_node_key()
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "node_key").write_bytes(key)
    if pub is not None:
        (meta / "node_key.pub").write_bytes(pub)
    out = run_install(meta, key[32:].hex(), key_file(tmp_path, key))
    assert out.returncode == 0, out.stderr
    assert (meta / "node_key.pub").read_bytes() == key[32:]
    assert (meta / "node_key").read_bytes() == key


# ---- garage-setup.sh, on the fake garage ----


def fixed_id(n: int) -> str:
    """A node id that is the same at every collection (pytest-xdist's workers must agree on the
    test ids, which these ids are part of): the public key of a seed derived from N."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    seed = hashlib.sha256(f"lemmy-cluster test storage machine {n}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


# Four storage machines: (id, zone, capacity as given to the script, the bytes Garage makes of it)
SIZES = [("500G", 500 * 10**9), ("1T", 10**12), ("2TB", 2 * 10**12), ("750G", 750 * 10**9)]
MACHINES = [(fixed_id(n), f"dc{n}", cap, size) for n, (cap, size) in enumerate(SIZES, 1)]
A, B, C, D = (m[0] for m in MACHINES)


def node_arg(node_id: str) -> str:
    _, zone, cap, _ = next(m for m in MACHINES if m[0] == node_id)
    return f"{node_id}:{zone}:{cap}"


def role(node_id: str) -> dict[str, Any]:
    _, zone, _, size = next(m for m in MACHINES if m[0] == node_id)
    return {"zone": zone, "capacity": size}


class Cluster:
    """A fake Garage cluster in a folder: its state, its call log, pict-rs's key in secret files."""

    def __init__(self, folder: Path, connected: list[str], replication_factor: int = 3) -> None:
        require_tool("jq")
        self.folder = folder
        self.state_file = folder / "garage-state.json"
        self.log_file = folder / "garage-calls.jsonl"
        self.garage = folder / "bin" / "garage"
        self.garage.parent.mkdir()
        self.garage.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{FAKE_GARAGE}" "$@"\n')
        self.garage.chmod(0o755)
        self.access_key = garage.new_access_key_id()
        self.secret_key = garage.new_secret_key()
        self.access_key_file = folder / "s3-access-key"
        self.secret_key_file = folder / "s3-secret-key"
        self.access_key_file.write_text(self.access_key + "\n")
        self.secret_key_file.write_text(self.secret_key + "\n")
        nodes = {
            node_id: {"hostname": f"storage{n}", "addr": f"10.0.1.{n}:3901", "connected": node_id in connected}
            for n, (node_id, *_) in enumerate(MACHINES, 1)
        }
        save(self.state_file, new_state(nodes, replication_factor))

    # the fake's state and log

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        return state

    def change(self, edit: Callable[[dict[str, Any]], None]) -> None:
        state = self.state()
        edit(state)
        save(self.state_file, state)

    def connect(self, node_id: str, up: bool = True) -> None:
        self.change(lambda s: s["nodes"][node_id].update(connected=up))

    def calls(self) -> list[dict[str, Any]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls()]

    def commands(self, *prefix: str) -> list[list[str]]:
        """The calls whose argv starts with PREFIX."""
        return [a for a in self.argvs() if a[: len(prefix)] == list(prefix)]

    def forget_calls(self) -> None:
        self.log_file.unlink(missing_ok=True)

    # the script

    def command(self, nodes: list[str], *extra: str) -> list[str]:
        return [
            "bash",
            str(GARAGE_SETUP),
            "--bucket",
            "pictrs",
            "--key-name",
            "pictrs",
            "--access-key-file",
            str(self.access_key_file),
            "--secret-key-file",
            str(self.secret_key_file),
            "--interval",
            "0.05",
            *extra,
            *nodes,
        ]

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            GARAGE=str(self.garage),
            FAKE_GARAGE_STATE=str(self.state_file),
            FAKE_GARAGE_LOG=str(self.log_file),
        )

    def run(self, nodes: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(nodes, *extra), env=self.env(), capture_output=True, text=True, timeout=TIMEOUT, check=False
        )

    def start(self, nodes: list[str]) -> Background:
        return Background(self, nodes)

    # what a finished setup looks like

    def assert_set_up(self, roles: list[str], version: int) -> None:
        state = self.state()
        assert state["layout"]["version"] == version
        assert state["layout"]["roles"] == {i: role(i) for i in roles}
        assert state["layout"]["staged"] == {}
        assert state["keys"] == {self.access_key: {"secret": self.secret_key, "name": "pictrs"}}
        assert state["buckets"] == {"pictrs": {"keys": {self.access_key: {"read": True, "write": True, "owner": True}}}}


class Background:
    """garage-setup.sh running in the background, its output in files."""

    def __init__(self, cluster: Cluster, nodes: list[str]) -> None:
        self.stdout = cluster.folder / "setup.out"
        self.stderr = cluster.folder / "setup.err"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen(cluster.command(nodes), env=cluster.env(), stdout=out, stderr=err, text=True)

    def wait_for_output(self, text: str, seconds: float = 5) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.stdout.read_text():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}): {self.stderr.read_text()}"
            assert time.monotonic() < deadline, f"no {text!r} in {self.stdout.read_text()!r}"
            time.sleep(0.02)

    def finish(self) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return code, self.stdout.read_text(), self.stderr.read_text()


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    """Three storage machines, all connected, none with a role: a cluster just deployed."""
    return Cluster(tmp_path, connected=[A, B, C])


THREE = [node_arg(A), node_arg(B), node_arg(C)]


def assign(node_id: str) -> list[str]:
    _, zone, cap, _ = next(m for m in MACHINES if m[0] == node_id)
    return ["layout", "assign", "-z", zone, "-c", cap, node_id]


def test_setup_of_a_new_cluster(cluster: Cluster) -> None:
    out = cluster.run(THREE)
    assert out.returncode == 0, out.stderr
    assert sorted(cluster.commands("layout", "assign")) == sorted(assign(i) for i in (A, B, C))
    assert cluster.commands("layout", "apply") == [["layout", "apply", "--version", "1"]]
    assert cluster.commands("json-api") == [["json-api", "ImportKey", "-"]]
    assert cluster.commands("bucket", "create") == [["bucket", "create", "pictrs"]]
    assert cluster.commands("bucket", "allow") == [
        ["bucket", "allow", "--read", "--write", "--owner", "pictrs", "--key", cluster.access_key]
    ]
    checks = (["key", "info"], ["bucket", "info"])
    failed = [c["argv"] for c in cluster.calls() if c["exit"] != 0 and c["argv"][:2] not in checks]
    assert failed == [], "only the existence checks may fail"
    cluster.assert_set_up([A, B, C], version=1)
    assert "applied layout version 1" in out.stdout
    assert out.stdout.rstrip().endswith("done")


def test_setup_passes_the_secret_key_only_on_stdin(cluster: Cluster) -> None:
    out = cluster.run(THREE)
    assert out.returncode == 0, out.stderr
    calls = cluster.calls()
    assert not [c["argv"] for c in calls if any(cluster.secret_key in a for a in c["argv"])], "never in an argv"
    assert cluster.secret_key not in out.stdout + out.stderr
    (stdin,) = [c["stdin"] for c in calls if "stdin" in c]
    assert json.loads(stdin) == {
        "accessKeyId": cluster.access_key,
        "secretAccessKey": cluster.secret_key,  # without the file's trailing newline
        "name": "pictrs",
    }
    assert ["key", "info", cluster.access_key] in cluster.argvs(), "the access key id without its newline"


def test_setup_run_again_changes_nothing(cluster: Cluster) -> None:
    assert cluster.run(THREE).returncode == 0
    before = cluster.state()
    cluster.forget_calls()
    out = cluster.run(THREE)
    assert out.returncode == 0, out.stderr
    assert cluster.argvs() == [
        ["status"],
        ["key", "info", cluster.access_key],
        ["bucket", "info", "pictrs"],
        ["bucket", "allow", "--read", "--write", "--owner", "pictrs", "--key", cluster.access_key],
    ], "no assign, apply, import or create: only the idempotent allow"
    assert cluster.state() == before
    assert "every storage machine has its role" in out.stdout


def test_setup_waits_for_every_machine(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, connected=[A, B])
    setup = cluster.start(THREE)
    setup.wait_for_output(f"waiting for 1 of 3 storage machines to connect: {C[:16]}")
    # It asks again (how soon depends on how loaded the machine is): wait for a third question.
    deadline = time.monotonic() + 20
    while len(cluster.argvs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert setup.proc.poll() is None, "still waiting"
    argvs = cluster.argvs()
    assert len(argvs) >= 3 and all(a == ["status"] for a in argvs), "asks again and again, changes nothing"

    cluster.connect(C)
    code, stdout, stderr = setup.finish()
    assert code == 0, stderr
    assert "all 3 storage machines are connected" in stdout
    waiting_rounds = len(cluster.commands("status")) - 1
    assert stdout.count("waiting for") == -(-waiting_rounds // 12), "says it at every 12th try, not at each"
    assert sorted(cluster.commands("layout", "assign")) == sorted(assign(i) for i in (A, B, C))
    cluster.assert_set_up([A, B, C], version=1)


def test_setup_gives_a_new_machine_its_role(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, connected=[A, B, C, D])
    assert cluster.run(THREE).returncode == 0
    cluster.forget_calls()

    out = cluster.run([*THREE, node_arg(D)])
    assert out.returncode == 0, out.stderr
    assert cluster.commands("layout", "assign") == [assign(D)], "only the new machine"
    assert cluster.commands("layout", "apply") == [["layout", "apply", "--version", "2"]]
    assert cluster.commands("json-api") == [] and cluster.commands("bucket", "create") == []
    cluster.assert_set_up([A, B, C, D], version=2)


def test_setup_applies_what_an_earlier_run_staged(cluster: Cluster) -> None:
    # an earlier run assigned A and died before the apply
    cluster.change(lambda s: s["layout"]["staged"].update({A: role(A)}))
    out = cluster.run(THREE)
    assert out.returncode == 0, out.stderr
    assert sorted(cluster.commands("layout", "assign")) == sorted([assign(B), assign(C)]), "A not again"
    assert cluster.commands("layout", "apply") == [["layout", "apply", "--version", "1"]]
    cluster.assert_set_up([A, B, C], version=1)


def test_setup_applies_when_every_machine_is_staged(cluster: Cluster) -> None:
    cluster.change(lambda s: s["layout"]["staged"].update({i: role(i) for i in (A, B, C)}))
    out = cluster.run(THREE)
    assert out.returncode == 0, out.stderr
    assert cluster.commands("layout", "assign") == []
    assert cluster.commands("layout", "apply") == [["layout", "apply", "--version", "1"]]
    cluster.assert_set_up([A, B, C], version=1)


def test_setup_waits_for_a_machine_that_has_a_role_but_is_down(tmp_path: Path) -> None:
    # `garage status` lists such a machine too, under FAILED NODES: it is not connected
    cluster = Cluster(tmp_path, connected=[A, B, C, D])
    assert cluster.run(THREE).returncode == 0
    cluster.connect(C, up=False)
    cluster.forget_calls()

    setup = cluster.start([*THREE, node_arg(D)])
    setup.wait_for_output(f"waiting for 1 of 4 storage machines to connect: {C[:16]}")
    time.sleep(0.2)
    assert setup.proc.poll() is None
    assert cluster.commands("layout") == [], "no new layout while a machine is down"

    cluster.connect(C)
    code, _, stderr = setup.finish()
    assert code == 0, stderr
    assert cluster.commands("layout", "assign") == [assign(D)]
    cluster.assert_set_up([A, B, C, D], version=2)


def test_setup_waits_for_the_local_garage(cluster: Cluster) -> None:
    cluster.change(lambda s: s.update(status_fails=True))
    setup = cluster.start(THREE)
    setup.wait_for_output("waiting for the local Garage to answer: Connection refused")
    time.sleep(0.2)
    assert setup.proc.poll() is None
    assert {tuple(a) for a in cluster.argvs()} == {("status",)}

    cluster.change(lambda s: s.update(status_fails=False))
    code, _, stderr = setup.finish()
    assert code == 0, stderr
    cluster.assert_set_up([A, B, C], version=1)


@pytest.mark.parametrize(
    "node",
    [
        "abc:dc1:500G",  # not a 64-digit id
        f"{A.upper()}:dc1:500G",  # Garage's ids are lowercase
        f"{A[:16]}:dc1:500G",  # a prefix, as `garage status` shows it
        f"{A}:dc1",
        f"{A}::500G",
        A,
    ],
)
def test_setup_rejects_a_malformed_node(cluster: Cluster, node: str) -> None:
    out = cluster.run([node_arg(B), node])
    assert out.returncode == 1
    assert f"bad node {node}: expected NODE_ID:ZONE:CAPACITY" in out.stderr
    assert cluster.calls() == [], "before asking Garage anything"


@pytest.mark.parametrize(
    "content",
    ["", "\n", "GK123\n", "gk" + "0" * 24 + "\n", "GK" + "A" * 24 + "\n", "GK" + "0" * 24 + "\n\n", " GK" + "0" * 24],
)
def test_setup_rejects_a_malformed_access_key(cluster: Cluster, content: str) -> None:
    cluster.access_key_file.write_text(content)
    out = cluster.run(THREE)
    assert out.returncode == 1
    assert "does not hold a Garage access key id (GK and 24 hex digits" in out.stderr
    assert cluster.commands("json-api") == [] and cluster.commands("key") == []


@pytest.mark.parametrize("content", ["", "\n", "0" * 63 + "\n", "0" * 65, "g" * 64, "0" * 64 + "\n\n", "0" * 32])
def test_setup_rejects_a_malformed_secret_key(cluster: Cluster, content: str) -> None:
    cluster.secret_key_file.write_text(content)
    out = cluster.run(THREE)
    assert out.returncode == 1
    assert "does not hold a Garage secret key (64 hex digits)" in out.stderr
    assert cluster.commands("json-api") == []
    assert cluster.state()["keys"] == {}


@pytest.mark.parametrize("which", ["access", "secret"])
def test_setup_says_when_a_key_file_is_missing(cluster: Cluster, which: str) -> None:
    missing = cluster.access_key_file if which == "access" else cluster.secret_key_file
    missing.unlink()
    out = cluster.run(THREE)
    assert out.returncode == 1
    assert f"cannot read {missing}" in out.stderr
    assert cluster.commands("json-api") == []


def test_setup_fails_when_garage_refuses_the_layout(tmp_path: Path) -> None:
    # more copies than machines (the module's assertion prevents it): Garage refuses, the unit retries
    cluster = Cluster(tmp_path, connected=[A, B], replication_factor=3)
    out = cluster.run([node_arg(A), node_arg(B)])
    assert out.returncode == 1
    assert "smaller than the replication factor" in out.stderr
    assert cluster.commands("json-api") == [] and cluster.commands("bucket") == []


def test_setup_usage(cluster: Cluster) -> None:
    out = subprocess.run(
        ["bash", str(GARAGE_SETUP), "--bucket", "pictrs"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert out.returncode == 2
    assert "usage: garage-setup.sh" in out.stderr
    assert cluster.calls() == []


def test_setup_hands_its_rpc_secret_file_to_every_garage_call(cluster: Cluster, tmp_path: Path) -> None:
    """The unit passes its own credential (--rpc-secret-file); the garage CLI reads it from
    GARAGE_RPC_SECRET_FILE, so every call must carry it."""
    secret = tmp_path / "rpc-secret"
    secret.write_text("ab" * 32 + "\n")
    done = cluster.run(THREE, "--rpc-secret-file", str(secret))
    assert done.returncode == 0, done.stderr
    calls = cluster.calls()
    assert calls and all(c.get("rpc_secret_file") == str(secret) for c in calls), calls


# ---- --read-only: the backup machine's key on pict-rs's bucket ----

NO_PERMISSIONS = {"read": False, "write": False, "owner": False}


class ReadOnlyKey:
    """The backup machine's key (setup.imagesBackup) in its own secret files."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.access_key = garage.new_access_key_id()
        self.secret_key = garage.new_secret_key()
        self.access_key_file = cluster.folder / "images-backup-access-key"
        self.secret_key_file = cluster.folder / "images-backup-secret-key"
        self.access_key_file.write_text(self.access_key + "\n")
        self.secret_key_file.write_text(self.secret_key + "\n")

    def run(self) -> subprocess.CompletedProcess[str]:
        command = [
            "bash",
            str(GARAGE_SETUP),
            "--bucket",
            "pictrs",
            "--key-name",
            "images-backup",
            "--access-key-file",
            str(self.access_key_file),
            "--secret-key-file",
            str(self.secret_key_file),
            "--read-only",
            "--interval",
            "0.05",
            *THREE,
        ]
        return subprocess.run(
            command, env=self.cluster.env(), capture_output=True, text=True, timeout=TIMEOUT, check=False
        )

    def permissions(self) -> dict[str, bool]:
        perms: dict[str, bool] = self.cluster.state()["buckets"]["pictrs"]["keys"].get(self.access_key, NO_PERMISSIONS)
        return perms


def test_read_only_key_may_read_but_not_write_or_own(cluster: Cluster) -> None:
    assert cluster.run(THREE).returncode == 0  # pict-rs's run: the bucket and pict-rs's key
    key = ReadOnlyKey(cluster)
    cluster.forget_calls()
    out = key.run()
    assert out.returncode == 0, out.stderr
    state = cluster.state()
    assert state["keys"][key.access_key] == {"secret": key.secret_key, "name": "images-backup"}
    assert key.permissions() == {"read": True, "write": False, "owner": False}
    assert state["buckets"]["pictrs"]["keys"][cluster.access_key] == {"read": True, "write": True, "owner": True}
    assert cluster.commands("bucket", "create") == []
    assert cluster.commands("bucket", "allow") == [["bucket", "allow", "--read", "pictrs", "--key", key.access_key]]
    assert out.stdout.rstrip().endswith("done")


def test_read_only_run_again_changes_nothing(cluster: Cluster) -> None:
    assert cluster.run(THREE).returncode == 0
    key = ReadOnlyKey(cluster)
    assert key.run().returncode == 0
    before = cluster.state()
    cluster.forget_calls()
    out = key.run()
    assert out.returncode == 0, out.stderr
    assert cluster.state() == before
    assert cluster.commands("json-api") == [], "the key exists: not imported again"
    assert key.permissions() == {"read": True, "write": False, "owner": False}


def test_read_only_fails_when_the_bucket_is_missing(cluster: Cluster) -> None:
    key = ReadOnlyKey(cluster)  # no pict-rs run before: no bucket
    out = key.run()
    assert out.returncode == 1
    assert "bucket pictrs does not exist" in out.stderr
    state = cluster.state()
    assert state["buckets"] == {}, "the bucket is not created"
    assert state["keys"] == {}, "nothing changed: the key is not imported either"
    assert cluster.commands("bucket", "create") == []


@pytest.mark.parametrize("had", [("write",), ("owner",), ("write", "owner")])
def test_read_only_denies_write_and_owner_that_a_reused_key_had(cluster: Cluster, had: tuple[str, ...]) -> None:
    assert cluster.run(THREE).returncode == 0
    key = ReadOnlyKey(cluster)

    def reuse(state: dict[str, Any]) -> None:
        state["keys"][key.access_key] = {"secret": key.secret_key, "name": "images-backup"}
        state["buckets"]["pictrs"]["keys"][key.access_key] = {**NO_PERMISSIONS, **dict.fromkeys(had, True)}

    cluster.change(reuse)
    cluster.forget_calls()
    out = key.run()
    assert out.returncode == 0, out.stderr
    assert key.permissions() == {"read": True, "write": False, "owner": False}
    assert cluster.commands("json-api") == [], "an existing key is kept, as without --read-only"
