#!/usr/bin/env bash
# Builds tandem-fuzz with libFuzzer (clang's, shipped with the Swift toolchain) and runs each harness for a bounded
# time (TANDEM_FUZZ_SECONDS, default 20 s each) from its committed corpus in Tests/Fuzz/Corpus. A crash, a failed
# check or an input running over 10 s is a failure: libFuzzer saves the input under .build/fuzz-artifacts/TARGET/
# and this script exits non-zero. New inputs libFuzzer finds go to a scratch folder (the corpus stays as committed;
# `tandem-fuzz TARGET -merge=1 Tests/Fuzz/Corpus/TARGET SCRATCH` adds the useful ones).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${TANDEM_FUZZ_SECONDS:-20}
swift build --build-path .build/fuzz --product tandem-fuzz \
  -Xswiftc -sanitize=fuzzer -Xswiftc -DTANDEM_LIBFUZZER 2>&1 | grep -v "unhandled; explicitly declare" || true
bin=.build/fuzz/debug/tandem-fuzz
test -x "$bin" || { echo "fuzz.sh: the libFuzzer build of tandem-fuzz failed" >&2; exit 1; }
for target in kv-frames msgpack request-fields; do
  scratch=$(mktemp -d)
  mkdir -p ".build/fuzz-artifacts/$target"
  echo "== fuzzing $target for ${seconds} s"
  if ! "$bin" "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix=".build/fuzz-artifacts/$target/" "$scratch" "Tests/Fuzz/Corpus/$target" 2>&1 | tail -12; then
    echo "fuzz.sh: $target failed; the input is in .build/fuzz-artifacts/$target/" >&2
    rm -rf "$scratch"
    exit 1
  fi
  rm -rf "$scratch"
done
echo "fuzz.sh: no crash in ${seconds} s per harness"
