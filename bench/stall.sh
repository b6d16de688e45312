#!/usr/bin/env bash
# bench/stall.sh: the broker thread's longest stall while one user catches
# up 100,000 messages by sync and retention then trims over a million rows
# (issue #12's target: <= 2 ms), seen from outside. An idle client of each
# broker sends PINGREQ every millisecond and times the PINGRESP (imbench
# ping): the broker answers it from the same loop that runs the plugin's
# callbacks, so the round trip is how long that loop was busy. A plain
# broker on the same machine is pinged in the same rounds, as the noise
# floor. The clients set TCP_NODELAY: with Nagle the syncing client's
# requests wait for delayed ACKs (40 ms per batch: 100,000 took 8.8 s),
# which spreads the sync thin instead of testing the broker thread.
#
#   bench/stall.sh                 # 100,000 synced, 1,000,000 messages trimmed
#   SYNC_N=20000 TRIM_N=100000 bench/stall.sh     # a quick look
#
# Env: BUILD (default build), SYNC_N, TRIM_N. Brokers on 127.0.0.1, free
# ports, stopped by PID; everything bounded in count and time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=$(cd "${BUILD:-$root/build}" && pwd)
sync_n=${SYNC_N:-100000}
trim_n=${TRIM_N:-1000000}
sync=normal
nodelay=1
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
plugin=$build/mosquitto_im.so
[ -f "$plugin" ] || { echo "stall.sh: $plugin missing: build first" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
work=$(mktemp -d /tmp/imstall.XXXXXX)
chmod 755 "$work"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
imbench=$(find_imbench "$build" "$here")
tag=s$RANDOM

# No reply budget: the sync is the load under test, at full speed.
start_broker plugin 1 "metrics_interval 1
reply_bytes_rate 0"
ppid=$BROKER_PID pport=$BROKER_PORT pconf=$BROKER_CONF
start_broker plain 0
qport=$BROKER_PORT

echo "stall: storing $trim_n messages to trim and $sync_n to sync (plugin broker, port $pport)" >&2
timeout 900 "$imbench" catchup-sync --phase publish --nodelay -n "$trim_n" -T "${tag}t" -p "$pport" -t 880 >/dev/null
timeout 300 "$imbench" catchup-sync --phase publish --nodelay -n "$sync_n" -T "${tag}s" -p "$pport" -t 280 >/dev/null

# The pinger runs through both phases.
timeout 900 "$imbench" ping --nodelay -p "$pport" --port2 "$qport" -t 880 --until "$work/stop" \
	--samples "$work/samples.txt" > "$work/ping.txt" 2> "$work/ping.log" &
pinger=$!
echo "stall: syncing $sync_n messages" >&2
t0=$(date +%s.%N)
timeout 300 "$imbench" catchup-sync --phase sync --nodelay -n "$sync_n" -T "${tag}s" -p "$pport" -t 280 | tee "$work/sync.txt" >&2
t1=$(date +%s.%N)

echo "stall: trimming (retention_messages 1, applied by a reload)" >&2
echo "plugin_opt_retention_messages 1" >> "$pconf"
kill -HUP "$ppid"
want=$(( 2 * (trim_n + sync_n) - 4 ))     # each DM is two rows: inbox and sender's copy
trimmed=0
deadline=$(( $(date +%s) + 600 ))
while [ "$trimmed" -lt "$want" ] && [ "$(date +%s)" -lt "$deadline" ]; do
	trimmed=$(mosquitto_sub -h 127.0.0.1 -p "$pport" -u stall -C 1 -W 5 -t '$SYS/broker/im/store/trimmed' 2>/dev/null || echo 0)
	trimmed=${trimmed:-0}
done
t2=$(date +%s.%N)
touch "$work/stop"
wait "$pinger" || true
echo "stall: $trimmed rows trimmed" >&2

# Longest round trip per broker and phase, from the samples
# ("t_us broker rtt_us", CLOCK_MONOTONIC; broker 0 = plugin, 1 = plain).
# The first sample is taken as the start of the sync phase.
printf '| phase | broker | pings | max µs | pings over 2 ms |\n|---|---|---:|---:|---:|\n'
awk -v t0="$t0" -v t1="$t1" -v t2="$t2" '
	NR == 1 { off = t0 - $1 / 1e6 }
	{ t = $1 / 1e6 + off; ph = (t < t1) ? "sync" : (t < t2 ? "trim" : "after")
	  k = ph " " ($2 == 0 ? "plugin" : "plain"); n[k]++; if ($3 > mx[k]) mx[k] = $3; if ($3 > 2000) over[k]++ }
	END {
		for (k in n) { split(k, kk, " "); printf "| %s | %s | %d | %d | %d |\n", kk[1], kk[2], n[k], mx[k], over[k] + 0 }
	}' "$work/samples.txt" | sort
cat "$work/ping.txt"
