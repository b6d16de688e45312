#!/usr/bin/env bash
# Builds the plugin and runs Mosquitto with it on 127.0.0.1:1883, storing
# messages in ./var/im.db. Ctrl-C stops the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
mkdir -p var
# Started as root, mosquitto drops to the 'mosquitto' user before it loads
# the plugin: the store's folder must be writable by that user.
if [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1; then
  chown mosquitto: var var/im.db* 2>/dev/null || chown mosquitto: var
fi
exec mosquitto -c examples/mosquitto.conf "$@"
