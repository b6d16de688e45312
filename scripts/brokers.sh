#!/usr/bin/env bash
# Builds the upstream Mosquitto brokers the integration suite also runs
# against, from the source archives in $IM_VENDOR_DIR (default
# <repo>/../shared/vendor; see its README.md):
#
#   mosquitto-2.0.20.tar.gz       -> OUT/2.0.20/mosquitto
#   mosquitto-2.1-develop.tar.gz  -> OUT/2.1/mosquitto
#
# OUT is the first argument (default build/brokers); tests/CMakeLists.txt
# registers the integration tests once more for every OUT/<name>/mosquitto
# it finds (test_dm@2.0.20, test_dm@2.1). Only the broker binary is built:
# no clients, apps, plugins, tests or man pages. A previous build is reused
# while the archive and the build options are unchanged. Without the
# archives it prints one line and builds nothing: the suite then runs
# against Debian's broker only (or the builds an earlier run left in OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=${IM_VENDOR_DIR:-$PWD/../shared/vendor}
out=${1:-build/brokers}

# name, archive, cmake options, the version `mosquitto -h` must print.
names=(2.0.20 2.1)
declare -A archive=([2.0.20]=mosquitto-2.0.20.tar.gz [2.1]=mosquitto-2.1-develop.tar.gz)
declare -A version=([2.0.20]=2.0.20 [2.1]=2.1.)
common="-DCMAKE_BUILD_TYPE=Release -DDOCUMENTATION=OFF -DWITH_CLIENTS=OFF -DWITH_APPS=OFF -DWITH_PLUGINS=OFF"
declare -A options=([2.0.20]="$common" [2.1]="$common -DWITH_TESTS=OFF")

present=()
for n in "${names[@]}"; do
  [ -f "$vendor/${archive[$n]}" ] && present+=("$n")
done
if [ ${#present[@]} -eq 0 ]; then
  # Builds from an earlier run stay in use (ctest finds them); say so.
  old=()
  for n in "${names[@]}"; do [ -x "$out/$n/mosquitto" ] && old+=("$n"); done
  if [ ${#old[@]} -eq 0 ]; then
    echo "brokers: no Mosquitto source archives in $vendor; integration tests run against Debian's broker only"
  else
    echo "brokers: no Mosquitto source archives in $vendor; reusing the earlier builds in $out: ${old[*]}"
  fi
  exit 0
fi

# Build dependencies (TLS, and cJSON which 2.1 requires), apt only when missing.
missing=()
for p in build-essential cmake libssl-dev libcjson-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "brokers: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

for n in "${names[@]}"; do
  tgz="$vendor/${archive[$n]}"
  if [ ! -f "$tgz" ]; then
    echo "brokers: $tgz is missing; no $n broker"
    continue
  fi
  bin="$out/$n/mosquitto"
  work="$out/work/$n"
  # What the binary was built from; equal stamps mean nothing to do.
  stamp="$(sha256sum <"$tgz" | cut -d' ' -f1) ${options[$n]}"
  if [ -x "$bin" ] && [ "$(cat "$out/$n/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "brokers: $n reused ($bin)"
    continue
  fi
  start=$SECONDS
  rm -rf "$work" "$out/$n"
  mkdir -p "$work/src" "$out/$n"
  log="$work/build.log"
  tar -xzf "$tgz" -C "$work/src" --strip-components=1
  # shellcheck disable=SC2086  # options are words
  if ! { cmake -S "$work/src" -B "$work/build" ${options[$n]} &&
         cmake --build "$work/build" -j"$(nproc)" --target mosquitto; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "brokers: building $n failed; the whole log is $log" >&2
    exit 1
  fi
  cp "$work/build/src/mosquitto" "$bin"
  # `mosquitto -h` prints its version on stdout (2.1 adds a line on
  # stderr) and exits non-zero.
  got=$("$bin" -h 2>/dev/null | grep -m 1 '^mosquitto version' || true)
  case "$got" in
    "mosquitto version ${version[$n]}"*) ;;
    *) echo "brokers: $bin says '$got', expected version ${version[$n]}" >&2; exit 1 ;;
  esac
  echo "$stamp" >"$out/$n/stamp"
  echo "brokers: $n built in $((SECONDS - start)) s ($bin, $got)"
done
