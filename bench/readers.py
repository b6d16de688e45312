#!/usr/bin/python3
"""bench/readers.py: does a heavy reader hold up other users' messages?

    bench/readers.py                  # 20,000 groups, 100,000 messages, 3 rounds
    bench/readers.py --quick          # 2,000 groups, 20,000 messages, 2 rounds

Issue #22's target: with 100 heavy reads queued (the conversation list of a
user in 20,000 groups, and sync of a 100,000-message inbox), another user's
direct message p99 <= 20 ms. Before the readers (one worker thread doing
everything) a DM waited 3.4-4.3 s behind them.

Two brokers with the plugin on SQLite, alike but for plugin_opt_store_readers
(2, the default, and 0: the writer reads, as before), set up the same way:
the heavy user `cshv` is put in --groups groups and gets an inbox of
--inbox messages (bench/imbench catchup-sync --phase publish). Then, in
rounds alternating between the brokers:
  - bench/imbench dm -q 1 -c 1 -r --rate for --secs: a C client's
    publish -> delivery latency between two other users (p50, p99, max);
  - meanwhile `cshv` keeps --queued requests outstanding, alternating a
    conversations page (limit 50) and a sync of u/cshv from seq 0 (one
    batch of up to sync_max_frames frames), and counts the answers.
An idle round (no heavy reader) on each broker gives the floor. Brokers on
127.0.0.1 free ports in temporary folders, stopped by the PID started here;
every wait has a deadline. Needs a build (--build, default build/) with
bench/imbench, and /usr/bin/python3 with Debian's paho-mqtt and protobuf.
"""
import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

HEAVY_TAG = "hv"
HEAVY = "cs" + HEAVY_TAG        # imbench catchup-sync's user for -T hv


def parse_result(out):
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return dict(kv.split("=", 1) for kv in line.split()[1:])
    raise RuntimeError("imbench printed no RESULT line:\n" + out[-2000:])


class Heavy(threading.Thread):
    """cshv keeps `queued` requests outstanding until stopped."""

    def __init__(self, broker, queued):
        super().__init__(daemon=True)
        from imtest import Client, pb
        self.pb = pb
        self.c = Client(broker, HEAVY, v5=True).connect()
        self.queued = queued
        self.stop = threading.Event()
        self.answered = 0
        self.bad = 0

    def _send(self, k):
        pb = self.pb
        if k % 2:
            op, msg = "conversations", pb.ConversationsRequest(limit=50)
        else:
            op, msg = "sync", pb.SyncRequest(timeline="u/" + HEAVY, after_seq=0)
        self.c.c.publish("$CONTROL/im/v1/" + op, msg.SerializeToString(), qos=0)

    def run(self):
        pb = self.pb
        sent = 0
        while sent < self.queued:
            self._send(sent)
            sent += 1
        while not self.stop.is_set():
            try:
                m = self.c.get(timeout=1)
            except Exception:
                continue
            if not m.topic.endswith("/response"):
                continue
            r = pb.Response()
            r.ParseFromString(m.payload)
            if r.status == pb.OK:
                self.answered += 1
            else:
                self.bad += 1
            self._send(sent)
            sent += 1

    def finish(self):
        self.stop.set()
        self.join(10)
        self.c.close()


def setup(broker, imbench, groups, inbox):
    from imtest import Client, pb
    from test_hardening_reads import split_among
    owners = [Client(broker, "owner%d" % i, v5=True).connect() for i in range(10)]
    t0 = time.monotonic()
    st = split_among(owners, [pb.GroupRequest(op="create", group="g-%05d" % k, members=[HEAVY])
                              for k in range(groups)])
    assert len(st) == groups and set(st) == {pb.OK}, "group setup failed"
    for c in owners:
        c.close()
    made = time.monotonic() - t0
    out = subprocess.run([imbench, "catchup-sync", "--phase", "publish", "-p", str(broker.port), "-n", str(inbox),
                          "-T", HEAVY_TAG, "-q", "1", "-t", "600"], capture_output=True, text=True, timeout=700)
    parse_result(out.stdout)
    return made


def dm_round(broker, imbench, rate, secs, tag):
    n = max(1, int(rate * secs))
    out = subprocess.run([imbench, "dm", "-p", str(broker.port), "-q", "1", "-c", "1", "-n", str(n), "-r", str(rate),
                          "-T", tag, "-t", str(secs * 4 + 60), "--nodelay", "--frame"],
                         capture_output=True, text=True, timeout=secs * 4 + 120)
    r = parse_result(out.stdout)
    return float(r["p50_us"]) / 1000, float(r["p99_us"]) / 1000, float(r["max_us"]) / 1000, r.get("ok") == "1"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--groups", type=int)
    ap.add_argument("--inbox", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--queued", type=int, default=100)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--secs", type=float, default=10)
    a = ap.parse_args()
    a.groups = a.groups or (2000 if a.quick else 20000)
    a.inbox = a.inbox or (20000 if a.quick else 100000)
    a.rounds = a.rounds or (2 if a.quick else 3)
    os.environ["IM_PLUGIN"] = os.path.join(os.path.abspath(a.build), "mosquitto_im.so")
    imbench = os.path.join(os.path.abspath(a.build), "bench", "imbench")
    import imtest
    base = {"max_groups_per_user": 0, "max_groups_created": 0, "reply_bytes_rate": 0, "request_inflight": 0,
            "user_request_inflight": 0, "sync_rate": 0, "sync_inflight": 0}
    configs = [("readers 2", dict(base, store_readers=2)), ("readers 0", dict(base, store_readers=0))]
    brokers = []
    try:
        for name, opts in configs:
            b = imtest.Broker(opts, extra_conf="set_tcp_nodelay true\nmax_queued_messages 0")
            b.start()
            brokers.append((name, b))
            made = setup(b, imbench, a.groups, a.inbox)
            print("%s: %d groups in %.1f s, inbox of %d" % (name, a.groups, made, a.inbox), flush=True)
        res = {name: {"idle": [], "heavy": [], "answered": []} for name, _ in configs}
        for rnd in range(a.rounds):
            for name, b in brokers:
                p50, p99, mx, ok = dm_round(b, imbench, a.rate, a.secs / 2, "i%d" % rnd)
                res[name]["idle"].append((p50, p99, mx))
                h = Heavy(b, a.queued)
                h.start()
                t0 = time.monotonic()
                p50, p99, mx, ok = dm_round(b, imbench, a.rate, a.secs, "h%d" % rnd)
                secs = time.monotonic() - t0
                h.finish()
                res[name]["heavy"].append((p50, p99, mx))
                res[name]["answered"].append(h.answered / secs)
                print("round %d %-9s idle p99 %.2f ms | heavy reads: DM p50 %.2f p99 %.2f max %.2f ms, %.0f heavy answers/s (%d refused)%s"
                      % (rnd + 1, name, res[name]["idle"][-1][1], p50, p99, mx, h.answered / secs, h.bad,
                         "" if ok else " (DM run incomplete)"), flush=True)
        print("\nmedians of %d rounds, DM QoS 1 at %.0f/s (imbench, C), %d heavy requests kept queued:" % (
            a.rounds, a.rate, a.queued))
        print("| broker | idle p99 ms | heavy: DM p50 ms | DM p99 ms | DM max ms | heavy answers/s |")
        print("|---|---|---|---|---|---|")
        for name, _ in configs:
            r = res[name]
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            print("| %s | %.2f | %.2f | %.2f | %.2f | %.0f |" % (
                name, med(r["idle"], 1), med(r["heavy"], 0), med(r["heavy"], 1), med(r["heavy"], 2),
                statistics.median(r["answered"])))
    finally:
        for _, b in brokers:
            b.stop()
            b.cleanup()


if __name__ == "__main__":
    main()
