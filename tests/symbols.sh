#!/usr/bin/env bash
# Usage: tests/symbols.sh PLUGIN BROKER
#
# Fails if the plugin needs a dynamic symbol that the broker will not
# provide. Mosquitto dlopen()s a plugin with RTLD_NOW, so such a plugin is
# refused at start ("undefined symbol") on that broker only: upstream 2.0.x
# exports to plugins just what its src/linker.syms lists, Debian's build
# exports much more, 2.1 something in between.
#
# Needed: the plugin's undefined (non-weak) dynamic symbols, minus those
# defined by the shared libraries the plugin itself names (DT_NEEDED,
# resolved by ldd). What is left must be among the broker executable's
# dynamic exports. Prints the offending names, and for information the
# broker API names that libmosquitto, not the broker, provides here.
set -euo pipefail
plugin=$1
broker=$2
case "$broker" in
  */*) ;;
  *) broker=$(PATH=$PATH:/usr/sbin command -v "$broker") || { echo "symbols: no $2 on PATH" >&2; exit 1; } ;;
esac
[ -f "$broker" ] || { echo "symbols: no broker at $broker" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# nm -D prints "  U name@VERSION" for undefined and "addr T name@@VERSION"
# for defined symbols: keep the name.
names() { awk '{print $NF}' | sed 's/@.*//' | sort -u; }

nm -D --undefined-only "$plugin" | awk '$1 == "U"' | names >"$tmp/needed"
: >"$tmp/libs"
for lib in $(readelf -d "$plugin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
  path=$(ldd "$plugin" | awk -v l="$lib" '$1 == l && $2 == "=>" {print $3}')
  if [ -z "$path" ] || [ ! -e "$path" ]; then
    echo "symbols: $plugin needs $lib, which ldd does not resolve" >&2
    exit 1
  fi
  nm -D --defined-only "$path" | names >>"$tmp/libs"
done
sort -u -o "$tmp/libs" "$tmp/libs"
nm -D --defined-only "$broker" | names >"$tmp/broker"

comm -23 "$tmp/needed" "$tmp/libs" >"$tmp/from_broker"
comm -23 "$tmp/from_broker" "$tmp/broker" >"$tmp/missing"
# Broker API the broker does not export, so a library of the plugin's
# (libmosquitto) provides it: fine, but worth seeing.
comm -12 "$tmp/needed" "$tmp/libs" | grep '^mosquitto_' | comm -23 - "$tmp/broker" >"$tmp/from_libs" || true

echo "symbols: $(basename "$plugin") on $broker: $(wc -l <"$tmp/needed") needed," \
  "$(wc -l <"$tmp/from_broker") expected from the broker ($(wc -l <"$tmp/broker") exported)," \
  "$(wc -l <"$tmp/missing") missing"
if [ -s "$tmp/from_libs" ]; then
  echo "symbols: provided by the plugin's libraries, not the broker: $(tr '\n' ' ' <"$tmp/from_libs")"
fi
if [ -s "$tmp/missing" ]; then
  echo "symbols: the broker does not export:" >&2
  sed 's/^/  /' "$tmp/missing" >&2
  exit 1
fi
