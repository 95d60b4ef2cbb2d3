#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each (default
# 60), in turn, JOBS at a time (default 1), with a 1 s time limit and a
# 2 GiB memory limit per input (so a policy whose groups blow up is a
# finding, not a hang). Seeds come from fuzz/seeds/TARGET (committed);
# what the fuzzer learns goes to fuzz/corpus/TARGET (not committed).
# A crash fails the script and leaves its input in fuzz/artifacts/TARGET.
#
#   bash scripts/fuzz.sh            # every target, 60 s each
#   SECONDS_EACH=600 JOBS=2 bash scripts/fuzz.sh
#   TARGETS="policy dns" SECONDS_EACH=30 bash scripts/fuzz.sh
#
# cargo-fuzz needs nightly features of rustc; this machine has one stable
# toolchain, so RUSTC_BOOTSTRAP=1 enables them (the sanitizer flags only).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${SECONDS_EACH:-60}
JOBS=${JOBS:-1}
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
all=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^weft-fuzz$' || true)
TARGETS=${TARGETS:-$all}
for t in $TARGETS; do
  cargo fuzz build -O "$t" 2>&1 | grep -E '^(error|warning)' -A5 || true
done
run() {
  local t=$1
  mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
  local log="artifacts/$t/run.log"
  if cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -timeout=1 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    local execs cov
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    echo "fuzz $t: ok, ${execs:-?} executions in ${SECONDS_EACH}s, coverage ${cov:-?} edges"
  else
    echo "fuzz $t: FAILED (see fuzz/$log)"; tail -30 "$log"; return 1
  fi
}
failed=0
pids=()
for t in $TARGETS; do
  run "$t" & pids+=($!)
  if [ "${#pids[@]}" -ge "$JOBS" ]; then
    wait "${pids[0]}" || failed=1; pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
exit $failed
