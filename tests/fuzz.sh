#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 45), on the
# stable toolchain without a sanitizer (`-s none`: libFuzzer's coverage
# guidance still works; Rust's own checks catch what matters here: panics,
# arithmetic overflow (`-a` turns debug assertions on), out-of-bounds). Each run starts from the
# hand-written fuzz/seeds/<target>/ and the committed corpus in
# fuzz/corpus/<target>/, and adds what it finds to the corpus (`cargo fuzz
# cmin -s none --release <target>` minimizes it before a commit); a
# crash stops the script with the input saved under fuzz/artifacts/<target>/.
# Commit that input as fuzz/seeds/<target>/crash-<what> with the fix:
# tests/fuzz_corpus.rs replays it on every `cargo test`.
# Usage: tests/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-45}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(sip_message sip_transactions sdp rtp flow_file config_file)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
# Build once for all targets (the first build compiles every dependency with
# coverage instrumentation; later runs reuse fuzz/target).
cargo fuzz build -s none --release -a >/dev/null
fail=0
for t in "${TARGETS[@]}"; do
  corpus=fuzz/corpus/$t
  before=$(ls "$corpus" | wc -l)
  # -rss_limit_mb: a parser that balloons on some input is a finding too.
  if cargo fuzz run -s none --release -a "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=1024 -max_len=65536 \
      -print_final_stats=1 >"/tmp/fuzz-$t.log" 2>&1; then
    runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "/tmp/fuzz-$t.log" | tail -1)
    echo "fuzz $t: ${runs:-?} runs in ${SECONDS_EACH}s, corpus $before -> $(ls "$corpus" | wc -l), no crash"
  else
    echo "fuzz $t: FAILED"
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "/tmp/fuzz-$t.log" | head -20
    fail=1
  fi
done
exit $fail
