"""Live tests of `synth secrets push`, `synth verify` and `synth deploy` over real SSH.

The machines of tests/live/ops-cluster.toml are network-namespace hosts, each with its own sshd
(tests/live/ssh.py) started in a private mount namespace: there a tmpfs covers /var/lib/lemmy-cluster,
so every host has its own secrets folder as a real machine would (and nothing is written to this
machine's /var/lib), and on the PostgreSQL host the server's socket folder is mounted on
/run/postgresql, where NixOS keeps it. The synth CLI runs as a separate process, as a user runs it.

What answers on the hosts:
- opfe1, opfe2: the real Debian nginx on the frontend module's files (tests/live/frontend.py), with
  a ROUTING FIXTURE (not lemmy-ui) where lemmy-ui would listen;
- opapp: ROUTING FIXTURES, NOT LEMMY OR PICT-RS, where lemmy_server (8536) and pict-rs (8080) would
  listen. They answer 200 to every request, so these tests prove the checks' port and HTTP probes
  and the gating around them, not Lemmy; the real services are checked by the NixOS VM tests;
- opdb1: real PostgreSQL, configured like the postgres module (tests/live/pg.py).

Deploys use --rebuild-command/--rollback-command: shell scripts that act on the host over SSH (reload
nginx; or stop it, to break a frontend on purpose; the rollback starts it again).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from synth.model import load
from synth.topology import BACKEND_PORT, PICTRS_PORT, SECRET_FILES, UI_PORT, HostPlan, plan
from tests.conftest import ROOT, require, require_root, require_tool
from tests.live import pg
from tests.live.frontend import NGINX, FrontendPaths, Nginx, RoutingFixture, write_nginx_conf
from tests.live.netns import Host, Network
from tests.live.ssh import SshKeys, ssh_command, start_sshd

pytestmark = pytest.mark.live

CLUSTER_TOML = Path(__file__).with_name("ops-cluster.toml")
NETWORK = "10.233.0.0/24"
SECRETS_MOUNT = "/var/lib/lemmy-cluster"  # parent of the cluster's secrets.dir (the default)


@dataclass
class _PrivateMounts(Host):
    """A Host whose processes start in their own mount namespace after SETUP (shell) has run."""

    setup: str = ""

    def cmd(self, args: Sequence[str]) -> list[str]:
        script = f'set -e\n{self.setup}\nexec "$@"'
        unshare = ["unshare", "--mount", "--propagation", "private"]
        return ["ip", "netns", "exec", self.ns, *unshare, "sh", "-c", script, "sh", *args]


@dataclass
class Ops:
    workdir: Path
    cluster_file: Path  # a copy in WORKDIR, so that `secrets init` writes WORKDIR/secrets
    plans: dict[str, HostPlan]
    hosts: dict[str, Host]
    keys: SshKeys
    nginx: dict[str, Nginx]
    paths: dict[str, FrontendPaths]
    ui: dict[str, RoutingFixture]
    fixtures: list[RoutingFixture] = field(default_factory=list)

    @property
    def ssh_args(self) -> list[str]:
        return [
            "--identity", str(self.keys.client_key),
            "--ssh-option", "StrictHostKeyChecking=no",
            "--ssh-option", f"UserKnownHostsFile={self.keys.known_hosts}",
            "--ssh-option", "LogLevel=ERROR",
        ]  # fmt: skip

    def synth(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run(
            [sys.executable, "-m", "synth", *args],
            text=True,
            capture_output=True,
            timeout=timeout,
            env=env,
            cwd=self.workdir,
            check=False,
        )

    def on(self, name: str, command: str) -> subprocess.CompletedProcess[str]:
        """COMMAND on machine NAME over SSH (so in its own mount namespace)."""
        return subprocess.run(
            ssh_command(self.hosts[name].address, self.keys, command), text=True, capture_output=True, check=False
        )


@pytest.fixture(scope="module")
def ops() -> Iterator[Ops]:
    require_root()
    for tool in ("ip", "unshare", "ssh", "ssh-keygen", "curl", "ss", "runuser", "setpriv", "psql"):
        require_tool(tool)
    require(shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists(), "sshd is not installed")
    require(Path(NGINX).exists(), f"nginx is not installed at {NGINX}")
    require((pg.PG_BIN / "postgres").exists(), f"PostgreSQL is not installed in {pg.PG_BIN}")
    c = load(CLUSTER_TOML)
    plans = plan(c)
    assert c.secrets.dir.startswith(SECRETS_MOUNT + "/"), c.secrets.dir
    # Under /tmp (not pytest's 0700 tmp_path): the postgres user must reach its folders.
    workdir = Path(tempfile.mkdtemp(prefix="lcops-", dir="/tmp"))
    workdir.chmod(0o755)
    Path(SECRETS_MOUNT).mkdir(parents=True, exist_ok=True)  # an empty mount point only
    cluster_file = workdir / "cluster.toml"
    shutil.copy(CLUSTER_TOML, cluster_file)
    try:
        with Network(NETWORK, bridge="lcbr-op", prefix="lco-") as net:
            hosts = {n: net.add(n, plans[n].private_address) for n in c.machines}
            keys = SshKeys.create(workdir / "ssh")
            lab = pg.PgLab(net, workdir / "lab", c)
            lab.hosts["opdb1"] = hosts["opdb1"]
            db = lab.server("opdb1")
            for name, host in hosts.items():
                setup = f"mount -t tmpfs -o mode=0755 lc-ops-{name} {SECRETS_MOUNT}"
                if name == "opdb1":
                    setup += f"\nmount --bind {shlex.quote(str(db.run_dir))} /run/postgresql"
                mounted = _PrivateMounts(host.name, host.address, host.ns, setup=setup)
                start_sshd(mounted, keys, workdir / "ssh")
                host.procs += mounted.procs
            lab.init_primary(db)
            ui: dict[str, RoutingFixture] = {}
            nginx: dict[str, Nginx] = {}
            paths: dict[str, FrontendPaths] = {}
            fixtures = []
            app = plans["opapp"]
            fixtures.append(RoutingFixture.start(hosts["opapp"], "opapp-backend", app.private_address, BACKEND_PORT))
            fixtures.append(RoutingFixture.start(hosts["opapp"], "opapp-pictrs", app.private_address, PICTRS_PORT))
            for fe in c.machines_with("frontend"):
                hp = plans[fe]
                assert hp.frontend is not None
                paths[fe] = write_nginx_conf(hp.frontend, c.cluster.domain, hp.private_address, workdir / fe)
                ui[fe] = RoutingFixture.start(hosts[fe], f"{fe}-ui", hp.private_address, UI_PORT)
                nginx[fe] = Nginx(hosts[fe], paths[fe]).start()
            yield Ops(workdir, cluster_file, plans, hosts, keys, nginx, paths, ui, fixtures)
            for n in nginx.values():
                n.stop()
            lab.stop_all()
    finally:
        # The empty mount point stays: test_operations and test_deploy_access both mount a tmpfs of
        # their own on it in each host's private mount namespace, and removing the directory here
        # while the other module runs detaches that module's mounts (Linux >= 3.18 lets rmdir take
        # a directory that is a mount point in another namespace): its hosts' current-system links
        # vanished mid-test (CI: "running system unreadable", then `readlink -e` failing).
        shutil.rmtree(workdir, ignore_errors=True)


def _ok(r: subprocess.CompletedProcess[str], what: str) -> str:
    assert r.returncode == 0, f"{what}: expected exit 0, got {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


# --------------------------------------------------------------------------- secrets


def test_secrets_push_installs_exactly_each_machines_secrets(ops: Ops) -> None:
    _ok(ops.synth("secrets", "init", str(ops.cluster_file)), "secrets init")
    needed = {key for hp in ops.plans.values() for key in hp.secrets}
    local = {key: (ops.workdir / "secrets" / SECRET_FILES[key]).read_bytes() for key in needed}
    out = _ok(ops.synth("secrets", "push", str(ops.cluster_file), *ops.ssh_args), "secrets push")

    for name, hp in ops.plans.items():
        for key, remote in hp.secrets.items():
            assert f"{name}: created: {remote}\n" in out, out
            r = ops.on(name, f"stat -c '%U:%G %a' {remote} && sha256sum < {remote}")
            owner_mode, digest = _ok(r, f"stat on {name}").split("\n")[:2]
            assert owner_mode == "root:root 400", f"{name}:{remote}: expected root:root 400, got {owner_mode}"
            assert digest.split()[0] == hashlib.sha256(local[key]).hexdigest(), f"{name}:{remote}: content"
        listing = _ok(ops.on(name, "ls -A /var/lib/lemmy-cluster/secrets 2>/dev/null || true"), "ls")
        expected = sorted(SECRET_FILES[k] for k in hp.secrets)
        assert sorted(listing.split()) == expected, f"{name}: expected exactly {expected}, got {listing.split()}"
        if hp.secrets:
            st = _ok(ops.on(name, "stat -c '%U:%G %a' /var/lib/lemmy-cluster/secrets"), "stat folder").strip()
            assert st == "root:root 700", f"{name}: secrets folder {st}"
    assert sorted(ops.plans["opapp"].secrets) == ["admin_password", "db_password", "pictrs_api_key"]
    assert sorted(ops.plans["opdb1"].secrets) == ["db_password", "replication_password"]
    assert not Path("/var/lib/lemmy-cluster/secrets").exists(), "the hosts' folders are theirs, not this machine's"

    again = _ok(ops.synth("secrets", "push", str(ops.cluster_file), *ops.ssh_args), "second push")
    for name, hp in ops.plans.items():
        for remote in hp.secrets.values():
            assert f"{name}: unchanged: {remote}\n" in again, again
    assert "4 of 4 machines done: 0 created, 0 changed, 5 unchanged" in again

    # A rotated secret changes exactly where it is used.
    (ops.workdir / "secrets" / "pictrs-api-key").write_text("rotated-key-0123456789\n")
    rotated = _ok(ops.synth("secrets", "push", str(ops.cluster_file), *ops.ssh_args, "--host", "opapp"), "rotate")
    assert "opapp: changed: /var/lib/lemmy-cluster/secrets/pictrs-api-key" in rotated
    got = _ok(ops.on("opapp", "cat /var/lib/lemmy-cluster/secrets/pictrs-api-key"), "cat")
    assert got == "rotated-key-0123456789\n"


def test_secrets_push_reports_an_unreachable_machine(ops: Ops) -> None:
    _ok(ops.synth("secrets", "init", str(ops.cluster_file)), "secrets init")
    ops.hosts["opapp"].link(False)  # like a pulled cable
    try:
        r = ops.synth("secrets", "push", str(ops.cluster_file), *ops.ssh_args, "--ssh-option", "ConnectTimeout=2")
    finally:
        ops.hosts["opapp"].link(True)
    assert r.returncode == 1
    assert "opapp: FAILED: ssh root@10.233.0.21 failed" in r.stderr
    assert "3 of 4 machines done" in r.stdout


# --------------------------------------------------------------------------- verify


def _rows(out: str) -> dict[tuple[str, str], str]:
    rows = {}
    for line in out.splitlines()[1:]:
        parts = line.split("  ")
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) >= 3 and parts[2] in ("ok", "FAIL"):
            rows[(parts[0], parts[1])] = parts[2]
    return rows


def test_verify_all_healthy(ops: Ops) -> None:
    r = ops.synth("verify", str(ops.cluster_file), *ops.ssh_args)
    out = _ok(r, "verify")
    rows = _rows(out)
    assert {m for m, _ in rows} == {"opfe1", "opfe2", "opapp", "opdb1"}
    assert set(rows.values()) == {"ok"}
    for expected in [
        ("opdb1", "postgres: role primary"),
        ("opdb1", "postgres: listening on 10.233.0.31:5432"),
        ("opapp", "backend: GET /api/v3/site"),
        ("opapp", "pictrs: GET /healthz"),
        ("opfe1", "nginx listening on port 80"),
        ("opfe2", "backend 10.233.0.21:8536 reachable"),
    ]:
        assert expected in rows, f"{expected} missing from:\n{out}"
    assert out.rstrip().endswith(f"all {len(rows)} checks passed on 4 machines")


def test_verify_reports_a_broken_machine(ops: Ops) -> None:
    ops.ui["opfe2"].kill()  # lemmy-ui (its fixture) on opfe2 is gone
    try:
        r = ops.synth("verify", str(ops.cluster_file), *ops.ssh_args)
    finally:
        ops.ui["opfe2"].restart()
    assert r.returncode == 1, r.stdout + r.stderr
    rows = _rows(r.stdout)
    failed = [k for k, v in rows.items() if v == "FAIL"]
    assert failed == [("opfe2", "lemmy-ui listening on 10.233.0.12:1234")], r.stdout
    assert "1 of" in r.stderr and "checks FAILED on opfe2" in r.stderr


# --------------------------------------------------------------------------- deploy


CURRENT = f"{SECRETS_MOUNT}/current-system"  # each host's running-system link (per-host tmpfs)


def _deployable(ops: Ops) -> list[str]:
    """hosts/ generated beside the cluster file (deploy refuses a drifted one), every host's
    running-system link at a stand-in system; the deploy arguments that go with it."""
    _ok(ops.synth("generate", str(ops.cluster_file)), "generate")
    for system in ("sys-initial", "sys-broken"):  # stand-ins of store paths (readlink -e needs them)
        (ops.workdir / system).mkdir(exist_ok=True)
    for name in ops.hosts:
        _ok(ops.on(name, f"ln -sfn {ops.workdir}/sys-initial {CURRENT}"), "link")
    return ["--current-system", CURRENT]


def _scripts(ops: Ops, log: Path, broken: Sequence[str]) -> tuple[str, str]:
    """Rebuild and rollback templates: shell scripts that act on the host over SSH and log to LOG.

    A broken frontend's rebuild stops nginx and points the running-system link at a new system;
    the rollback points it back at {before} and starts nginx."""
    ssh = shlex.join(ssh_command("ADDRESS", ops.keys, "CMD")[:-2])  # without destination and command
    reload_, stop, start = {}, {}, {}
    for fe, p in ops.paths.items():
        base = f"{NGINX} -e {p.error_log} -c {p.conf}"
        reload_[fe] = f"{base} -s reload"
        stop[fe] = f"{base} -s stop"
        start[fe] = f"setsid {base} </dev/null >/dev/null 2>&1 &"
    switch = f"ln -sfn {ops.workdir}/sys-broken {CURRENT}; "
    cases_rebuild = "".join(
        f"  {fe}) action={shlex.quote(switch + stop[fe] if fe in broken else reload_[fe])} ;;\n" for fe in ops.paths
    )
    cases_rollback = "".join(
        f'  {fe}) action="ln -sfn $before {CURRENT}; "{shlex.quote(start[fe])} ;;\n' for fe in ops.paths
    )
    common = f'set -eu\nname=$1 address=$2 user=$3 before=${{4:-}}\nremote() {{ {ssh} "$user@$address" "$1"; }}\n'
    rebuild = ops.workdir / "rebuild.sh"
    rebuild.write_text(
        f'{common}echo "rebuild $name" >> {log}\naction=true\ncase $name in\n{cases_rebuild}esac\nremote "$action"\n'
    )
    rollback = ops.workdir / "rollback.sh"
    rollback.write_text(
        f'{common}echo "rollback $name" >> {log}\naction=true\ncase $name in\n{cases_rollback}esac\nremote "$action"\n'
    )
    return f"sh {rebuild} {{name}} {{address}} {{user}}", f"sh {rollback} {{name}} {{address}} {{user}} {{before}}"


def test_deploy_all_batches_gated_by_real_checks(ops: Ops) -> None:
    log = ops.workdir / "deploy-ok.log"
    rebuild, rollback = _scripts(ops, log, broken=())
    r = ops.synth(
        "deploy", str(ops.cluster_file), *ops.ssh_args, *_deployable(ops),
        "--rebuild-command", rebuild, "--rollback-command", rollback,
        "--check-timeout", "20", "--check-interval", "1",
    )  # fmt: skip
    out = _ok(r, "deploy")
    assert log.read_text().splitlines() == ["rebuild opdb1", "rebuild opapp", "rebuild opfe1", "rebuild opfe2"]
    for name in ("opdb1", "opapp", "opfe1", "opfe2"):
        assert f"{name}  checks passed" in out, out
    assert "summary:\n  opdb1  deployed\n  opapp  deployed\n  opfe1  deployed\n  opfe2  deployed\n" in out
    # Each batch's checks passed before the next batch's rebuild started.
    lines = out.splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    assert at("opdb1  checks passed") < at("opapp  rebuild: started")
    assert at("opapp  checks passed") < at("opfe1  rebuild: started")
    assert at("opfe1  checks passed") < at("opfe2  rebuild: started")


def test_deploy_rolls_back_the_failing_batch_and_stops(ops: Ops) -> None:
    log = ops.workdir / "deploy-broken.log"
    rebuild, rollback = _scripts(ops, log, broken=("opfe1",))
    r = ops.synth(
        "deploy", str(ops.cluster_file), *ops.ssh_args, *_deployable(ops),
        "--rebuild-command", rebuild, "--rollback-command", rollback,
        "--check-timeout", "4", "--check-interval", "1",
    )  # fmt: skip
    assert r.returncode == 3, r.stdout + r.stderr
    assert log.read_text().splitlines() == ["rebuild opdb1", "rebuild opapp", "rebuild opfe1", "rollback opfe1"]
    assert "opfe1  check FAILED: nginx listening on port 80" in r.stdout
    assert "summary:\n  opdb1  deployed\n  opapp  deployed\n  opfe1  rolled back\n  opfe2  not started\n" in r.stdout
    assert "batch 3: checks of opfe1 still failing after 4s" in r.stderr
    # The rollback (nginx started again over SSH) made opfe1 healthy again.
    assert "opfe1  checks passed" in r.stdout.split("rollback: done")[-1]
    after = ops.synth("verify", str(ops.cluster_file), *ops.ssh_args, "--host", "opfe1")
    _ok(after, "verify after the rollback")
    assert f"opfe1  running system changed: {ops.workdir}/sys-initial -> {ops.workdir}/sys-broken" in r.stdout
    link = _ok(ops.on("opfe1", f"readlink {CURRENT}"), "readlink").strip()
    assert link == f"{ops.workdir}/sys-initial", "rolled back to exactly the system that ran before"
