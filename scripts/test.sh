#!/usr/bin/env bash
# Builds mosquitto-im and runs the whole test suite twice: a normal build,
# then the same tests with AddressSanitizer + UndefinedBehaviorSanitizer
# (the broker runs with the ASan runtime preloaded; any report naming the
# plugin fails the test). Set IM_SANITIZE_RUN=0 to skip the second pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

if [ "${IM_SANITIZE_RUN:-1}" != "0" ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DIM_SANITIZE=ON
  cmake --build build-asan -j"$jobs"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j"$jobs")
fi
