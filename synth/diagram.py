"""`synth diagram`: a picture of the cluster (machines, roles, traffic and replication).

The picture is laid out by Graphviz's `dot` (the system package `graphviz`): synth writes the
graph in the DOT language (`dot_source`, pure), and `dot` places the boxes, routes the arrows and
puts every label where it overlaps nothing (`render`, which runs it: SVG, PNG or JSON with the
positions). Mermaid text needs no program (GitHub renders it).

Machines with the same roles share a group (a box titled with those roles), so a machine that
combines roles is drawn once, in the group of its roles, and no group is ever empty. Where every
machine of one group talks to every machine of another in the same way (every frontend to every
backend), one arrow joins the two groups instead of one arrow per pair.
"""

from __future__ import annotations

import hashlib
import html
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from synth.model import ROLES, Cluster
from synth.topology import plan, ui_backups

ROLE_TITLES = {
    "frontend": "frontend",
    "backend": "backend",
    "pictrs": "pict-rs",
    "postgres": "PostgreSQL",
    "storage": "storage (Garage)",
    "backup": "backup (pgBackRest)",
}

# The role names in each machine's box (the group title says what storage runs).
CHIP_TITLES = ROLE_TITLES | {"storage": "storage", "backup": "backup"}

ROLE_COLOURS = {
    "frontend": "#dbeafe",
    "backend": "#dcfce7",
    "pictrs": "#fef9c3",
    "postgres": "#fce7f3",
    "storage": "#ede9fe",
    "backup": "#e5e7eb",
}

# Each kind of traffic has its colour (arrow and label alike).
EDGE_COLOURS = {
    "HTTPS": "#111827",
    "HTTP": "#111827",
    "API, ActivityPub": "#1d4ed8",
    "lemmy-ui backup": "#6b7280",
    "images": "#a16207",
    "SQL": "#be185d",
    "WAL streaming": "#be185d",
    "pict-rs repository": "#9d174d",
    "S3": "#6d28d9",
    "WAL archive, backups": "#374151",
}

FONT = "Helvetica,Arial,sans-serif"

# What `dot` is, for error messages and --help.
GRAPHVIZ_HINT = "Graphviz's `dot` (Debian/Ubuntu: apt install graphviz; Nix: pkgs.graphviz)"

# The formats `render` asks dot for.
DOT_FORMATS = ("svg", "png", "json")


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str
    dashed: bool = False


def edges(c: Cluster) -> list[Edge]:
    """Traffic and replication between machines (a machine's traffic to itself is not drawn)."""
    out: list[Edge] = []
    fronts = c.machines_with("frontend")
    backends = c.machines_with("backend")
    pictrs = c.machines_with("pictrs")
    out += [Edge("clients", f, "HTTPS" if c.cluster.tls != "none" else "HTTP") for f in fronts]
    out += [Edge(f, b, "API, ActivityPub") for f in fronts for b in backends if f != b]
    for f, backups in ui_backups(fronts).items():
        out += [Edge(f, p, "lemmy-ui backup", dashed=True) for p in backups]
    out += [Edge(b, p, "images") for b in backends for p in pictrs if b != p]
    primary = c.postgres.primary
    out += [Edge(b, primary, "SQL") for b in backends if b != primary]
    out += [Edge(primary, r, "WAL streaming", dashed=True) for r in c.machines_with("postgres") if r != primary]
    if c.pictrs.store == "object_storage":
        out += [Edge(p, primary, "pict-rs repository") for p in pictrs if p != primary]
        out += [Edge(p, s, "S3") for p in pictrs for s in c.machines_with("storage") if p != s]
    if c.backup is not None:
        # pgBackRest's repository host: every postgres machine archives to it (whichever leads).
        out += [
            Edge(p, b, "WAL archive, backups") for b in c.machines_with("backup") for p in c.machines_with("postgres")
        ]
    return out


@dataclass(frozen=True)
class Group:
    """The machines that have exactly these roles, in file order."""

    roles: tuple[str, ...]
    machines: tuple[str, ...]

    @property
    def title(self) -> str:
        return " + ".join(ROLE_TITLES[r] for r in self.roles)

    @property
    def ident(self) -> str:
        return "cluster_" + "_".join(self.roles)


def groups(c: Cluster) -> list[Group]:
    """Machines grouped by their set of roles; groups ordered by their first role (frontends
    first, storage last), then by their other roles."""
    by_roles: dict[tuple[str, ...], list[str]] = {}
    for name, m in c.machines.items():
        key = tuple(r for r in ROLES if r in m.roles)
        by_roles.setdefault(key, []).append(name)
    order = sorted(by_roles, key=lambda k: [ROLES.index(r) for r in k])
    return [Group(k, tuple(by_roles[k])) for k in order]


def _node_id(name: str) -> str:
    return "m_" + name.replace("-", "_")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(**kv: str | None) -> str:
    parts = []
    for key, value in kv.items():
        if value is None:
            continue
        # HTML-like labels are written <...>; everything else is a quoted string.
        parts.append(f"{key}={value}" if value.startswith("<") else f"{key}={_quote(value)}")
    return "[" + ", ".join(parts) + "]"


def _machine_label(c: Cluster, name: str, detail: Sequence[str], address: str) -> str:
    roles = [r for r in ROLES if r in c.machines[name].roles]
    esc = html.escape
    primary = name == c.postgres.primary and len(c.machines_with("postgres")) > 1
    head = f"<b>{esc(name)}</b>" + (" (primary)" if primary else "")
    chips = "".join(
        f'<td bgcolor="{ROLE_COLOURS[r]}" border="1" color="#9ca3af" style="rounded">{esc(CHIP_TITLES[r])}</td>'
        for r in roles
    )
    rows = [
        f'<tr><td colspan="{len(roles)}">{head}</td></tr>',
        f"<tr>{chips}</tr>",
        *(f'<tr><td colspan="{len(roles)}"><font point-size="10">{esc(d)}</font></td></tr>' for d in detail),
        f'<tr><td colspan="{len(roles)}"><font color="#4b5563">{esc(address)}</font></td></tr>',
    ]
    return '<<table border="0" cellborder="0" cellspacing="3" cellpadding="2">' + "".join(rows) + "</table>>"


def _details(c: Cluster) -> dict[str, list[str]]:
    """The per-machine facts worth a line in its box: which backend runs the scheduled tasks and
    which sends which federation shard."""
    out: dict[str, list[str]] = {}
    for name, hp in plan(c).items():
        lines: list[str] = []
        be = hp.backend
        if be is not None and len(c.machines_with("backend")) > 1:
            if be.scheduled_tasks:
                lines.append("scheduled tasks")
            if be.federation_sending != "off":
                how = " (own process)" if be.federation_sending == "dedicated" else ""
                lines.append(f"federation shard {be.federation_index}/{be.federation_count}{how}")
        out[name] = lines
    return out


@dataclass(frozen=True)
class Arrow:
    """One drawn arrow: between two machines, or (ltail/lhead) from or to a whole group."""

    src: str
    dst: str
    label: str
    dashed: bool = False
    tail_group: str | None = None
    head_group: str | None = None
    both_ways: bool = False
    # Invisible arrows stand for the other pairs of a bundle: they keep every member of the
    # groups in its rank and in file order.
    visible: bool = True


@dataclass(frozen=True)
class Drawing:
    groups: list[Group]
    arrows: list[Arrow]
    # Traffic between machines of the same group, written in the group's box: (label, lines).
    notes: dict[str, list[tuple[str, list[str]]]]


def drawing(c: Cluster) -> Drawing:
    """What the picture shows, before dot places it.

    Traffic of one kind from group A to group B is one arrow when every machine of A talks to
    every machine of B (a side with one machine counts as whole); otherwise one arrow per pair.
    Traffic inside a group is written in the group's box (arrows between the members of one
    column would cross each other and their labels), except PostgreSQL's WAL streaming, which
    reads best as arrows from the primary to its standbys.
    """
    gs = groups(c)
    group_of = {m: g for g in gs for m in g.machines}
    bundles: dict[tuple[str, bool, str, str], list[Edge]] = {}
    for e in edges(c):
        src_group = "clients" if e.src == "clients" else group_of[e.src].ident
        bundles.setdefault((e.label, e.dashed, src_group, group_of[e.dst].ident), []).append(e)
    members = {g.ident: set(g.machines) for g in gs} | {"clients": {"clients"}}
    arrows: list[Arrow] = []
    notes: dict[str, list[tuple[str, list[str]]]] = {g.ident: [] for g in gs}
    for (label, dashed, src_group, dst_group), es in bundles.items():
        srcs = list(dict.fromkeys(e.src for e in es))
        dsts = list(dict.fromkeys(e.dst for e in es))
        pairs = [(e.src, e.dst) for e in es]
        if src_group == dst_group and label != "WAL streaming":
            notes[src_group].append((label, _pair_lines(pairs)))
            continue
        complete = set(pairs) == {(s, d) for s in srcs for d in dsts}
        whole_src = len(srcs) == 1 or set(srcs) == members[src_group]
        whole_dst = len(dsts) == 1 or set(dsts) == members[dst_group]
        if src_group != dst_group and len(es) > 1 and complete and whole_src and whole_dst:
            tail, head = srcs[(len(srcs) - 1) // 2], dsts[(len(dsts) - 1) // 2]
            tail_group = src_group if len(srcs) > 1 else None
            head_group = dst_group if len(dsts) > 1 else None
            arrows += [
                Arrow(s, d, label, dashed, tail_group, head_group)
                if (s, d) == (tail, head)
                else Arrow(s, d, label, visible=False)
                for s, d in pairs
            ]
            continue
        drawn: list[tuple[str, str]] = []
        both: set[tuple[str, str]] = set()
        for s, d in pairs:
            if (d, s) in drawn:
                both.add((d, s))
            else:
                drawn.append((s, d))
        arrows += [Arrow(s, d, label, dashed, both_ways=(s, d) in both) for s, d in drawn]
    return Drawing(gs, arrows, notes)


def _pair_lines(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """PAIRS (src, dst) as lines: "a \u2194 b" when every pair goes both ways, else one line per
    source, "a \u2192 b, c"."""
    if all((d, s) in pairs for s, d in pairs):
        return [f"{s} \u2194 {d}" for s, d in pairs if s < d]
    by_src: dict[str, list[str]] = {}
    for s, d in pairs:
        by_src.setdefault(s, []).append(d)
    return [f"{s} \u2192 {', '.join(ds)}" for s, ds in by_src.items()]


def dot_source(c: Cluster) -> str:
    """The cluster as a Graphviz graph (deterministic: the same cluster gives the same text)."""
    plans = plan(c)
    details = _details(c)
    d = drawing(c)
    graph = _attrs(
        rankdir="LR",
        compound="true",
        # The last pass of crossing reduction would undo the file order of the columns below.
        remincross="false",
        newrank="true",
        nodesep="0.35",
        ranksep="0.9",
        fontname=FONT,
        fontsize="16",
        labelloc="t",
        labeljust="l",
        label=f"lemmy-cluster {c.cluster.name}: {c.cluster.domain}",
        pad="0.3",
    )
    node = _attrs(
        fontname=FONT,
        fontsize="12",
        shape="box",
        style="rounded,filled",
        fillcolor="white",
        color="#374151",
        margin="0.1,0.05",
    )
    edge = _attrs(fontname=FONT, fontsize="10", color="#4b5563", arrowsize="0.7")
    clients = _attrs(label="<clients,<br/>other instances>", shape="ellipse", style="filled", fillcolor="#f3f4f6")
    lines = ["digraph lemmy_cluster {", f"  graph {graph};", f"  node {node};", f"  edge {edge};"]
    lines.append(f"  clients {clients};")
    for g in d.groups:
        group = _attrs(
            label=_group_label(g, d.notes[g.ident]),
            style="rounded,filled",
            fillcolor="#f9fafb",
            color="#d1d5db",
            labeljust="l",
            margin="12",
        )
        lines.append(f"  subgraph {g.ident} {{")
        lines.append(f"    graph {group};")
        for m in g.machines:
            label = _machine_label(c, m, details[m], plans[m].private_address)
            lines.append(f"    {_node_id(m)} {_attrs(label=label)};")
        for column in _columns(g, d.arrows):
            # One column of the group, top to bottom in file order (dot would otherwise order
            # nodes that nothing tells apart as it likes). With rankdir=LR an edge between nodes
            # of one rank puts its tail below its head, hence the reversed chain.
            chain = " -> ".join(_node_id(m) for m in reversed(column))
            lines.append(f'    {{ rank=same; {chain} [style="invis"]; }}')
        lines.append("  }")
    for a in d.arrows:
        if not a.visible:
            lines.append(f'  {_ref(a.src)} -> {_ref(a.dst)} [style="invis"];')
            continue
        colour = EDGE_COLOURS.get(a.label, "#4b5563")
        attrs = _attrs(
            label=a.label,
            color=colour,
            fontcolor=colour,
            style="dashed" if a.dashed else None,
            ltail=a.tail_group,
            lhead=a.head_group,
            dir="both" if a.both_ways else None,
        )
        lines.append(f"  {_ref(a.src)} -> {_ref(a.dst)} {attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _columns(g: Group, arrows: Sequence[Arrow]) -> list[list[str]]:
    """G's members that dot should put in one column each: those an arrow from another member
    points at (PostgreSQL's standbys) and the others; only columns of two or more."""
    inner = {a.dst for a in arrows if a.visible and a.src in g.machines and a.dst in g.machines}
    columns = [[m for m in g.machines if m not in inner], [m for m in g.machines if m in inner]]
    return [col for col in columns if len(col) > 1]


def _group_label(g: Group, notes: Sequence[tuple[str, Sequence[str]]]) -> str:
    esc = html.escape
    rows = [f'<tr><td align="left"><font point-size="13" color="#374151">{esc(g.title)}</font></td></tr>']
    for label, pair_lines in notes:
        colour = EDGE_COLOURS.get(label, "#4b5563")
        rows.append(f'<tr><td align="left"><font point-size="10" color="{colour}">{esc(label)}:</font></td></tr>')
        rows += [
            f'<tr><td align="left"><font point-size="10" color="{colour}">  {esc(line)}</font></td></tr>'
            for line in pair_lines
        ]
    return '<<table border="0" cellborder="0" cellspacing="0" cellpadding="1">' + "".join(rows) + "</table>>"


def _ref(name: str) -> str:
    return "clients" if name == "clients" else _node_id(name)


def source_digest(source: str) -> str:
    """The sha256 of a DOT text, which every drawing made from it records (`with_digest`)."""
    return hashlib.sha256(source.encode()).hexdigest()


def with_digest(source: str) -> str:
    """SOURCE with its digest as the graph's comment, which dot copies into SVG output: a test
    can tell a stored picture from an outdated one without depending on dot's version."""
    comment = _quote(f"drawn by synth diagram from DOT text sha256 {source_digest(source)}")
    return source.replace("digraph lemmy_cluster {\n", f"digraph lemmy_cluster {{\n  comment={comment};\n", 1)


class GraphvizError(RuntimeError):
    """dot is not installed, or failed."""


def dot_program() -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizError(f"--format svg and png need {GRAPHVIZ_HINT}; --format dot and mermaid need nothing")
    return exe


def render(c: Cluster, fmt: str) -> bytes:
    """The picture of C in FMT (svg, png or json), laid out by dot."""
    if fmt not in DOT_FORMATS:
        raise ValueError(f"dot output format {fmt!r}: expected one of {', '.join(DOT_FORMATS)}")
    args = [dot_program(), f"-T{fmt}"]
    if fmt == "png":
        args.append("-Gdpi=144")  # sharp on high-density screens, and readable when scaled down
    r = subprocess.run(args, input=with_digest(dot_source(c)).encode(), capture_output=True, check=False)
    if r.returncode != 0:
        raise GraphvizError(f"dot failed (exit {r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def mermaid(c: Cluster) -> str:
    plans = plan(c)
    lines = ["flowchart LR", '  clients(("clients"))']
    for i, g in enumerate(groups(c), 1):
        lines.append(f'  subgraph g{i}["{g.title}"]')
        for m in g.machines:
            roles = ", ".join(ROLE_TITLES[r] for r in g.roles)
            extra = " (primary)" if m == c.postgres.primary else ""
            lines.append(f'    {_node_id(m)}["<b>{m}</b>{extra}<br/>{roles}<br/>{plans[m].private_address}"]')
        lines.append("  end")
    for e in edges(c):
        src = "clients" if e.src == "clients" else _node_id(e.src)
        arrow = f"-. {e.label} .->" if e.dashed else f"-->|{e.label}|"
        lines.append(f"  {src} {arrow} {_node_id(e.dst)}")
    return "\n".join(lines) + "\n"
