#!/usr/bin/env bash
# The main job, from a fresh Debian/Ubuntu machine: setup, release build, the default model, then run Tandem.
# Until the proxy and instance issues land, this generates from the default model with the engine (the best part
# that runs today); it will become `tandem up` (proxy + one prefill + one decode instance).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product tandem
.build/release/tandem model fetch >/dev/null
exec .build/release/tandem generate --model default \
  --messages '[{"role":"user","content":"What is disaggregated prefill/decode serving?"}]' --max-tokens 64 "$@"
