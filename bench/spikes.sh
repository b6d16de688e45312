#!/usr/bin/env bash
# bench/spikes.sh: paced DMs with every message's latency kept, lined up
# against what the brokers were doing at that moment. See
# docs/PERFORMANCE.md, "Latency spikes at 2,000 msgs/s".
#
#   bench/spikes.sh                               # plain vs plugin, QoS 1, 5 rounds
#   bench/spikes.sh --qos 2 --pairs 10 --rounds 6
#   bench/spikes.sh --modes "plain plugin plugin:checkpoint=inline"
#   bench/spikes.sh --trace --sched               # + slow system calls, context switches
#
# Modes: "plain", "plugin", or "plugin:key=value,key=value" (plugin options
# for an A/B in the same run); "--so NAME=PATH" adds a mode NAME (and
# NAME:options) that loads another build of the plugin (before/after).
# Each mode gets one broker for all its rounds (as bench/run.sh: the store
# grows round after round); rounds rotate the order. Per run: imbench dm
# -r RATE --lat-log (send stamp and latency of every message,
# CLOCK_MONOTONIC), the plugin's $SYS/broker/im/stats every
# second (metrics_interval 1), and with --trace every system call of the
# broker's threads that took >= --trace-ms (perf trace, tracepoints: no
# ptrace stops). bench/spikes.py then finds the slow episodes (messages over
# --slow-ms) and prints, per episode, what the metrics and the traced calls
# of those seconds say (--sched, --dstacks: the context switches). Brokers
# on 127.0.0.1, free ports, stopped by PID.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build="$root/build"
rounds=5
rate=2000
msgs=20000
qos=1
pairs=1
modes="plain plugin"
trace=0
sched=0
dstacks=0
trace_ms=2
slow_ms=20
out=""
keep=0
# shellcheck disable=SC2034  # sync and keep are read by lib.sh
sync=normal
nodelay=1
declare -A so_of

usage() {
	sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
	cat <<EOF
options:
  --rounds N      rounds (default 5)
  --rate R        msgs/s offered (default 2000)
  -n N            messages per run (default 20000)
  --qos Q         1 or 2 (default 1)
  --pairs P       sender/receiver pairs (default 1)
  --modes "..."   (default "plain plugin")
  --trace         record slow system calls with perf trace
  --trace-ms MS   what counts as slow for --trace (default 2)
  --sched         record every context switch and wake-up of the machine (perf,
                  -a): who ran while a broker thread waited, and whether it was
                  asleep, in D, or woken and waiting for a CPU
  --dstacks       the kernel and user stack of every switch into D (a wait
                  for I/O or a kernel lock: what a blocked thread waited on)
  --slow-ms MS    a message slower than this starts an episode (default 20)
  --build DIR     build dir (default build)
  --so NAME=PATH  mode NAME loads the plugin PATH (e.g. the parent commit's build)
  --out DIR       results (default bench/out/spikes-<time>)
  --keep          keep the brokers' directories
EOF
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--rounds) rounds=$2; shift ;;
	--rate) rate=$2; shift ;;
	-n) msgs=$2; shift ;;
	--qos) qos=$2; shift ;;
	--pairs) pairs=$2; shift ;;
	--modes) modes=$2; shift ;;
	--sched) sched=1; command -v perf >/dev/null || { echo "spikes.sh: --sched needs perf" >&2; exit 1; } ;;
	--dstacks) dstacks=1; command -v perf >/dev/null || { echo "spikes.sh: --dstacks needs perf" >&2; exit 1; } ;;
	--trace) trace=1; command -v perf >/dev/null || { echo "spikes.sh: --trace needs perf" >&2; exit 1; } ;;
	--trace-ms) trace_ms=$2; shift ;;
	--slow-ms) slow_ms=$2; shift ;;
	--build) build=$(cd "$2" && pwd); shift ;;
	--out) out=$2; shift ;;
	--so) so_of[${2%%=*}]=$(cd "$(dirname "${2#*=}")" && pwd)/$(basename "${2#*=}"); shift ;;
	--keep) keep=1 ;;
	-h|--help) usage ;;
	*) echo "spikes.sh: unknown option $1" >&2; usage ;;
	esac
	shift
done

mosq=$(command -v mosquitto || true)
[ -n "$mosq" ] || mosq=/usr/sbin/mosquitto
plugin_default="$build/mosquitto_im.so"
[ -f "$plugin_default" ] || { echo "spikes.sh: $plugin_default missing" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
work=$(mktemp -d /tmp/imspikes.XXXXXX)
chmod 755 "$work"
side_pids=()
cleanup() {
	local p
	for p in "${side_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	bench_cleanup
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -n "$out" ] || out="$root/bench/out/spikes-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
imbench=$(find_imbench "$build" "$here")
timeout_s=$(( msgs * 3 / rate + 60 ))

# CLOCK_REALTIME - CLOCK_MONOTONIC, for the wall-clock stamps of perf
# trace and of the metrics lines.
/usr/bin/python3 -c 'import time; print("%.6f" % (time.time() - time.monotonic()))' > "$out/clock-offset"

declare -A pid_of port_of
read -r -a mode_list <<< "$modes"
for m in "${mode_list[@]}"; do
	name=${m%%:*}
	extra=""
	if [ "$name" != plain ]; then
		plugin=$plugin_default
		if [ "$name" != plugin ]; then
			[ -n "${so_of[$name]:-}" ] || { echo "spikes.sh: mode $name: no --so $name=PATH" >&2; exit 2; }
			plugin=${so_of[$name]}
		fi
		extra="metrics_interval 1"
		if [ "$m" != "$name" ]; then extra+=$'\n'$(printf '%s' "${m#*:}" | tr ',' '\n' | tr '=' ' '); fi
		start_broker "$name" 1 "$extra"
	else
		start_broker "plain" 0
	fi
	pid_of[$m]=$BROKER_PID; port_of[$m]=$BROKER_PORT
	safe=$(printf '%s' "$m" | tr -c 'A-Za-z0-9_.-' '_')
	echo "$m pid=$BROKER_PID port=$BROKER_PORT dir=$BROKER_DIR plugin=${plugin:-}" >> "$out/brokers.txt"
	if [ "$name" != plain ]; then
		# Wall-clock stamp + the JSON, one line a second.
		# shellcheck disable=SC2016  # a topic, not an expansion
		mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -t '$SYS/broker/im/stats' -F '%U %p' \
			> "$out/metrics-$safe.txt" 2>/dev/null &
		side_pids+=($!)
	fi
	if [ "$trace" = 1 ]; then
		# Every system call, stamped with CLOCK_MONOTONIC like the
		# latency log; spikes.py keeps the slow ones.
		perf trace record -k CLOCK_MONOTONIC -p "$BROKER_PID" -o "$work/trace-$safe.data" > /dev/null 2>&1 &
		side_pids+=($!)
	fi
	if [ "$trace" = 1 ] || [ "$sched" = 1 ] || [ "$dstacks" = 1 ]; then
		# Thread ids, to tell the broker thread (tid = pid) from the plugin's.
		sleep 0.5
		for t in /proc/"$BROKER_PID"/task/*; do echo "$(basename "$t") $(cat "$t/comm")"; done > "$out/threads-$safe.txt"
	fi
done

if [ "$sched" = 1 ]; then
	perf record -a -k CLOCK_MONOTONIC -e sched:sched_switch -e sched:sched_wakeup -o "$work/sched.data" > /dev/null 2>&1 &
	side_pids+=($!)
fi
if [ "$dstacks" = 1 ]; then
	perf record -a -k CLOCK_MONOTONIC -e sched:sched_switch --filter 'prev_state == 2' -g -o "$work/dstacks.data" > /dev/null 2>&1 &
	side_pids+=($!)
fi
echo "spikes.sh: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), QoS $qos, $pairs pair(s), $msgs at $rate/s, $rounds rounds, modes: $modes; out $out" >&2
tag=0
for r in $(seq 1 "$rounds"); do
	# Rotate the order: round r starts with mode r mod k.
	k=${#mode_list[@]}
	for i in $(seq 0 $((k - 1))); do
		m=${mode_list[$(( (i + r - 1) % k ))]}
		safe=$(printf '%s' "$m" | tr -c 'A-Za-z0-9_.-' '_')
		tag=$((tag + 1))
		frame=""; [ "${m%%:*}" != plain ] && frame="--frame"
		cli=""; [ "$nodelay" = 1 ] && cli="--nodelay"
		# shellcheck disable=SC2086
		line=$(timeout -k 5 $((timeout_s + 15)) "$imbench" dm -q "$qos" -c "$pairs" -n "$msgs" -r "$rate" $frame $cli \
			-p "${port_of[$m]}" -P "${pid_of[$m]}" -T "s$tag" -t "$timeout_s" --lat-log "$out/lat-$safe-r$r.txt" \
			2>> "$out/imbench.log" | grep '^RESULT' | head -1) || line="RESULT ok=0"
		echo "$m $r $line" >> "$out/results.txt"
		echo "  round $r $m: ${line#RESULT mode=dm }" >&2
	done
done
sleep 1.5   # the last second's metrics
for p in "${side_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
side_pids=()
stop_brokers
if [ -f "$work/dstacks.data" ]; then
	perf script -i "$work/dstacks.data" -F tid,time,ip,sym 2>/dev/null | gzip -1 > "$out/dstacks.txt.gz" || true
fi
if [ -f "$work/sched.data" ]; then
	perf script -i "$work/sched.data" -F cpu,time,trace 2>/dev/null | gzip -1 > "$out/sched.txt.gz" || true
fi
for f in "$work"/trace-*.data; do
	[ -f "$f" ] || continue
	b=$(basename "$f" .data)
	perf trace -i "$f" -T --duration "$trace_ms" -o "$out/$b.txt" > /dev/null 2>&1 || true
done
/usr/bin/python3 "$here/spikes.py" --slow-ms "$slow_ms" "$out" | tee "$out/report.txt"
