"""`synth plan`'s database steps (synth/dbsteps.py) and the database side of remove-machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from synth.dbsteps import read_old_host
from tests.conftest import EXAMPLES, ROOT
from tests.test_cli import run

MANUAL = '[postgres]\nfailover = "manual"\n'


@pytest.fixture
def small(tmp_path: Path) -> Path:
    toml = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLES / "small.toml", toml)
    return toml


def generate(toml: Path) -> None:
    code, _, err = run("generate", str(toml))
    assert code == 0, err


def steps(toml: Path) -> list[str]:
    code, out, err = run("plan", str(toml), "--json")
    assert code in (0, 3), err  # 3: something would change
    result: list[str] = json.loads(out)["steps"]
    return result


def test_old_host_modules_are_read_back() -> None:
    golden = ROOT / "tests" / "golden"
    assert read_old_host((golden / "small/hosts/db2/default.nix").read_text()) == read_old_host(
        (golden / "small/hosts/db1/default.nix").read_text()
    )
    db1 = read_old_host((golden / "small/hosts/db1/default.nix").read_text())
    assert (db1.postgres, db1.etcd_members) == ("patroni", ("db1", "db2", "fe1"))
    fe2 = read_old_host((golden / "small/hosts/fe2/default.nix").read_text())
    assert (fe2.postgres, fe2.etcd_members) == (None, ())
    single = read_old_host((golden / "single/hosts/lemmy1/default.nix").read_text())
    assert (single.postgres, single.etcd_members) == ("primary", ())


def test_moving_from_manual_to_automatic_failover_says_who_takes_the_database_over(small: Path) -> None:
    small.write_text(small.read_text().replace("[postgres]\n", MANUAL, 1))
    generate(small)
    assert steps(small) == []
    small.write_text(small.read_text().replace(MANUAL, "[postgres]\n", 1))
    (step,) = steps(small)
    assert step.startswith("PostgreSQL moves to Patroni (automatic failover).")
    assert "on db1, [postgres] primary, Patroni takes the running database over as it is" in step
    assert "follows it with its own data" in step and "Until etcd has a quorum" in step


def test_an_etcd_member_replaced(small: Path) -> None:
    generate(small)
    small.write_text(small.read_text() + '\n[etcd]\nmembers = ["db1", "db2", "fe2"]\n')
    joined, left = steps(small)
    assert joined.startswith("etcd: fe2 joins the running etcd cluster on its first start by itself")
    assert "`etcdctl member add fe2`" in joined
    assert (
        left.startswith("etcd: fe1 leaves.")
        and "on a member that stays (db1): `lemmy-cluster-etcd-remove-member fe1`" in left
    )
    assert "synth decommission" not in left, "fe1 stays in the cluster: decommission is for machines that leave"


def test_no_steps_for_changes_that_do_not_touch_the_database(small: Path) -> None:
    generate(small)
    small.write_text(
        small.read_text()
        + '\n[machines.fe3]\naddress = "203.0.113.12"\nprivate_address = "10.0.0.12"\nroles = ["frontend"]\n'
    )
    assert steps(small) == []


def test_removing_a_patroni_member_and_the_primary(tmp_path: Path) -> None:
    toml = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLES / "large.toml", toml)
    generate(toml)
    code, out, err = run("remove-machine", "db1", "--cluster", str(toml))
    assert code == 0, err
    # db1 was [postgres] primary: under Patroni that only names the member the cluster came from.
    assert 'primary = "db2"' in toml.read_text()
    assert "[postgres] primary (the member the cluster was created from) is now db2." in out
    assert "if it leads, move the leadership first (`synth promote db2`)" in out
    # db1 was an etcd member; by synth's rule the next machine takes its place.
    assert "is an etcd member" in out and "`lemmy-cluster-etcd-remove-member db1` on db2" in out
    # The command that does these steps comes first; the manual steps stay as the way by hand.
    assert out.index("Next, before deploying: `synth decommission db1`") < out.index("if it leads, move the")
    from synth.dbsteps import database_steps
    from synth.model import load
    from synth.render import render_files

    old = render_files(load(EXAMPLES / "large.toml"), "cluster.toml")
    said = database_steps(load(toml), {rel: text for rel, text in old.items() if rel.startswith("hosts/")})
    pg, etcd = (s for s in said if s.startswith(("postgres: db1", "etcd: db1")))
    assert "Before deploying, `synth decommission db1` does what follows" in pg
    assert "`synth decommission db1` (again, if it ran before the deploy) does it over SSH" in etcd


def test_down_to_one_postgres_machine_leaves_patroni(small: Path) -> None:
    generate(small)
    code, out, err = run("remove-machine", "db2", "--cluster", str(small))
    assert code == 0, err
    assert "db1 is the one postgres machine left: PostgreSQL leaves Patroni (and etcd goes)" in out
    assert "`synth promote db1`" in out
