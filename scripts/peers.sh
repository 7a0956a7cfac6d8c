#!/usr/bin/env bash
# Installs the real peers the interop tests run against into a venv at .build/peers (safe to run again):
# vllm-router 0.1.17 and the openai client 3.57.0 from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.build/peers
if [ -x "$venv/bin/vllm-router" ] && "$venv/bin/pip" show vllm-router 2>/dev/null | grep -q '^Version: 0.1.17$' \
  && "$venv/bin/pip" show openai 2>/dev/null | grep -q '^Version: 3.57.0$'; then
  exit 0
fi
mkdir -p .build
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check vllm-router==0.1.17 openai==3.57.0
echo "peers: vllm-router $("$venv/bin/pip" show vllm-router | sed -n 's/^Version: //p'), openai $("$venv/bin/pip" show openai | sed -n 's/^Version: //p') in $venv" >&2
