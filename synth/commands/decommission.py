"""`synth decommission NAME`: take a database machine, already removed from the cluster file, out
of Patroni and etcd on the machines themselves, over SSH.

`synth remove-machine NAME` edits the cluster file; the machines still have to be told. This
command does what the manual steps (README, "Removing a database machine") say, in their order,
each printed before it runs:

1. if NAME leads the Patroni cluster: a switchover to a healthy replica that stays (the same tool
   `synth promote` runs: `lemmy-cluster-pg-switchover CANDIDATE` on CANDIDATE; in synchronous mode
   the synchronous standby);
2. `systemctl stop patroni` on NAME, then a wait until Patroni no longer lists NAME (its member
   key goes with it; the leader keeps NAME's slot for member_slots_ttl);
3. `lemmy-cluster-etcd-remove-member NAME` on an etcd member that stays (it refuses while a member
   that stays is unhealthy: its refusal is passed on verbatim, exit 1);
4. `systemctl stop etcd` on NAME.

Steps 3 and 4 wait for the etcd members that take NAME's place: while one of them is not a member
yet (it joins when it is deployed), the command stops after step 2 and says to deploy, then to run
it again. So the order is: `synth remove-machine NAME`, `synth decommission NAME` (the leadership
moves away before the backends' new connection strings leave NAME out), deploy the others,
`synth decommission NAME` again (the etcd steps), switch NAME off. When nothing joins etcd, one
run does it all.

Before anything runs it refuses (exit 1, nothing done) when NAME is still in the cluster file, when
NAME does not answer over SSH, or when no member that stays answers. Every step first looks at
the state, so a second run finds nothing to do and says so. NAME's address comes from --address
or, by default, from the cluster file as committed at git HEAD (where NAME still is).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from synth.commands.common import CLUSTER_OPTION, load_cluster, make_ssh_options, ssh_options, user_errors

if TYPE_CHECKING:
    from synth.model import Cluster

# NAME's units: one line per unit, "patroni active" / "etcd inactive" (systemctl is-active's words).
STATE = 'for u in patroni etcd; do printf \'%s \' "$u"; systemctl is-active "$u" || true; done'
STOP_PATRONI = "systemctl stop patroni"
STOP_ETCD = "systemctl stop etcd"
SWITCHOVER = "lemmy-cluster-pg-switchover {candidate}"
REMOVE_MEMBER = "lemmy-cluster-etcd-remove-member {name}"
# On a member that stays: Patroni's view of the cluster ({api}: that member's REST API).
CLUSTER_STATE = "curl -s --max-time 5 {api}/cluster"
# On an etcd member that stays: "ID, STATUS, NAME, PEER URLS, CLIENT URLS, IS LEARNER", one a line.
ETCD_MEMBERS = "ETCDCTL_API=3 etcdctl --dial-timeout=2s --command-timeout=5s --endpoints={endpoint} member list"

Run = Callable[[str, str, str], subprocess.CompletedProcess[str]]  # (user, address, command)


@dataclass(frozen=True)
class Commands:
    state: str = STATE
    stop_patroni: str = STOP_PATRONI
    stop_etcd: str = STOP_ETCD
    switchover: str = SWITCHOVER
    remove_member: str = REMOVE_MEMBER
    cluster_state: str = CLUSTER_STATE
    etcd_members: str = ETCD_MEMBERS


@dataclass
class Step:
    machine: str  # where the command runs
    command: str
    says: str  # what it does, printed first
    kind: str = ""  # "switchover", "stop-patroni", "remove-member", "stop-etcd"


def on(c: Cluster, machine: str, command: str) -> str:
    """COMMAND for MACHINE, a machine that stays: {self} is its name, {address} its private address."""
    return command.replace("{self}", shlex.quote(machine)).replace("{address}", c.private_address(machine))


@dataclass
class Plan:
    name: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is already done
    etcd_on: str | None = None  # the member that stays where the etcd removal runs
    waiting: list[str] = field(default_factory=list)  # etcd members to come: the etcd steps wait for them


def refuse(file: str, message: str) -> Any:
    from synth.errors import SynthError

    return SynthError.single(file, "decommission", message + "; nothing was done")


def address_at_head(cluster_file: Path, name: str) -> tuple[str, str] | None:
    """(ssh_user, address) of NAME in the cluster file as committed at git HEAD, or None."""
    import tomllib

    folder = cluster_file.parent if str(cluster_file.parent) else Path(".")
    try:
        shown = subprocess.run(
            ["git", "-C", str(folder), "show", f"HEAD:./{cluster_file.name}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shown.returncode != 0:
        return None
    try:
        machine = tomllib.loads(shown.stdout).get("machines", {}).get(name)
    except tomllib.TOMLDecodeError:
        return None
    if not isinstance(machine, dict) or not isinstance(machine.get("address"), str):
        return None
    return str(machine.get("ssh_user", "root")), machine["address"]


def first_line(r: subprocess.CompletedProcess[str]) -> str:
    text = (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}").splitlines()
    return text[-1]


def make_plan(c: Cluster, file: str, name: str, user: str, address: str, run: Run, cmds: Commands) -> Plan:
    """Look at the machines (read-only) and decide the steps; refuse (SynthError) before any."""
    from synth.model import etcd_members
    from synth.topology import ETCD_CLIENT_PORT, PATRONI_API_PORT, hostport

    here = run(user, address, cmds.state)
    if here.returncode != 0:
        raise refuse(file, f"{name} ({user}@{address}) does not answer over SSH: {first_line(here)}")
    units = dict(line.split(None, 1) for line in here.stdout.splitlines() if len(line.split(None, 1)) == 2)
    patroni_up = units.get("patroni", "").strip() in ("active", "activating", "reloading", "deactivating")
    etcd_up = units.get("etcd", "").strip() in ("active", "activating", "reloading", "deactivating")

    p = Plan(name)
    # Patroni, seen from a postgres machine that stays.
    cluster_state: dict[str, Any] | None = None
    seen: list[str] = []
    for m in c.machines_with("postgres"):
        mm = c.machines[m]
        api = f"http://{hostport(c.private_address(m), PATRONI_API_PORT)}"
        r = run(mm.ssh_user, mm.address, cmds.cluster_state.replace("{api}", api))
        try:
            state = json.loads(r.stdout) if r.returncode == 0 else None
        except json.JSONDecodeError:
            state = None
        if isinstance(state, dict) and isinstance(state.get("members"), list):
            cluster_state = state
            break
        seen.append(f"{m}: {first_line(r)}")
    if cluster_state is None:
        raise refuse(file, "no postgres machine that stays answers with Patroni's state (" + "; ".join(seen) + ")")
    members = {str(m.get("name")): m for m in cluster_state["members"]}
    leader = next((n for n, m in members.items() if m.get("role") in ("leader", "standby_leader")), None)
    if leader == name:
        staying = [n for n in c.machines_with("postgres") if n in members]
        sync = [n for n in staying if members[n].get("role") == "sync_standby"]
        streaming = [n for n in staying if members[n].get("state") == "streaming"]
        candidate = (sync or streaming or [""])[0]
        if not candidate:
            roles = ", ".join(f"{n} {m.get('role')} {m.get('state')}" for n, m in members.items())
            raise refuse(
                file,
                f"{name} leads and no postgres machine that stays is a healthy replica to hand the leadership to "
                f"(Patroni: {roles})",
            )
        p.steps.append(
            Step(
                candidate,
                on(c, candidate, cmds.switchover.replace("{candidate}", shlex.quote(candidate))),
                f"{name} leads: switch the leadership over to {candidate} (a healthy replica that stays)",
                "switchover",
            )
        )
    if patroni_up:
        p.steps.append(
            Step(
                name,
                cmds.stop_patroni,
                f"stop Patroni on {name} (it stops its PostgreSQL and leaves the cluster)",
                "stop-patroni",
            )
        )
    elif name in members:
        p.notes.append(f"Patroni is stopped on {name} already; Patroni still lists it until its entry expires")
    else:
        p.notes.append(f"Patroni is not running on {name}: nothing to stop")

    # etcd, seen from a member that stays.
    seen = []
    listed: list[str] | None = None
    for m in etcd_members(c):
        mm = c.machines[m]
        r = run(
            mm.ssh_user, mm.address, cmds.etcd_members.replace("{endpoint}", f"http://127.0.0.1:{ETCD_CLIENT_PORT}")
        )
        if r.returncode == 0:
            listed = [f[2] for f in (line.split(", ") for line in r.stdout.splitlines()) if len(f) >= 3]
            p.etcd_on = m
            break
        seen.append(f"{m}: {first_line(r)}")
    if p.etcd_on is None or listed is None:
        raise refuse(file, "no etcd member that stays answers (" + "; ".join(seen) + ")")
    waiting = [m for m in etcd_members(c) if m not in listed]
    if name in listed and waiting:
        p.waiting = waiting
        p.notes.append(
            f"{', '.join(waiting)} {'is' if len(waiting) == 1 else 'are'} not an etcd member yet (it joins when it "
            f"is deployed): {name} stays in etcd for now, so that the cluster keeps its majority"
        )
        return p
    if name in listed:
        p.steps.append(
            Step(
                p.etcd_on,
                on(c, p.etcd_on, cmds.remove_member.replace("{name}", shlex.quote(name))),
                f"take {name} out of the etcd cluster, on {p.etcd_on} (a member that stays)",
                "remove-member",
            )
        )
    else:
        p.notes.append(f"{name} is not a member of the etcd cluster (asked {p.etcd_on})")
    if etcd_up:
        p.steps.append(Step(name, cmds.stop_etcd, f"stop etcd on {name}", "stop-etcd"))
    else:
        p.notes.append(f"etcd is not running on {name}: nothing to stop")
    return p


def wait_gone(c: Cluster, name: str, run: Run, cmds: Commands, timeout: float) -> bool:
    """Wait until Patroni (asked on the postgres machines that stay) no longer lists NAME."""
    from synth.topology import PATRONI_API_PORT, hostport

    deadline = time.monotonic() + timeout
    while True:
        for m in c.machines_with("postgres"):
            mm = c.machines[m]
            api = f"http://{hostport(c.private_address(m), PATRONI_API_PORT)}"
            r = run(mm.ssh_user, mm.address, cmds.cluster_state.replace("{api}", api))
            try:
                state = json.loads(r.stdout)
            except json.JSONDecodeError:
                continue
            if isinstance(state, dict) and isinstance(state.get("members"), list):
                if name not in {str(x.get("name")) for x in state["members"]}:
                    return True
                break
        if time.monotonic() >= deadline:
            return False
        time.sleep(1)


@click.command("decommission")
@click.argument("name")
@CLUSTER_OPTION
@click.option("--address", default=None, help="NAME's address (default: from the cluster file at git HEAD).")
@click.option("--ssh-user", default=None, help="NAME's SSH user (default: from the cluster file at git HEAD, or root).")
@click.option("--dry-run", is_flag=True, help="Look at the machines and print the steps; do none of them.")
@click.option("--yes", "-y", is_flag=True, help="Do the steps without asking.")
@click.option(
    "--wait", "wait_s", type=float, default=60, show_default=True, help="Seconds Patroni may take to drop NAME."
)
@click.option("--state-command", default=STATE, help="On NAME: prints 'patroni STATE' and 'etcd STATE' lines.")
@click.option("--stop-patroni-command", default=STOP_PATRONI, show_default=True, help="On NAME: stops Patroni.")
@click.option("--stop-etcd-command", default=STOP_ETCD, show_default=True, help="On NAME: stops etcd.")
@click.option(
    "--switchover-command",
    default=SWITCHOVER,
    show_default=True,
    help="On the candidate: the switchover ({candidate}; {self}, {address}: the machine it runs on).",
)
@click.option(
    "--remove-member-command",
    default=REMOVE_MEMBER,
    show_default=True,
    help="On an etcd member that stays ({name}: NAME; {self}, {address}: the machine it runs on).",
)
@click.option("--cluster-state-command", default=CLUSTER_STATE, show_default=True, help="Patroni's /cluster ({api}).")
@click.option("--etcd-members-command", default=ETCD_MEMBERS, show_default=True, help="etcd member list ({endpoint}).")
@ssh_options
@user_errors
def decommission(
    name: str,
    cluster_file: Path,
    address: str | None,
    ssh_user: str | None,
    dry_run: bool,
    yes: bool,
    wait_s: float,
    state_command: str,
    stop_patroni_command: str,
    stop_etcd_command: str,
    switchover_command: str,
    remove_member_command: str,
    cluster_state_command: str,
    etcd_members_command: str,
    ssh_option: tuple[str, ...],
    identity: Path | None,
) -> None:
    """Take database machine NAME (already removed with `synth remove-machine`) out of Patroni and etcd.

    Over SSH, each step printed first: a switchover if NAME leads, `systemctl stop patroni` on
    NAME, `lemmy-cluster-etcd-remove-member NAME` on a member that stays, `systemctl stop etcd`
    on NAME. Refuses, doing nothing, while NAME is in the cluster file, when NAME does not answer
    or when no member that stays answers. Running it again does nothing and says so.
    """
    from synth import remote
    from synth.model import automatic_failover

    c = load_cluster(cluster_file)
    file = str(cluster_file)
    if name in c.machines:
        raise refuse(
            file, f"{name} is still in {file}: run `synth remove-machine {name}` first, then deploy the others"
        )
    if not automatic_failover(c):
        raise refuse(
            file,
            "the cluster file has no Patroni cluster (automatic failover) left for NAME to leave; follow what "
            "`synth remove-machine` printed".replace("NAME", name),
        )
    if address is None:
        found = address_at_head(cluster_file, name)
        if found is None:
            raise refuse(
                file, f"{name}'s address is not known: give --address (it is not in {file} as committed at git HEAD)"
            )
        ssh_user = ssh_user or found[0]
        address = found[1]
    ssh_user = ssh_user or "root"
    opts = make_ssh_options(cluster_file, ssh_option, identity)

    def run(user: str, addr: str, command: str) -> subprocess.CompletedProcess[str]:
        return remote.ssh_run(user, addr, command, opts, timeout=120)

    cmds = Commands(
        state_command,
        stop_patroni_command,
        stop_etcd_command,
        switchover_command,
        remove_member_command,
        cluster_state_command,
        etcd_members_command,
    )
    p = make_plan(c, file, name, ssh_user, address, run, cmds)
    for note in p.notes:
        click.echo(f"{name}: {note}")
    if not p.steps and p.waiting:
        click.echo(f"Nothing to do now: {name} is out of Patroni. {later(name, p.waiting)}")
        return
    if not p.steps:
        click.echo(f"Nothing to do: {name} is out of Patroni and etcd already.")
        left(name)
        return
    click.echo(f"The steps, in this order ({'dry run: none is done' if dry_run else 'each printed again as it runs'}):")
    for i, s in enumerate(p.steps, 1):
        click.echo(f"  {i}. {s.says}: `{s.command}` on {s.machine}")
    if dry_run:
        return
    if not yes:
        click.confirm("Do them now?", abort=True)
    machines = {n: (m.ssh_user, m.address) for n, m in c.machines.items()}
    machines[name] = (ssh_user, address)

    def wait_patroni_drops() -> None:
        if not wait_gone(c, name, run, cmds, wait_s):
            from synth.errors import SynthError

            raise SynthError.single(
                file,
                "decommission",
                f"Patroni still lists {name} {wait_s:g} s after it was stopped; the etcd removal was not done. "
                f"Run `synth decommission {name}` again later",
            )

    for i, s in enumerate(p.steps, 1):
        if s.kind == "remove-member":
            wait_patroni_drops()  # at once when it is gone; remove-member refuses while it is listed
        click.echo(f"{i}. {s.says}: `{s.command}` on {s.machine}")
        user, addr = machines[s.machine]
        r = run(user, addr, s.command)
        for line in (r.stdout + r.stderr).splitlines():
            click.echo(f"{s.machine}: {line}")
        if r.returncode != 0:
            from synth.errors import SynthError

            done = "the steps before it were done" if i > 1 else "nothing was done"
            raise SynthError.single(
                file,
                "decommission",
                f"step {i} failed on {s.machine} (exit code {r.returncode}; see above); {done}, the next were not. "
                f"Fix what it says, then run `synth decommission {name}` again",
            )
        if s.kind == "stop-patroni":
            click.echo(f"   waiting for Patroni to drop {name} (its entry expires within 20 s)")
            wait_patroni_drops()
    if p.waiting:
        click.echo(f"{name} is out of Patroni. {later(name, p.waiting)}")
        return
    click.echo(f"{name} is out of Patroni and etcd.")
    left(name)


def later(name: str, waiting: list[str]) -> str:
    return (
        f"Next: deploy the machines whose hosts/ changed ({', '.join(waiting)} joins etcd then), and run "
        f"`synth decommission {name}` again: it takes {name} out of etcd."
    )


def left(name: str) -> None:
    click.echo(
        f"Left to do: switch {name} off. Patroni keeps {name}'s replication slot on the leader for 30 minutes "
        "(member_slots_ttl, in case it comes back) and then drops it by itself."
    )
