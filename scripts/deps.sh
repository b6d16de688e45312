#!/usr/bin/env bash
# Installs the Debian 12 packages mosquitto-im builds, runs and tests with.
# Runs apt only when something is missing, so a second run costs nothing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config
      mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev
      libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
      libsqlite3-dev sqlite3 libssl-dev libjwt-dev zlib1g-dev
      libpq-dev postgresql
      libnats-dev nats-server
      libedit-dev faketime
      clang libclang-rt-14-dev openssl
      python3-paho-mqtt python3-protobuf python3-pytest python3-pip python3-setuptools
      lintian
      prometheus-mqtt-exporter
      chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The browser test (tests/e2e) runs on node + npm: Debian's, unless a node
# (e.g. NodeSource's, which brings its own npm) is already there.
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
