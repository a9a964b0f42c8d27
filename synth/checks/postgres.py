"""Checks of the postgres role, through a testinfra Host (over SSH on real machines or test hosts).

Queries run as the database's OS user over the local socket (peer authentication, as on NixOS):
``runuser -u postgres -- psql -h <socket dir> -p <port>``. ``PsqlAccess`` says where psql and the
socket are; the defaults are NixOS's.

    host = testinfra.get_host("ssh://root@db1")
    results = check_postgres(host, role="primary", address="10.0.0.30", standbys=["db2"], slots=["db2"])
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from synth.checks import CheckResult


@dataclass(frozen=True)
class PsqlAccess:
    """How to reach the local server: psql's path, the socket directory, the port, the OS user."""

    psql: str = "psql"
    socket_dir: str = "/run/postgresql"
    port: int = 5432
    os_user: str = "postgres"


DEFAULT_ACCESS = PsqlAccess()
# Lag a healthy replica stays below on a quiet or lightly loaded cluster.
DEFAULT_MAX_LAG_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_LAG_SECONDS = 30.0


def query(host: Any, sql: str, access: PsqlAccess = DEFAULT_ACCESS) -> tuple[bool, str]:
    """Run SQL on HOST's local server; (ok, output) with output = stdout, or stderr on failure."""
    argv = ["runuser", "-u", access.os_user, "--", access.psql, "-XAtq", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", access.socket_dir, "-p", str(access.port), "-d", "postgres", "-c", sql]
    r = host.run(shlex.join(argv))
    if r.rc != 0:
        return False, (r.stderr or r.stdout or f"exit {r.rc}").strip()
    return True, str(r.stdout).strip()


def _rows(out: str) -> list[list[str]]:
    return [line.split("|") for line in out.splitlines() if line]


def check_running(host: Any, access: PsqlAccess = DEFAULT_ACCESS) -> list[CheckResult]:
    """The server answers on its local socket."""
    ok, out = query(host, "SELECT pg_postmaster_start_time()", access)
    detail = f"up since {out}" if ok else f"expected an answer on {access.socket_dir}:{access.port}, got: {out}"
    return [CheckResult("postgres: running", ok, detail)]


def check_listening(host: Any, address: str, port: int = 5432) -> list[CheckResult]:
    """PostgreSQL listens on the private ADDRESS (where backends and replicas connect)."""
    listening = bool(host.socket(f"tcp://{address}:{port}").is_listening)
    detail = f"expected a listening socket on {address}:{port}, got " + ("one" if listening else "none")
    return [CheckResult(f"postgres: listening on {address}:{port}", listening, detail)]


def check_role(host: Any, expected: str, access: PsqlAccess = DEFAULT_ACCESS) -> list[CheckResult]:
    """EXPECTED is 'primary' (accepts writes) or 'replica' (in recovery)."""
    if expected not in ("primary", "replica"):
        raise ValueError(f"role must be 'primary' or 'replica', got {expected!r}")
    ok, out = query(host, "SELECT pg_is_in_recovery()", access)
    if not ok:
        return [CheckResult(f"postgres: role {expected}", False, f"cannot query pg_is_in_recovery(): {out}")]
    got = "replica" if out == "t" else "primary" if out == "f" else f"unknown ({out!r})"
    return [CheckResult(f"postgres: role {expected}", got == expected, f"expected {expected}, got {got}")]


def check_replication(
    host: Any,
    standbys: Sequence[str],
    max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES,
    max_lag_seconds: float = DEFAULT_MAX_LAG_SECONDS,
    access: PsqlAccess = DEFAULT_ACCESS,
) -> list[CheckResult]:
    """On the primary: each of STANDBYS (application_name) streams, with replay lag below the limits."""
    sql = (
        "SELECT application_name, state, "
        "COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), -1)::bigint, "
        "COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8 "
        "FROM pg_stat_replication ORDER BY application_name"
    )
    ok, out = query(host, sql, access)
    if not ok:
        return [
            CheckResult(f"postgres: replication to {s}", False, f"cannot query pg_stat_replication: {out}")
            for s in standbys
        ]
    seen = {row[0]: row for row in _rows(out) if len(row) == 4}
    results = []
    for s in standbys:
        name = f"postgres: replication to {s}"
        row = seen.get(s)
        if row is None:
            results.append(
                CheckResult(name, False, f"expected a WAL sender for {s}, got only: {sorted(seen) or 'none'}")
            )
            continue
        _, state, lag_bytes_s, lag_s = row
        lag_bytes, lag_seconds = int(lag_bytes_s), float(lag_s)
        good = state == "streaming" and 0 <= lag_bytes <= max_lag_bytes and lag_seconds <= max_lag_seconds
        detail = (
            f"expected streaming with lag <= {max_lag_bytes} B and <= {max_lag_seconds} s, "
            f"got {state} with lag {lag_bytes} B, {lag_seconds:.3f} s"
        )
        results.append(CheckResult(name, good, detail))
    return results


def check_wal_receiver(
    host: Any,
    primary_address: str,
    max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES,
    max_lag_seconds: float = DEFAULT_MAX_LAG_SECONDS,
    access: PsqlAccess = DEFAULT_ACCESS,
) -> list[CheckResult]:
    """On a replica: the WAL receiver streams from PRIMARY_ADDRESS and replay keeps up.

    Lag in bytes: received but not yet replayed WAL. Lag in seconds: age of the last replayed
    transaction while WAL is still waiting to be replayed (0 when everything received is replayed,
    so an idle cluster is not reported as lagging).
    """
    sql = (
        "SELECT status, sender_host, "
        "pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint, "
        "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
        "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8 "
        "FROM pg_stat_wal_receiver"
    )
    name = f"postgres: streaming from {primary_address}"
    ok, out = query(host, sql, access)
    if not ok:
        return [CheckResult(name, False, f"cannot query pg_stat_wal_receiver: {out}")]
    rows = [r for r in _rows(out) if len(r) == 4]
    if not rows:
        return [CheckResult(name, False, f"expected a WAL receiver streaming from {primary_address}, got none")]
    status, sender, lag_bytes_s, lag_s = rows[0]
    lag_bytes, lag_seconds = int(lag_bytes_s), float(lag_s)
    good = (
        status == "streaming"
        and sender == primary_address
        and lag_bytes <= max_lag_bytes
        and lag_seconds <= max_lag_seconds
    )
    detail = (
        f"expected streaming from {primary_address} with lag <= {max_lag_bytes} B and <= {max_lag_seconds} s, "
        f"got {status} from {sender} with lag {lag_bytes} B, {lag_seconds:.3f} s"
    )
    return [CheckResult(name, good, detail)]


def check_slots(host: Any, slots: Sequence[str], access: PsqlAccess = DEFAULT_ACCESS) -> list[CheckResult]:
    """Each of SLOTS exists as a physical replication slot and is active (a replica uses it)."""
    ok, out = query(host, "SELECT slot_name, slot_type, active FROM pg_replication_slots ORDER BY slot_name", access)
    if not ok:
        return [CheckResult(f"postgres: slot {s}", False, f"cannot query pg_replication_slots: {out}") for s in slots]
    seen = {r[0]: r for r in _rows(out) if len(r) == 3}
    results = []
    for s in slots:
        row = seen.get(s)
        if row is None:
            detail = f"expected an active physical slot {s}, got no such slot (slots: {sorted(seen) or 'none'})"
            results.append(CheckResult(f"postgres: slot {s}", False, detail))
            continue
        good = row[1] == "physical" and row[2] == "t"
        got = f"{row[1]}, {'active' if row[2] == 't' else 'inactive'}"
        results.append(CheckResult(f"postgres: slot {s}", good, f"expected physical, active; got {got}"))
    return results


def check_postgres(
    host: Any,
    role: str,
    address: str,
    *,
    primary_address: str | None = None,
    standbys: Sequence[str] = (),
    slots: Sequence[str] = (),
    max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES,
    max_lag_seconds: float = DEFAULT_MAX_LAG_SECONDS,
    access: PsqlAccess = DEFAULT_ACCESS,
) -> list[CheckResult]:
    """Every check of one PostgreSQL machine.

    A primary: running, listening on ADDRESS, not in recovery, STANDBYS streaming, SLOTS active.
    A replica: running, listening, in recovery, streaming from PRIMARY_ADDRESS.
    """
    results = check_running(host, access)
    if not results[0].ok:
        return results
    results += check_listening(host, address, access.port)
    results += check_role(host, role, access)
    if role == "primary":
        results += check_replication(host, standbys, max_lag_bytes, max_lag_seconds, access)
        results += check_slots(host, slots, access)
    else:
        if primary_address is None:
            raise ValueError("a replica's checks need primary_address")
        results += check_wal_receiver(host, primary_address, max_lag_bytes, max_lag_seconds, access)
    return results
