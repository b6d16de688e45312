#!/usr/bin/env bash
# bench/profile.sh: profile one broker (plain or with the plugin) under a
# bounded dm workload. See docs/PERFORMANCE.md.
#
#   bench/profile.sh callgrind plugin   # instructions per message (valgrind)
#   bench/profile.sh callgrind plain
#   bench/profile.sh perf plugin        # perf record -e cpu-clock -g
#   bench/profile.sh strace plugin      # syscalls per message (strace -c)
#
# Env: N (messages, default 20000; callgrind 5000), QOS (1), BUILD
# (build-bench), SYNC (normal), KEEP=1 keeps the output directory.
set -euo pipefail

tool=${1:-}
kind=${2:-plugin}
case "$tool" in callgrind|perf|strace) ;; *) sed -n '2,12p' "$0"; exit 2 ;; esac
case "$kind" in plain|plugin) ;; *) echo "profile.sh: plain|plugin" >&2; exit 2 ;; esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${BUILD:-$root/build-bench}
qos=${QOS:-1}
sync=${SYNC:-normal}
if [ "$tool" = callgrind ]; then n=${N:-5000}; else n=${N:-20000}; fi
imbench="$build/bench/imbench"
[ -x "$imbench" ] || { echo "profile.sh: $imbench missing (build the project)" >&2; exit 1; }
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)

out="$root/bench/out/profile-$tool-$kind-$(date +%H%M%S)"
mkdir -p "$out"
dir=$(mktemp -d /tmp/improf.XXXXXX)
chmod 755 "$dir"
port=$((20000 + RANDOM % 40000))
{
	echo "listener $port 127.0.0.1"
	echo "allow_anonymous true"
	echo "persistence false"
	echo "max_queued_messages 0"
	echo "set_tcp_nodelay true"
	echo "log_dest stderr"
	echo "log_type error"
	echo "log_type warning"
	if [ "$kind" = plugin ]; then
		echo "plugin $build/mosquitto_im.so"
		echo "plugin_opt_db_path $dir/im.db"
		echo "plugin_opt_nonim_acl allow"
		echo "plugin_opt_synchronous $sync"
	fi
	# Tools attach to a process owned by root more simply: stay root.
	[ "$(id -u)" = 0 ] && echo "user root"
} > "$dir/mosquitto.conf"

pid=""
tpid=""
cleanup() {
	[ -n "$tpid" ] && kill -INT "$tpid" 2>/dev/null && wait "$tpid" 2>/dev/null || true
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	[ "${KEEP:-0}" = 1 ] || rm -rf "$dir"
}
trap cleanup EXIT

if [ "$tool" = callgrind ]; then
	valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out/callgrind.out" \
		"$mosq" -c "$dir/mosquitto.conf" 2> "$out/broker.log" &
	pid=$!
	wait_s=30
else
	"$mosq" -c "$dir/mosquitto.conf" 2> "$out/broker.log" &
	pid=$!
	wait_s=5
fi
for _ in $(seq 1 $((wait_s * 20))); do
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	sleep 0.05
done

frame=""
[ "$kind" = plugin ] && frame="--frame"
# Warm up (timeline rows, caches), then the measured run.
timeout 120 "$imbench" dm -q "$qos" -n 200 -p "$port" -T w $frame --nodelay -t 60 > /dev/null 2>&1

case "$tool" in
perf)
	perf record -e cpu-clock -g -o "$out/perf.data" -p "$pid" 2> "$out/perf.log" &
	tpid=$!
	sleep 0.5 ;;
strace)
	strace -c -f -o "$out/strace.txt" -p "$pid" 2> /dev/null &
	tpid=$!
	sleep 0.5 ;;
esac

timeout 600 "$imbench" dm -q "$qos" -n "$n" -p "$port" -P "$pid" -T m $frame --nodelay -t 540 \
	> "$out/result.txt" 2> "$out/imbench.log"
cat "$out/imbench.log" >&2

if [ -n "$tpid" ]; then
	kill -INT "$tpid" 2>/dev/null || true
	wait "$tpid" 2>/dev/null || true
	tpid=""
fi
kill "$pid"
wait "$pid" 2>/dev/null || true
pid=""

case "$tool" in
callgrind)
	# One file per thread (--separate-threads): thread 1 is the broker's
	# own thread, the others are the plugin's (store worker, ...).
	for f in "$out"/callgrind.out-*; do
		t=${f##*-}
		total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
		[ -n "$total" ] || continue
		echo "callgrind thread $t: $total instructions for $n (+200 warm-up) messages: $((total / (n + 200))) per message (start-up included)"
		callgrind_annotate --inclusive=yes "$f" 2>/dev/null | head -80 > "$out/inclusive-$t.txt" || true
		callgrind_annotate "$f" 2>/dev/null | head -60 > "$out/self-$t.txt" || true
	done
	echo "see $out/inclusive-*.txt and $out/self-*.txt" ;;
perf)
	perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^$' | head -80 > "$out/report.txt"
	perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -20 > "$out/dso.txt"
	cat "$out/dso.txt"
	echo "see $out/report.txt" ;;
strace)
	head -30 "$out/strace.txt"
	echo "(for $n messages)" ;;
esac
