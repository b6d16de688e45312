#!/usr/bin/env bash
# Builds mosquitto-im and runs the whole test suite: a normal build, then
# the same tests with AddressSanitizer + UndefinedBehaviorSanitizer (the
# broker runs with the ASan runtime preloaded; any report naming the plugin
# fails the test), then the threaded tests under ThreadSanitizer, then the
# Debian package test, then the fuzzers. IM_SANITIZE_RUN=0, IM_TSAN_RUN=0,
# IM_FUZZ_SECONDS=0 skip a pass.
#
# Brokers: Debian's mosquitto always; upstream 2.0.20 and 2.1 too when
# scripts/brokers.sh finds their source archives (tests test_x@2.0.20,
# test_x@2.1). The sanitizer passes run Debian's broker only, which keeps
# the whole run within about 15 minutes on 2 cores; IM_SANITIZE_BROKERS=all
# runs the upstream brokers in the ASan pass too. The package test runs as
# root only.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)
# The JavaScript packages, exactly as their package-lock.json pin them.
# The npm client package first: examples/web depends on it (file:), and
# its `prepare` step makes src/proto.js from proto/im.proto.
(cd clients/js && npm ci --no-audit --no-fund)
(cd examples/web && npm ci --no-audit --no-fund)

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
# ctest's closing line, kept for the summary at the end.
run_ctest() {
  (cd "$1" && ctest --output-on-failure -j"$jobs") | tee -a "$summary"
}

# Seconds per step, for the closing line.
times=()
t0=$SECONDS
lap() { times+=("$1 $((SECONDS - t0)) s"); t0=$SECONDS; }

scripts/brokers.sh build/brokers
lap brokers
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
run_ctest build
lap tests

# The sanitizer passes run the PostgreSQL and cluster tests on upstream
# 2.0.20 (tests/CMakeLists.txt says why not Debian's broker there).
pg_broker=""
[ -x build/brokers/2.0.20/mosquitto ] && pg_broker=$PWD/build/brokers/2.0.20/mosquitto

if [ "${IM_SANITIZE_RUN:-1}" != "0" ]; then
  brokers_dir=$PWD/build-asan/no-brokers          # none: Debian's only
  [ "${IM_SANITIZE_BROKERS:-debian}" = "all" ] && brokers_dir=$PWD/build/brokers
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DIM_SANITIZE=ON -DIM_BROKERS_DIR="$brokers_dir" \
    -DIM_PG_MOSQUITTO="$pg_broker"
  cmake --build build-asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1 run_ctest build-asan
  lap sanitizers
fi

# ThreadSanitizer over the tests that drive the store worker (the broker
# runs with libtsan preloaded; a report through the plugin fails the test).
# IM_TSAN_RUN=0 skips it.
if [ "${IM_TSAN_RUN:-1}" != "0" ]; then
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DIM_TSAN=ON -DIM_BROKERS_DIR="$PWD/build-tsan/no-brokers" \
    -DIM_PG_MOSQUITTO="$pg_broker"
  cmake --build build-tsan -j"$jobs"
  run_ctest build-tsan
  lap tsan
fi

# The Debian package: build, lintian, install, chat, purge (root only).
tests/package/run.sh
lap package

# Third step: each libFuzzer target of tests/fuzz for IM_FUZZ_SECONDS (default
# 20; 0 skips), from the committed seed corpus. Fails on any crash.
if [ "${IM_FUZZ_SECONDS:-20}" != "0" ]; then
  IM_FUZZ_SECONDS=${IM_FUZZ_SECONDS:-20} tests/fuzz/run.sh
  lap fuzz
fi

# One closing line for the whole run (every step above stops the script on
# a failure, so reaching here means none failed).
total=$(awk '/tests failed out of/ {n += $NF} END {print n + 0}' "$summary")
echo "tests: $total passed, 0 failed ($(IFS=,; echo "${times[*]}" | sed 's/,/, /g'))"
