"""`synth verify`: run every machine's role checks over SSH and print one table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from synth.commands.common import CLUSTER_ARG, host_option, make_ssh_options, select, ssh_options, user_errors

if TYPE_CHECKING:
    from synth.checks import CheckResult
    from synth.model import Cluster
    from synth.remote import SshOptions
    from synth.topology import HostPlan


def role_checker(
    c: Cluster, plans: dict[str, HostPlan], opts: SshOptions, rollout: bool
) -> Callable[[str], list[CheckResult]]:
    """A function running the role checks of one machine over a fresh SSH connection (closed after)."""
    from synth.checks import CheckResult
    from synth.checks.roles import checks_for
    from synth.remote import login_problem, testinfra_host

    def check(name: str) -> list[CheckResult]:
        m = c.machines[name]
        host = testinfra_host(m.ssh_user, m.address, opts)
        why = login_problem(host)
        if why is not None:
            return [CheckResult("ssh login", False, f"{m.ssh_user}@{m.address}: {why}")]
        try:
            return checks_for(c, plans[name], host, rollout=rollout)
        except Exception as exc:  # the connection broke during the checks (ssh exit code 255)
            detail = getattr(exc.args[0], "stderr", "") if exc.args else ""
            return [CheckResult("checks could run", False, f"{type(exc).__name__}: {detail or exc}".strip())]

    return check


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    head = ("MACHINE", "CHECK", "RESULT", "DETAIL")
    w0 = max(len(head[0]), *(len(r[0]) for r in rows)) if rows else len(head[0])
    w1 = max(len(head[1]), *(len(r[1]) for r in rows)) if rows else len(head[1])
    w2 = len("RESULT")
    return [f"{a:<{w0}}  {b:<{w1}}  {r:<{w2}}  {d}".rstrip() for a, b, r, d in (head, *rows)]


@click.command("verify")
@CLUSTER_ARG
@host_option
@ssh_options
@click.option("--parallel", type=click.IntRange(min=1), default=8, show_default=True, help="Machines at once.")
@click.option("--json", "as_json", is_flag=True, help="Print every check's result as JSON on stdout.")
@user_errors
def verify(
    cluster_file: Path,
    hosts: tuple[str, ...],
    ssh_option: tuple[str, ...],
    identity: Path | None,
    parallel: int,
    as_json: bool,
) -> None:
    """Run the role checks of each machine over SSH; exit 0 only when every check passed.

    Checks run on the machine through testinfra over OpenSSH (your ssh_config and -o options):
    frontend (nginx, lemmy-ui, the site, the backends), backend (port, GET /api/v3/site; 503
    means migrations are running), pict-rs (port, /healthz), postgres (running, listening,
    primary/replica as in CLUSTER, replication; under Patroni: the member's state, the leader,
    every replica's state, timeline and lag, the synchronous standby), etcd (healthy, exactly
    the configured members), storage (S3 and RPC ports, Garage's health quorum, the machine's
    role in the layout). Exit codes: 0 every check passed; 1 a check failed or bad input.
    """
    from concurrent.futures import ThreadPoolExecutor

    from synth.model import load
    from synth.topology import plan

    c = load(cluster_file)
    opts = make_ssh_options(cluster_file, ssh_option, identity)
    names = select(c, cluster_file, hosts)
    plans = plan(c)
    check = role_checker(c, plans, opts, rollout=False)
    with ThreadPoolExecutor(max_workers=min(parallel, max(1, len(names)))) as pool:
        results = dict(zip(names, pool.map(check, names), strict=True))
    rows = [(n, r.name, "ok" if r.ok else "FAIL", r.detail) for n in names for r in results[n]]
    if as_json:
        import json

        checks = [{"machine": n, "check": name, "ok": ok == "ok", "detail": detail} for n, name, ok, detail in rows]
        failed_any = any(not ch["ok"] for ch in checks)
        click.echo(json.dumps({"ok": not failed_any, "checks": checks}, indent=2))
        sys.exit(1 if failed_any else 0)
    for line in table(rows):
        click.echo(line)
    failed = sum(1 for r in rows if r[2] == "FAIL")
    bad_hosts = sorted({r[0] for r in rows if r[2] == "FAIL"}, key=names.index)
    if failed:
        click.echo(f"{failed} of {len(rows)} checks FAILED on {', '.join(bad_hosts)}", err=True)
        sys.exit(1)
    click.echo(f"all {len(rows)} checks passed on {len(names)} machines")
