"""`synth diagram`: every cluster file of the repository drawn by Graphviz, and the drawing checked
for what makes a picture unreadable: labels on top of each other, text outside its box, arrows
through labels, machines out of file order."""

from __future__ import annotations

import itertools
import json
import subprocess
import xml.dom.minidom
from pathlib import Path
from typing import Any

import pytest

from synth import diagram as d
from synth.model import Cluster, load
from tests.conftest import EXAMPLES, ROOT, require_tool
from tests.test_cli import run

CLUSTER_FILES = [
    *sorted(EXAMPLES.glob("*.toml")),
    # The VM tests' clusters (nixos-tests/<scenario>/cluster.toml).
    *sorted((ROOT / "nixos-tests").glob("*/cluster.toml")),
    ROOT / "tests" / "golden" / "storage.toml",
    ROOT / "cluster.toml",
]
IDS = [p.relative_to(ROOT).as_posix() for p in CLUSTER_FILES]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in points, y up (dot's coordinates)


def cluster(path: Path) -> Cluster:
    return load(path, pending_node_ids=True)


def laid_out(c: Cluster) -> dict[str, Any]:
    require_tool("dot")
    data: dict[str, Any] = json.loads(d.render(c, "json"))
    return data


# --------------------------------------------------------------------------- reading dot's JSON


def texts(js: dict[str, Any]) -> list[tuple[str, str, Box]]:
    """Every text dot drew: (owner, text, box). The owner is a node's or group's name, "graph",
    or "edge <id>". The box spans the text's width and, vertically, its font's descent to ascent."""
    out: list[tuple[str, str, Box]] = []

    def read(owner: str, obj: dict[str, Any]) -> None:
        for key in ("_ldraw_", "_hldraw_", "_tldraw_"):
            size = 14.0
            for op in obj.get(key, []):
                if op["op"] == "F":
                    size = op["size"]
                elif op["op"] == "T":
                    x, y = op["pt"]
                    w = op["width"]
                    x0 = {"l": x, "c": x - w / 2, "r": x - w}[op["align"]]
                    out.append((owner, op["text"], (x0, y - 0.25 * size, x0 + w, y + 0.8 * size)))

    read("graph", js)
    for o in js.get("objects", []):
        read(o["name"], o)
    for e in js.get("edges", []):
        read(f"edge {e['_gvid']}", e)
    return out


def node_boxes(js: dict[str, Any]) -> dict[str, Box]:
    boxes = {}
    for o in js.get("objects", []):
        if "pos" in o:  # nodes have a position; groups (clusters) have a bb
            x, y = map(float, o["pos"].split(","))
            w, h = float(o["width"]) * 72, float(o["height"]) * 72
            boxes[o["name"]] = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
    return boxes


def edge_points(e: dict[str, Any]) -> list[tuple[float, float]]:
    """Points along the drawn curve of edge E (its cubic Bézier segments, sampled)."""
    pts = []
    for op in e.get("_draw_", []):
        if op["op"] != "b":
            continue
        ps = op["points"]
        for i in range(0, len(ps) - 3, 3):
            (x0, y0), (x1, y1), (x2, y2), (x3, y3) = ps[i : i + 4]
            for k in range(21):
                t = k / 20
                a, b, c_, d_ = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t**3
                pts.append((a * x0 + b * x1 + c_ * x2 + d_ * x3, a * y0 + b * y1 + c_ * y2 + d_ * y3))
    return pts


def overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inside(inner: Box, outer: Box) -> bool:
    return outer[0] <= inner[0] and inner[2] <= outer[2] and outer[1] <= inner[1] and inner[3] <= outer[3]


def readability_problems(js: dict[str, Any], *, lines: bool = True) -> list[str]:
    """What makes the picture hard to read, one line each; empty when it is clean."""
    ts = texts(js)
    nodes = node_boxes(js)
    problems = [
        f"labels overlap: {a[1]!r} ({a[0]}) and {b[1]!r} ({b[0]})"
        for a, b in itertools.combinations(ts, 2)
        if overlap(a[2], b[2])
    ]
    problems += [
        f"boxes overlap: {a} and {b}" for a, b in itertools.combinations(nodes, 2) if overlap(nodes[a], nodes[b])
    ]
    for owner, text, box in ts:
        if owner in nodes:
            if not inside(box, nodes[owner]):
                problems.append(f"{text!r} runs out of the box of {owner}")
        else:
            problems += [f"{text!r} ({owner}) lies on the box of {n}" for n, nb in nodes.items() if overlap(box, nb)]
    if lines:
        free = [(owner, text, box) for owner, text, box in ts if owner not in nodes]
        for e in js.get("edges", []):
            me = f"edge {e['_gvid']}"
            for owner, text, (x0, y0, x1, y1) in free:
                if owner != me and any(x0 + 1 < x < x1 - 1 and y0 + 1 < y < y1 - 1 for x, y in edge_points(e)):
                    problems.append(f"an arrow ({me}) runs through the label {text!r} ({owner})")
    return problems


# --------------------------------------------------------------------------- the checks themselves


def test_readability_check_catches_overlaps_and_overflow() -> None:
    """The check must fail on a picture that is hard to read, or it proves nothing."""
    dot = require_tool("dot")
    crowded = """digraph {
      a [label="a long label", pos="0,0!"]; b [label="another long label", pos="20,0!"];
      c [label="this text does not fit in its box", fixedsize=true, width=0.4, pos="0,200!"];
    }"""
    out = subprocess.run([dot, "-Kneato", "-n", "-Tjson"], input=crowded, capture_output=True, text=True, check=True)
    problems = readability_problems(json.loads(out.stdout))
    assert any(p.startswith("labels overlap: 'a long label'") for p in problems), problems
    assert any("boxes overlap" in p for p in problems), problems
    assert "'this text does not fit in its box' runs out of the box of c" in problems, problems


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=IDS)
def test_every_cluster_file_is_drawn_readably(path: Path) -> None:
    c = cluster(path)
    js = laid_out(c)
    assert readability_problems(js) == []
    drawn = [t for _, t, _ in texts(js)]
    for name in c.machines:
        assert drawn.count(name) == 1, f"{name} must be drawn exactly once (got {drawn.count(name)})"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=IDS)
def test_every_cluster_file_gives_svg_and_png(path: Path) -> None:
    c = cluster(path)
    require_tool("dot")
    svg = d.render(c, "svg").decode()
    doc = xml.dom.minidom.parseString(svg)  # well-formed
    shown = {
        "".join(n.data for n in t.childNodes if n.nodeType == n.TEXT_NODE) for t in doc.getElementsByTagName("text")
    }
    assert set(c.machines) <= shown
    assert d.source_digest(d.dot_source(c)) in svg, "the SVG records the DOT text it was drawn from"
    png = d.render(c, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 400 and height > 150, (width, height)


def test_columns_keep_file_order() -> None:
    """Machines that nothing tells apart are stacked in file order, top to bottom."""
    for path in (EXAMPLES / "large.toml", EXAMPLES / "storage.toml"):
        c = cluster(path)
        nodes = node_boxes(laid_out(c))
        dr = d.drawing(c)
        for g in dr.groups:
            for column in d._columns(g, dr.arrows):
                tops = [nodes[d._node_id(m)][3] for m in column]
                assert tops == sorted(tops, reverse=True), f"{path.name}: {column} not top to bottom: {tops}"


# --------------------------------------------------------------------------- what is drawn (no dot)


def test_machines_with_the_same_roles_share_one_group() -> None:
    c = cluster(EXAMPLES / "storage.toml")
    assert [(g.title, g.machines) for g in d.groups(c)] == [
        ("frontend + backend + pict-rs", ("web1", "web2")),
        ("PostgreSQL", ("db1", "db2")),
        ("storage (Garage)", ("store1", "store2", "store3")),
    ]
    single = cluster(EXAMPLES / "single.toml")
    assert [(g.title, g.machines) for g in d.groups(single)] == [
        ("frontend + backend + pict-rs + PostgreSQL", ("lemmy1",))
    ]
    source = d.dot_source(single)
    assert source.count("subgraph cluster_") == 1, "no empty group: one machine, one box"
    assert "(primary)" not in source, "a primary is only worth saying with replicas"


def test_group_to_group_traffic_is_one_arrow() -> None:
    c = cluster(EXAMPLES / "large.toml")
    arrows = d.drawing(c).arrows
    visible = [(a.label, a.src, a.dst, a.tail_group, a.head_group) for a in arrows if a.visible]
    assert visible == [
        ("HTTPS", "clients", "edge2", None, "cluster_frontend"),
        ("API, ActivityPub", "edge2", "api1", "cluster_frontend", "cluster_backend"),
        ("images", "api1", "media1", "cluster_backend", "cluster_pictrs"),
        ("SQL", "api1", "db1", "cluster_backend", None),
        ("WAL streaming", "db1", "db2", None, None),
        ("WAL streaming", "db1", "db3", None, None),
        ("pict-rs repository", "media1", "db1", "cluster_pictrs", None),
    ]
    hidden = {(a.src, a.dst) for a in arrows if not a.visible}
    assert {("edge1", "api1"), ("edge4", "api2"), ("api2", "db1")} <= hidden, "the other pairs keep their ranks"
    # Every pair of machines that talk is either drawn or stands behind a drawn bundle.
    assert {(e.src, e.dst) for e in d.edges(c) if e.label != "lemmy-ui backup"} == {(a.src, a.dst) for a in arrows}


def test_traffic_inside_a_group_is_written_in_its_box() -> None:
    notes = d.drawing(cluster(EXAMPLES / "large.toml")).notes
    assert notes["cluster_frontend"] == [
        (
            "lemmy-ui backup",
            [
                "edge1 \u2192 edge2, edge3",
                "edge2 \u2192 edge3, edge4",
                "edge3 \u2192 edge4, edge1",
                "edge4 \u2192 edge1, edge2",
            ],
        )
    ]
    storage = d.drawing(cluster(EXAMPLES / "storage.toml")).notes["cluster_frontend_backend_pictrs"]
    assert storage == [
        ("API, ActivityPub", ["web1 \u2194 web2"]),
        ("lemmy-ui backup", ["web1 \u2194 web2"]),
        ("images", ["web1 \u2194 web2"]),
    ]


def test_dot_source_is_deterministic_and_escapes() -> None:
    c = cluster(EXAMPLES / "large.toml")
    assert d.dot_source(c) == d.dot_source(cluster(EXAMPLES / "large.toml"))
    assert d._quote('a "b" \\ c') == '"a \\"b\\" \\\\ c"'


# --------------------------------------------------------------------------- the README's pictures


@pytest.mark.parametrize("example", ["small", "large"])
def test_readme_pictures_are_current(example: str) -> None:
    picture = ROOT / "docs" / f"cluster-{example}.svg"
    digest = d.source_digest(d.dot_source(cluster(EXAMPLES / f"{example}.toml")))
    assert digest in picture.read_text(), (
        f"{picture} was drawn from another cluster or layout; regenerate it with "
        f"`synth diagram examples/{example}.toml -o docs/cluster-{example}.svg`"
    )
    assert f"docs/cluster-{example}.svg" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- the command


def test_diagram_command_formats(tmp_path: Path) -> None:
    code, out, _ = run("diagram", str(EXAMPLES / "small.toml"), "--format", "mermaid")
    assert code == 0 and out.startswith("flowchart LR\n")
    assert "m_app1 -->|SQL| m_db1" in out and "m_db1 -. WAL streaming .-> m_db2" in out
    code, out, _ = run("diagram", str(EXAMPLES / "small.toml"), "--format", "dot")
    assert code == 0 and out.startswith("digraph lemmy_cluster {\n") and "m_app1 -> m_db1" in out
    require_tool("dot")
    code, out, _ = run("diagram", str(EXAMPLES / "storage.toml"))  # node ids not recorded yet: still drawn
    assert code == 0 and "<svg" in out and ">store3<" in out
    code, out, _ = run("diagram", str(EXAMPLES / "large.toml"), "--format", "png", "-o", str(tmp_path / "l.png"))
    assert code == 0 and (tmp_path / "l.png").read_bytes().startswith(b"\x89PNG")


def test_diagram_without_graphviz_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = run("diagram", str(EXAMPLES / "small.toml"))
    assert code == 1
    assert "need Graphviz's `dot` (Debian/Ubuntu: apt install graphviz; Nix: pkgs.graphviz)" in err
    code, out, _ = run("diagram", str(EXAMPLES / "small.toml"), "--format", "mermaid")
    assert code == 0, "mermaid needs no program"
    code, out, _ = run("diagram", "--help")
    assert code == 0 and "Needs Graphviz's `dot` for svg and png" in out and "apt install" in out
