"""SSH helpers shared by `synth secrets push`, `synth verify` and `synth deploy`.

Two ways in, both configured by the same `SshOptions` (the user's `--ssh-option` and `--identity`):

- the system `ssh` client, for shell scripts fed through stdin (`secrets push`) and, through
  NIX_SSHOPTS, for nixos-rebuild;
- paramiko under testinfra, for the role checks. Unlike testinfra's own paramiko backend, which
  accepts any host key, the client built here checks host keys against ~/.ssh/known_hosts (and
  UserKnownHostsFile) and refuses unknown ones unless StrictHostKeyChecking says otherwise.

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
from pathlib import Path
from typing import Any

PUSH_MARK = "lc-secret"
PUSH_STATUSES = ("created", "changed", "unchanged")


@dataclass(frozen=True)
class SshOptions:
    """OPTIONS are ssh_config settings as `Key=Value` (or `Key Value`), as for `ssh -o`."""

    options: tuple[str, ...] = ()
    identity: str | None = None
    connect_timeout: int = 10

    def settings(self) -> dict[str, str]:
        """The options as {lowercase key: value}; the first occurrence wins, as with ssh."""
        out: dict[str, str] = {}
        for opt in self.options:
            key, value = split_option(opt)
            out.setdefault(key.lower(), value)
        return out

    def ssh_args(self) -> list[str]:
        """Arguments for the ssh client: the user's options first (ssh keeps the first value)."""
        args: list[str] = []
        for opt in self.options:
            args += ["-o", opt]
        if self.identity is not None:
            args += ["-i", self.identity]
        if "connecttimeout" not in self.settings():
            args += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        return args

    def nix_sshopts(self) -> str:
        """NIX_SSHOPTS for nixos-rebuild / nix copy (a shell-split string), or "" when there is nothing."""
        args: list[str] = []
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


def destination(user: str, address: str) -> str:
    return f"{user}@{address}"


def ssh_argv(user: str, address: str, remote_command: str, opts: SshOptions) -> list[str]:
    """argv running REMOTE_COMMAND on USER@ADDRESS with the system ssh client, never prompting."""
    return ["ssh", *opts.ssh_args(), "-o", "BatchMode=yes", destination(user, address), remote_command]


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


# --------------------------------------------------------------------------- testinfra over paramiko


def _host_key_policy(value: str | None) -> Any:
    import paramiko  # type: ignore[import-untyped]

    if value is None or value.lower() in ("yes", "ask"):
        return paramiko.RejectPolicy()
    # "no", "off" and "accept-new": accept a key that is not known yet (never a changed one:
    # paramiko raises BadHostKeyException for a known host whose key differs).
    return paramiko.AutoAddPolicy()


def paramiko_client(user: str, address: str, opts: SshOptions, timeout: float | None = None) -> Any:
    """A connected paramiko SSHClient that honours the ssh options that matter for it.

    Honoured: StrictHostKeyChecking, UserKnownHostsFile, Port, ConnectTimeout, IdentityFile (and
    `--identity`). Other options only apply to the ssh client (secrets push, nixos-rebuild).
    """
    import logging

    import paramiko

    # paramiko logs every failed handshake with a traceback; the caller reports the exception itself.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False
    settings = opts.settings()
    client = paramiko.SSHClient()
    client.load_system_host_keys()
    known = settings.get("userknownhostsfile")
    for path in known.split() if known else []:
        p = Path(path).expanduser()
        if p.is_file():
            client.load_host_keys(str(p))
    client.set_missing_host_key_policy(_host_key_policy(settings.get("stricthostkeychecking")))
    identity = opts.identity or settings.get("identityfile")
    connect_timeout = float(settings.get("connecttimeout", timeout or opts.connect_timeout))
    client.connect(
        hostname=address,
        port=int(settings.get("port", "22")),
        username=user,
        key_filename=str(Path(identity).expanduser()) if identity else None,
        timeout=connect_timeout,
        banner_timeout=connect_timeout,
        auth_timeout=connect_timeout,
        look_for_keys=identity is None,
    )
    return client


def testinfra_host(user: str, address: str, opts: SshOptions) -> Any:
    """A testinfra Host over paramiko (`paramiko://USER@ADDRESS`) on a client built by paramiko_client."""
    from testinfra.backend.paramiko import ParamikoBackend  # type: ignore[import-untyped]
    from testinfra.host import Host  # type: ignore[import-untyped]

    spec = f"paramiko://{user}@[{address}]" if ":" in address else f"paramiko://{user}@{address}"
    backend = ParamikoBackend(spec, ssh_identity_file=opts.identity, timeout=opts.connect_timeout)
    # ParamikoBackend.client is a cached_property that would connect with testinfra's accept-any
    # host key policy; hand it the client connected above instead.
    backend.__dict__["client"] = paramiko_client(user, address, opts)
    return Host(backend)


def close_testinfra_host(host: Any) -> None:
    client = getattr(host.backend, "__dict__", {}).get("client")
    if client is not None:
        client.close()


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
