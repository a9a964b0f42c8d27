"""A machine that stays reachable: cluster.toml's [ssh] section (validated), what synth renders
from it into each host module, the user-owned hosts/<m>/configuration.nix that synth never
touches, per-machine state versions, and the static facts of modules/access.nix and
modules/common.nix that the flake and the units depend on."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from synth.errors import SynthError
from synth.model import parse
from synth.render import HOST_IMPORTS, host_data
from synth.topology import plan
from tests.conftest import EXAMPLES, ROOT
from tests.test_cli import run

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAUoO7Dg1bzEeFTyb3t0L0MQ7I9IvNNFUWrZj78atUyQ admin@example.org"

BASE = """
[cluster]
name = "t"
domain = "lemmy.example.org"
admin_email = "admin@example.org"

[postgres]
primary = "db1"
version = 17

[machines.fe1]
address = "10.0.0.1"
roles = ["frontend"]

[machines.app1]
address = "10.0.0.2"
roles = ["backend", "pictrs"]
ssh_user = "deploy"

[machines.db1]
address = "10.0.0.3"
roles = ["postgres"]
state_version = "24.11"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SynthError) as info:
        parse(text, "c.toml")
    return [p.render("c.toml") for p in info.value.problems]


def test_ssh_section_renders_into_every_host_module() -> None:
    c = parse(BASE + f'\n[ssh]\nkeys = ["{KEY}"]\nallow_from = ["198.51.100.0/24", "2001:db8::1"]\n')
    plans = plan(c)
    fe1 = host_data(c, plans["fe1"])["services"]["lemmy-cluster"]["access"]
    assert fe1 == {"authorizedKeys": [KEY], "allowFrom": ["198.51.100.0/24", "2001:db8::1"]}
    app1 = host_data(c, plans["app1"])["services"]["lemmy-cluster"]["access"]
    assert app1["deployUser"] == "deploy", "the keys go to the machine's ssh_user"


def test_no_ssh_section_renders_no_access_block() -> None:
    c = parse(BASE)
    assert "access" not in host_data(c, plan(c)["fe1"])["services"]["lemmy-cluster"]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("ssh-ed25519", "expected 'TYPE BASE64 [COMMENT]'"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "unknown key type 'ssh-dss'"),
        ("ssh-ed25519 not*base64", "does not decode"),
        # a valid base64 blob of an RSA key given as ed25519
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ== x", "is not a ssh-ed25519 key"),
        ("-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjE=", "this is a private key"),
    ],
)
def test_bad_ssh_keys_are_refused(key: str, message: str) -> None:
    got = problems(BASE + f'\n[ssh]\nkeys = ["{KEY}", "{key}"]\n')
    assert len(got) == 1, got
    assert got[0].startswith("c.toml: ssh.keys[1]: "), got
    assert message in got[0]


def test_bad_allow_from_is_refused() -> None:
    got = problems(BASE + '\n[ssh]\nallow_from = ["198.51.100.0/24", "office"]\n')
    assert got == ["c.toml: ssh.allow_from[1]: 'office' is not an IP address or network such as '198.51.100.0/24'"]


def test_darwin_system_is_refused() -> None:
    text = BASE.replace('roles = ["frontend"]', 'roles = ["frontend"]\nsystem = "aarch64-darwin"')
    got = problems(text)
    assert got == [
        "c.toml: machines.fe1.system: 'aarch64-darwin' is not a Linux system: NixOS machines are "
        "'x86_64-linux' or 'aarch64-linux'"
    ]
    got = problems(BASE.replace('name = "t"', 'name = "t"\nsystem = "x86_64-darwin"'))
    assert len(got) == 1 and got[0].startswith("c.toml: cluster.system: 'x86_64-darwin' is not a Linux system")


def test_state_version_is_per_machine_with_the_cluster_default() -> None:
    c = parse(BASE)
    plans = plan(c)
    assert host_data(c, plans["db1"])["system"] == {"stateVersion": "24.11"}
    assert host_data(c, plans["fe1"])["system"] == {"stateVersion": "26.05"}
    got = problems(BASE.replace('state_version = "24.11"', 'state_version = "24"'))
    assert got == ["c.toml: machines.db1.state_version: must look like '26.05'"]


def test_generate_never_touches_configuration_nix(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "small.toml", tmp_path / "cluster.toml")
    own = tmp_path / "hosts" / "fe1" / "configuration.nix"
    own.parent.mkdir(parents=True)
    own.write_text('{ boot.loader.grub.devices = [ "/dev/sda" ]; }\n')
    code, out, err = run("generate", str(tmp_path / "cluster.toml"))
    assert code == 0, err
    assert "configuration.nix" not in out
    assert own.read_text() == '{ boot.loader.grub.devices = [ "/dev/sda" ]; }\n'
    # The machine leaves the cluster: its generated file goes, the admin's file and folder stay.
    text = (tmp_path / "cluster.toml").read_text()
    start = text.index("[machines.fe1]")
    end = text.index("[machines.fe2]")
    (tmp_path / "cluster.toml").write_text(text[:start] + text[end:])
    code, out, err = run("generate", str(tmp_path / "cluster.toml"))
    assert code == 0, err
    assert not (tmp_path / "hosts" / "fe1" / "default.nix").exists()
    assert own.read_text() == '{ boot.loader.grub.devices = [ "/dev/sda" ]; }\n'
    assert f"kept {tmp_path / 'hosts' / 'fe1'}: it still holds files synth did not write" in err


def test_the_host_module_not_the_flake_imports_the_machines_own_files() -> None:
    """flake.nix builds a machine from the role modules, its host module and its platform only:
    the host module imports hardware-configuration.nix (or no-hardware.nix) and configuration.nix
    itself (tests/test_nix_files.py evaluates those imports), so the flake imports neither twice."""
    flake = (ROOT / "flake.nix").read_text()
    block = flake[flake.index("hostModules = name: machine: [") : flake.index("];", flake.index("hostModules ="))]
    entries = [line.strip() for line in block.splitlines()[1:] if line.strip()]
    assert entries == [
        "self.nixosModules.default",
        '(./hosts + "/${name}")',
        "{ nixpkgs.hostPlatform = lib.mkDefault machine.system; }",
    ]
    assert "lib.nixosSystem { modules = hostModules name machine; }" in flake
    code = "\n".join(line for line in flake.splitlines() if not line.strip().startswith("#"))
    assert "no-hardware.nix" not in code and "configuration.nix" not in code
    for imported in ("./hardware-configuration.nix", "../../modules/no-hardware.nix", "./configuration.nix"):
        assert f"[ {imported} ]" in HOST_IMPORTS
    expression = HOST_IMPORTS.split("imports =", 1)[1]
    assert "lib." not in expression and "config." not in expression, "imports may not depend on lib or config"
    assert "./access.nix" in (ROOT / "modules" / "default.nix").read_text()


def test_access_module_sets_key_only_sshd_and_asserts_a_way_in() -> None:
    text = (ROOT / "modules" / "access.nix").read_text()
    for option in (
        "PasswordAuthentication = lib.mkDefault false;",
        "KbdInteractiveAuthentication = lib.mkDefault false;",
        'PermitRootLogin = lib.mkDefault "prohibit-password";',
        "openFirewall = lib.mkDefault (cfg.allowFrom == [ ]);",
        "openssh.authorizedKeys.keys = cfg.authorizedKeys;",
    ):
        assert option in text
    assertions = re.findall(r"assertion =\s*(.*?);\n\s*message", text, re.S)
    assert [a.split()[0] for a in assertions] == [
        "config.services.openssh.enable",
        "cfg.evaluationOnly",
        "cfg.evaluationOnly",
    ]
    assert "services.lemmy-cluster.access.evaluationOnly = true;" in (ROOT / "modules" / "no-hardware.nix").read_text()


def test_every_unit_binding_the_private_address_waits_for_it() -> None:
    """The units common.nix orders after lemmy-cluster-private-address.service are the ones the role
    modules bind to their listenAddress (whose default is the private address)."""
    common = (ROOT / "modules" / "common.nix").read_text()
    units = re.findall(
        r'lib\.optional \(cfg\.(\w+)\.enable or false\) (?:\(if .*? then "(\w+)" else "(\w+)"\)|"([\w-]+)")', common
    )
    got = {role: [u for u in rest if u] for role, *rest in units}
    assert got == {
        "postgres": ["patroni", "postgresql"],
        "etcd": ["etcd"],
        "pictrs": ["pict-rs"],
        "backend": ["lemmy"],
        "frontend": ["lemmy-ui"],
        "storage": ["garage"],
    }
    assert "RemainAfterExit = true;" in common
    assert "requires = [ addressUnit ];" in common and "after = [ addressUnit ];" in common
    # Each role module whose listenAddress defaults to the private address is in the list.
    for role_dir, role in (
        ("postgres", "postgres"), ("etcd", "etcd"), ("pictrs", "pictrs"), ("backend", "backend"),
        ("frontend", "frontend"), ("storage", "storage"),
    ):  # fmt: skip
        assert "default = top.privateAddress;" in (ROOT / "modules" / role_dir / "default.nix").read_text()
        assert role in got


def test_a_changed_state_version_is_refused_with_the_fix(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLES / "small.toml", cluster)
    code, _, err = run("generate", str(cluster))
    assert code == 0, err
    before = (tmp_path / "hosts" / "db1" / "default.nix").read_text()
    cluster.write_text(
        cluster.read_text().replace(
            'site_name = "Example Lemmy"', 'site_name = "Example Lemmy"\nstate_version = "26.11"'
        )
    )
    code, _, err = run("generate", str(cluster))
    assert code == 1
    assert (
        f"machines.db1.state_version: {tmp_path}/hosts/db1/default.nix has system.stateVersion '26.05' "
        "and would get '26.11'" in err
    )
    assert 'add state_version = "26.05" to [machines.db1]' in err
    assert (tmp_path / "hosts" / "db1" / "default.nix").read_text() == before, "nothing written"
    # Recorded per machine, the cluster's value is for new machines only.
    text = cluster.read_text()
    for name in ("fe1", "fe2", "app1", "db1", "db2"):
        text = text.replace(f"[machines.{name}]\n", f'[machines.{name}]\nstate_version = "26.05"\n')
    cluster.write_text(text)
    code, _, err = run("generate", str(cluster))
    assert code == 0, err
    code, _, err = run("add-machine", "fe3", "--cluster", str(cluster), "--role", "frontend", "--address", "10.0.0.12")
    assert code == 0, err
    assert (
        '[machines.fe3]\naddress = "10.0.0.12"\nroles = ["frontend"]\nstate_version = "26.11"\n' in cluster.read_text()
    )
    assert 'stateVersion = "26.11";' in (tmp_path / "hosts" / "fe3" / "default.nix").read_text()


def test_unspecified_and_loopback_addresses_are_refused() -> None:
    got = problems(BASE.replace('address = "10.0.0.1"', 'address = "0.0.0.0"'))
    assert got == [
        "c.toml: machines.fe1.address: 0.0.0.0 is the unspecified address (any interface), not a machine's: "
        "give its own address"
    ]
    got = problems(BASE.replace('address = "10.0.0.3"', 'address = "203.0.113.3"\nprivate_address = "127.0.0.1"'))
    assert got == [
        "c.toml: machines.db1.private_address: 127.0.0.1 is a loopback address: the other machines of the "
        "cluster cannot reach it; give the machine's address on the network they share"
    ]
    single = parse((EXAMPLES / "single.toml").read_text().replace('address = "', 'address = "127.0.0.1" #', 1))
    assert len(single.machines) == 1, "one machine alone may use a loopback address"


def test_more_postgres_machines_than_the_module_has_wal_senders_are_refused() -> None:
    from synth.model import MAX_POSTGRES_MACHINES, PG_MAX_REPLICATION_SLOTS, PG_MAX_WAL_SENDERS

    for settings in ("streaming-settings.nix", "patroni-settings.nix"):
        text = (ROOT / "modules" / "postgres" / settings).read_text()
        assert f"max_wal_senders = {PG_MAX_WAL_SENDERS};" in text
        assert f"max_replication_slots = {PG_MAX_REPLICATION_SLOTS};" in text
    extra = "".join(
        f'\n[machines.db{i}]\naddress = "10.0.1.{i}"\nroles = ["postgres"]\n'
        for i in range(2, MAX_POSTGRES_MACHINES + 2)
    )
    got = problems(BASE + extra)
    assert any(
        f"{MAX_POSTGRES_MACHINES + 1} postgres machines, but the postgres module allows 10 WAL senders" in g
        for g in got
    ), got
