"""Activation on the machine with a magic rollback (deploy-rs's idea), and the rollback to the
system that ran before.

`synth deploy` sends ACTIVATE_SCRIPT over ssh (stdin of `sh -s`, never a file of the deployer's)
to a machine whose new system is already in its store. The launcher writes the script into a
folder of its own under /run/lemmy-cluster and starts it DETACHED from the ssh session (as a
transient systemd unit, `systemd-run`, where there is one; else `setsid`), so that an activation
that restarts sshd or closes the firewall does not kill it. The detached script

1. records the running system (/run/current-system) as the previous one;
2. for the goals switch and boot, points the system profile at the new system (`nix-env --set`);
3. runs the new system's `bin/switch-to-configuration GOAL`; when that fails it reverts at once;
4. for the goals switch and test, waits CONFIRM_TIMEOUT seconds for the file `confirm` in its
   folder, which the deployer creates over a NEW ssh connection once activation is reported:
   a machine that the deployer can no longer reach reverts BY ITSELF to the previous system
   (profile and activation), without anyone acting.

The launcher waits (at most LAUNCH_WAIT seconds) until the detached script reports `activated`,
`failed` or `reverted` in the file `state` and exits 0 only for `activated`. Goals boot and
dry-activate change nothing that runs, so they are not confirmed.

Everything here is text; synth.commands.deploy runs it.
"""

from __future__ import annotations

import shlex

GOALS = ("switch", "boot", "test", "dry-activate")
CONFIRMED_GOALS = ("switch", "test")
STATE_DIR = "/run/lemmy-cluster/deploy"
PROFILE = "/nix/var/nix/profiles/system"
CURRENT_SYSTEM = "/run/current-system"
LAUNCH_WAIT = 600

ACTIVATE_SCRIPT = r"""#!/bin/sh
# lemmy-cluster: activate NEW with GOAL; revert unless $dir/confirm appears within TIMEOUT seconds.
set -u
new=$1 goal=$2 timeout=$3 dir=$4 profile=$5 current=$6
# A transient systemd unit has systemd's default PATH, which on NixOS holds no nix-env, date or
# sleep: the tools of the running system, then of the new one.
PATH="$current/sw/bin:$new/sw/bin:/nix/var/nix/profiles/default/bin:$PATH"
export PATH
say() { echo "$1" > "$dir/state.tmp" && mv -f "$dir/state.tmp" "$dir/state"; }
prev=$(readlink -f "$current") || prev=
echo "$prev" > "$dir/previous"
revert() {
  echo "lemmy-cluster: reverting to $prev ($1)" >&2
  if [ -z "$prev" ]; then say "failed"; exit 1; fi
  case $goal in
    switch|boot) nix-env -p "$profile" --set "$prev" ;;
  esac
  case $goal in
    switch|test) "$prev/bin/switch-to-configuration" "$goal" ;;
    boot) "$prev/bin/switch-to-configuration" boot ;;
  esac
}
case $goal in
  switch|boot)
    if ! nix-env -p "$profile" --set "$new"; then say "failed"; exit 1; fi ;;
esac
if ! "$new/bin/switch-to-configuration" "$goal"; then
  revert "the activation of $new failed"
  say "failed"
  exit 1
fi
case $goal in
  switch|test) ;;
  *) say "activated"; say "done"; exit 0 ;;
esac
say "activated"
if [ "$timeout" -eq 0 ]; then say "done"; exit 0; fi
end=$(( $(date +%s) + timeout ))
while [ ! -e "$dir/confirm" ]; do
  if [ "$(date +%s)" -ge "$end" ]; then
    revert "no confirmation from the deployer within $timeout s"
    say "reverted"
    exit 1
  fi
  sleep 0.5
done
say "done"
"""


def launcher(
    new: str,
    goal: str,
    confirm_timeout: int,
    token: str,
    *,
    profile: str = PROFILE,
    current_system: str = CURRENT_SYSTEM,
    state_dir: str = STATE_DIR,
    detach: str = "auto",
) -> str:
    """The shell script (for `sh -s` on the machine, as root) that starts ACTIVATE_SCRIPT detached
    and waits for its report. DETACH "auto": a transient systemd unit where systemd runs, else
    setsid; "setsid": always setsid."""
    if goal not in GOALS:
        raise ValueError(f"unknown goal {goal!r}; choose one of {', '.join(GOALS)}")
    d = f"{state_dir}/{token}"
    q = shlex.quote
    args = " ".join(q(a) for a in (new, goal, str(confirm_timeout), d, profile, current_system))
    unit = f"lemmy-cluster-deploy-{token}"
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            f"mkdir -p {q(d)}",
            f"cat > {q(d + '/activate.sh')} <<'LC_ACTIVATE_EOF'",
            ACTIVATE_SCRIPT.rstrip("\n"),
            "LC_ACTIVATE_EOF",
            f"if [ {q(detach)} = auto ] && command -v systemd-run >/dev/null 2>&1 && [ -d /run/systemd/system ]; then",
            f"  systemd-run --quiet --collect --unit={q(unit)} --property=Type=exec "
            f"/bin/sh {q(d + '/activate.sh')} {args}",
            "else",
            f"  setsid /bin/sh {q(d + '/activate.sh')} {args} </dev/null >{q(d + '/log')} 2>&1 &",
            "fi",
            f"i=0; while [ $i -lt {LAUNCH_WAIT * 2} ]; do",
            f"  state=$(cat {q(d + '/state')} 2>/dev/null || true)",
            "  case $state in",
            '    activated|done) echo "lemmy-cluster: activated $(cat '
            + q(d + "/previous")
            + ") -> "
            + q(new)
            + '"; exit 0 ;;',
            f'    failed|reverted) echo "lemmy-cluster: activation $state" >&2; '
            f"cat {q(d + '/log')} >&2 2>/dev/null || true; exit 1 ;;",
            "  esac",
            "  sleep 0.5; i=$((i + 1))",
            "done",
            'echo "lemmy-cluster: no report from the activation" >&2',
            "exit 1",
            "",
        ]
    )


def confirm_command(token: str, state_dir: str = STATE_DIR) -> str:
    """Run over a NEW ssh connection after activation: confirms, then waits until the machine saw it."""
    d = shlex.quote(f"{state_dir}/{token}")
    return (
        f"touch {d}/confirm || exit 1; i=0; while [ $i -lt 20 ]; do "
        f'state=$(cat {d}/state 2>/dev/null); [ "$state" = done ] && exit 0; '
        f'[ "$state" = reverted ] && {{ echo "lemmy-cluster: the machine reverted before the confirmation" >&2; '
        "exit 1; }; "
        "sleep 0.5; i=$((i + 1)); done; exit 1"
    )


def rollback_script(before: str, goal: str, profile: str = PROFILE) -> str:
    """Back to BEFORE, the system that ran before this deploy (the profile too, for switch)."""
    b = shlex.quote(before)
    if goal == "test":
        return f"{b}/bin/switch-to-configuration test"
    return f"nix-env -p {shlex.quote(profile)} --set {b} && {b}/bin/switch-to-configuration switch"


# After a failed confirmation, how long past its own deadline a machine may take to revert
# (switch-to-configuration of the previous system restarts services: seconds to minutes).
REVERT_WAIT = 300


def state_command(token: str, state_dir: str = STATE_DIR) -> str:
    """The activation's state on the machine: activated, reverted, failed or done (empty: none)."""
    d = shlex.quote(f"{state_dir}/{token}")
    return f"cat {d}/state 2>/dev/null || true"
