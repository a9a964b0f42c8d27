"""A write load for the live tests: one client committing numbered rows as fast as it can.

    python -m tests.live.writeload --dsn DSN --out FILE [--table lc_writes] [--run NAME] [--pause 0.005]

Runs inside a test host's namespace (as a backend or pict-rs would), with libpq (psycopg) and the
connection string it is given: a multi-host string with target_session_attrs=read-write, as the
Lemmy backends get, or pict-rs's single URL through its local HAProxy. Each INSERT is its own
transaction; a row is *acknowledged* when its COMMIT returned. Every attempt is one line of FILE:

    <n> <unix time> ok             the row was acknowledged
    <n> <unix time> err <message>  the statement failed (the row may or may not exist)

On an error the client drops the connection and connects again (the string's hosts in order),
without pause beyond `connect_timeout`, like a connection pool creating a new connection. Stops on
SIGTERM. The tests read FILE (`read_log`) for acknowledged rows and the gaps between them.

With --run NAME the rows are (NAME, n) in a table keyed by both (`run text, n bigint`), so that
clients started one after another never collide on a number another one wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOP = False


def _stop(*_: Any) -> None:
    global STOP
    STOP = True


def run(dsn: str, out: Path, table: str, pause: float, run_name: str | None = None) -> None:
    import psycopg  # only in the namespace process

    signal.signal(signal.SIGTERM, _stop)
    n = 0
    conn: Any = None
    with out.open("a", buffering=1) as log:
        while not STOP:
            n += 1
            try:
                if conn is None:
                    conn = psycopg.connect(dsn, autocommit=True)
                if run_name is None:
                    conn.execute(f"INSERT INTO {table} (n) VALUES (%s)", (n,))
                else:
                    conn.execute(f"INSERT INTO {table} (run, n) VALUES (%s, %s)", (run_name, n))
                log.write(f"{n} {time.time():.4f} ok\n")
            except psycopg.Error as exc:
                msg = " ".join(str(exc).split())[:200]
                log.write(f"{n} {time.time():.4f} err {msg}\n")
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
                time.sleep(0.05)
            if pause:
                time.sleep(pause)


@dataclass
class Attempt:
    n: int
    at: float
    ok: bool
    error: str = ""


def read_log(path: Path) -> list[Attempt]:
    attempts: list[Attempt] = []
    if not path.exists():
        return attempts  # the client has not started yet
    for line in path.read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue  # a line cut short by the stop
        attempts.append(Attempt(int(parts[0]), float(parts[1]), parts[2] == "ok", parts[3] if len(parts) > 3 else ""))
    return attempts


def acknowledged(attempts: list[Attempt]) -> list[int]:
    return [a.n for a in attempts if a.ok]


def first_ack_after(attempts: list[Attempt], t: float) -> float | None:
    """When the first write acknowledged after time T was acknowledged (None: none was)."""
    return next((a.at for a in attempts if a.ok and a.at > t), None)


def longest_pause(attempts: list[Attempt], after: float) -> float:
    """The longest time between two acknowledged writes, among those acknowledged after AFTER
    (the first of them counted from the last one before AFTER)."""
    oks = [a.at for a in attempts if a.ok]
    before = [t for t in oks if t <= after]
    times = ([before[-1]] if before else []) + [t for t in oks if t > after]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--table", default="lc_writes")
    ap.add_argument("--pause", default=0.005, type=float)
    ap.add_argument("--run", default=None)
    a = ap.parse_args(argv)
    run(a.dsn, a.out, a.table, a.pause, a.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
