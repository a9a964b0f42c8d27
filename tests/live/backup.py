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
stands for the shared mount a posix repository with several machines needs; or an S3 bucket over
TLS (tests/live/test_backup_s3.py: the key's files go to the wrapper as the module gives them).
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


def _lines(section: dict[str, Any]) -> list[str]:
    """KEY=VALUE lines; a list is one line per value (listsAsDuplicateKeys)."""
    out = []
    for k, v in sorted(section.items()):
        for one in v if isinstance(v, list) else [v]:
            out.append(f"{k}={_value(one)}")
    return out


def render_conf(
    evaluated: dict[str, Any],
    stanza: str,
    extra_global: dict[str, str],
    instances: list[dict[str, Any]] | None = None,
) -> str:
    """pgbackrest.conf as nixpkgs' services.pgbackrest writes it (pkgs.formats.ini): [global] with
    the repoN- options, [global:server] (its `commands.server`), the stanza with the pgN- options
    (nixpkgs numbers the instances in the order of their names: INSTANCES, sorted by the caller)."""
    glob = {**evaluated["global"], **{f"repo1-{k}": v for k, v in evaluated["repo"].items() if v is not None}}
    glob |= extra_global
    section: dict[str, Any] = {}
    for i, inst in enumerate(instances if instances is not None else [evaluated["instance"]], start=1):
        section |= {f"pg{i}-{k}": v for k, v in inst.items() if v is not None}
    lines = ["[global]", *_lines(glob), ""]
    if evaluated.get("server"):
        lines += ["[global:server]", *_lines(evaluated["server"]), ""]
    lines += [f"[{stanza}]", *_lines(section), ""]
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
        tls: dict[str, str] | None = None,
        s3_key_files: tuple[Path, Path] | None = None,
        extra_global: dict[str, str] | None = None,
    ) -> None:
        self.machine = machine
        self.options = backup_options(c, machine)
        # An S3 repository: the test's files of the access key id and the secret key (the module's
        # s3AccessKeyFile, s3SecretKeyFile), which the wrapper reads; EXTRA_GLOBAL: test-only
        # settings added to [global] (say why where they are given).
        self.s3_key_files = s3_key_files
        if self.options.get("s3AccessKeyFile") is not None and s3_key_files is None:
            raise ValueError(f"{machine} has an S3 repository: give the test's s3_key_files")
        self.extra_global = extra_global or {}
        # With a backup machine: the TLS files (the test's copies, as lemmy-cluster-backup-tls
        # makes them) and the address of this machine's pgBackRest server.
        self.tls = tls
        self.data_dir = data_dir
        self.socket_dir = socket_dir
        self.port = port
        self._place(folder, cipher_pass_file)

    def _place(self, folder: Path, cipher_pass_file: Path) -> None:
        """The configuration file and the lock and log folders in FOLDER; writes the configuration."""
        self.stanza: str = self.options["stanza"]
        self.cipher_pass_file = cipher_pass_file
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "pgbackrest.conf"
        self.lock = folder / "lock"
        self.logs = folder / "log"
        self.write()

    def command(self, cipher_pass_file: Path | None = None, s3_secret_file: Path | None = None) -> list[str]:
        """The module's `lemmy-cluster-pgbackrest` (without --run-as: the caller is postgres); with
        an S3 repository, the key's files as the module's wrapper gives them (S3_SECRET_FILE: another
        secret key's file instead of the test's own)."""
        s3: list[str] = []
        if self.options.get("s3AccessKeyFile") is not None and self.s3_key_files is not None:
            key, secret = self.s3_key_files
            s3 = ["--s3-key-file", str(key), "--s3-key-secret-file", str(s3_secret_file or secret)]
        return [
            "bash",
            str(SCRIPTS / "pgbackrest.sh"),
            "--bin",
            str(PGBACKREST),
            "--cipher-pass-file",
            str(cipher_pass_file or self.cipher_pass_file),
            *s3,
            "--",
            f"--config={self.conf}",
        ]

    def evaluate(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "cfg": self.options,
            "pg": {"dataDir": str(self.data_dir), "socketDir": str(self.socket_dir), "port": self.port},
            "command": shlex.join(self.command()),
        }
        if self.tls is not None:
            args["tls"] = self.tls
        result: dict[str, Any] = nixeval.evaluate(nixeval.MODULES / "backup" / "pgbackrest-settings.nix", args)
        return result

    def write(self) -> None:
        from tests.live.pg import chown_pg

        evaluated = self.evaluate()
        self.archive_command: str = evaluated.get("archiveCommand", "")
        # What nixpkgs' module adds (log levels), and the test's own folders.
        extra = {
            "log-level-console": "info",
            "log-level-file": "off",
            "lock-path": str(self.lock),
            "log-path": str(self.logs),
            **self.extra_global,
        }
        self.conf.write_text(render_conf(evaluated, self.stanza, extra, self.instances(evaluated)))
        self.conf.chmod(0o644)
        for d in (self.lock, self.logs):
            d.mkdir(exist_ok=True)
            chown_pg(d)

    def instances(self, evaluated: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The stanza's pgN- instances (None: this machine's own, evaluated["instance"])."""
        return None

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

    def server(self, host: Any) -> subprocess.Popen[bytes]:
        """`lemmy-cluster-pgbackrest server` in HOST's namespace, as lemmy-cluster-pgbackrest-server
        runs it (on the backup machine and, with one, on a postgres machine); its output in
        server.log beside the configuration."""
        from tests.live.pg import as_pg

        log = (self.conf.parent / "server.log").open("ab")
        proc: subprocess.Popen[bytes] = host.popen(
            as_pg([*self.command(), "server"]),
            env={"PATH": SYS_PATH, "LANG": "C.UTF-8"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return proc

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


class RepositoryHost(Pgbackrest):
    """pgBackRest on the backup machine (modules/backup/repository.nix): its configuration from
    modules/backup/repository-settings.nix on synth's services.lemmy-cluster.backupRepository.

    What differs from NixOS: the postgres machines' data and socket folders are the test's (the
    module names /var/lib/postgresql/<major> and /run/postgresql), and it runs as postgres (NixOS:
    pgBackRest's own user, which owns the repository)."""

    def __init__(
        self,
        c: Cluster,
        machine: str,
        folder: Path,
        cipher_pass_file: Path,
        tls: dict[str, str],
        databases: dict[str, tuple[Path, Path]],
    ) -> None:
        self.databases = databases  # machine -> (data dir, socket dir) of the test
        self.machine = machine
        self.options = host_data(c, plan(c)[machine])["services"]["lemmy-cluster"]["backupRepository"]
        self.tls = tls
        self.s3_key_files = None
        self.extra_global = {}
        self._place(folder, cipher_pass_file)

    def evaluate(self) -> dict[str, Any]:
        cfg = dict(self.options)
        cfg["databases"] = [
            d | {"dataDir": str(self.databases[d["name"]][0]), "socketDir": str(self.databases[d["name"]][1])}
            for d in cfg["databases"]
        ]
        result: dict[str, Any] = nixeval.evaluate(
            nixeval.MODULES / "backup" / "repository-settings.nix", {"cfg": cfg, "tls": self.tls}
        )
        return result

    def instances(self, evaluated: dict[str, Any]) -> list[dict[str, Any]] | None:
        # nixpkgs numbers the instances in the order of their names.
        return [evaluated["instances"][n] for n in sorted(evaluated["instances"])]
