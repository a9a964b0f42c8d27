#!/usr/bin/env python3
"""lemmy-cluster's measured figures: prints a table and writes bench-results.json.

Targets (from the issues) are printed next to each figure; nothing here asserts them: a benchmark
measures, the tests check behaviour.

    python scripts/bench.py [--only synth|frontend|postgres|patroni|mesh] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Row = tuple[str, str, str]  # figure, value, target


def big_cluster_toml(n: int) -> str:
    """A valid cluster of N machines: frontends, one backend, one pict-rs, three PostgreSQL."""
    lines = [
        "[cluster]",
        'name = "bench"',
        'domain = "lemmy.example.org"',
        'admin_email = "admin@example.org"',
        'tls = "none"  # a cluster this size sits behind a TLS-terminating load balancer',
        "",
        "[postgres]",
        'primary = "db1"',
        "version = 17",
        "",
    ]

    def machine(name: str, i: int, roles: str) -> None:
        address = f"10.{i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"
        lines.extend([f"[machines.{name}]", f'address = "{address}"', f"roles = {roles}", ""])

    machine("app1", 0, '["backend"]')
    machine("media1", 1, '["pictrs"]')
    for k in range(3):
        machine(f"db{k + 1}", 2 + k, '["postgres"]')
    for k in range(n - 5):
        machine(f"fe{k + 1}", 5 + k, '["frontend"]')
    return "\n".join(lines)


def timing(best: float, median: float, unit: str = "s") -> str:
    if unit == "ms":
        return f"{best * 1000:.0f} ms best, {median * 1000:.0f} ms median"
    return f"{best:.3f} s best, {median:.3f} s median"


def best_of(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(best, median) wall time in seconds over RUNS calls."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def bench_synth(results: dict[str, Any]) -> list[Row]:
    from synth import generate
    from synth.model import parse
    from synth.render import render_files

    rows: list[Row] = []
    synth = ROOT / ".venv" / "bin" / "synth"
    exe = [str(synth)] if synth.exists() else [sys.executable, "-m", "synth"]

    best, median = best_of(10, lambda: subprocess.run([*exe, "--help"], capture_output=True, check=True))
    results["synth_help_s"] = {"best": best, "median": median}
    rows.append(("synth --help (process start to exit)", timing(best, median, "ms"), "< 300 ms"))

    text = big_cluster_toml(1000)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def in_process() -> None:
            c = parse(text, "bench.toml")
            files = render_files(c, "bench.toml")
            generate.apply(out, files, generate.diff(out, files, "bench.toml"))

        best, median = best_of(5, in_process)
        results["generate_1000_in_process_s"] = {"best": best, "median": median}
        rows.append(("validate + generate 1,000 machines (in process)", timing(best, median), "< 1 s"))

        toml = out / "cluster.toml"
        toml.write_text(text)

        runs = iter(range(100))

        def cli_fresh() -> None:
            target = out / f"run{next(runs)}"  # a new folder each time: nothing to compare against
            subprocess.run([*exe, "generate", str(toml), "--out", str(target)], capture_output=True, check=True)

        best, median = best_of(5, cli_fresh)
        results["generate_1000_cli_s"] = {"best": best, "median": median}
        rows.append(("synth generate 1,000 machines (CLI, new hosts/)", timing(best, median), "< 1 s"))

        def cli_again() -> None:
            subprocess.run([*exe, "generate", str(toml), "--out", str(out / "run0")], capture_output=True, check=True)

        best, median = best_of(5, cli_again)
        results["regenerate_1000_cli_s"] = {"best": best, "median": median}
        rows.append(("synth generate 1,000 machines (CLI, nothing changed)", timing(best, median), "< 1 s"))
    return rows


SECTIONS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {"synth": bench_synth}


def load_live_sections() -> None:
    """The live figures need root, namespaces, nginx and PostgreSQL (see tests/live); the
    failover figures also etcd, HAProxy and Patroni (tests/live/bench_patroni.py), the mesh's
    wireguard-go (tests/live/bench_mesh.py), the backups' pgBackRest (tests/live/bench_backup.py)."""
    try:
        from tests.live import bench_live  # type: ignore[attr-defined]
    except ImportError:
        return
    SECTIONS.update(bench_live.SECTIONS)
    try:
        from tests.live import bench_mesh  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        SECTIONS.update(bench_mesh.SECTIONS)
    try:
        from tests.live import bench_backup  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        SECTIONS.update(bench_backup.SECTIONS)
    try:
        from tests.live import bench_patroni  # type: ignore[attr-defined]
    except ImportError:
        return
    SECTIONS.update(bench_patroni.SECTIONS)


def main() -> int:
    load_live_sections()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(SECTIONS), action="append")
    ap.add_argument("--json", default=str(ROOT / "bench-results.json"))
    args = ap.parse_args()

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }
    table: list[tuple[str, Row]] = []
    for name in args.only or list(SECTIONS):
        try:
            rows = SECTIONS[name](results)
        except Exception as exc:  # a section that cannot run here says why and the rest go on
            rows = [(f"{name}: not measured", f"{type(exc).__name__}: {exc}", "")]
        table.extend((name, row) for row in rows)

    width = max(len(r[0]) for _, r in table)
    vwidth = max(len(r[1]) for _, r in table)
    machine = results["machine"]
    print(f"lemmy-cluster figures, {results['date']}, {machine['platform']}, {machine['cpus']} CPUs")
    print()
    print(f"{'figure'.ljust(width)}  {'measured'.ljust(vwidth)}  target")
    print(f"{'-' * width}  {'-' * vwidth}  ------")
    for _, (fig, value, target) in table:
        print(f"{fig.ljust(width)}  {value.ljust(vwidth)}  {target}")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
