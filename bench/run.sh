#!/usr/bin/env bash
# bench/run.sh: plain mosquitto vs mosquitto + mosquitto-im, same workload,
# alternating rounds. See docs/PERFORMANCE.md.
#
#   bench/run.sh --quick            # ~1 minute
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
rounds=""
quick=0
sync=normal
keep=0
out=""
only=""
timeout_s=""
nodelay=1

usage() {
	sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
	cat <<EOF
options:
  --quick          small counts, 2 rounds, 60 s per run at most (~1 minute)
  --rounds N       rounds per workload (default 3; --quick 2), brokers alternate order
  --timeout S      deadline of one imbench run in seconds (default 180; --quick 60)
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
	--quick) quick=1 ;;
	--rounds) rounds=$2; shift ;;
	--timeout) timeout_s=$2; shift ;;
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
[ -n "$rounds" ] || rounds=$((quick ? 2 : 3))
[ -n "$timeout_s" ] || timeout_s=$((quick ? 60 : 180))
case "$sync" in normal|full) ;; *) echo "run.sh: --sync normal|full" >&2; exit 2 ;; esac
case "$rounds" in ''|*[!0-9]*) echo "run.sh: --rounds N" >&2; exit 2 ;; esac
if [ "$rounds" -lt 1 ] || [ "$rounds" -gt 20 ]; then echo "run.sh: --rounds 1..20" >&2; exit 2; fi
case "$timeout_s" in ''|*[!0-9]*) echo "run.sh: --timeout S" >&2; exit 2 ;; esac
if [ "$timeout_s" -lt 1 ] || [ "$timeout_s" -gt 3600 ]; then echo "run.sh: --timeout 1..3600" >&2; exit 2; fi

mosq=$(command -v mosquitto || true)
[ -n "$mosq" ] || mosq=/usr/sbin/mosquitto
[ -x "$mosq" ] || { echo "run.sh: mosquitto not found" >&2; exit 1; }
plugin="$build/mosquitto_im.so"
[ -f "$plugin" ] || { echo "run.sh: $plugin missing: build the project first (docs/PERFORMANCE.md)" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
work=$(mktemp -d /tmp/imbench.XXXXXX)
chmod 755 "$work"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
[ -n "$out" ] || out="$root/bench/out/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
results="$out/results.txt"
: > "$results"

imbench=$(find_imbench "$build" "$here")

# Workloads: name | plain mode+args | plugin mode+args
if [ "$quick" = 1 ]; then
	workloads=(
		"dm-q1-1pair-10k|dm -q 1 -c 1 -n 10000|dm -q 1 -c 1 -n 10000 --frame"
		"dm-q2-10pair-10k|dm -q 2 -c 10 -n 10000|dm -q 2 -c 10 -n 10000 --frame"
		"dm-q1-1pair-paced2k|dm -q 1 -c 1 -n 4000 -r 2000|dm -q 1 -c 1 -n 4000 -r 2000 --frame"
		"catchup-5k|catchup-queue -n 5000|catchup-sync -n 5000"
		"fanout-200x50|fanout -q 1 -c 200 -n 50|fanout -q 1 -c 200 -n 50 --frame"
	)
else
	workloads=(
		"dm-q2-1pair-100k|dm -q 2 -c 1 -n 100000|dm -q 2 -c 1 -n 100000 --frame"
		"dm-q2-10pair-100k|dm -q 2 -c 10 -n 100000|dm -q 2 -c 10 -n 100000 --frame"
		"dm-q1-1pair-100k|dm -q 1 -c 1 -n 100000|dm -q 1 -c 1 -n 100000 --frame"
		"dm-q1-10pair-100k|dm -q 1 -c 10 -n 100000|dm -q 1 -c 10 -n 100000 --frame"
		"dm-q1-1pair-paced2k|dm -q 1 -c 1 -n 20000 -r 2000|dm -q 1 -c 1 -n 20000 -r 2000 --frame"
		"dm-q2-10pair-paced2k|dm -q 2 -c 10 -n 20000 -r 2000|dm -q 2 -c 10 -n 20000 -r 2000 --frame"
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
			echo "  $name round $r $b: ${line#RESULT }" >&2
		done
	done
	if [ -f "$plugin_dir/im.db" ]; then
		echo "$name plugin db $(du -k "$plugin_dir"/im.db* 2>/dev/null | awk '{s+=$1} END {print s}') KiB" >> "$out/db-size.txt"
	fi
	stop_brokers
done

# Table: median over rounds per workload and broker; the ratios are the
# medians of each round's plugin/plain ratio (a round runs both brokers back
# to back), with the lowest and highest round in brackets.
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
	w = $1; b = $2; r = $3; line = " " $0
	if (!(w in seen)) { seen[w] = 1; order[++nw] = w }
	k = w SUBSEP b
	n[k]++
	rate[k, n[k]] = kv(line, "rate") + 0
	p50[k, n[k]] = kv(line, "p50_us") + 0
	p99[k, n[k]] = kv(line, "p99_us") + 0
	mx[k, n[k]] = kv(line, "max_us") + 0
	cpu[k, n[k]] = kv(line, "cpu_us_per_msg") + 0
	thr[k, n[k]] = kv(line, "thread_cpu_us_per_msg") + 0
	rr[k, r] = kv(line, "rate") + 0
	r99[k, r] = kv(line, "p99_us") + 0
	if (r > nr[w]) nr[w] = r
}
function med(tab, k,   a, i) { delete a; for (i = 1; i <= n[k]; i++) a[i] = tab[k, i]; return median(a, n[k]) }
# Per-round ratio plugin/plain of tab: "median [min-max]".
function ratio(tab, w,   a, i, m, lo, hi, x) {
	delete a; m = 0
	for (i = 1; i <= nr[w]; i++) {
		if (!((w SUBSEP "plain", i) in tab) || !((w SUBSEP "plugin", i) in tab) || tab[w SUBSEP "plain", i] <= 0) continue
		x = tab[w SUBSEP "plugin", i] / tab[w SUBSEP "plain", i]
		a[++m] = x
		if (m == 1 || x < lo) lo = x
		if (m == 1 || x > hi) hi = x
	}
	if (m == 0) return "–"
	return sprintf("%.2f [%.2f–%.2f]", median(a, m), lo, hi)
}
END {
	printf "| workload | plain msgs/s | plugin msgs/s | plugin/plain rate | plain p50/p99/max µs | plugin p50/p99/max µs | plugin/plain p99 | broker CPU µs/msg plain | plugin | main thread plain | plugin |\n"
	printf "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
	for (i = 1; i <= nw; i++) {
		w = order[i]; a = w SUBSEP "plain"; p = w SUBSEP "plugin"
		ra = med(rate, a); rp = med(rate, p)
		lat = (w !~ /^catchup/)
		lat_a = lat ? sprintf("%.0f / %.0f / %.0f", med(p50, a), med(p99, a), med(mx, a)) : "–"
		lat_p = lat ? sprintf("%.0f / %.0f / %.0f", med(p50, p), med(p99, p), med(mx, p)) : "–"
		printf "| %s | %.0f | %.0f | %s | %s | %s | %s | %.1f | %.1f | %.1f | %.1f |\n", w, ra, rp, ratio(rr, w), lat_a, lat_p, lat ? ratio(r99, w) : "–", med(cpu, a), med(cpu, p), med(thr, a), med(thr, p)
	}
}' "$results" | tee "$out/table.md"
echo "(medians of $rounds rounds, [lowest–highest round]; catchup rows: plain = persistent-session queue drain, plugin = sync batches; paced rows: both at the same offered rate, below saturation)"
if [ "$failed" = 1 ]; then
	echo "run.sh: some runs failed or timed out; see $out/imbench.log and $results" >&2
	exit 1
fi
