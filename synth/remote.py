"""SSH helpers shared by `synth secrets push`, `synth verify` and `synth deploy`.

One way in: the system OpenSSH client, configured by one `SshOptions` (the user's `--ssh-option`,
`--identity` and `--ssh-config`, on top of ~/.ssh/config), for shell scripts fed through stdin
(`secrets push`, `promote`), for nixos-rebuild and nix (through NIX_SSHOPTS), for the state reads
and confirmations of `deploy`, and for the role checks (testinfra's ssh backend). An option that
OpenSSH does not know is refused before anything runs (`ssh -G` parses them: `check_options`).

Nothing secret is ever put on a command line: secret contents travel base64-encoded in a here
document inside the script that `sh -s` reads from its stdin.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PUSH_MARK = "lc-secret"
PUSH_STATUSES = ("created", "changed", "unchanged")


@dataclass(frozen=True)
class SshOptions:
    """OPTIONS are ssh_config settings as `Key=Value` (or `Key Value`), as for `ssh -o`."""

    options: tuple[str, ...] = ()
    identity: str | None = None
    connect_timeout: int = 10
    config_file: str | None = None  # ssh -F (default: ~/.ssh/config and /etc/ssh/ssh_config)

    def settings(self) -> dict[str, str]:
        """The options as {lowercase key: value}; the first occurrence wins, as with ssh."""
        out: dict[str, str] = {}
        for opt in self.options:
            key, value = split_option(opt)
            out.setdefault(key.lower(), value)
        return out

    def ssh_args(self, with_config: bool = True) -> list[str]:
        """Arguments for the ssh client: the user's options first (ssh keeps the first value)."""
        args: list[str] = ["-F", self.config_file] if with_config and self.config_file is not None else []
        for opt in self.options:
            args += ["-o", opt]
        if self.identity is not None:
            args += ["-i", self.identity]
        if "connecttimeout" not in self.settings():
            args += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        return args

    def nix_sshopts(self) -> str:
        """NIX_SSHOPTS for nixos-rebuild / nix copy (a shell-split string), or "" when there is nothing."""
        args: list[str] = ["-F", self.config_file] if self.config_file is not None else []
        for opt in self.options:
            args += ["-o", opt]
        if self.identity is not None:
            args += ["-i", self.identity]
        return shlex.join(args)


def split_option(opt: str) -> tuple[str, str]:
    """`Key=Value` or `Key Value` -> (Key, Value); ValueError when it is neither."""
    text = opt.strip()
    for sep in ("=", " "):
        if sep in text:
            key, value = text.split(sep, 1)
            if key.strip() and value.strip():
                return key.strip(), value.strip()
    raise ValueError(f"not an ssh option (Key=Value): {opt!r}")


def _ssh_g(ssh: str, args: list[str]) -> tuple[int, list[str]]:
    argv = [ssh, "-G", *args, "lemmy-cluster-option-check"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return 255, [f"cannot run {ssh} (OpenSSH's client, which synth reaches every machine through): {exc}"]
    except subprocess.TimeoutExpired:
        return 255, [f"`{shlex.join(argv)}` did not finish within 30 s"]
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, lines or ([] if proc.returncode == 0 else [f"exit code {proc.returncode}"])


def check_options(opts: SshOptions, ssh: str = "ssh") -> list[str]:
    """What OpenSSH says is wrong with OPTS ([] when nothing): `ssh -G` parses the configuration
    and every -o option (names and values) without connecting. Each message names the option."""
    rc, said = _ssh_g(ssh, opts.ssh_args())
    if rc == 0:
        return []
    out: list[str] = []
    if opts.config_file is not None:
        crc, csaid = _ssh_g(ssh, ["-F", opts.config_file])
        if crc != 0:
            out += [f"{opts.config_file}: {line}" for line in csaid]
    for opt in opts.options:
        orc, osaid = _ssh_g(ssh, ["-F", "none", "-o", opt])
        if orc != 0:
            out += [f"-o {opt}: {line.removeprefix('command-line line 0: ')}" for line in osaid]
    return out or said


def destination(user: str, address: str) -> str:
    return f"{user}@{address}"


def ssh_argv(user: str, address: str, remote_command: str, opts: SshOptions) -> list[str]:
    """argv running REMOTE_COMMAND on USER@ADDRESS with the system ssh client, never prompting."""
    return ["ssh", *opts.ssh_args(), "-o", "BatchMode=yes", destination(user, address), remote_command]


def ssh_run(
    user: str, address: str, remote_command: str, opts: SshOptions, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run REMOTE_COMMAND on USER@ADDRESS; a timeout or a missing ssh is exit code 255, as ssh's own failures."""
    argv = ssh_argv(user, address, remote_command, opts)
    try:
        return subprocess.run(argv, input=stdin, text=True, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(
            argv, 255, "", f"ssh {destination(user, address)}: no answer within {timeout:g}s"
        )
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 255, "", f"cannot run ssh: {exc}")


# --------------------------------------------------------------------------- secrets push


def push_script(files: Mapping[str, bytes]) -> str:
    """The shell script that installs FILES ({remote path: content}) as root:root 0400 in 0700 folders.

    Each file is compared by sha256 first and only written when it differs (through a temporary
    file in the same folder, renamed into place: atomic). One line per file is printed:
    `lc-secret created|changed|unchanged PATH`. The script is meant for `sh -s` on stdin.
    """
    lines = [
        "set -eu",
        "umask 077",
        "lc_put() {",
        '  path=$1 want=$2 dir=$(dirname "$1")',
        '  if [ ! -d "$dir" ]; then',
        '    (umask 022; mkdir -p "$(dirname "$dir")")',
        '    mkdir -m 0700 "$dir"',
        "  fi",
        '  chown root:root "$dir"',
        '  chmod 0700 "$dir"',
        "  status=created",
        '  if [ -e "$path" ]; then',
        '    have=$(sha256sum < "$path" | cut -d " " -f 1)',
        '    if [ "$have" = "$want" ]; then',
        '      chown root:root "$path"',
        '      chmod 0400 "$path"',
        f'      echo "{PUSH_MARK} unchanged $path"',
        "      return 0",
        "    fi",
        "    status=changed",
        "  fi",
        '  tmp=$(mktemp "$dir/.lc-secret.XXXXXX")',
        '  base64 -d > "$tmp"',
        '  have=$(sha256sum < "$tmp" | cut -d " " -f 1)',
        '  if [ "$have" != "$want" ]; then',
        '    rm -f "$tmp"',
        f'    echo "{PUSH_MARK} error $path: the copy does not match its checksum" >&2',
        "    return 1",
        "  fi",
        '  chown root:root "$tmp"',
        '  chmod 0400 "$tmp"',
        '  mv -f "$tmp" "$path"',
        f'  echo "{PUSH_MARK} $status $path"',
        "}",
    ]
    for i, (path, content) in enumerate(sorted(files.items())):
        if not path.startswith("/"):
            raise ValueError(f"remote secret paths must be absolute: {path!r}")
        digest = hashlib.sha256(content).hexdigest()
        eof = f"LC_SECRET_EOF_{i}"
        encoded = base64.encodebytes(content).decode("ascii")  # lines of 76 characters
        lines.append(f"lc_put {shlex.quote(path)} {digest} <<'{eof}'")
        lines.append(encoded.rstrip("\n"))
        lines.append(eof)
    lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class PushResult:
    host: str
    statuses: dict[str, str]  # remote path -> created | changed | unchanged
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_push_output(stdout: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == PUSH_MARK and parts[1] in PUSH_STATUSES:
            out[parts[2]] = parts[1]
    return out


def push_secrets(
    host: str, user: str, address: str, files: Mapping[str, bytes], opts: SshOptions, timeout: float = 120
) -> PushResult:
    """Install FILES on one machine over ONE ssh connection; the contents go through stdin only."""
    remote = "sh -s" if user == "root" else "sudo -n sh -s"
    argv = ssh_argv(user, address, remote, opts)
    try:
        proc = subprocess.run(
            argv, input=push_script(files), text=True, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return PushResult(host, {}, f"ssh {destination(user, address)} did not finish within {timeout:.0f}s")
    except OSError as exc:
        return PushResult(host, {}, f"cannot run ssh: {exc}")
    statuses = parse_push_output(proc.stdout)
    if proc.returncode != 0:
        err = proc.stderr.strip() or f"exit code {proc.returncode}"
        return PushResult(host, statuses, f"ssh {destination(user, address)} failed ({proc.returncode}): {err}")
    missing = sorted(set(files) - set(statuses))
    if missing:
        return PushResult(host, statuses, f"no report for {', '.join(missing)}")
    return PushResult(host, statuses)


# --------------------------------------------------------------------------- testinfra over OpenSSH


def testinfra_host(user: str, address: str, opts: SshOptions) -> Any:
    """A testinfra Host over the system ssh client (testinfra's `ssh` backend).

    The same ssh, ssh_config (the admin's ~/.ssh/config, or --ssh-config), -o options and identity
    as rebuilds and `secrets push`: ProxyJump, host key checking, ports and the rest apply to the
    checks too. One ssh process per command; connection sharing is the ssh_config's (ControlMaster).
    """
    from testinfra.backend.ssh import SshBackend  # type: ignore[import-untyped]
    from testinfra.host import Host  # type: ignore[import-untyped]

    spec = f"{user}@[{address}]" if ":" in address else f"{user}@{address}"
    extra = [*opts.ssh_args(with_config=False), "-o", "BatchMode=yes"]
    backend = SshBackend(
        spec,
        ssh_config=opts.config_file,
        timeout=opts.connect_timeout,
        controlpersist=0,
        ssh_extra_args=shlex.join(extra),
    )
    return Host(backend)


def login_problem(host: Any) -> str | None:
    """Why HOST (from testinfra_host) cannot be logged in to, or None."""
    try:
        result = host.run("true")
    except Exception as exc:  # testinfra raises RuntimeError(CommandResult) on ssh's exit code 255
        out = exc.args[0] if exc.args else exc
        err = getattr(out, "stderr", "") or str(out)
        return err.strip() or f"{type(exc).__name__}"
    if result.rc != 0:
        return f"`true` exited with {result.rc}: {result.stderr.strip()}"
    return None


def close_testinfra_host(host: Any) -> None:
    """Nothing to close: every command was its own ssh process (kept for the callers)."""


def run_streamed(
    command: Sequence[str] | str,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> int:
    """Run a local command (a string runs through `sh -c`), passing each output line (stdout and
    stderr merged) to ON_LINE as it comes; return its exit code (127 when it cannot start)."""
    import os

    full_env = dict(os.environ, **(env or {}))
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        proc = subprocess.Popen(
            argv,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        on_line(f"cannot run {argv[0]}: {exc}")
        return 127
    assert proc.stdout is not None
    for line in proc.stdout:
        on_line(line.rstrip("\n"))
    return proc.wait()
