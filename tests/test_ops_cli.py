"""add-machine, remove-machine, plan and promote: edits keep the user's file, refusals say why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from synth.model import load
from tests.conftest import EXAMPLES, ROOT, require_tool
from tests.test_cli import run, snapshot

GOLDEN = ROOT / "tests" / "golden" / "edit"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "small.toml", tmp_path / "cluster.toml")
    assert run("generate", str(tmp_path / "cluster.toml"))[0] == 0
    return tmp_path


def test_add_machine_keeps_comments_and_regenerates(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    code, out, err = run(
        "add-machine", "fe3", "--role", "frontend", "--address", "203.0.113.12", "--private-address", "10.0.0.12",
        "--cluster", str(toml),
    )  # fmt: skip
    assert code == 0, err
    assert toml.read_text() == (GOLDEN / "small-add-fe3.toml").read_text()
    assert "# no public address: reached over the private network" in toml.read_text()
    assert "added: " in out and "hosts/fe3/default.nix" in out
    assert (workdir / "hosts" / "fe3" / "default.nix").is_file()
    assert "fe3" in (workdir / "hosts" / "fe2" / "default.nix").read_text(), "fe2 now falls back to fe3's lemmy-ui"


def test_remove_machine_keeps_the_rest_of_the_file(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    toml.write_text((GOLDEN / "small-add-fe3.toml").read_text())
    code, out, err = run("remove-machine", "fe2", "--cluster", str(toml))
    assert code == 0, err
    assert "removed: " in out and "hosts/fe2/default.nix" in out
    assert toml.read_text() == (GOLDEN / "small-add-fe3-remove-fe2.toml").read_text()
    assert not (workdir / "hosts" / "fe2").exists()
    assert "fe2" not in load(toml).machines


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("app1", "app1 is the only backend: add another machine with role 'backend'"),
        ("nope", "no machine named 'nope'"),
    ],
)
def test_remove_refusals_change_nothing(workdir: Path, machine: str, expected: str) -> None:
    before = snapshot(workdir)
    code, out, err = run("remove-machine", machine, "--cluster", str(workdir / "cluster.toml"))
    assert code == 1
    assert out == ""
    assert expected in err, err
    assert snapshot(workdir) == before


def test_remove_the_primary_with_manual_failover_refused(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    toml.write_text(toml.read_text().replace("[postgres]\n", '[postgres]\nfailover = "manual"\n', 1))
    assert run("generate", str(toml))[0] == 0
    before = snapshot(workdir)
    code, out, err = run("remove-machine", "db1", "--cluster", str(toml))
    assert (code, out) == (1, "")
    assert (
        "db1 is the PostgreSQL primary: removing it would lose the database; "
        "promote a replica first (`synth promote db2`)"
    ) in err
    assert snapshot(workdir) == before


def test_remove_last_frontend_refused(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "single.toml", tmp_path / "cluster.toml")
    code, _, err = run("remove-machine", "lemmy1", "--cluster", str(tmp_path / "cluster.toml"))
    assert code == 1
    assert "lemmy1 is the PostgreSQL primary" in err
    assert "lemmy1 is the only frontend" in err


def test_add_invalid_machine_changes_nothing(workdir: Path) -> None:
    before = snapshot(workdir)
    code, _, err = run(
        "add-machine",
        "fe3",
        "--role",
        "fronted",
        "--address",
        "203.0.113.10",
        "--cluster",
        str(workdir / "cluster.toml"),
    )
    assert code == 1
    assert "was not changed: the result would be invalid" in err
    assert "machines.fe3.roles[0]: unknown role 'fronted'; did you mean 'frontend'?" in err
    assert "machines.fe3.address: 203.0.113.10 is already the address of machine 'fe1'" in err
    assert snapshot(workdir) == before


def test_add_existing_name_refused(workdir: Path) -> None:
    code, _, err = run(
        "add-machine",
        "fe1",
        "--role",
        "frontend",
        "--address",
        "198.51.100.1",
        "--cluster",
        str(workdir / "cluster.toml"),
    )
    assert code == 1
    assert "machines.fe1: a machine of that name exists already" in err


def test_plan_shows_diffs_and_order(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    toml.write_text(toml.read_text().replace("version = 17", "version = 18"))
    code, out, _ = run("plan", str(toml))
    assert code == 3, "something would change"
    assert "== changed: hosts/db1/default.nix" in out
    assert "-        majorVersion = 17;\n+        majorVersion = 18;" in out
    assert "  1. postgres-primary: db1\n  2. postgres-replicas: db2" in out
    assert "fe1" not in out.split("deploy in this order")[1], "unchanged machines are not redeployed"
    assert (
        toml.read_text().count("version = 18") == 1
        and (workdir / "hosts/db1/default.nix").read_text().count("17;") == 1
    ), "plan writes nothing"


def test_plan_json_after_adding_a_frontend(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    toml.write_text(
        toml.read_text()
        + '\n[machines.fe3]\naddress = "203.0.113.12"\nprivate_address = "10.0.0.12"\nroles = ["frontend"]\n'
    )
    code, out, _ = run("plan", str(toml), "--json")
    assert code == 3
    data = json.loads(out)
    statuses = {f["path"]: f["status"] for f in data["files"]}
    assert statuses["hosts/fe3/default.nix"] == "added"
    assert statuses["hosts/app1/default.nix"] == "changed", "the backend admits fe3 through its firewall"
    assert set(data["redeploy"]) == {"fe1", "fe2", "fe3", "app1"}
    # fe1 is an etcd member (small.toml's third): deployed in the etcd stage, alone.
    assert data["batches"][0] == {"stage": "etcd", "machines": ["fe1"]}
    assert data["batches"][1] == {"stage": "pictrs", "machines": ["app1"]}
    assert [b["stage"] for b in data["batches"][2:]] == ["frontends", "frontends"]


def test_plan_no_changes(workdir: Path) -> None:
    code, out, _ = run("plan", str(workdir / "cluster.toml"))
    assert code == 0
    assert out.startswith("No changes")


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("fe1", "machines.fe1: fe1 has no postgres role: only a replica can be promoted"),
        ("db7", "machines.db7: no machine named 'db7'"),
    ],
)
def test_promote_refusals(workdir: Path, machine: str, expected: str) -> None:
    before = snapshot(workdir)
    code, _, err = run("promote", machine, "--cluster", str(workdir / "cluster.toml"))
    assert code == 1
    assert expected in err, err
    assert snapshot(workdir) == before


def test_promote_the_primary_with_manual_failover_is_nothing_to_do(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    toml.write_text(toml.read_text().replace("[postgres]\n", '[postgres]\nfailover = "manual"\n', 1))
    assert run("generate", str(toml))[0] == 0
    before = snapshot(workdir)
    code, out, err = run("promote", "db1", "--cluster", str(toml))
    assert (code, err) == (0, "")
    assert "db1 is already the primary; nothing to do." in out
    assert snapshot(workdir) == before


def test_promote_refuses_an_unreachable_replica(workdir: Path) -> None:
    """synth promote asks the replica over ssh first (skipped where there is no ssh, as in the Nix
    sandbox of the flake's synth-tests check). ssh is sent to loopback, port 1 (HostName, Port):
    nothing listens there, so the connection is refused at once."""
    require_tool("ssh")
    toml = workdir / "cluster.toml"
    before = snapshot(workdir)
    # Under Patroni: the switchover command on db2 cannot even be reached.
    code, _, err = run(
        "promote", "db2", "--cluster", str(toml), "-o", "ConnectTimeout=1", "-o", "HostName=127.0.0.1", "-o", "Port=1"
    )
    assert code == 1
    assert "the switchover to db2 did not happen" in err and "nothing was changed" in err, err
    assert snapshot(workdir) == before
    # With manual failover: its state cannot be checked.
    toml.write_text(toml.read_text().replace("[postgres]\n", '[postgres]\nfailover = "manual"\n', 1))
    before = snapshot(workdir)
    code, _, err = run("promote", "db2", "--cluster", str(toml), "-o", "ConnectTimeout=1", "-o", "Port=1")
    assert code == 1
    assert "db2 is not a healthy replica" in err and "nothing was changed" in err, err
    assert snapshot(workdir) == before


def test_plan_since_git_revision(workdir: Path) -> None:
    import subprocess

    from tests.conftest import require_tool

    require_tool("git")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=workdir, check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "empty")
    git("add", "-A")
    git("-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-q", "-m", "cluster")
    toml = workdir / "cluster.toml"
    code, _, err = run("add-machine", "db3", "--role", "postgres", "--address", "10.0.0.32", "--cluster", str(toml))
    assert code == 0, err
    code, out, _ = run("plan", str(toml))
    assert out.startswith("No changes: hosts/ matches"), "add-machine regenerated hosts/ already"
    code, out, _ = run("plan", str(toml), "--since", "HEAD", "--json")
    assert code == 3
    data = json.loads(out)
    assert {f["path"]: f["status"] for f in data["files"]}["hosts/db3/default.nix"] == "added"
    # fe1 is an etcd member (its client port opens to db3); add-machine kept it one, recording
    # the members, instead of letting the new postgres machine take its place.
    assert data["redeploy"] == ["fe1", "app1", "db1", "db2", "db3"]
    assert [b["stage"] for b in data["batches"]] == [
        "postgres-primary",
        "postgres-replicas",
        "postgres-replicas",
        "etcd",
        "pictrs",
    ]
    assert 'members = ["db1", "db2", "fe1"]' in toml.read_text()
    code, _, err = run("plan", str(toml), "--since", "no-such-rev")
    assert code == 1 and "--since: cannot read no-such-rev with git" in err


def test_plan_since_with_the_cluster_in_a_subfolder_of_the_repository(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import require_tool

    require_tool("git")
    sub = tmp_path / "infra" / "lemmy"
    sub.mkdir(parents=True)
    shutil.copy(EXAMPLES / "small.toml", sub / "cluster.toml")
    assert run("generate", str(sub / "cluster.toml"))[0] == 0
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "-m", "cluster"], check=True)
    code, out, err = run("plan", str(sub / "cluster.toml"), "--since", "HEAD")
    assert code == 0, out + err
    assert out.startswith("No changes: hosts/ at HEAD matches the cluster file")
    toml = sub / "cluster.toml"
    toml.write_text(toml.read_text().replace("version = 17", "version = 18"))
    assert run("generate", str(toml))[0] == 0
    code, out, _ = run("plan", str(toml), "--since", "HEAD", "--json")
    assert code == 3
    assert sorted(f["path"] for f in json.loads(out)["files"]) == ["hosts/db1/default.nix", "hosts/db2/default.nix"]


def test_validate_json(workdir: Path) -> None:
    code, out, _ = run("validate", str(workdir / "cluster.toml"), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["machines"]["app1"] == ["backend", "pictrs"]
    bad = workdir / "bad.toml"
    bad.write_text((workdir / "cluster.toml").read_text().replace('primary = "db1"', 'primary = "db9"'))
    code, out, err = run("validate", str(bad), "--json")
    assert code == 1 and err == ""
    data = json.loads(out)
    assert data["ok"] is False
    assert data["problems"][0]["file"] == str(bad) and data["problems"][0]["path"] == "postgres.primary"


def test_no_command_exits_2_for_anything_but_a_usage_error() -> None:
    """Exit code 2 is click's usage error: every command's own codes are documented as 0, 1, 3."""
    from tests.conftest import ROOT

    for path in (ROOT / "synth").rglob("*.py"):
        text = path.read_text()
        assert "sys.exit(2)" not in text and "EXIT_CHECK = 2" not in text, path
    code, _, err = run("deploy", "--no-such-option")
    assert code == 2 and "No such option" in err


def _add(toml: Path, name: str, address: str) -> tuple[int, str, str]:
    return run("add-machine", name, "--role", "frontend", "--address", address, "--cluster", str(toml))


def test_edits_keep_a_symlink_crlf_and_the_mode(workdir: Path) -> None:
    real = workdir / "real.toml"
    text = (workdir / "cluster.toml").read_text()
    real.write_bytes(text.replace("\n", "\r\n").encode())
    real.chmod(0o640)
    link = workdir / "cluster.toml"
    link.unlink()
    link.symlink_to(real.name)
    code, _, err = _add(link, "fe3", "203.0.113.12")
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real, "the link stays a link; its target was edited"
    raw = real.read_bytes()
    assert b"[machines.fe3]\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b""), "CRLF throughout"
    assert real.stat().st_mode & 0o777 == 0o640


def test_concurrent_add_machines_lose_no_update(workdir: Path) -> None:
    """Six add-machine processes at once: the lock serialises them, every machine is recorded."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    toml = workdir / "cluster.toml"
    toml.write_text(toml.read_text() + "\n[backend]\npool_size = 10\n")  # eight backends' pools fit
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "synth",
                "add-machine",
                f"app{i}",
                "--role",
                "backend",
                "--address",
                f"10.0.0.{50 + i}",
                "--cluster",
                str(toml),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3, 9)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    assert [err for _, err, rc in results if rc != 0] == []
    text = toml.read_text()
    for i in range(3, 9):
        assert f"[machines.app{i}]" in text
        assert (workdir / "hosts" / f"app{i}" / "default.nix").is_file()


def test_a_failure_after_the_cluster_file_was_written_says_what_state_things_are_in(workdir: Path) -> None:
    """hosts/ cannot be regenerated (a file of the admin's is where fe3's must go): the cluster
    file was updated all the same, and the message says so, what was not done, and what to run."""
    mine = workdir / "hosts" / "fe3" / "default.nix"
    mine.parent.mkdir(parents=True)
    mine.write_text("{ }\n")
    code, _, err = _add(workdir / "cluster.toml", "fe3", "203.0.113.12")
    assert code == 1
    assert "[machines.fe3]" in (workdir / "cluster.toml").read_text()
    assert "cluster.toml WAS updated, but" in err and "was not regenerated (nothing of it was changed)" in err
    assert "run `synth generate" in err and "exists and was not written by synth" in err
    assert mine.read_text() == "{ }\n"


def test_remove_machine_takes_its_own_comments_and_leaves_the_next_tables(workdir: Path) -> None:
    toml = workdir / "cluster.toml"
    text = toml.read_text()
    text = text.replace("[machines.fe2]", "# fe2: the second frontend, rack B.\n[machines.fe2]")
    text = text.replace("[machines.app1]", "# app1: the backend; keep it first.\n[machines.app1]")
    toml.write_text(text)
    assert run("generate", str(toml))[0] == 0
    code, _, err = run("remove-machine", "fe2", "--cluster", str(toml))
    assert code == 0, err
    after = toml.read_text()
    assert "rack B" not in after and "[machines.fe2]" not in after
    assert "\n\n# app1: the backend; keep it first.\n[machines.app1]" in after
