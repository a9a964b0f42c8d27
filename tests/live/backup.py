"""pgBackRest for the live tests, configured the way modules/backup/default.nix would.

The chain is the NixOS one: the cluster TOML → synth's host options (services.lemmy-cluster.backup,
``synth.render.host_data``) → modules/backup/pgbackrest-settings.nix (evaluated with
nix-instantiate) → pgbackrest.conf rendered as nixpkgs' services.pgbackrest renders it (the
`repo1-` and `pg1-` prefixes, [global] and one section per stanza, y/n) → Debian's pgbackrest
2.45, run through the module's wrapper (modules/backup/scripts/pgbackrest.sh, which reads the
passphrase from a file) as PostgreSQL's archive_command and for every backup and restore.

What differs from NixOS: the configuration file is per machine in the test's folder (nixpkgs:
/etc/pgbackrest/pgbackrest.conf, given here with --config), the lock and log folders are the
test's (pgbackrest's defaults under /tmp and /var/log are shared by the whole test machine), and
the repository is a posix folder of the test machine (Debian's 2.45 speaks S3 only over TLS:
"There is no version of pgBackRest that supports bare HTTP" before 2.58, pgbackrest#2612), which
stands for the shared mount a posix repository with several machines needs.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from synth.model import Cluster
from synth.render import host_data
from synth.topology import plan
from tests.live import nixeval
from tests.live.staged import MODULES

PGBACKREST = Path("/usr/bin/pgbackrest")
SCRIPTS = MODULES / "backup" / "scripts"
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def backup_options(c: Cluster, machine: str) -> dict[str, Any]:
    """services.lemmy-cluster.backup of MACHINE, as synth renders it."""
    opts: dict[str, Any] = host_data(c, plan(c)[machine])["services"]["lemmy-cluster"]["backup"]
    return opts


def _value(v: Any) -> str:
    if v is True:
        return "y"
    if v is False:
        return "n"
    return str(v)


def render_conf(evaluated: dict[str, Any], stanza: str, extra_global: dict[str, str]) -> str:
    """pgbackrest.conf as nixpkgs' services.pgbackrest writes it (pkgs.formats.ini)."""
    glob = {**evaluated["global"], **{f"repo1-{k}": v for k, v in evaluated["repo"].items() if v is not None}}
    glob |= extra_global
    section = {f"pg1-{k}": v for k, v in evaluated["instance"].items() if v is not None}
    lines = ["[global]", *(f"{k}={_value(v)}" for k, v in sorted(glob.items())), ""]
    lines += [f"[{stanza}]", *(f"{k}={_value(v)}" for k, v in sorted(section.items())), ""]
    return "\n".join(lines)


class Pgbackrest:
    """pgBackRest on one machine: its configuration file and the wrapper's command words."""

    def __init__(
        self,
        c: Cluster,
        machine: str,
        folder: Path,
        cipher_pass_file: Path,
        data_dir: Path,
        socket_dir: Path,
        port: int = 5432,
    ) -> None:
        self.machine = machine
        self.options = backup_options(c, machine)
        self.stanza: str = self.options["stanza"]
        self.cipher_pass_file = cipher_pass_file
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "pgbackrest.conf"
        self.lock = folder / "lock"
        self.logs = folder / "log"
        self.data_dir = data_dir
        self.socket_dir = socket_dir
        self.port = port
        self.write()

    def command(self, cipher_pass_file: Path | None = None) -> list[str]:
        """The module's `lemmy-cluster-pgbackrest` (without --run-as: the caller is postgres)."""
        return [
            "bash",
            str(SCRIPTS / "pgbackrest.sh"),
            "--bin",
            str(PGBACKREST),
            "--cipher-pass-file",
            str(cipher_pass_file or self.cipher_pass_file),
            "--",
            f"--config={self.conf}",
        ]

    def evaluate(self) -> dict[str, Any]:
        result: dict[str, Any] = nixeval.evaluate(
            nixeval.MODULES / "backup" / "pgbackrest-settings.nix",
            {
                "cfg": self.options,
                "pg": {"dataDir": str(self.data_dir), "socketDir": str(self.socket_dir), "port": self.port},
                "command": shlex.join(self.command()),
            },
        )
        return result

    def write(self) -> None:
        from tests.live.pg import chown_pg

        evaluated = self.evaluate()
        self.archive_command: str = evaluated["archiveCommand"]
        # What nixpkgs' module adds (log levels), and the test's own folders.
        extra = {
            "log-level-console": "info",
            "log-level-file": "off",
            "lock-path": str(self.lock),
            "log-path": str(self.logs),
        }
        self.conf.write_text(render_conf(evaluated, self.stanza, extra))
        self.conf.chmod(0o644)
        for d in (self.lock, self.logs):
            d.mkdir(exist_ok=True)
            chown_pg(d)

    def run(
        self, host: Any, *args: str, cipher_pass_file: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """The wrapper with ARGS (after --stanza), as postgres in HOST's namespace."""
        from tests.live.pg import as_pg

        cmd = as_pg([*self.command(cipher_pass_file), f"--stanza={self.stanza}", *args])
        r: subprocess.CompletedProcess[str] = host.run(
            cmd, check=False, timeout=timeout, env={"PATH": SYS_PATH, "LANG": "C.UTF-8"}
        )
        return r

    def info(self, host: Any) -> list[dict[str, Any]]:
        r = self.run(host, "--output=json", "info")
        assert r.returncode == 0, f"pgbackrest info failed: {r.stderr}{r.stdout}"
        data: list[dict[str, Any]] = json.loads(r.stdout)
        return data

    def script(self, host: Any, name: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """modules/backup/scripts/NAME ARGS -- <the wrapper>, as postgres in HOST's namespace."""
        from tests.live.pg import as_pg

        r: subprocess.CompletedProcess[str] = host.run(
            as_pg(["bash", str(SCRIPTS / name), *args, "--", *self.command()]),
            check=False,
            timeout=timeout,
            env={"PATH": SYS_PATH, "LANG": "C.UTF-8"},
        )
        return r
