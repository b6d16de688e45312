#!/usr/bin/env bash
# bench/memory.sh: the broker's resident memory (VmRSS) before and after
# the plugin has sequenced one message into each of N new inboxes, i.e.
# N+1 timelines with a cached head each (the sender's own inbox is one).
#
#   bench/memory.sh            # N = 100000
#   N=20000 bench/memory.sh
#
# One broker on a free 127.0.0.1 port with a fresh store, stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-100000}
build=${BUILD:-build-bench}
plugin=$(cd "$build" && pwd)/mosquitto_im.so
dir=$(mktemp -d /tmp/im-mem.XXXXXX)
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$dir/m.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
plugin $plugin
plugin_opt_db_path $dir/im.db
plugin_opt_metrics_interval 0
CONF
chown -R mosquitto: "$dir" 2>/dev/null || true
mosquitto -c "$dir/m.conf" > "$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
before=$(rss)
timeout 600 /usr/bin/python3 - "$port" "$n" <<'PY'
import sys, paho.mqtt.client as mqtt
port, n = int(sys.argv[1]), int(sys.argv[2])
c = mqtt.Client(client_id="mem-sender")
c.username_pw_set("memsender")
c.max_inflight_messages_set(50)
c.connect("127.0.0.1", port)
c.loop_start()
infos = []
for i in range(n):
    infos.append(c.publish("im/u/m%06d" % i, b"x" * 50, qos=1))
    if len(infos) >= 1000:
        for info in infos:
            info.wait_for_publish(60)
        infos = []
for info in infos:
    info.wait_for_publish(60)
c.disconnect()
c.loop_stop()
PY
after=$(rss)
echo "timelines: $((n + 1)); broker VmRSS before ${before} KiB, after ${after} KiB; +$(( (after - before) )) KiB = $(( (after - before) * 1024 / (n + 1) )) bytes per timeline"
