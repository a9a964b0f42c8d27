"""The storage role (Garage) in synth: node keys, cluster.toml rules, the plan of each machine,
`synth secrets init`/`push`, add-machine and remove-machine, the deployment order.

The shell scripts of the storage module are tested in tests/test_garage_scripts.py, the pict-rs
machines' S3 balancer on real nginx in tests/live/test_s3_balancer.py.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from synth import garage
from synth.errors import SynthError
from synth.model import load, parse
from synth.order import batches
from synth.topology import GARAGE_RPC_PORT, GARAGE_S3_PORT, PICTRS_S3_PROXY_PORT, local_secret_name, plan
from tests.conftest import EXAMPLES, ROOT, require_tool
from tests.test_cli import run, snapshot

GOLDEN_TOML = ROOT / "tests" / "golden" / "storage.toml"


def problems(text: str, **kwargs: bool) -> list[str]:
    with pytest.raises(SynthError) as info:
        parse(text, "c.toml", **kwargs)
    return [p.render("c.toml") for p in info.value.problems]


# --------------------------------------------------------------------------- node keys


def test_node_key_is_garages_format() -> None:
    key = garage.new_node_key()
    assert len(key) == 64
    seed, pub = key[:32], key[32:]
    assert garage.public_key(seed) == pub
    text = garage.encode(key)
    assert text.endswith("\n") and base64.b64decode(text) == key
    assert garage.node_id(text) == pub.hex()
    assert garage.new_node_key() != key


def test_node_key_public_half_agrees_with_openssl() -> None:
    """An independent ed25519 implementation derives the same public key from the seed."""
    openssl = require_tool("openssl")
    key = garage.new_node_key()
    der = bytes.fromhex("302e020100300506032b657004220420") + key[:32]  # PKCS#8 wrapping of the seed
    out = subprocess.run(
        [openssl, "pkey", "-inform", "DER", "-pubout", "-outform", "DER"], input=der, capture_output=True, check=True
    )
    assert out.stdout[-32:] == key[32:]


@pytest.mark.parametrize(
    "text,why",
    [
        ("not base64!\n", "not base64"),
        (base64.b64encode(b"x" * 63).decode() + "\n", "63 bytes instead of 64"),
        (base64.b64encode(b"\x01" * 32 + b"\x02" * 32).decode(), "does not belong to its seed"),
    ],
)
def test_broken_node_keys_are_refused(text: str, why: str) -> None:
    with pytest.raises(garage.NodeKeyError, match=why):
        garage.node_id(text)


def test_s3_keys_have_the_formats_garage_imports() -> None:
    import re

    assert re.fullmatch(r"GK[0-9a-f]{24}", garage.new_access_key_id())
    assert re.fullmatch(r"[0-9a-f]{64}", garage.new_secret_key())
    assert re.fullmatch(r"[0-9a-f]{64}", garage.new_rpc_secret())


# --------------------------------------------------------------------------- cluster.toml rules


def golden() -> str:
    return GOLDEN_TOML.read_text()


def test_golden_storage_cluster_is_valid() -> None:
    c = parse(golden())
    assert c.machines_with("storage") == ["store1", "store2", "store3"]


def test_replication_factor_is_required_and_bounded() -> None:
    text = golden().replace("replication_factor = 3 ", "# (none) ")
    got = problems(text)
    assert len(got) == 1 and got[0].startswith("c.toml: storage.replication_factor: required with machines of role")
    assert "It cannot change once images are stored" in got[0]
    got = problems(golden().replace("replication_factor = 3", "replication_factor = 4"))
    assert got == [
        "c.toml: storage.replication_factor: must be between 1 and the number of storage machines (3); 3 keeps "
        "every object readable and writable while one machine is down"
    ]


def test_storage_needs_object_storage_without_endpoint() -> None:
    local = golden().replace('store = "object_storage"', 'store = "local"').replace('bucket = "lemmy-images"', "")
    got = problems(local)
    assert any(p.startswith("c.toml: pictrs.store: machines store1, store2, store3 have role 'storage'") for p in got)
    external = golden().replace('bucket = "lemmy-images"', 'bucket = "lemmy-images"\nendpoint = "https://s3.x.org"')
    assert problems(external) == [
        "c.toml: pictrs.endpoint: the machines with role 'storage' are pict-rs's object storage; remove endpoint, "
        "or remove the 'storage' role to use the external S3 service at this endpoint"
    ]


def test_object_storage_without_endpoint_mentions_the_storage_role() -> None:
    text = (EXAMPLES / "large.toml").read_text().replace('endpoint = "https://s3.example.net"', "")
    (msg,) = problems(text)
    assert "pictrs.endpoint: required with store" in msg and "give machines the role 'storage'" in msg


def test_storage_fields() -> None:
    text = golden()
    got = problems(text.replace('storage_capacity = "1T"', 'storage_capacity = "lots"'))
    assert got == [
        "c.toml: machines.store3.storage_capacity: 'lots' is not a size; write a whole number and a unit, e.g. \"500G\""
        ' or "2T"'
    ]
    got = problems(text.replace('storage_capacity = "1T"\n', ""))
    assert len(got) == 1 and got[0].startswith("c.toml: machines.store3.storage_capacity: required for role 'storage'")
    got = problems(text.replace('storage_zone = "rack-b"', 'storage_zone = "rack b"'))
    assert len(got) == 1 and "machines.store3.storage_zone: 'rack b' is not a zone name" in got[0]
    got = problems(text.replace('address = "10.2.0.31"', 'address = "10.2.0.31"\nstorage_capacity = "1G"'))
    assert got == [
        "c.toml: machines.db1.storage_capacity: only used on machines with role 'storage'; remove it or add the role"
    ]
    ids = [ln.split('"')[1] for ln in text.splitlines() if ln.startswith("garage_node_id")]
    got = problems(text.replace(ids[1], ids[0]))
    assert got == ["c.toml: machines.store2.garage_node_id: the same node id as machine 'store1'; each machine needs "
                   "its own key"]  # fmt: skip
    got = problems(text.replace(ids[2], "ABC"))
    assert len(got) == 1 and "machines.store3.garage_node_id: not a Garage node id (64 lowercase hex digits)" in got[0]


def test_capacity_units() -> None:
    for ok in ("500G", "2T", "750GB", "1TiB", "100M"):
        parse(golden().replace('"1T"', f'"{ok}"'))
    for bad in ("1K", "0G", "1.5T", "500 G", "500g"):
        assert problems(golden().replace('"1T"', f'"{bad}"')), bad


def test_typos_in_storage_fields_do_not_hide_other_problems() -> None:
    text = (
        golden()
        .replace('storage_capacity = "1T"', "storage_capacity = 1")
        .replace('storage_zone = "rack-b"', 'storage_zone = "rack b"')
    )
    got = problems(text)
    assert "c.toml: machines.store3.storage_capacity: must be a string (got int)" in got
    assert any("machines.store3.storage_zone: 'rack b' is not a zone name" in p for p in got), got


# --------------------------------------------------------------------------- the plan


def test_plan_of_storage_and_pictrs_machines() -> None:
    c = parse(golden())
    plans = plan(c)
    ids = {m: c.machines[m].garage_node_id for m in ("store1", "store2", "store3")}
    s1, s2 = plans["store1"].storage, plans["store2"].storage
    assert s1 is not None and s2 is not None
    assert s2.bootstrap_peers == [
        f"{ids['store1']}@10.2.0.21:{GARAGE_RPC_PORT}",
        f"{ids['store3']}@10.2.0.23:{GARAGE_RPC_PORT}",
    ]
    assert s2.rpc_peers == ["10.2.0.21", "10.2.0.23"]
    assert s2.s3_clients == ["10.2.0.11", "10.2.0.12"], "only the pict-rs machines reach the S3 API"
    assert s2.replication_factor == 3 and s2.region == "us-east-1"
    # the first storage machine sets the cluster up, the others do not
    assert [(n.zone, n.capacity) for n in s1.layout] == [("store1", "500G"), ("store2", "500G"), ("rack-b", "1T")]
    assert [n.node_id for n in s1.layout] == list(ids.values())
    assert s1.bucket == "lemmy-images"
    assert s2.layout == [] and s2.bucket is None
    web1 = plans["web1"].pictrs
    assert web1 is not None
    assert web1.endpoint == f"http://127.0.0.1:{PICTRS_S3_PROXY_PORT}" and web1.path_style
    assert web1.s3_upstreams == [f"10.2.0.2{i}:{GARAGE_S3_PORT}" for i in (1, 2, 3)]
    # the storage machines talk to each other and to pict-rs, nothing else
    assert list(plans["store2"].peers) == ["web1", "web2", "store1", "store3"]
    assert {"store1", "store2", "store3", "db1"} <= set(plans["web1"].peers)


def test_secrets_of_storage_machines() -> None:
    plans = plan(parse(golden()))
    d = "/var/lib/lemmy-cluster/secrets"
    assert plans["store1"].secrets == {
        "s3_access_key": f"{d}/s3-access-key",
        "s3_secret_key": f"{d}/s3-secret-key",
        "garage_rpc_secret": f"{d}/garage-rpc-secret",
        "garage_node_key": f"{d}/garage-node-key",
    }, "the setup machine imports pict-rs's key"
    assert plans["store2"].secrets == {
        "garage_rpc_secret": f"{d}/garage-rpc-secret",
        "garage_node_key": f"{d}/garage-node-key",
    }
    assert local_secret_name("garage_node_key", "store2") == "garage-node-key.store2"
    assert local_secret_name("garage_rpc_secret", "store2") == "garage-rpc-secret"


def test_bucket_defaults_to_pictrs() -> None:
    c = parse(golden().replace('bucket = "lemmy-images"', ""))
    assert plan(c)["web1"].pictrs.bucket == "pictrs"  # type: ignore[union-attr]
    assert plan(c)["store1"].storage.bucket == "pictrs"  # type: ignore[union-attr]


def test_external_object_storage_is_unchanged() -> None:
    plans = plan(load(EXAMPLES / "large.toml"))
    media1 = plans["media1"].pictrs
    assert media1 is not None
    assert media1.endpoint == "https://s3.example.net" and media1.s3_upstreams == []
    assert all(h.storage is None for h in plans.values())


def test_storage_machines_deploy_one_at_a_time_before_pictrs() -> None:
    got = [(b.stage, b.machines) for b in batches(parse(golden()))]
    assert got == [
        ("postgres-primary", ("db1",)),
        ("postgres-replicas", ("db2",)),
        ("etcd", ("web1",)),  # the third etcd member, with its pict-rs
        ("storage", ("store1",)),
        ("storage", ("store2",)),
        ("storage", ("store3",)),
        ("pictrs", ("web2",)),
    ]


# --------------------------------------------------------------------------- secrets init / push


@pytest.fixture
def example(tmp_path: Path) -> Path:
    toml = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLES / "storage.toml", toml)
    return toml


def test_secrets_init_makes_keys_and_records_node_ids(example: Path) -> None:
    before = example.read_text()
    code, out, err = run("secrets", "init", str(example))
    assert code == 0, err
    folder = example.parent / "secrets"
    after = example.read_text()
    c = load(example)  # valid now
    for m in ("store1", "store2", "store3"):
        key = folder / f"garage-node-key.{m}"
        assert key.stat().st_mode & 0o777 == 0o600
        assert c.machines[m].garage_node_id == garage.read_node_id(key)
        assert f"recorded: machines.{m}.garage_node_id in {example}" in out
    # only the id lines were added: comments and layout kept
    added = [ln for ln in after.splitlines() if ln not in before.splitlines()]
    assert len(added) == 3 and all(ln.startswith("garage_node_id = ") for ln in added)
    assert [ln for ln in after.splitlines() if not ln.startswith("garage_node_id")] == before.splitlines()
    # the S3 keys are ours to make for our own Garage, in the formats Garage imports
    assert (folder / "s3-access-key").read_text().startswith("GK") and "to provide" not in out
    import re

    assert re.fullmatch(r"GK[0-9a-f]{24}\n", (folder / "s3-access-key").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}\n", (folder / "s3-secret-key").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}\n", (folder / "garage-rpc-secret").read_text())
    # generate works now, and a second init changes nothing
    assert run("generate", str(example))[0] == 0
    state = snapshot(example.parent)
    code, out, err = run("secrets", "init", str(example))
    assert code == 0, err
    assert "0 created, 14 kept" in out and "recorded" not in out
    assert snapshot(example.parent) == state


def test_secrets_init_refuses_a_key_that_is_not_the_recorded_one(example: Path) -> None:
    assert run("secrets", "init", str(example))[0] == 0
    folder = example.parent / "secrets"
    key2 = folder / "garage-node-key.store2"
    key2.unlink()
    key2.write_text(garage.encode(garage.new_node_key()))
    key2.chmod(0o600)
    state = snapshot(example.parent)
    code, _, err = run("secrets", "init", str(example))
    assert code == 1
    assert "machines.store2.garage_node_id: " in err and f"is not the id of the key in {key2}" in err
    assert snapshot(example.parent) == state, "nothing written"
    # push refuses too: Garage would not start with that key
    code, _out, err = run("secrets", "push", str(example))
    assert code == 1 and f"is not the id of the key in {key2}" in err


def test_secrets_init_refuses_a_lost_key(example: Path) -> None:
    assert run("secrets", "init", str(example))[0] == 0
    (example.parent / "secrets" / "garage-node-key.store3").unlink()
    code, _out, err = run("secrets", "init", str(example))
    assert code == 1
    assert "machines.store3.garage_node_id: recorded, but its key" in err and "restore the file" in err
    assert not (example.parent / "secrets" / "garage-node-key.store3").exists(), "no new key under an old id"


def test_secrets_init_adopts_an_existing_key_file(example: Path) -> None:
    folder = example.parent / "secrets"
    folder.mkdir(mode=0o700)
    key = garage.new_node_key()
    (folder / "garage-node-key.store1").write_text(garage.encode(key))
    code, _out, err = run("secrets", "init", str(example))
    assert code == 0, err
    assert load(example).machines["store1"].garage_node_id == key[32:].hex()


def test_push_sends_each_machine_its_own_node_key(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synth import remote

    assert run("secrets", "init", str(example))[0] == 0
    sent: dict[str, dict[str, bytes]] = {}

    def fake_push(host: str, user: str, address: str, files: dict[str, bytes], opts: object) -> remote.PushResult:
        sent[host] = files
        return remote.PushResult(host, {path: "created" for path in files})

    monkeypatch.setattr(remote, "push_secrets", fake_push)  # the command imports it when it runs
    code, _out, err = run("secrets", "push", str(example))
    assert code == 0, err
    folder = example.parent / "secrets"
    d = "/var/lib/lemmy-cluster/secrets"
    for m in ("store1", "store2", "store3"):
        assert sent[m][f"{d}/garage-node-key"] == (folder / f"garage-node-key.{m}").read_bytes()
        assert sent[m][f"{d}/garage-rpc-secret"] == (folder / "garage-rpc-secret").read_bytes()
    assert f"{d}/s3-secret-key" in sent["store1"] and f"{d}/s3-secret-key" not in sent["store2"]
    assert sent["store1"][f"{d}/garage-node-key"] != sent["store2"][f"{d}/garage-node-key"]
    assert not any("garage" in path for path in sent["db1"])


# --------------------------------------------------------------------------- add / remove machines


@pytest.fixture
def grown(tmp_path: Path) -> Path:
    toml = tmp_path / "cluster.toml"
    shutil.copy(GOLDEN_TOML, toml)
    assert run("generate", str(toml))[0] == 0
    return toml


def test_add_storage_machine_makes_its_key_and_regenerates(grown: Path) -> None:
    code, out, err = run(
        "add-machine", "store4", "--role", "storage", "--address", "10.2.0.24", "--capacity", "2T",
        "--zone", "rack-b", "--cluster", str(grown),
    )  # fmt: skip
    assert code == 0, err
    key = grown.parent / "secrets" / "garage-node-key.store4"
    node_id = garage.read_node_id(key)
    c = load(grown)
    m = c.machines["store4"]
    assert (m.storage_capacity, m.storage_zone, m.garage_node_id) == ("2T", "rack-b", node_id)
    assert f"created: {key.relative_to(grown.parent)}" in out or f"created: {key}" in out
    store1 = (grown.parent / "hosts" / "store1" / "default.nix").read_text()
    assert f'"{node_id}@10.2.0.24:3901"' in store1 and f'id = "{node_id}";' in store1, "the setup assigns it"
    assert '"10.2.0.24:3900"' in (grown.parent / "hosts" / "web1" / "default.nix").read_text()
    assert "# Garage spreads objects in proportion" in grown.read_text(), "comments kept"


def test_add_storage_machine_refusals_write_nothing(grown: Path) -> None:
    state = snapshot(grown.parent)
    code, _, err = run("add-machine", "store4", "--role", "storage", "--address", "10.2.0.24", "--cluster", str(grown))
    assert code == 1 and "machines.store4.storage_capacity: role storage needs --capacity" in err
    code, _, err = run(
        "add-machine", "store4", "--role", "storage", "--address", "10.2.0.21", "--capacity", "1T",
        "--cluster", str(grown),
    )  # fmt: skip
    assert code == 1 and "10.2.0.21 is already the address of machine 'store1'" in err
    code, _, err = run(
        "add-machine", "web3", "--role", "frontend", "--address", "10.2.0.13", "--capacity", "1T",
        "--cluster", str(grown),
    )  # fmt: skip
    assert code == 1 and "--capacity and --zone are only for machines with --role storage" in err
    assert snapshot(grown.parent) == state, "no key, no cluster file, no hosts written"


def test_remove_storage_machine(grown: Path) -> None:
    code, _, err = run("remove-machine", "store3", "--cluster", str(grown))
    assert code == 1
    assert "removing store3 leaves 2 storage machines, fewer than [storage] replication_factor = 3" in err
    assert run("add-machine", "store4", "--role", "storage", "--address", "10.2.0.24", "--capacity", "1T",
               "--cluster", str(grown))[0] == 0  # fmt: skip
    node_id = load(grown).machines["store3"].garage_node_id
    code, out, err = run("remove-machine", "store3", "--cluster", str(grown))
    assert code == 0, err
    assert f"`garage layout remove {node_id}`" in out
    assert node_id not in (grown.parent / "hosts" / "store1" / "default.nix").read_text()


def test_diagram_draws_storage() -> None:
    from synth.diagram import edges, mermaid

    c = parse(golden())
    s3 = {(e.src, e.dst) for e in edges(c) if e.label == "S3"}
    assert s3 == {(p, s) for p in ("web1", "web2") for s in ("store1", "store2", "store3")}
    text = mermaid(c)
    assert 'subgraph g3["storage (Garage)"]' in text and "<b>store3</b><br/>storage (Garage)" in text
