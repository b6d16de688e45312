#!/usr/bin/env bash
# bench/run.sh: plain mosquitto vs mosquitto + mosquitto-im, same workload,
# alternating rounds. See docs/PERFORMANCE.md.
#
#   bench/run.sh --quick            # < 1 minute
#   bench/run.sh                    # full run (several minutes)
#   bench/run.sh --rounds 5 --sync full --build build-bench
#   IM_BENCH_OPTS="checkpoint inline" bench/run.sh --only dm   # plugin options
#
# Starts two brokers on 127.0.0.1 (free ports) per workload, each on a fresh
# temporary directory (the plugin's SQLite file lives there), and stops them
# by the PID it started. Every load is bounded in count and in time.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build="$root/build-bench"
rounds=3
quick=0
sync=normal
keep=0
out=""
only=""
timeout_s=180
nodelay=1

usage() {
	sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
	cat <<EOF
options:
  --quick          small counts, 2 rounds (< 1 minute)
  --rounds N       rounds per workload (default 3), brokers alternate order
  --sync MODE      plugin_opt_synchronous normal|full (default normal)
  --build DIR      build dir with mosquitto_im.so and bench/imbench (default build-bench)
  --out DIR        where results go (default bench/out/<time>)
  --only REGEX     run only the workloads whose name matches
  --nagle          leave Nagle on (no set_tcp_nodelay, no client TCP_NODELAY)
  --keep           keep the brokers' temporary directories (logs, im.db)
EOF
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--quick) quick=1; rounds=2 ;;
	--rounds) rounds=$2; shift ;;
	--sync) sync=$2; shift ;;
	--build) build=$(cd "$2" && pwd); shift ;;
	--out) out=$2; shift ;;
	--only) only=$2; shift ;;
	--keep) keep=1 ;;
	--nagle) nodelay=0 ;;
	-h|--help) usage ;;
	*) echo "run.sh: unknown option $1" >&2; usage ;;
	esac
	shift
done
case "$sync" in normal|full) ;; *) echo "run.sh: --sync normal|full" >&2; exit 2 ;; esac
case "$rounds" in ''|*[!0-9]*) echo "run.sh: --rounds N" >&2; exit 2 ;; esac
[ "$rounds" -ge 1 ] && [ "$rounds" -le 20 ] || { echo "run.sh: --rounds 1..20" >&2; exit 2; }

mosq=$(command -v mosquitto || true)
[ -n "$mosq" ] || mosq=/usr/sbin/mosquitto
[ -x "$mosq" ] || { echo "run.sh: mosquitto not found" >&2; exit 1; }
plugin="$build/mosquitto_im.so"
[ -f "$plugin" ] || { echo "run.sh: $plugin missing: build the project first (docs/PERFORMANCE.md)" >&2; exit 1; }

work=$(mktemp -d /tmp/imbench.XXXXXX)
chmod 755 "$work"
[ -n "$out" ] || out="$root/bench/out/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
results="$out/results.txt"
: > "$results"

imbench="$build/bench/imbench"
if [ ! -x "$imbench" ]; then
	# The project adds bench/ to its build; until then, compile it here.
	[ -f "$build/gen/im.pb-c.c" ] || { echo "run.sh: $build/gen/im.pb-c.c missing" >&2; exit 1; }
	imbench="$work/imbench"
	cc -O2 -g -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -Werror \
		-I"$build/gen" -o "$imbench" "$here/imbench.c" "$build/gen/im.pb-c.c" \
		$(pkg-config --cflags --libs libmosquitto libprotobuf-c)
fi

pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	pids=()
	if [ "$keep" = 1 ]; then
		echo "run.sh: kept $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
	local p i
	for i in $(seq 1 50); do
		p=$((20000 + RANDOM % 40000))
		if port_free "$p"; then echo "$p"; return 0; fi
	done
	echo "run.sh: no free port" >&2
	return 1
}

# start_broker NAME WITH_PLUGIN -> sets BROKER_PID, BROKER_PORT
start_broker() {
	local name=$1 with_plugin=$2 dir="$work/$1.$RANDOM" port i
	mkdir -p "$dir"
	port=$(free_port)
	{
		echo "listener $port 127.0.0.1"
		echo "allow_anonymous true"
		echo "persistence false"
		echo "log_dest stderr"
		echo "log_type error"
		echo "log_type warning"
		echo "log_type notice"
		# Unlimited queue for offline persistent sessions (catch-up by
		# queue), 20 in flight per client (the default). See the trap in
		# docs/PERFORMANCE.md: publishers keep at most 20 QoS 2 in flight.
		echo "max_queued_messages 0"
		echo "max_inflight_messages 20"
		[ "$nodelay" = 1 ] && echo "set_tcp_nodelay true"
		if [ "$with_plugin" = 1 ]; then
			echo "plugin $plugin"
			echo "plugin_opt_db_path $dir/im.db"
			echo "plugin_opt_nonim_acl allow"
			echo "plugin_opt_synchronous $sync"
			# Extra plugin options, one "key value" per line (A/B runs).
			if [ -n "${IM_BENCH_OPTS:-}" ]; then printf '%s\n' "$IM_BENCH_OPTS" | sed 's/^/plugin_opt_/'; fi
		fi
		if [ "$(id -u)" = 0 ]; then
			# mosquitto drops to this user; the directory is its own.
			if id mosquitto >/dev/null 2>&1; then
				echo "user mosquitto"
				chown mosquitto: "$dir"
			else
				echo "user root"
			fi
		fi
	} > "$dir/mosquitto.conf"
	"$mosq" -c "$dir/mosquitto.conf" 2> "$dir/broker.log" &
	BROKER_PID=$!
	pids+=("$BROKER_PID")
	BROKER_PORT=$port
	BROKER_DIR=$dir
	for i in $(seq 1 100); do
		if ! port_free "$port"; then return 0; fi
		if ! kill -0 "$BROKER_PID" 2>/dev/null; then break; fi
		sleep 0.05
	done
	echo "run.sh: broker $name did not start; log:" >&2
	cat "$dir/broker.log" >&2
	return 1
}

stop_brokers() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	pids=()
}

# Workloads: name | plain mode+args | plugin mode+args
if [ "$quick" = 1 ]; then
	workloads=(
		"dm-q1-1pair-10k|dm -q 1 -c 1 -n 10000|dm -q 1 -c 1 -n 10000 --frame"
		"dm-q2-10pair-10k|dm -q 2 -c 10 -n 10000|dm -q 2 -c 10 -n 10000 --frame"
		"catchup-5k|catchup-queue -n 5000|catchup-sync -n 5000"
		"fanout-200x50|fanout -q 1 -c 200 -n 50|fanout -q 1 -c 200 -n 50 --frame"
	)
else
	workloads=(
		"dm-q2-1pair-100k|dm -q 2 -c 1 -n 100000|dm -q 2 -c 1 -n 100000 --frame"
		"dm-q2-10pair-100k|dm -q 2 -c 10 -n 100000|dm -q 2 -c 10 -n 100000 --frame"
		"dm-q1-1pair-100k|dm -q 1 -c 1 -n 100000|dm -q 1 -c 1 -n 100000 --frame"
		"dm-q1-10pair-100k|dm -q 1 -c 10 -n 100000|dm -q 1 -c 10 -n 100000 --frame"
		"catchup-10k|catchup-queue -n 10000|catchup-sync -n 10000"
		"catchup-50k|catchup-queue -n 50000|catchup-sync -n 50000"
		"catchup-100k|catchup-queue -n 100000|catchup-sync -n 100000"
		"fanout-1000x100|fanout -q 1 -c 1000 -n 100|fanout -q 1 -c 1000 -n 100 --frame"
	)
fi

echo "run.sh: $(nproc) CPUs, mosquitto $("$mosq" -h 2>/dev/null | sed -n 's/.*version //p' | head -1), synchronous=$sync, nodelay=$nodelay, $rounds rounds; results in $out" >&2
tag=0
failed=0
cli_opts=""
[ "$nodelay" = 1 ] && cli_opts="--nodelay"
for w in "${workloads[@]}"; do
	IFS='|' read -r name plain_args plugin_args <<< "$w"
	if [ -n "$only" ] && ! [[ "$name" =~ $only ]]; then continue; fi
	start_broker plain 0; plain_pid=$BROKER_PID; plain_port=$BROKER_PORT
	start_broker plugin 1; plugin_pid=$BROKER_PID; plugin_port=$BROKER_PORT; plugin_dir=$BROKER_DIR
	for r in $(seq 1 "$rounds"); do
		if [ $((r % 2)) = 1 ]; then order="plain plugin"; else order="plugin plain"; fi
		for b in $order; do
			tag=$((tag + 1))
			if [ "$b" = plain ]; then args=$plain_args; pid=$plain_pid; port=$plain_port
			else args=$plugin_args; pid=$plugin_pid; port=$plugin_port; fi
			# shellcheck disable=SC2086
			if line=$(timeout -k 5 $((timeout_s + 15)) "$imbench" $args $cli_opts -p "$port" -P "$pid" -T "$tag" -t "$timeout_s" \
					2>> "$out/imbench.log" | grep '^RESULT' | head -1); then :; fi
			if [ -z "$line" ]; then
				line="RESULT mode=? ok=0"
				failed=1
			fi
			case "$line" in *" ok=0 "*|*" ok=0") failed=1 ;; esac
			echo "$name $b $r $line" >> "$results"
			echo "  $name round $r $b: $(echo "$line" | sed 's/^RESULT //')" >&2
		done
	done
	if [ -f "$plugin_dir/im.db" ]; then
		echo "$name plugin db $(du -k "$plugin_dir"/im.db* 2>/dev/null | awk '{s+=$1} END {print s}') KiB" >> "$out/db-size.txt"
	fi
	stop_brokers
done

# Table: median over rounds per workload and broker.
awk '
function kv(line, key,   re, m) {
	re = " " key "=[^ ]*"
	if (match(line, re)) { m = substr(line, RSTART + length(key) + 2, RLENGTH - length(key) - 2); return m }
	return ""
}
function median(arr, n,   i, j, t) {
	for (i = 2; i <= n; i++) { t = arr[i]; for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]; arr[j + 1] = t }
	if (n == 0) return -1
	return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
}
{
	w = $1; b = $2; line = " " $0
	if (!(w in seen)) { seen[w] = 1; order[++nw] = w }
	k = w SUBSEP b
	n[k]++
	rate[k, n[k]] = kv(line, "rate") + 0
	p50[k, n[k]] = kv(line, "p50_us") + 0
	p99[k, n[k]] = kv(line, "p99_us") + 0
	mx[k, n[k]] = kv(line, "max_us") + 0
	cpu[k, n[k]] = kv(line, "cpu_us_per_msg") + 0
}
function med(tab, k,   a, i) { delete a; for (i = 1; i <= n[k]; i++) a[i] = tab[k, i]; return median(a, n[k]) }
END {
	printf "| workload | plain msgs/s | plugin msgs/s | plugin/plain | plain p50/p99/max µs | plugin p50/p99/max µs | broker CPU µs/msg plain | plugin |\n"
	printf "|---|---:|---:|---:|---:|---:|---:|---:|\n"
	for (i = 1; i <= nw; i++) {
		w = order[i]; a = w SUBSEP "plain"; p = w SUBSEP "plugin"
		ra = med(rate, a); rp = med(rate, p)
		lat_a = (w ~ /^catchup/) ? "–" : sprintf("%.0f / %.0f / %.0f", med(p50, a), med(p99, a), med(mx, a))
		lat_p = (w ~ /^catchup/) ? "–" : sprintf("%.0f / %.0f / %.0f", med(p50, p), med(p99, p), med(mx, p))
		printf "| %s | %.0f | %.0f | %.2f | %s | %s | %.1f | %.1f |\n", w, ra, rp, (ra > 0 ? rp / ra : 0), lat_a, lat_p, med(cpu, a), med(cpu, p)
	}
}' "$results" | tee "$out/table.md"
echo "(medians of $rounds rounds; catchup rows: plain = persistent-session queue drain, plugin = sync batches)"
if [ "$failed" = 1 ]; then
	echo "run.sh: some runs failed or timed out; see $out/imbench.log and $results" >&2
	exit 1
fi
