#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine: setup, lint, release build (no warnings allowed),
# the default model, then every test target. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== lint" >&2
swift format lint --strict -r Sources Tests Package.swift

echo "== build (release)" >&2
build_log=$(mktemp)
swift build -c release --build-tests 2>&1 | tee "$build_log"
# Warnings in our own code or package fail the build; those SwiftPM prints about dependencies' packaging
# (e.g. "'swift-distributed-tracing': found 1 file(s) which are unhandled") are not ours to fix.
if grep "warning:" "$build_log" | grep -v "/.build/checkouts/" \
  | grep -qv -E "^warning: '(swift-[a-z-]+|async-http-client|hummingbird)': "; then
  echo "test: the build has warnings (see above)" >&2
  exit 1
fi

echo "== model" >&2
.build/release/tandem model fetch
.build/release/tandem model fetch gemma3-270m

echo "== peers" >&2
scripts/peers.sh

echo "== tests" >&2
if [ $# -gt 0 ]; then
  exec swift test -c release --skip-build "$@"
fi
swift test -c release --skip-build --skip HostsTests
# Across hosts (network namespaces, root): on their own, so that no other test competes for the two cores while
# they measure. Each test removes its hosts; a run killed midway leaves them to the next `hosts.sh up`.
echo "== tests across hosts" >&2
trap 'scripts/hosts.sh down >/dev/null 2>&1 || true' EXIT
swift test -c release --skip-build --filter HostsTests

# libFuzzer on the decoders of what others send (KV frames, discovery msgpack, request fields), a bounded time each;
# a crash fails the run (scripts/fuzz.sh saves the input).
echo "== fuzzing" >&2
scripts/fuzz.sh
