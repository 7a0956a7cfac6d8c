#!/usr/bin/env bash
# Installs what Tandem needs on a Debian/Ubuntu machine, skipping what is already there (safe to run again):
# libzmq (discovery), pkg-config, Python's pip (model download) and venv (test peers), iproute2 (the test hosts of scripts/hosts.sh), openssl (test certificates), etcd-server (fleet discovery tests).
# Swift 6 must already be on PATH.
set -euo pipefail

need=()
for pkg in libzmq3-dev pkg-config iproute2 openssl etcd-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# The peers' venv (scripts/peers.sh): Debian splits ensurepip out of python3.
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v swift >/dev/null 2>&1 || { echo "setup: swift is not on PATH (Swift 6 toolchain required)" >&2; exit 1; }
echo "setup: ok (swift $(swift --version 2>/dev/null | head -1 | sed 's/.*version \([0-9.]*\).*/\1/'), libzmq $(pkg-config --modversion libzmq))" >&2
