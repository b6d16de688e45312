# bench/lib.sh: what the bench scripts share (sourced, not run).
#
# Brokers on 127.0.0.1 only, on free ports, each in a fresh directory under
# $work, stopped by the PID this shell started (never by name). The caller
# sets:  work (a temporary directory), mosq (the broker binary),
#        plugin (the .so), sync (normal|full), nodelay (1|0)
# and calls bench_cleanup from its EXIT trap.
# shellcheck shell=bash
# The caller's variables, and the BROKER_* results it reads:
# shellcheck disable=SC2154,SC2034

bench_pids=()

port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A port below Linux's ephemeral range (32768-60999 by default): clients'
# outgoing connections take their local ports from that range, and a
# broker cannot listen on a port an established connection holds.
free_port() {
	local p i
	for i in $(seq 1 50); do
		p=$((20000 + RANDOM % 12000))
		if port_free "$p"; then echo "$p"; return 0; fi
	done
	echo "bench: no free port" >&2
	return 1
}

# Whether PID listens on 127.0.0.1:PORT (not some other process that took
# the port between free_port and the broker's bind).
listens() {
	local pid=$1 port=$2
	if command -v ss >/dev/null 2>&1; then
		ss -Hltnp "sport = :$port" 2>/dev/null | grep -q "pid=$pid,"
	else
		sleep 0.2
		kill -0 "$pid" 2>/dev/null
	fi
}

# start_broker NAME WITH_PLUGIN [EXTRA_PLUGIN_OPTION_LINES]
# -> BROKER_PID, BROKER_PORT, BROKER_DIR, BROKER_CONF
# EXTRA: "key value" lines, written as plugin_opt_key value. A port taken
# by someone else meanwhile (the machine is shared) means another port.
start_broker() {
	local name=$1 with_plugin=$2 extra=${3:-} dir="$work/$1.$RANDOM" port _a _i
	mkdir -p "$dir"
	if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
		# mosquitto drops to this user; the directory is its own.
		chown mosquitto: "$dir"
	fi
	for _a in 1 2 3 4 5; do
		port=$(free_port) || return 1
		write_conf "$dir/mosquitto.conf" "$port" "$with_plugin" "$dir" "$extra"
		"$mosq" -c "$dir/mosquitto.conf" 2> "$dir/broker.log" &
		BROKER_PID=$!
		bench_pids+=("$BROKER_PID")
		BROKER_PORT=$port
		BROKER_DIR=$dir
		BROKER_CONF=$dir/mosquitto.conf
		for _i in $(seq 1 100); do
			if ! kill -0 "$BROKER_PID" 2>/dev/null; then break; fi
			if ! port_free "$port" && listens "$BROKER_PID" "$port"; then return 0; fi
			sleep 0.05
		done
		kill "$BROKER_PID" 2>/dev/null || true
		wait "$BROKER_PID" 2>/dev/null || true
		unset 'bench_pids[${#bench_pids[@]}-1]'
		grep -q "Address already in use" "$dir/broker.log" || break
		echo "bench: port $port was taken meanwhile; another one" >&2
	done
	echo "bench: broker $name did not start; log:" >&2
	cat "$dir/broker.log" >&2
	return 1
}

# write_conf FILE PORT WITH_PLUGIN DIR EXTRA
write_conf() {
	local file=$1 port=$2 with_plugin=$3 dir=$4 extra=$5
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
		if [ "$nodelay" = 1 ]; then echo "set_tcp_nodelay true"; fi
		if [ "$(id -u)" = 0 ]; then
			if id mosquitto >/dev/null 2>&1; then echo "user mosquitto"; else echo "user root"; fi
		fi
		if [ "$with_plugin" = 1 ]; then
			echo "plugin $plugin"
			echo "plugin_opt_db_path $dir/im.db"
			echo "plugin_opt_nonim_acl allow"
			echo "plugin_opt_synchronous $sync"
			# Extra plugin options, one "key value" per line (A/B runs).
			if [ -n "${IM_BENCH_OPTS:-}" ]; then printf '%s\n' "$IM_BENCH_OPTS" | sed 's/^/plugin_opt_/'; fi
			if [ -n "$extra" ]; then printf '%s\n' "$extra" | sed 's/^/plugin_opt_/'; fi
		fi
	} > "$file"
}

# Stops every broker this shell started, by PID.
stop_brokers() {
	local p
	for p in "${bench_pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	bench_pids=()
}

bench_cleanup() {
	stop_brokers
	if [ "${keep:-0}" = 1 ]; then
		echo "bench: kept $work" >&2
	else
		rm -rf "$work"
	fi
}

# The imbench binary of a build, or one compiled into $work.
find_imbench() {
	local build=$1 here=$2
	if [ -x "$build/bench/imbench" ]; then echo "$build/bench/imbench"; return 0; fi
	[ -f "$build/gen/im.pb-c.c" ] || { echo "bench: $build/gen/im.pb-c.c missing" >&2; return 1; }
	# shellcheck disable=SC2046  # pkg-config's flags are words
	cc -O2 -g -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -Werror \
		-I"$build/gen" -o "$work/imbench" "$here/imbench.c" "$build/gen/im.pb-c.c" \
		$(pkg-config --cflags --libs libmosquitto libprotobuf-c) || return 1
	echo "$work/imbench"
}
