#!/usr/bin/env bash
# Install the system packages the tests use (Debian/Ubuntu, as root): Nix's nix-instantiate for
# parse/eval checks, nginx and PostgreSQL for the live tests, iproute2 for network namespaces,
# OpenSSH so the live tests reach their hosts over SSH, jq for the backend's config script and
# Garage's setup script, openssl to cross-check Garage node keys, Graphviz (`dot`) for
# `synth diagram` (svg and png) and its tests; for the live tests of automatic failover etcd
# (server and etcdctl), HAProxy, nftables (network partitions), curl, and Patroni from PyPI in a
# venv of Debian's python3 under /opt (the postgres user runs it: it cannot run a Python that lives
# under root's home); for the live tests of the WireGuard mesh wireguard-go (userspace: the test
# machine's kernel has no WireGuard module), wireguard-tools (wg), tcpdump (the underlay capture)
# and ping (the mesh check makes traffic with it, as `synth verify` does); rclone for the live test
# of the images bucket's backup (tests/live/test_bucket_backup.py);
# with --bench also wrk, for `make bench`.
# Installs only what is missing; does nothing (but say so) when not root.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have nix-instantiate || need+=(nix-bin)
have nginx || [ -x /usr/sbin/nginx ] || need+=(nginx)
ls /usr/lib/postgresql/*/bin/pg_basebackup >/dev/null 2>&1 || need+=(postgresql)
have ip || need+=(iproute2)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
have ssh-keygen || need+=(openssh-client)
have jq || need+=(jq)
have openssl || need+=(openssl)
have dot || need+=(graphviz)
have awk || need+=(gawk)
have curl || need+=(curl)
[ -x /usr/bin/etcd ] || need+=(etcd-server)
[ -x /usr/bin/etcdctl ] || need+=(etcd-client)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/sbin/nft ] || need+=(nftables)
[ -x /usr/bin/wireguard-go ] || need+=(wireguard-go)
[ -x /usr/bin/wg ] || need+=(wireguard-tools)
[ -x /usr/bin/tcpdump ] || [ -x /usr/sbin/tcpdump ] || need+=(tcpdump)
have ping || need+=(iputils-ping)
# pgBackRest for the backup live tests (Debian: 2.45, which speaks S3 only over TLS; they use a posix repository).
[ -x /usr/bin/pgbackrest ] || need+=(pgbackrest)
have rsync || need+=(rsync)  # modules/backup/scripts/pictrs-backup.sh and its test
[ -x /usr/bin/rclone ] || need+=(rclone)  # the images bucket's backup procedure (README) and its live test
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The Patroni venv is made from Debian's own python3, which needs its python3-venv too.
[ ! -x /usr/bin/python3 ] || /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

# Patroni as nixpkgs ships it on the pinned NixOS (tests/live/patroni.py: PATRONI_VERSION).
PATRONI_VERSION=4.1.4
PATRONI_VENV=/opt/lemmy-cluster-test/patroni-$PATRONI_VERSION
patroni_venv() {
    [ -x "$PATRONI_VENV/bin/patroni" ] && return 0
    [ "$(id -u)" -eq 0 ] && [ -x /usr/bin/python3 ] || {
        echo "install-system-deps: Patroni is not installed in $PATRONI_VENV (needs root); the live Patroni tests are skipped outside CI" >&2
        return 0
    }
    echo "install-system-deps: installing Patroni $PATRONI_VERSION in $PATRONI_VENV"
    install -d -m 0755 "$(dirname "$PATRONI_VENV")"
    /usr/bin/python3 -m venv "$PATRONI_VENV"
    log=$(mktemp)
    if ! "$PATRONI_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "patroni[etcd3]==$PATRONI_VERSION" "psycopg[binary]==3.3.9" >"$log" 2>&1; then
        cat "$log" >&2
        rm -rf "$PATRONI_VENV" "$log"
        return 1
    fi
    rm -f "$log"
    chmod -R a+rX "$PATRONI_VENV"
}
# `make bench` measures requests per second with wrk (a Python load generator stands in without it).
if [ "${1:-}" = "--bench" ]; then
    have wrk || need+=(wrk)
fi

if [ ${#need[@]} -eq 0 ]; then
    patroni_venv
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! have apt-get; then
    echo "install-system-deps: missing ${need[*]}; install them (tests that need them are skipped outside CI)" >&2
    exit 0
fi
echo "install-system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian's packages start their services (etcd, haproxy) where systemd runs: the tests start their own.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
patroni_venv
