#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined)
# and runs each for a bounded time from the seed corpus in corpus/<target>/.
# Fails on the first crash, leak, sanitizer report or broken invariant; the
# input that did it is left in $OUT/<target>/ and named in the output.
#
#   tests/fuzz/run.sh                   # 20 s per target
#   IM_FUZZ_SECONDS=300 tests/fuzz/run.sh fuzz_control
#   tests/fuzz/run.sh fuzz_frame -runs=0 tests/fuzz/crashes/fuzz_frame/x  # replay
#
# Env: IM_FUZZ_SECONDS (default 20), IM_FUZZ_BUILD (default build-fuzz),
# IM_FUZZ_OUT (default $IM_FUZZ_BUILD/fuzz-out).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${IM_FUZZ_SECONDS:-20}
build=${IM_FUZZ_BUILD:-build-fuzz}
out=${IM_FUZZ_OUT:-$build/fuzz-out}
targets=(fuzz_frame fuzz_route fuzz_proto fuzz_control fuzz_auth)

if [ $# -gt 0 ]; then targets=("$1"); shift; fi

cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DIM_FUZZ=ON -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/$t"
  if [ $# -gt 0 ]; then            # replay / custom arguments
    "$bin" "$@"
    continue
  fi
  work="$out/$t/corpus"
  mkdir -p "$work" "$out/$t/artifacts"
  log="$out/$t/log.txt"
  echo "fuzz: $t for ${secs}s"
  if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
      -print_final_stats=1 -artifact_prefix="$out/$t/artifacts/" \
      "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz: $t ok: ${execs:-?} runs, ${rate:-?} exec/s, $cov"
  else
    failed=1
    echo "fuzz: $t FAILED; last lines of $log:"
    tail -40 "$log"
    ls -1 "$out/$t/artifacts/" | sed "s|^|fuzz: reproducer $out/$t/artifacts/|"
  fi
done
exit $failed
