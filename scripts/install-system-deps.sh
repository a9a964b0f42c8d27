#!/usr/bin/env bash
# Install the system packages the tests use (Debian/Ubuntu, as root): Nix's nix-instantiate for
# parse/eval checks, nginx and PostgreSQL for the live tests, iproute2 for network namespaces,
# OpenSSH so the live tests reach their hosts over SSH, jq for the backend's config script and
# Garage's setup script, openssl to cross-check Garage node keys, Graphviz (`dot`) for
# `synth diagram` (svg and png) and its tests; with --bench also wrk, for `make bench`.
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
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# `make bench` measures requests per second with wrk (a Python load generator stands in without it).
if [ "${1:-}" = "--bench" ]; then
    have wrk || need+=(wrk)
fi

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! have apt-get; then
    echo "install-system-deps: missing ${need[*]}; install them (tests that need them are skipped outside CI)" >&2
    exit 0
fi
echo "install-system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
