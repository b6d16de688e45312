#!/usr/bin/python3
"""bench/cluster.py: the PostgreSQL store and cluster mode, measured in one run.

    bench/cluster.py --quick        # about 2 minutes
    bench/cluster.py                # full run, about 8-10 minutes on 2 cores
    bench/cluster.py --rounds 5 --only 1,3 --keep

Four parts, each alternating its configurations round by round, so every
ratio is taken within one run on the same (shared, noisy) machine:

 1. One broker: plain Mosquitto, the plugin on SQLite, on PostgreSQL
    (synchronous_commit on, no standby) and on PostgreSQL with a synchronous
    standby. DM throughput and publish->delivery latency at QoS 1 and 2,
    1 and 10 pairs, the same message count each: bench/imbench (dm mode,
    window 20, 100-byte bodies) against brokers this script starts. Broker
    CPU per message from imbench (-P), PostgreSQL CPU per message (every
    postgres process of the servers involved) sampled around each run.
 2. Cross-broker latency on a cluster (3 brokers, PostgreSQL primary +
    synchronous standby, 3-node NATS): publisher on broker A, subscriber on
    broker B, against both on A; paced (--rate msgs/s for --secs) and
    unpaced (window 20). The single SQLite and PostgreSQL brokers run the
    same test as a reference. Publish->live delivery, p50/p99/max.
 3. Ship delay: every publish of part 2 is MQTT v5 with a Response Topic, so
    it gets a Receipt (PROTOCOL.md 3.1) once its seq is committed. The time
    from the PUBACK (the local journal) to the Receipt is the window a broker
    whose disk dies holds acknowledged messages that only its journal has.
 4. PostgreSQL primary stopped for --outage seconds under paced load (A->B):
    acknowledgements go on from the journals; once it is back, how long
    until the backlog is delivered and latency is back to normal; nothing
    lost, repeated or reordered.
 5. Cross-broker latency with the C client: bench/imbench publishing on
    broker A of the cluster and receiving on broker B (--port2), direct
    messages (--x-pairs sender/receiver pairs) and a group (one sender on
    A, --x-members members on B). First each workload's saturation: an
    unpaced run (window 20 per sender), delivered msgs/s, with the CPU of
    both brokers and of PostgreSQL per message; then paced runs at
    --x-load (default 0.5) of that rate, A->B and A->A alternating,
    publish->delivery p50/p99/max (Python's part 2 mostly measures the
    Python clients).

Parts 2-4 use two worker processes (this file, --worker) per measurement, a
subscriber and a publisher (paho, MQTT v5), so that neither waits on the
other's GIL; CLOCK_MONOTONIC stamps in the body give the latency. Servers
run on 127.0.0.1 free ports in temporary folders, are stopped by the PID
this script started, and every wait has a deadline (--limit stops the whole
run). Results: bench/out/<time>/cluster.txt (the table), results.json (every
round), logs/. Needs /usr/bin/python3 (Debian's paho-mqtt, protobuf),
mosquitto, nats-server, PostgreSQL server programs, and a build
(--build, default build/: mosquitto_im.so and bench/imbench).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

BODY_LEN = 100
BODY = struct.Struct("<qq")          # idx (negative: warm-up), CLOCK_MONOTONIC ns at publish
RECEIPT_TOPIC = "bench/rcpt/"


def now_ns():
    return time.monotonic_ns()        # CLOCK_MONOTONIC: the same clock in every process


def body(idx, stamp):
    return BODY.pack(idx, stamp) + b"x" * (BODY_LEN - BODY.size)


# --------------------------------------------------------------------------
# Workers (a process each): subscriber and publisher of one measurement
# --------------------------------------------------------------------------

def _worker_imtest():
    import imtest
    return imtest


def worker_sub(spec):
    """Subscribes to im/u/<user>, says READY, counts warm-up frames (WARM),
    records every measured frame: [idx, stamp_ns, recv_ns, seq]."""
    imtest = _worker_imtest()
    recs, warm, bad = [], [0], [0]
    done = threading.Event()
    n = spec["n"]

    def on_message(_c, _u, m):
        t = now_ns()
        try:
            h, b = imtest.decode_frame(m.payload)
            idx, stamp = BODY.unpack_from(b)
        except (ValueError, struct.error):
            bad[0] += 1
            return
        if idx < 0:
            warm[0] += 1
            print("WARM", flush=True)
            return
        recs.append((idx, stamp, t, h.seq))
        if len(recs) >= n:
            done.set()

    c = imtest.Client(types.SimpleNamespace(port=spec["port"]), spec["user"], client_id=spec["user"] + "-sub", v5=True)
    c.c.on_message = on_message
    try:
        c.connect(timeout=30)
        granted = c.subscribe("im/u/" + spec["user"], qos=1, timeout=30)
        assert granted[0] < 128, "subscription refused: %r" % granted
        print("READY", flush=True)
        done.wait(spec["timeout"])
    finally:
        c.close()
        _dump(spec["out"], {"recs": recs, "warm": warm[0], "bad": bad[0], "complete": len(recs) >= n})
        shutil.rmtree(os.path.dirname(imtest.pb.__file__), ignore_errors=True)


def worker_pub(spec):
    """Publishes warm-up messages until GO on stdin, then n measured ones
    (QoS 1, at most `window` unacknowledged, paced at `rate` if > 0), each
    with a Response Topic; records publish, PUBACK and Receipt times."""
    imtest = _worker_imtest()
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    n, rate, window = spec["n"], spec["rate"], spec["window"]
    cid = spec["user"] + "-pub"
    rtopic = RECEIPT_TOPIC + cid
    topic = "im/u/" + spec["to"]
    cond = threading.Condition()
    st = {"acked": 0, "sent": 0}
    acks = {}                          # mid -> PUBACK time (measured phase only)
    rcpts = {}                         # idx -> (time, status, seq)
    measuring = [False]
    deadline = time.monotonic() + spec["timeout"]

    def on_publish(_c, _u, mid):
        t = now_ns()
        with cond:
            if measuring[0]:
                acks[mid] = t
            st["acked"] += 1
            cond.notify_all()

    def on_message(_c, _u, m):
        t = now_ns()
        if m.topic != rtopic:
            return
        r = imtest.pb.Receipt()
        r.ParseFromString(m.payload)
        idx = int.from_bytes(m.properties.CorrelationData, "big", signed=True)
        if idx >= 0:
            rcpts[idx] = (t, r.status, r.seq, r.duplicate)

    def publish(idx):
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = rtopic
        p.CorrelationData = idx.to_bytes(8, "big", signed=True)
        if spec["cmid"]:
            p.UserProperty = [("im-cmid", "%s%d" % ("c" if idx >= 0 else "w", abs(idx)))]
        with cond:
            while st["sent"] - st["acked"] >= window:
                if not cond.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                    raise TimeoutError("window never opened")
        stamp = now_ns()
        info = c.c.publish(topic, body(idx, stamp), qos=1, properties=p)
        st["sent"] += 1
        return stamp, info.mid

    def wait_for(cond_fn, t):
        end = min(deadline, time.monotonic() + t)
        while not cond_fn() and time.monotonic() < end:
            time.sleep(0.005)
        return cond_fn()

    c = imtest.Client(types.SimpleNamespace(port=spec["port"]), spec["user"], client_id=cid, v5=True)
    c.c.on_publish = on_publish
    c.c.on_message = on_message
    c.c.max_inflight_messages_set(window)
    out = {"complete": False}
    try:
        c.connect(timeout=30)
        c.subscribe(rtopic, qos=1, timeout=30)
        go = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), go.set()), daemon=True).start()
        print("READY", flush=True)
        w = 0
        while not go.wait(0.02):
            if time.monotonic() > deadline:
                raise TimeoutError("no GO")
            w += 1
            publish(-w)
        wait_for(lambda: st["acked"] >= st["sent"], 30)
        with cond:
            measuring[0] = True
        sent, mids = [0] * n, [0] * n
        t0 = now_ns()
        for i in range(n):
            if rate > 0:
                lag = t0 + i * 1e9 / rate - now_ns()
                if lag > 0:
                    time.sleep(lag / 1e9)
            sent[i], mids[i] = publish(i)
        t_sent = now_ns()
        wait_for(lambda: len(acks) >= n, spec["timeout"])
        t_acked = now_ns()
        wait_for(lambda: len(rcpts) >= n, spec["timeout"])
        out = {"t0": t0, "t_sent": t_sent, "t_acked": t_acked, "t_rcpt": max((v[0] for v in rcpts.values()), default=0),
               "sent": sent,
               "ack": [acks.get(m, 0) for m in mids],
               "rcpt": [rcpts[i][0] if i in rcpts else 0 for i in range(n)],
               "rcpt_bad": sum(1 for v in rcpts.values() if v[1] != imtest.pb.OK),
               "rcpt_dup": sum(1 for v in rcpts.values() if v[3]),
               "warm": w, "complete": len(acks) >= n and len(rcpts) >= n}
    finally:
        c.close()
        _dump(spec["out"], out)
        shutil.rmtree(os.path.dirname(imtest.pb.__file__), ignore_errors=True)


def _dump(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


# --------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------

def pct(values, q):
    """Nearest rank on sorted values (as imbench does)."""
    if not values:
        return float("nan")
    return values[int(q * (len(values) - 1) + 0.5)]


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def proc_cpu_us(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1e6 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_cpu_us(roots):
    """CPU of the given PIDs and their descendants (a postmaster's backends)."""
    from cluster_env import descendants
    pids = {p for p in roots if p}
    for r in list(pids):
        pids.update(descendants(r))
    return sum(proc_cpu_us(p) for p in pids)


class Bench:
    def __init__(self, args):
        self.a = args
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = args.out or os.path.join(HERE, "out", self.stamp)
        self.logs = os.path.join(self.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="im-clbench-")
        os.chmod(self.work, 0o755)
        self.brokers, self.procs = [], []
        self.pg1 = self.pair = self.nats = None
        self.results = {"args": vars(args), "part1": [], "pairs": [], "outage": None, "cross": []}
        self.py = sys.executable
        self.imbench_bin = os.path.join(args.build, "bench", "imbench")

    # ---- servers ----

    def say(self, msg):
        print("cluster.py: " + msg, file=sys.stderr, flush=True)

    def start_pg(self):
        import pgserver
        from cluster_env import PgPair
        need = self.a.parts & {1, 2, 3, 4, 5}
        if need & {1} or (need & {2, 3} and not self.a.no_single):
            self.pg1 = pgserver.PgServer(root=tempfile.mkdtemp(prefix="im-clbench-pg-")).start()
            self.say("PostgreSQL (single, synchronous_commit on) on port %d" % self.pg1.port)
        if need & {2, 3, 4, 5} or (1 in need and not self.a.no_standby):
            self.pair = PgPair(standby=True).start()
            self.say("PostgreSQL primary %d + synchronous standby %d" % (self.pair.primary.port, self.pair.standby.port))

    def pg_roots(self, which):
        if which == "pg":
            return [self.pg1.proc.pid] if self.pg1 and self.pg1.proc else []
        if which in ("pgsb", "cluster"):
            return [n.pid() for n in self.pair.nodes]
        return []

    def pair_db_uri(self, db):
        self.pair.psql(self.pair.primary, 'CREATE DATABASE "%s"' % db)
        hosts = ",".join("127.0.0.1:%d" % n.port for n in self.pair.nodes)
        return "postgresql://postgres@%s/%s?target_session_attrs=read-write&connect_timeout=2" % (hosts, db)

    def broker(self, kind, name, extra=None):
        """kind: plain | sqlite | pg | pgsb | cluster. Started."""
        from imtest import Broker

        class BenchBroker(Broker):
            # imtest's broker with quieter logs (no per-packet debug lines)
            # and TCP_NODELAY, as bench/run.sh.
            def write_conf(self):
                super().write_conf()
                with open(self.conf) as f:
                    text = f.read()
                # information: imtest's start() waits for the "listen socket" line.
                text = text.replace("log_type all\n", "log_type error\nlog_type warning\nlog_type notice\n"
                                    "log_type information\n")
                with open(self.conf, "w") as f:
                    f.write(text + "set_tcp_nodelay true\n")

        opts = {"nonim_acl": "allow"}
        opts.update(extra or {})
        tmp = tempfile.mkdtemp(prefix="%s-" % name, dir=self.work)
        if kind == "plain":
            b = BenchBroker(plugin=False, tmp=tmp)
        elif kind == "sqlite":
            b = BenchBroker(opts=opts, tmp=tmp)
        elif kind == "pg":
            b = BenchBroker(opts=dict(opts, store="postgresql"), tmp=tmp)
            b.use_pg(self.pg1)
        elif kind == "pgsb":
            db = "im_" + uuid.uuid4().hex[:10]
            b = BenchBroker(opts=dict(opts, store="postgresql", pg_conninfo=self.pair_db_uri(db), node_id=db), tmp=tmp)
        elif kind == "cluster":
            # As cluster_env.cluster_broker: one database, one node id each, NATS.
            b = BenchBroker(opts=dict(opts, store="postgresql", pg_conninfo=self.pair.uri, node_id=name,
                                      nats_servers=self.nats.servers), tmp=tmp)
        else:
            raise ValueError(kind)
        b.bench_name, b.kind = name, kind
        self.brokers.append(b)
        b.start()
        return b

    def stop_broker(self, b):
        try:
            b.stop()
        finally:
            shutil.copy(b.log_path, os.path.join(self.logs, "%s.%s.log" % (b.bench_name, os.path.basename(b.dir))))
            if not self.a.keep:
                shutil.rmtree(b.dir, ignore_errors=True)
            if b in self.brokers:
                self.brokers.remove(b)

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for b in list(self.brokers):
            try:
                self.stop_broker(b)
            except Exception as e:          # noqa: BLE001: keep stopping the others
                self.say("stopping %s: %s" % (b.bench_name, e))
        if self.nats:
            for f in os.listdir(self.nats.base):
                shutil.copy(os.path.join(self.nats.base, f), os.path.join(self.logs, f))
            self.nats.stop()
        if self.pair:
            for n in self.pair.nodes:
                if os.path.exists(n.log):
                    shutil.copy(n.log, os.path.join(self.logs, "pg-%s.log" % os.path.basename(n.dir)))
            self.pair.stop()
        if self.pg1:
            self.pg1.cleanup()
        if self.a.keep:
            self.say("kept " + self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        try:
            import imtest
            shutil.rmtree(os.path.dirname(imtest.pb.__file__), ignore_errors=True)
        except ImportError:
            pass

    # ---- part 1: imbench ----

    def imbench(self, b, qos, pairs, n, tag):
        args = [self.imbench_bin, "dm", "-q", str(qos), "-c", str(pairs), "-n", str(n), "--nodelay",
                "-p", str(b.port), "-P", str(b.proc.pid), "-T", tag, "-t", str(self.a.imbench_timeout)]
        if b.kind != "plain":
            args.append("--frame")
            if self.a.imbench_cmid:
                args.append("--cmid")
        roots = self.pg_roots(b.kind)
        c0 = tree_cpu_us(roots) if roots else None
        with open(os.path.join(self.logs, "imbench.log"), "ab") as log:
            log.write(("%s %s\n" % (b.bench_name, " ".join(args))).encode())
            log.flush()
            try:
                r = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, timeout=self.a.imbench_timeout + 15)
                out = r.stdout.decode()
            except subprocess.TimeoutExpired:
                out = ""
        c1 = tree_cpu_us(roots) if roots else None
        res = {"ok": 0}
        for line in out.splitlines():
            if line.startswith("RESULT"):
                res = dict(kv.split("=", 1) for kv in line.split()[1:])
                for k, v in res.items():
                    try:
                        res[k] = float(v)
                    except ValueError:
                        pass
                break
        msgs = res.get("msgs", 0) or 0
        res["pg_cpu_us_per_msg"] = (c1 - c0) / msgs if c0 is not None and msgs else None
        return res

    def part1(self):
        a = self.a
        kinds = ["plain", "sqlite", "pg"] + ([] if a.no_standby else ["pgsb"])
        if a.kinds:
            kinds = [k for k in a.kinds.split(",") if k]
        workloads = [(1, 1), (1, 10), (2, 1), (2, 10)] if not a.quick else [(1, 1), (2, 10)]
        if a.workloads:
            workloads = [tuple(int(x) for x in w.split("x")) for w in a.workloads.split(",") if w]
        self.say("part 1: %s x %s, %d msgs, %d rounds" % (kinds, ["q%d-%dp" % w for w in workloads], a.msgs, a.rounds))
        tag = 0
        for wi, (qos, pairs) in enumerate(workloads):
            brokers = {k: self.broker(k, "p1-" + k) for k in kinds}
            for r in range(a.rounds):
                order = kinds[(r + wi) % len(kinds):] + kinds[:(r + wi) % len(kinds)]
                if r % 2:
                    order.reverse()
                for k in order:
                    tag += 1
                    res = self.imbench(brokers[k], qos, pairs, a.msgs, "c%d" % tag)
                    ok = int(res.get("ok", 0)) == 1 and res.get("msgs") == a.msgs
                    self.results["part1"].append({"qos": qos, "pairs": pairs, "kind": k, "round": r, "ok": ok, **res})
                    self.say("  q%d %2d pairs %-6s round %d: %s msgs/s p50 %s p99 %s us%s" % (
                        qos, pairs, k, r + 1, res.get("rate"), res.get("p50_us"), res.get("p99_us"),
                        "" if ok else " FAILED"))
            for b in brokers.values():
                self.stop_broker(b)

    # ---- parts 2-4: worker pairs ----

    def spawn(self, spec, name):
        spec = dict(spec, out=os.path.join(self.work, "%s.json" % name))
        from imtest import Lines
        err = open(os.path.join(self.logs, "workers.log"), "ab")
        p = subprocess.Popen([self.py, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        err.close()
        self.procs.append(p)
        return p, Lines(p), spec["out"]

    def finish(self, p, path, timeout):
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.procs.remove(p)
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"complete": False}

    def pair_run(self, pub_b, sub_b, n, rate, during=None):
        """One measurement: subscriber on sub_b, publisher on pub_b."""
        tag = uuid.uuid4().hex[:8]
        timeout = (n / rate if rate else 0) + self.a.pair_timeout
        sub, sl, sout = self.spawn({"role": "sub", "port": sub_b.port, "user": "b" + tag, "n": n, "timeout": timeout},
                                   "sub-" + tag)
        # Both start at once: warm-up messages sent before the subscription
        # are stored, not delivered live, and not counted.
        pub, pl, pout = self.spawn({"role": "pub", "port": pub_b.port, "user": "a" + tag, "to": "b" + tag, "n": n,
                                    "rate": rate, "window": self.a.window, "timeout": timeout,
                                    "cmid": not self.a.no_cmid}, "pub-" + tag)
        events = {}
        if "READY" not in sl.wait_for(lambda g: "READY" in g, 60):
            raise RuntimeError("subscriber not ready (logs/workers.log)")
        if "READY" not in pl.wait_for(lambda g: "READY" in g, 60):
            raise RuntimeError("publisher not ready (logs/workers.log)")
        # Warm-up: the subscriber's broker has learnt where the timeline is
        # (in a cluster: its NATS interest and the timeline's head).
        t_w = time.monotonic()
        sl.wait_for(lambda g: g.count("WARM") >= 5 and time.monotonic() - t_w > 0.3, 60)
        pub.stdin.write(b"GO\n")
        pub.stdin.flush()
        events["go"] = now_ns()
        if during:
            during(events)
        P = self.finish(pub, pout, timeout + 30)
        S = self.finish(sub, sout, 30)
        return self.summarize(P, S, n, events)

    @staticmethod
    def summarize(P, S, n, events):
        recs = S.get("recs", [])
        lat = sorted((r[2] - r[1]) / 1e3 for r in recs)
        idxs = [r[0] for r in recs]
        seqs = [r[3] for r in recs]
        res = {"n": n, "received": len(recs), "complete": bool(P.get("complete") and S.get("complete")),
               "lost": n - len(set(idxs)), "dups": len(idxs) - len(set(idxs)),
               "reordered": sum(1 for x, y in zip(idxs, idxs[1:]) if y < x),
               "seq_gaps": sum(1 for x, y in zip(seqs, seqs[1:]) if y != x + 1),
               "lat_p50_us": pct(lat, .5), "lat_p99_us": pct(lat, .99), "lat_max_us": pct(lat, 1.0)}
        sent, ack, rc = P.get("sent", []), P.get("ack", []), P.get("rcpt", [])
        ok = [i for i in range(len(sent)) if ack[i] and rc[i]]
        ship = sorted((rc[i] - ack[i]) / 1e3 for i in ok)
        puback = sorted((ack[i] - sent[i]) / 1e3 for i in range(len(sent)) if ack[i])
        res.update({"ship_p50_us": pct(ship, .5), "ship_p99_us": pct(ship, .99), "ship_max_us": pct(ship, 1.0),
                    "ship_neg": sum(1 for x in ship if x < 0), "receipts": len(ok), "rcpt_bad": P.get("rcpt_bad"),
                    "rcpt_dup": P.get("rcpt_dup"),
                    "puback_p50_us": pct(puback, .5), "puback_p99_us": pct(puback, .99)})
        if P.get("t0") and recs:
            res["pub_rate"] = n / max((P["t_acked"] - P["t0"]) / 1e9, 1e-9)
            res["rcpt_rate"] = n / max((P["t_rcpt"] - P["t0"]) / 1e9, 1e-9)
            res["deliver_rate"] = len(recs) / max((max(r[2] for r in recs) - P["t0"]) / 1e9, 1e-9)
        res["events"] = events
        if events.get("up"):
            res.update(Bench.outage_stats(P, recs, events))
        return res

    @staticmethod
    def outage_stats(P, recs, ev):
        down, up = ev["down"], ev["up"]
        pre = sorted(r[2] - r[1] for r in recs if r[2] < down)         # delivered before the stop
        thr = max(50e6, 3 * pct(pre, .99)) if pre else 50e6
        backlog = [r for r in recs if down <= r[1] < up]
        before_up = [r for r in recs if r[1] < up]
        after = [r for r in recs if r[2] >= up]
        slow = [r[2] for r in recs if r[2] - r[1] > thr]
        t_first = min(r[2] for r in after) if after else None
        t_drained = max(r[2] for r in before_up) if before_up else None
        caught = [r for r in recs if t_first is not None and t_first <= r[2] <= t_drained]
        acked_down = sum(1 for t in P.get("ack", []) if down <= t < up)
        sent_down = sum(1 for t in P.get("sent", []) if down <= t < up)
        return {"outage_s": (up - down) / 1e9, "stop_s": (ev["stopped"] - down) / 1e9, "start_s": (up - ev["starting"]) / 1e9,
                "sent_down": sent_down, "acked_down": acked_down, "backlog": len(backlog),
                "delivered_down": sum(1 for r in recs if ev["stopped"] <= r[2] < ev["starting"]),
                "first_after_up_s": (t_first - up) / 1e9 if after else None,
                "drained_after_up_s": (t_drained - up) / 1e9 if before_up else None,
                "catchup_rate": len(caught) / max((t_drained - t_first) / 1e9, 1e-9) if caught else None,
                "normal_after_up_s": (max(slow) - up) / 1e9 if slow else 0.0,
                "normal_by_end": not slow or max(slow) < max(r[2] for r in recs),
                "normal_threshold_ms": thr / 1e6, "pre_p99_ms": pct(pre, .99) / 1e6 if pre else None}

    def part23(self):
        a = self.a
        self.say("part 2/3: cluster of 3 brokers; paced %d msgs/s x %g s and %d unpaced, %d rounds"
                 % (a.rate, a.secs, a.unpaced, a.rounds))
        A, B, C = (self.broker("cluster", "node-" + x) for x in "abc")
        confs = [("cluster A->B", A, B), ("cluster A->A", A, A)]
        if not a.no_single:
            S = self.broker("sqlite", "single-sqlite")
            Pg = self.broker("pg", "single-pg")
            confs += [("single sqlite", S, S), ("single pg", Pg, Pg)]
        loads = [("paced", int(a.rate * a.secs), a.rate), ("unpaced", a.unpaced, 0)]
        for r in range(a.rounds):
            order = confs[r % len(confs):] + confs[:r % len(confs)]
            if r % 2:
                order.reverse()
            for load, n, rate in loads:
                for name, pb_, sb in order:
                    try:
                        res = self.pair_run(pb_, sb, n, rate)
                    except Exception as e:          # noqa: BLE001: record and go on
                        res = {"complete": False, "error": str(e)}
                    res.update({"conf": name, "load": load, "round": r})
                    self.results["pairs"].append(res)
                    self.say("  %-14s %-7s round %d: delivery p50 %.1f p99 %.1f max %.1f ms; ship p50 %.1f p99 %.1f ms%s" % (
                        name, load, r + 1, res.get("lat_p50_us", float("nan")) / 1e3, res.get("lat_p99_us", float("nan")) / 1e3,
                        res.get("lat_max_us", float("nan")) / 1e3, res.get("ship_p50_us", float("nan")) / 1e3,
                        res.get("ship_p99_us", float("nan")) / 1e3, "" if res.get("complete") else " INCOMPLETE %s" % res.get("error", "")))
        self.cluster = (A, B, C)

    def part4(self):
        a = self.a
        if not hasattr(self, "cluster"):
            self.cluster = tuple(self.broker("cluster", "node-" + x) for x in "abc")
        A, B, _ = self.cluster
        pre, post = 2.0, a.outage_after
        n = int(a.rate * (pre + a.outage + post))
        self.say("part 4: PostgreSQL primary stopped %g s under %d msgs/s (A->B)" % (a.outage, a.rate))
        pair = self.pair

        def during(ev):
            time.sleep(pre)
            ev["down"] = now_ns()
            pair._ctl(pair.primary, "-m", "fast", "-w", "stop")
            ev["stopped"] = now_ns()
            time.sleep(max(0.0, a.outage - (ev["stopped"] - ev["down"]) / 1e9))
            ev["starting"] = now_ns()
            pair._ctl(pair.primary, "-w", "start")
            ev["up"] = now_ns()

        try:
            res = self.pair_run(A, B, n, a.rate, during)
        except Exception as e:                      # noqa: BLE001
            res = {"complete": False, "error": str(e)}
        self.results["outage"] = res
        self.say("  %s" % {k: v for k, v in res.items() if k != "events"})

    # ---- part 5: imbench across brokers ----

    def ximbench(self, mode, pub_b, sub_b, n, rate, tag, members):
        """imbench dm|fanout publishing on pub_b, receiving on sub_b."""
        a = self.a
        args = [self.imbench_bin, mode, "-q", "1", "-c", str(members), "-n", str(n), "--nodelay", "--frame",
                "-p", str(pub_b.port), "-P", str(pub_b.proc.pid), "-T", tag, "-t", str(a.imbench_timeout),
                "--warmup", str(a.x_warmup)]
        if sub_b is not pub_b:
            args += ["--port2", str(sub_b.port)]
        if rate:
            args += ["-r", "%g" % rate]
        roots = self.pg_roots("cluster")
        brokers = [b for b in self.cluster]
        c0 = tree_cpu_us(roots)
        b0 = [proc_cpu_us(b.proc.pid) for b in brokers]
        with open(os.path.join(self.logs, "imbench.log"), "ab") as log:
            log.write(("%s -> %s %s\n" % (pub_b.bench_name, sub_b.bench_name, " ".join(args))).encode())
            log.flush()
            try:
                r = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, timeout=a.imbench_timeout + 15)
                out = r.stdout.decode()
            except subprocess.TimeoutExpired:
                out = ""
        c1 = tree_cpu_us(roots)
        b1 = [proc_cpu_us(b.proc.pid) for b in brokers]
        res = {"ok": 0}
        for line in out.splitlines():
            if line.startswith("RESULT"):
                res = dict(kv.split("=", 1) for kv in line.split()[1:])
                for k, v in res.items():
                    try:
                        res[k] = float(v)
                    except ValueError:
                        pass
                break
        # Per message published (a group message is delivered `members` times).
        msgs = (res.get("msgs", 0) or 0) / (members if mode == "fanout" else 1)
        res["msg_rate"] = (res.get("rate", 0) or 0) / (members if mode == "fanout" else 1)
        res["pg_cpu_us_per_msg"] = (c1 - c0) / msgs if msgs else None
        res["brokers_cpu_us_per_msg"] = sum(y - x for x, y in zip(b0, b1)) / msgs if msgs else None
        res["ok"] = int(res.get("ok", 0)) == 1 and res.get("gaps", 1) == 0 and res.get("out_of_order", 1) == 0
        return res

    def part5(self):
        a = self.a
        if not hasattr(self, "cluster"):
            self.cluster = tuple(self.broker("cluster", "node-" + x) for x in "abc")
        A, B, _ = self.cluster
        works = [("dm", "dm", a.x_pairs, a.x_msgs), ("group", "fanout", a.x_members, max(1000, a.x_msgs // a.x_members))]
        self.say("part 5: imbench across brokers: saturation, then %.0f%% of it for %g s, %d rounds" % (
            100 * a.x_load, a.secs, a.rounds))
        tag = 0
        fixed = dict(zip(("dm", "group"), (float(x) for x in a.x_fixed.split(",")))) if a.x_fixed else {}
        for name, mode, members, n in works:
            sat = []
            for r in range(0 if fixed else a.x_sat_rounds):
                tag += 1
                res = self.ximbench(mode, A, B, n, 0, "x%d" % tag, members)
                res.update({"work": name, "phase": "saturation", "path": "A->B", "round": r, "members": members})
                self.results["cross"].append(res)
                sat.append(res.get("msg_rate", float("nan")))
                self.say("  %-5s saturation round %d: %.0f msgs/s (%.0f deliveries/s), broker CPU %.1f us/msg (all 3), PostgreSQL %.1f us/msg%s" % (
                    name, r + 1, res.get("msg_rate", float("nan")), res.get("rate", float("nan")),
                    res.get("brokers_cpu_us_per_msg") or float("nan"), res.get("pg_cpu_us_per_msg") or float("nan"),
                    "" if res["ok"] else " FAILED"))
            rate = fixed[name] if fixed else a.x_load * med(sat)
            if not rate == rate or rate <= 0:
                continue
            total = rate * (members if mode == "fanout" else 1)
            pn = int(rate * a.secs)
            for r in range(a.rounds):
                paths = [("A->B", A, B), ("A->A", A, A)]
                if r % 2:
                    paths.reverse()
                for path, pb_, sb in paths:
                    tag += 1
                    res = self.ximbench(mode, pb_, sb, pn, rate if mode == "dm" else rate, "x%d" % tag, members)
                    res.update({"work": name, "phase": "paced", "path": path, "round": r, "offered": rate,
                                "members": members, "deliveries_offered": total})
                    self.results["cross"].append(res)
                    self.say("  %-5s %.0f msgs/s %s round %d: p50 %.2f p99 %.2f max %.2f ms%s" % (
                        name, rate, path, r + 1, res.get("p50_us", float("nan")) / 1e3, res.get("p99_us", float("nan")) / 1e3,
                        res.get("max_us", float("nan")) / 1e3, "" if res["ok"] else " FAILED"))

    # ---- the table ----

    def table(self):
        import pgserver
        L = []
        a = self.a
        up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        L.append("mosquitto-im cluster bench, %s, commit %s%s" % (
            self.stamp, self.git("rev-parse", "--short", "HEAD"), " (quick)" if a.quick else ""))
        L.append("machine: %d CPUs; load at start: %s; at end: %s" % (os.cpu_count(), self.load0, up.split("load average:")[-1].strip()))
        L.append("versions: %s; %s; %s" % (self.version(["mosquitto", "-h"], "version"),
                                            self.version(["nats-server", "--version"], ""),
                                            self.version([os.path.join(pgserver.bin_dir() or "", "postgres"), "--version"], "")))
        L.append("")
        if self.results["part1"]:
            rows = self.results["part1"]
            L.append("1. One broker: imbench dm, %d msgs per run, window 20, 100-byte bodies, receivers subscribed at"
                     " the publish QoS; medians of %d rounds" % (a.msgs, a.rounds))
            L.append("   plain = no plugin; sqlite; pg = PostgreSQL synchronous_commit on, no standby;"
                     " pg+sb = with a synchronous standby")
            L.append("   %-14s %-7s %9s %7s %7s %9s %9s %9s %11s %9s" % (
                "workload", "broker", "msgs/s", "/plain", "/sqlite", "p50 us", "p99 us", "max us", "brokerCPU", "pgCPU"))
            kinds = []
            for r in rows:
                if r["kind"] not in kinds:
                    kinds.append(r["kind"])
            wls = []
            for r in rows:
                if (r["qos"], r["pairs"]) not in wls:
                    wls.append((r["qos"], r["pairs"]))
            for q, p in wls:
                m = {}
                for k in kinds:
                    rs = [r for r in rows if (r["qos"], r["pairs"], r["kind"]) == (q, p, k)]
                    if not rs:
                        continue
                    m[k] = {f: med([float(r[f]) if isinstance(r.get(f), (int, float)) else float("nan") for r in rs])
                            for f in ("rate", "p50_us", "p99_us", "max_us", "cpu_us_per_msg", "pg_cpu_us_per_msg")}
                    m[k]["fail"] = sum(1 for r in rs if not r["ok"])
                for k in kinds:
                    if k not in m:
                        continue
                    v = m[k]
                    rel = lambda base: "%.2f" % (v["rate"] / m[base]["rate"]) if base in m and m[base]["rate"] else "-"
                    L.append("   %-14s %-7s %9.0f %7s %7s %9.0f %9.0f %9.0f %11.1f %9s%s" % (
                        "dm-q%d-%dpair" % (q, p), {"pgsb": "pg+sb"}.get(k, k), v["rate"], rel("plain"), rel("sqlite"),
                        v["p50_us"], v["p99_us"], v["max_us"], v["cpu_us_per_msg"],
                        "%.1f" % v["pg_cpu_us_per_msg"] if v["pg_cpu_us_per_msg"] == v["pg_cpu_us_per_msg"] else "-",
                        "  (%d failed)" % v["fail"] if v["fail"] else ""))
            L.append("   (CPU columns: µs per delivered message; pgCPU = all postgres processes of the server(s) used."
                     " Latency is at saturation: with the plugin\n    the PUBACK comes from the journal, so where the store is"
                     " slower than the publishers it includes the store's backlog)")
            L.append("")
        pr = self.results["pairs"]
        if pr:
            L.append("2. Publish -> live delivery, ms (Python paho v5 publisher and subscriber, QoS 1, window %d, each"
                     " publish with a Response Topic%s); medians of %d rounds, max over all rounds" % (
                a.window, "" if a.no_cmid else " and an im-cmid", a.rounds))
            L.append("   cluster = 3 brokers, PostgreSQL primary + synchronous standby, 3 NATS servers;"
                     " paced = %d msgs/s for %g s, unpaced = %d msgs" % (a.rate, a.secs, a.unpaced))
            L.append("   %-8s %-14s %8s %8s %8s %10s %8s  %s" % ("load", "path", "p50", "p99", "max", "deliv/s", "p99/A->A", "checks"))
            confs = []
            for r in pr:
                if r["conf"] not in confs:
                    confs.append(r["conf"])
            for load in ("paced", "unpaced"):
                ref = med([r.get("lat_p99_us", float("nan")) for r in pr if r["load"] == load and r["conf"] == "cluster A->A"])
                for cf in confs:
                    rs = [r for r in pr if r["load"] == load and r["conf"] == cf]
                    p99 = med([r.get("lat_p99_us", float("nan")) for r in rs])
                    L.append("   %-8s %-14s %8.2f %8.2f %8.2f %10.0f %8s  %s" % (
                        load, cf, med([r.get("lat_p50_us", float("nan")) for r in rs]) / 1e3, p99 / 1e3,
                        max([r.get("lat_max_us", float("nan")) for r in rs] or [float("nan")]) / 1e3,
                        med([r.get("deliver_rate", float("nan")) for r in rs]),
                        "%.2f" % (p99 / ref) if ref == ref and ref else "-", self.checks(rs)))
            L.append("")
            L.append("3. Ship delay: PUBACK (journal append) -> Receipt (seq, after the store commit), ms;"
                     " same runs as 2 (publisher always on the first broker named)")
            L.append("   %-8s %-14s %8s %8s %8s %9s %9s   %s" % ("load", "broker", "p50", "p99", "max", "PUBACK/s", "Receipt/s",
                                                            "publish->PUBACK p50/p99"))
            for load in ("paced", "unpaced"):
                for cf in confs:
                    rs = [r for r in pr if r["load"] == load and r["conf"] == cf]
                    L.append("   %-8s %-14s %8.2f %8.2f %8.2f %9.0f %9.0f   %.2f / %.2f%s" % (
                        load, cf, med([r.get("ship_p50_us", float("nan")) for r in rs]) / 1e3,
                        med([r.get("ship_p99_us", float("nan")) for r in rs]) / 1e3,
                        max([r.get("ship_max_us", float("nan")) for r in rs] or [float("nan")]) / 1e3,
                        med([r.get("pub_rate", float("nan")) for r in rs]), med([r.get("rcpt_rate", float("nan")) for r in rs]),
                        med([r.get("puback_p50_us", float("nan")) for r in rs]) / 1e3,
                        med([r.get("puback_p99_us", float("nan")) for r in rs]) / 1e3,
                        "" if all(r.get("receipts") == r.get("n") for r in rs) else "  (receipts missing)"))
            L.append("")
        xr = self.results["cross"]
        if xr:
            L.append("5. Cross-broker, C client (bench/imbench, libmosquitto): publish on broker A, delivery on broker B of the"
                     " cluster, QoS 1, 100-byte bodies, window 20 per sender, --warmup %d per sender not measured" % a.x_warmup)
            L.append("   dm = %d sender/receiver pairs; group = 1 sender on A, %d members on B (msgs/s = group messages)"
                     % (a.x_pairs, a.x_members))
            L.append("   saturation: unpaced, median of %d runs; CPU per message: all 3 brokers, all PostgreSQL processes"
                     " (primary + standby)" % a.x_sat_rounds)
            L.append("   %-6s %12s %14s %12s %12s" % ("work", "msgs/s", "deliveries/s", "brokers us", "postgres us"))
            works = []
            for r in xr:
                if r["work"] not in works:
                    works.append(r["work"])
            for w in works:
                rs = [r for r in xr if r["work"] == w and r["phase"] == "saturation"]
                L.append("   %-6s %12.0f %14.0f %12.1f %12.1f%s" % (
                    w, med([r.get("msg_rate", float("nan")) for r in rs]), med([r.get("rate", float("nan")) for r in rs]),
                    med([r.get("brokers_cpu_us_per_msg") or float("nan") for r in rs]),
                    med([r.get("pg_cpu_us_per_msg") or float("nan") for r in rs]),
                    "" if all(r["ok"] for r in rs) else "  (failed runs)"))
            L.append("   paced at %s for %g s; ms, medians of %d rounds [lowest-highest], max over the rounds"
                     % ("%.0f%% of saturation" % (100 * a.x_load) if not a.x_fixed else "fixed rates", a.secs, a.rounds))
            L.append("   %-6s %-5s %9s %18s %18s %9s  %s" % ("work", "path", "msgs/s", "p50", "p99", "max", "checks"))
            for w in works:
                for path in ("A->B", "A->A"):
                    rs = [r for r in xr if r["work"] == w and r["phase"] == "paced" and r["path"] == path]
                    if not rs:
                        continue
                    p50 = [r.get("p50_us", float("nan")) / 1e3 for r in rs]
                    p99 = [r.get("p99_us", float("nan")) / 1e3 for r in rs]
                    L.append("   %-6s %-5s %9.0f %18s %18s %9.2f  %s" % (
                        w, path, rs[0].get("offered", float("nan")),
                        "%.2f [%.2f-%.2f]" % (med(p50), min(p50), max(p50)), "%.2f [%.2f-%.2f]" % (med(p99), min(p99), max(p99)),
                        max(r.get("max_us", float("nan")) for r in rs) / 1e3,
                        "all delivered, in order" if all(r["ok"] for r in rs) else "FAILED or out of order"))
            L.append("")
        o = self.results["outage"]
        if o:
            L.append("4. PostgreSQL primary stopped (pg_ctl -m fast) for %g s under %d msgs/s, publisher on A, subscriber on B"
                     % (a.outage, a.rate))
            if o.get("error") or "backlog" not in o:
                L.append("   FAILED: %s" % o.get("error", "incomplete"))
            else:
                L.append("   down %.2f s (pg_ctl stop took %.2f s, start %.2f s); published while down %d, acknowledged"
                         " while down %d, delivered while stopped %d" % (o["outage_s"], o["stop_s"], o["start_s"], o["sent_down"],
                                                       o["acked_down"], o["delivered_down"]))
                L.append("   after PostgreSQL was up: first backlog delivery %.2f s, backlog of %d delivered by %.2f s"
                         " (%.0f msgs/s delivered meanwhile, new load included)" % (
                             o["first_after_up_s"] or float("nan"), o["backlog"], o["drained_after_up_s"] or float("nan"),
                             o.get("catchup_rate") or float("nan")))
                L.append("   latency back under %.0f ms (3 x p99 before the stop, >= 50 ms): %s" % (
                    o["normal_threshold_ms"], "%.2f s after up" % o["normal_after_up_s"] if o.get("normal_by_end")
                    else "not by the end of the load (%.2f s after up)" % o["normal_after_up_s"]))
                L.append("   all %d published (%s): %s" % (o["n"], "no cmid" if a.no_cmid else "each with an im-cmid",
                                                          self.checks([o])))
                L.append("   Receipts: %s of %d, %s duplicate: true; PUBACK p99 over the run %.1f ms" % (
                    o.get("receipts"), o["n"], o.get("rcpt_dup"), o.get("puback_p99_us", float("nan")) / 1e3))
            L.append("")
        return "\n".join(L)

    @staticmethod
    def checks(rs):
        bad = []
        for k in ("lost", "dups", "reordered", "seq_gaps"):
            s = sum(r.get(k, 0) or 0 for r in rs)
            if s:
                bad.append("%s %d" % (k, s))
        inc = sum(1 for r in rs if not r.get("complete"))
        if inc:
            bad.append("%d incomplete" % inc)
        return ", ".join(bad) if bad else "all delivered once, in order, seqs gap-free"

    def git(self, *args):
        return subprocess.run(["git", "-C", ROOT] + list(args), capture_output=True, text=True).stdout.strip()

    @staticmethod
    def version(cmd, word):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return "?"
        line = out.splitlines()[0] if out else "?"
        return line.strip()

    def run(self):
        self.load0 = open("/proc/loadavg").read().split()[:3]
        self.load0 = ", ".join(self.load0)
        t0 = time.monotonic()
        if self.a.parts & {2, 3, 4, 5}:
            from cluster_env import NatsCluster
            self.nats = NatsCluster(3).start()
        self.start_pg()
        timing = {}
        if 1 in self.a.parts:
            t = time.monotonic()
            self.part1()
            timing["part1"] = time.monotonic() - t
        if self.a.parts & {2, 3}:
            t = time.monotonic()
            self.part23()
            timing["part23"] = time.monotonic() - t
        if 4 in self.a.parts:
            t = time.monotonic()
            self.part4()
            timing["part4"] = time.monotonic() - t
        if 5 in self.a.parts:
            t = time.monotonic()
            self.part5()
            timing["part5"] = time.monotonic() - t
        timing["total"] = time.monotonic() - t0
        self.results["timing_s"] = timing
        text = self.table() + "run took %.0f s (%s); command: %s\n" % (
            timing["total"], ", ".join("%s %.0f s" % kv for kv in timing.items() if kv[0] != "total"),
            " ".join(sys.argv))
        with open(os.path.join(self.out, "cluster.txt"), "w") as f:
            f.write(text)
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1, default=str)
        print(text)
        self.say("results in " + self.out)
        return 0 if self.all_ok() else 1

    def all_ok(self):
        ok = all(r["ok"] for r in self.results["part1"])
        ok = ok and all(r.get("complete") and not (r.get("lost") or r.get("dups") or r.get("reordered"))
                        for r in self.results["pairs"])
        ok = ok and all(r["ok"] for r in self.results["cross"])
        o = self.results["outage"]
        return ok and (o is None or (o.get("complete") and not (o.get("lost") or o.get("dups"))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="small counts, 2 rounds, 2 workloads (about 2 minutes)")
    ap.add_argument("--rounds", type=int, help="rounds per configuration (default 3, quick 2)")
    ap.add_argument("--msgs", type=int, help="part 1: messages per imbench run (default 20000, quick 5000)")
    ap.add_argument("--rate", type=int, default=500, help="parts 2-4: paced rate, msgs/s (default 500)")
    ap.add_argument("--secs", type=float, help="part 2: paced duration (default 10, quick 3)")
    ap.add_argument("--unpaced", type=int, help="part 2: messages of the unpaced run (default 3000, quick 1500)")
    ap.add_argument("--window", type=int, default=20, help="parts 2-4: unacknowledged publishes (default 20)")
    ap.add_argument("--outage", type=float, help="part 4: seconds PostgreSQL is down (default 5, quick 3)")
    ap.add_argument("--outage-after", type=float, default=None, help="part 4: seconds of load after it is up (default 10, quick 6)")
    ap.add_argument("--only", default="1,2,3,4,5", help="parts to run, e.g. 1 or 2,3 (2 and 3 are the same runs)")
    ap.add_argument("--x-pairs", type=int, default=10, help="part 5: DM sender/receiver pairs (default 10)")
    ap.add_argument("--x-members", type=int, default=10, help="part 5: group members on broker B (default 10)")
    ap.add_argument("--x-msgs", type=int, help="part 5: messages of a saturation run (default 20000, quick 6000;"
                    " the group sends this / members)")
    ap.add_argument("--x-load", type=float, default=0.5, help="part 5: paced rate as a fraction of saturation (default 0.5)")
    ap.add_argument("--x-sat-rounds", type=int, default=2, help="part 5: saturation runs per workload (default 2)")
    ap.add_argument("--x-warmup", type=int, default=20, help="part 5: messages per sender before measuring (default 20)")
    ap.add_argument("--x-fixed", help="part 5: DM,GROUP paced msgs/s, no saturation runs (to compare builds at one rate)")
    ap.add_argument("--no-standby", action="store_true", help="part 1 without the pg+standby broker")
    ap.add_argument("--kinds", help="part 1: brokers to compare, e.g. sqlite,pgsb (default plain,sqlite,pg,pgsb)")
    ap.add_argument("--workloads", help="part 1: QoSxPAIRS list, e.g. 1x1,2x10 (default all four; quick 1x1,2x10)")
    ap.add_argument("--imbench-cmid", action="store_true", help="part 1: every publish with an im-cmid (MQTT v5)")
    ap.add_argument("--no-single", action="store_true", help="parts 2/3 without the single-broker references")
    ap.add_argument("--no-cmid", action="store_true", help="parts 2-4: publish without im-cmid (then a batch whose"
                    " COMMIT answer is lost is stored twice)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build folder (default build/)")
    ap.add_argument("--out", help="results folder (default bench/out/<time>)")
    ap.add_argument("--keep", action="store_true", help="keep the brokers' temporary folders")
    ap.add_argument("--limit", type=float, help="stop everything after this many seconds (default 900, quick 300)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        spec = json.loads(a.worker)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
        (worker_sub if spec["role"] == "sub" else worker_pub)(spec)
        return 0

    q = a.quick
    a.rounds = a.rounds or (2 if q else 3)
    a.msgs = a.msgs or (5000 if q else 20000)
    a.secs = a.secs or (3 if q else 10)
    a.unpaced = a.unpaced or (1500 if q else 3000)
    a.outage = a.outage or (3 if q else 5)
    a.outage_after = a.outage_after if a.outage_after is not None else (6 if q else 10)
    a.limit = a.limit or (300 if q else 900)
    a.x_msgs = a.x_msgs or (6000 if q else 20000)
    a.imbench_timeout = 120
    a.pair_timeout = 90
    a.parts = {int(x) for x in a.only.split(",") if x.strip()}
    if not 1 <= a.rounds <= 20 or a.unpaced > 60000 or a.rate * (a.secs + a.outage + a.outage_after + 2) > 60000:
        ap.error("rounds 1..20, at most 60000 messages per worker run")
    a.build = os.path.abspath(a.build)
    if not os.path.exists(os.path.join(a.build, "mosquitto_im.so")) or not os.access(os.path.join(a.build, "bench", "imbench"), os.X_OK):
        ap.error("%s: mosquitto_im.so or bench/imbench missing (build first)" % a.build)
    # imtest reads these at import: our build, SQLite unless told, no sanitizers.
    os.environ["IM_BUILD_DIR"] = a.build
    os.environ.pop("IM_PLUGIN", None)
    os.environ["IM_STORE"] = "sqlite"
    os.environ["IM_SANITIZE"] = "OFF"
    os.environ["IM_TSAN"] = "OFF"

    from cluster_env import missing
    why = missing()
    if why:
        print("cluster.py: " + why, file=sys.stderr)
        return 1
    b = Bench(a)

    def stop(signum, _frame):
        raise SystemExit("cluster.py: %s; stopping what was started" % ("time limit (--limit) reached" if signum == signal.SIGALRM
                                                                        else "signal %d" % signum))

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(a.limit))
    try:
        return b.run()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
