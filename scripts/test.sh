#!/usr/bin/env bash
# Builds mosquitto-im and runs the whole test suite twice: a normal build,
# then the same tests with AddressSanitizer + UndefinedBehaviorSanitizer
# (the broker runs with the ASan runtime preloaded; any report naming the
# plugin fails the test). Set IM_SANITIZE_RUN=0 to skip the second pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)
# The chat page's packages, exactly as package-lock.json pins them.
(cd examples/web && npm ci --no-audit --no-fund)

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

if [ "${IM_SANITIZE_RUN:-1}" != "0" ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DIM_SANITIZE=ON
  cmake --build build-asan -j"$jobs"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j"$jobs")
fi

# Third step: each libFuzzer target of tests/fuzz for IM_FUZZ_SECONDS (default
# 20; 0 skips), from the committed seed corpus. Fails on any crash.
if [ "${IM_FUZZ_SECONDS:-20}" != "0" ]; then
  IM_FUZZ_SECONDS=${IM_FUZZ_SECONDS:-20} tests/fuzz/run.sh
fi
