"""Deployment order: data first, frontends last and never all at once."""

from __future__ import annotations

import pytest

from synth.model import load, parse
from synth.order import batches, half_batch_size
from tests.conftest import EXAMPLES


def flat(c_name: str, only: list[str] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    return [(b.stage, b.machines) for b in batches(load(EXAMPLES / f"{c_name}.toml"), only)]


def test_small_order() -> None:
    assert flat("small") == [
        ("postgres-primary", ("db1",)),
        ("postgres-replicas", ("db2",)),
        ("etcd", ("fe1",)),  # the third etcd member: before the machines that need the database
        ("pictrs", ("app1",)),  # app1 runs backend + pictrs: deployed in its earliest stage
        ("frontends", ("fe2",)),
    ]


def test_small_order_with_manual_failover() -> None:
    text = (EXAMPLES / "small.toml").read_text().replace("[postgres]\n", '[postgres]\nfailover = "manual"\n', 1)
    assert [(b.stage, b.machines) for b in batches(parse(text))] == [
        ("postgres-primary", ("db1",)),
        ("postgres-replicas", ("db2",)),
        ("pictrs", ("app1",)),
        ("frontends", ("fe1",)),
        ("frontends", ("fe2",)),
    ]


def test_large_order_batches_half_the_frontends() -> None:
    assert flat("large") == [
        ("postgres-primary", ("db1",)),
        ("postgres-replicas", ("db2",)),
        ("postgres-replicas", ("db3",)),
        ("pictrs", ("media1",)),
        ("pictrs", ("media2",)),
        ("backend", ("api1",)),
        ("backend", ("api2",)),
        ("frontends", ("edge1", "edge2")),
        ("frontends", ("edge3", "edge4")),
    ]


def test_subset_keeps_cluster_wide_batch_size() -> None:
    assert flat("large", ["edge4", "edge1", "edge3"]) == [
        ("frontends", ("edge1", "edge3")),
        ("frontends", ("edge4",)),
    ]


def test_single_machine() -> None:
    assert flat("single") == [("postgres-primary", ("lemmy1",))]


def test_unknown_machine() -> None:
    with pytest.raises(KeyError, match="nope"):
        flat("small", ["nope"])


@pytest.mark.parametrize(("n", "size"), [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (9, 4)])
def test_batch_size_leaves_half_serving(n: int, size: int) -> None:
    assert half_batch_size(n) == size
    assert n == 1 or n - size >= 1, "at least one frontend keeps serving"
