#!/usr/bin/env bash
# Builds tandem-fuzz with libFuzzer (clang's, shipped with the Swift toolchain) and runs each harness for a bounded
# time (TANDEM_FUZZ_SECONDS, default 20 s each) from its committed corpus in Tests/Fuzz/Corpus. A crash, a failed
# check or an input running over 10 s is a failure: libFuzzer saves the input under .build/fuzz-artifacts/TARGET/
# and this script exits non-zero. New inputs libFuzzer finds go to a scratch folder (the corpus stays as committed;
# `tandem-fuzz TARGET -merge=1 Tests/Fuzz/Corpus/TARGET SCRATCH` adds the useful ones).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${TANDEM_FUZZ_SECONDS:-20}
# Coverage instrumentation for the Swift code (passed to the compiler's frontend only, so that the link does not
# add libFuzzer's own main), and libFuzzer without its main: tandem-fuzz's main picks the target, then runs
# libFuzzer's driver. A debug build: it compiles in half the time of a release one, and the harnesses are fast.
fuzzer_lib=$(dirname "$(dirname "$(command -v swift)")")/lib/clang
fuzzer_lib=$(find "$fuzzer_lib" -name 'libclang_rt.fuzzer_no_main-x86_64.a' | head -1)
test -n "$fuzzer_lib" || { echo "fuzz.sh: libclang_rt.fuzzer_no_main is not in the Swift toolchain" >&2; exit 1; }
swift build --build-path .build/fuzz --product tandem-fuzz -Xswiftc -DTANDEM_LIBFUZZER \
  -Xswiftc -Xfrontend -Xswiftc -sanitize=fuzzer -Xlinker "$fuzzer_lib" -Xlinker -lstdc++ 2>&1 \
  | grep -v -E "unhandled; explicitly declare|^warning: 'swift-" | cut -c1-400 || true
bin=.build/fuzz/debug/tandem-fuzz
test -x "$bin" || { echo "fuzz.sh: the libFuzzer build of tandem-fuzz failed" >&2; exit 1; }
# Swift's own backtracer would take a trap's signal first and exit before libFuzzer saves the input.
export SWIFT_BACKTRACE=enable=no
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
