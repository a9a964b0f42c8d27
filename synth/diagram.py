"""`synth diagram`: a picture of the cluster (machines, roles, traffic and replication).

Mermaid text (GitHub renders it) and a self-contained SVG drawn here, so no renderer is needed;
PNG is converted from the SVG with cairosvg or rsvg-convert when one of them is installed.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from dataclasses import dataclass

from synth.model import Cluster
from synth.topology import plan, ui_backups

COLUMNS = ("clients", "frontends", "backend and pict-rs", "PostgreSQL")


def column_titles(c: Cluster) -> tuple[str, ...]:
    """COLUMNS, the last one naming the storage machines too when there are some."""
    return (*COLUMNS[:3], "PostgreSQL and storage") if c.machines_with("storage") else COLUMNS


ROLE_COLOURS = {
    "frontend": "#dbeafe",
    "backend": "#dcfce7",
    "pictrs": "#fef9c3",
    "postgres": "#fce7f3",
    "storage": "#ede9fe",
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str
    dashed: bool = False


def column_of(c: Cluster, name: str) -> int:
    roles = c.machines[name].roles
    if "frontend" in roles:
        return 1
    if "backend" in roles or "pictrs" in roles:
        return 2
    return 3


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
    return out


def _mid(name: str) -> str:
    return "m_" + name.replace("-", "_")


def mermaid(c: Cluster) -> str:
    plans = plan(c)
    lines = ["flowchart LR", '  clients(("clients"))']
    for col in (1, 2, 3):
        names = [m for m in c.machines if column_of(c, m) == col]
        if not names:
            continue
        lines.append(f'  subgraph col{col}["{column_titles(c)[col]}"]')
        for m in names:
            roles = ", ".join(c.machines[m].roles)
            extra = " (primary)" if m == c.postgres.primary else ""
            lines.append(f'    {_mid(m)}["<b>{m}</b>{extra}<br/>{roles}<br/>{plans[m].private_address}"]')
        lines.append("  end")
    for e in edges(c):
        src = "clients" if e.src == "clients" else _mid(e.src)
        arrow = f"-. {e.label} .->" if e.dashed else f"-->|{e.label}|"
        lines.append(f"  {src} {arrow} {_mid(e.dst)}")
    return "\n".join(lines) + "\n"


def svg(c: Cluster) -> str:
    plans = plan(c)
    box_w, box_h, col_w, row_h, top = 170, 64, 290, 90, 60
    cols: dict[int, list[str]] = {0: ["clients"], 1: [], 2: [], 3: []}
    for m in c.machines:
        cols[column_of(c, m)].append(m)
    rows = max(len(v) for v in cols.values())
    width = col_w * 3 + box_w + 140
    height = top + rows * row_h + 20
    pos: dict[str, tuple[float, float]] = {}
    for col, names in cols.items():
        offset = (rows - len(names)) * row_h / 2
        for i, m in enumerate(names):
            pos[m] = (20 + col * col_w, top + offset + i * row_h)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="20" y="24" font-size="15" font-weight="bold">lemmy-cluster {html.escape(c.cluster.name)}: '
        f"{html.escape(c.cluster.domain)}</text>",
    ]
    for col, title in enumerate(column_titles(c)):
        out.append(f'<text x="{20 + col * col_w}" y="46" fill="#666">{html.escape(title)}</text>')
    drawn: list[tuple[Edge, bool]] = []  # (edge, both directions)
    for e in edges(c):
        back = next((i for i, (o, _) in enumerate(drawn) if (o.src, o.dst, o.label) == (e.dst, e.src, e.label)), None)
        if back is None:
            drawn.append((e, False))
        else:
            drawn[back] = (drawn[back][0], True)
    halo = 'font-style="italic"'
    for e, both in drawn:
        (x1, y1), (x2, y2) = pos[e.src], pos[e.dst]
        if x1 == x2:  # same column: a curve beside the boxes (left, or right in the last column)
            side = box_w if x1 >= 20 + 3 * col_w else 0
            bulge = 50 if side else -50
            sx, sy, ex, ey = x1 + side, y1 + box_h / 2, x2 + side, y2 + box_h / 2
            d = f"M {sx} {sy} C {sx + bulge} {sy}, {ex + bulge} {ey}, {ex} {ey}"
            # Label in the gap between the two boxes (left curves) or beyond the curve (right).
            lx, ly, anchor = (sx + bulge * 0.8 if side else sx + 6), (sy + ey) / 2 + 4, "start"
        else:
            sx, sy, ex, ey = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
            d = f"M {sx} {sy} L {ex} {ey}"
            lx, ly, anchor = sx + (ex - sx) * 0.45, sy + (ey - sy) * 0.45 - 5, "middle"
        dash = ' stroke-dasharray="5 4"' if e.dashed else ""
        start = ' marker-start="url(#arrow)"' if both else ""
        out.append(f'<path d="{d}" fill="none" stroke="#555"{dash}{start} marker-end="url(#arrow)"/>')
        out.append(
            f'<text x="{lx}" y="{ly}" font-size="10" fill="#333" text-anchor="{anchor}" {halo}>'
            f"{html.escape(e.label)}</text>"
        )
    for name, (x, y) in pos.items():
        if name == "clients":
            cx, cy = x + box_w / 2, y + box_h / 2
            out.append(f'<ellipse cx="{cx}" cy="{cy}" rx="{box_w / 2}" ry="{box_h / 2}" fill="#f3f4f6" stroke="#333"/>')
            out.append(f'<text x="{cx}" y="{cy + 4}" text-anchor="middle">clients, other instances</text>')
            continue
        roles = c.machines[name].roles
        fill = ROLE_COLOURS[roles[0]]
        title = name + (" (primary)" if name == c.postgres.primary else "")
        out.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="8" fill="{fill}" stroke="#333"/>')
        out.append(f'<text x="{x + 10}" y="{y + 20}" font-weight="bold">{html.escape(title)}</text>')
        out.append(f'<text x="{x + 10}" y="{y + 38}">{html.escape(", ".join(roles))}</text>')
        out.append(f'<text x="{x + 10}" y="{y + 54}" fill="#555">{html.escape(plans[name].private_address)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def png(svg_text: str) -> bytes:
    """SVG → PNG with cairosvg or rsvg-convert; a clear error when neither is installed."""
    try:
        import cairosvg  # type: ignore[import-not-found,import-untyped,unused-ignore]

        data: bytes = cairosvg.svg2png(bytestring=svg_text.encode())
        return data
    except ImportError:
        pass
    exe = shutil.which("rsvg-convert")
    if exe is None:
        raise RuntimeError(
            "PNG output needs cairosvg (pip install cairosvg) or rsvg-convert (Debian: librsvg2-bin); "
            "--format svg and --format mermaid need nothing"
        )
    return subprocess.run([exe, "--format", "png"], input=svg_text.encode(), capture_output=True, check=True).stdout
