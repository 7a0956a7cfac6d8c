#!/usr/bin/env bash
# The main job, from a fresh Debian/Ubuntu machine: setup, release build, the default model, then `tandem up`:
# the proxy (HTTP 10002, discovery 30002), one prefill instance (8081/8082) and one decode instance (8083/8084).
# Extra arguments go to `tandem up` (for example --prefill 1 --decode 2). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product tandem
.build/release/tandem model fetch >/dev/null
exec .build/release/tandem up --model default "$@"
