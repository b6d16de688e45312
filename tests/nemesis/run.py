#!/usr/bin/python3
"""The nemesis runner of issue #21, single broker, SQLite store.

    run.py --short                      # 3 fixed seeds, about 3 minutes
    run.py --seed S --duration D        # one run, D seconds of faults
    run.py --long                       # 30 minutes of runs, random seeds
    run.py --cluster --short            # the cluster: 2 fixed seeds, ~4 minutes
    run.py --cluster --seed S --duration D

--cluster runs three brokers on PostgreSQL (a primary and a synchronous
standby) and a three-node NATS cluster, with TCP proxies between them
(tests/nemesis/cluster.py has its nemesis).

One run: a real mosquitto with the built plugin (IM_PLUGIN, else
build-nem/mosquitto_im.so) on 127.0.0.1 and a free port, its config and
data folder in a temp dir; N client processes (client.py: MQTT v5,
persistent sessions, fixed client ids) that send direct and group messages
with cmids at QoS 1 and 2, edit and recall some, receive, sync and ack,
each recording its history (history.py); a nemesis that, from the seed,
kills the broker with SIGKILL and restarts it on the same config and data,
stops it with SIGSTOP for a while, and makes clients drop their
connections.  Then a heal phase: every fault undone, every client
re-sends what has no Receipt yet, then syncs every timeline it may read
from 0 and writes `final`; checker.py reads the histories.  Exit status 1
on any anomaly (or a run that could not complete), with the seed and the
command that repeats it; the run folder is kept then.

Everything it starts is stopped by PID; its temp folders are removed
unless the run failed.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"

try:
    import paho.mqtt.client  # noqa: F401
except ImportError:
    # Debian's python3-paho-mqtt lives in /usr/bin/python3's path.
    if os.path.exists(PY) and os.path.realpath(sys.executable) != os.path.realpath(PY):
        os.execv(PY, [PY] + sys.argv)
    raise

PLUGIN = os.environ.get("IM_PLUGIN", os.path.join(ROOT, "build-nem", "mosquitto_im.so"))
os.environ["IM_PLUGIN"] = PLUGIN
os.environ["IM_STORE"] = "sqlite"      # this runner: the SQLite store only

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, HERE)
import imtest  # noqa: E402  (compiles proto/im.proto into a temp dir)
import checker  # noqa: E402
import history as H  # noqa: E402

imtest.PLUGIN = PLUGIN
imtest.STORE = "sqlite"

SHORT_SEEDS = (1, 2, 3)
SHORT_DURATION = 40
LONG_TOTAL = 30 * 60
LONG_DURATION = 120
CLUSTER_SHORT_SEEDS = (1, 2)
CLUSTER_SHORT_DURATION = 60


class NemBroker(imtest.Broker):
    """imtest's Broker, with a log that does not write a line per packet
    (log_type all would, and a run sends thousands)."""

    def write_conf(self):
        super().write_conf()
        with open(self.conf) as f:
            text = f.read()
        text = text.replace("log_type all\n",
                            "log_type error\nlog_type warning\n"
                            "log_type notice\nlog_type information\n")
        with open(self.conf, "w") as f:
            f.write(text)
        self._chown(self.dir)

    def pid(self):
        return self.proc.pid if self.proc is not None else None


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


class Run:
    mode_name = ""
    repeat_flags = ""

    def __init__(self, seed, duration, clients=6, users=4, groups=3,
                 rate=8.0, keep=False):
        self.seed = seed
        self.duration = duration
        self.nclients = clients
        self.nusers = users
        self.ngroups = groups
        self.rate = rate
        self.keep = keep
        self.rnd = random.Random(seed)
        self.dir = tempfile.mkdtemp(prefix="im-nemesis-%d-" % seed)
        # The broker drops to the 'mosquitto' user: it must reach broker/.
        os.chmod(self.dir, 0o755)
        self.hist = os.path.join(self.dir, "history")
        self.ctl = os.path.join(self.dir, "ctl")
        self.logs = os.path.join(self.dir, "logs")
        for d in (self.hist, self.ctl, self.logs):
            os.makedirs(d)
        self.broker = None
        self.block = threading.Lock()    # the broker process: one fault at a time
        self.paused = False
        self.procs = {}                  # proc name -> Popen
        self.stop = threading.Event()
        self.nem = H.Recorder(os.path.join(self.hist, "nemesis.jsonl"),
                              H.NEMESIS, None, None)
        self.faults = {"kill": 0, "pause": 0, "pause+kill": 0, "disconnect": 0}
        self.kept_what = ("histories in history/, broker log and data in "
                          "broker/, client logs in logs/")
        self.errors = []

    # -- the system ------------------------------------------------------

    def start_broker(self):
        self.broker = NemBroker(opts={"compress_min_bytes": 256,
                                      "journal_rotate_seconds": 5},
                                tmp=os.path.join(self.dir, "broker"))
        self.broker.start()
        log("broker pid %d on 127.0.0.1:%d, data %s" % (
            self.broker.pid(), self.broker.port, self.broker.data))

    def users(self):
        return ["u%d" % i for i in range(self.nusers)]

    def setup_groups(self):
        """Groups of 2+ users chosen by the seed, created before the
        clients start; their membership never changes during a run, and
        is written as may_read facts (non-members: never allowed)."""
        users = self.users()
        rec = H.Recorder(os.path.join(self.hist, "setup.jsonl"), "setup",
                         None, None)
        self.membership = {}
        for gi in range(self.ngroups):
            g = "g%d" % gi
            members = self.rnd.sample(users, self.rnd.randint(2, len(users)))
            owner = members[0]
            for u in users:
                if u in members:
                    rec.may_read("g/" + g, True, reader=u,
                                 moderator=(u == owner))
                else:
                    rec.may_read("g/" + g, False, reader=u)
            c = imtest.Client(self.broker, owner, v5=True).connect(timeout=30)
            try:
                r = c.request("group", imtest.pb.GroupRequest(
                    op="create", group=g, members=members[1:]),
                    response_type=imtest.pb.GroupResponse, timeout=30)
            finally:
                c.close()
            if r.status != imtest.pb.OK:
                raise RuntimeError("group create %s: %s %s" % (g, r.status, r.reason))
            self.membership[g] = members
        rec.close()
        log("groups: " + ", ".join("%s=%s" % (g, "+".join(m)) for g, m in
                                   sorted(self.membership.items())))

    def client_broker_args(self, i):
        """The client.py arguments naming client i's broker(s)."""
        return ["--port", str(self.broker.port)]

    def start_clients(self):
        pbdir = os.path.dirname(os.path.abspath(imtest.pb.__file__))
        users = self.users()
        for i in range(self.nclients):
            proc = "c%d" % i
            user = users[i % len(users)]
            groups = [g for g, m in sorted(self.membership.items()) if user in m]
            args = [PY if os.path.exists(PY) else sys.executable,
                    os.path.join(HERE, "client.py"),
                    "--proc", proc, "--user", user,
                    "--client-id", "nem-%s" % proc,
                    "--users", ",".join(users), "--groups", ",".join(groups),
                    "--history", self.hist,
                    "--ctl", self.ctl, "--pb-dir", pbdir,
                    "--seed", str(self.rnd.getrandbits(32)),
                    "--rate", str(self.rate)] + self.client_broker_args(i)
            out = open(os.path.join(self.logs, proc + ".log"), "wb")
            self.procs[proc] = subprocess.Popen(args, stdout=out,
                                                stderr=subprocess.STDOUT)
            out.close()
        self.wait_files(".ready", 60, "connected and synced")

    def wait_files(self, suffix, timeout, what):
        deadline = time.monotonic() + timeout
        missing = list(self.procs)
        while time.monotonic() < deadline:
            missing = [p for p in self.procs
                       if not os.path.exists(os.path.join(self.ctl, p + suffix))]
            dead = [p for p in missing if self.procs[p].poll() is not None]
            if dead:
                raise RuntimeError("client(s) %s exited (see %s)" % (
                    ",".join(dead), self.logs))
            if not missing:
                return []
            time.sleep(0.1)
        log("not %s within %d s: %s" % (what, timeout, ",".join(missing)))
        return missing

    # -- the nemesis -----------------------------------------------------

    def _sleep(self, s):
        """Sleeps s seconds or until the run stops; True if it stopped."""
        return self.stop.wait(s)

    def broker_faults(self, rnd):
        """kill -9 and restart; two of them in a row (the second within
        half a second of the restart); SIGSTOP ... SIGCONT; and a kill of
        a stopped broker.  One at a time on the one broker."""
        while not self._sleep(rnd.uniform(1.0, 6.0)):
            r = rnd.random()
            if r < 0.35:
                self.kill_restart(rnd.uniform(0.1, 3.0), "kill")
            elif r < 0.45:
                # A crash in the first moments after a restart: while the
                # journal replays and every client reconnects and re-sends.
                self.kill_restart(rnd.uniform(0.1, 1.0), "kill")
                self._sleep(rnd.uniform(0.0, 0.5))
                self.kill_restart(rnd.uniform(0.1, 1.0), "kill")
            elif r < 0.9:
                self.pause(rnd.uniform(0.3, 8.0), rnd)
            else:
                self.pause(rnd.uniform(0.3, 3.0), rnd, then_kill=True)

    def kill_restart(self, down, action):
        with self.block:
            self.nem.fault(action, "broker", "start")
            self.faults[action] += 1
            pid = self.broker.pid()
            self.broker.kill9()
            self.paused = False
            log("%s broker pid %d, down %.1f s" % (action, pid, down))
            time.sleep(down)
            self.broker.start()
            self.nem.fault(action, "broker", "end")

    def pause(self, length, rnd, then_kill=False):
        with self.block:
            pid = self.broker.pid()
            self.nem.fault("pause", "broker", "start")
            self.faults["pause+kill" if then_kill else "pause"] += 1
            os.kill(pid, signal.SIGSTOP)
            self.paused = True
            log("pause broker pid %d for %.1f s%s" % (
                pid, length, ", then kill -9" if then_kill else ""))
            time.sleep(length)
            if then_kill:
                # Killed while stopped: the nemesis records the kill inside
                # the pause, so the two overlap in the history.
                self.nem.fault("kill", "broker", "start")
                self.broker.kill9()
                self.paused = False
                self.nem.fault("pause", "broker", "end")
                time.sleep(rnd.uniform(0.1, 2.0))
                self.broker.start()
                self.nem.fault("kill", "broker", "end")
            else:
                os.kill(pid, signal.SIGCONT)
                self.paused = False
                self.nem.fault("pause", "broker", "end")

    def client_faults(self, rnd):
        """Clients close their sockets (SIGUSR1 to client.py), one or two
        at a time, overlapping anything the broker suffers."""
        names = sorted(self.procs)
        while not self._sleep(rnd.uniform(0.5, 4.0)):
            for p in rnd.sample(names, rnd.randint(1, 2)):
                target = "client:" + p
                self.nem.fault("disconnect", target, "start")
                self.faults["disconnect"] += 1
                try:
                    os.kill(self.procs[p].pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
                self.nem.fault("disconnect", target, "end")

    def _thread(self, fn, rnd):
        def body():
            try:
                fn(rnd)
            except Exception as e:       # a broker that does not come back
                self.errors.append("%s: %r" % (fn.__name__, e))
                log("nemesis %s failed: %r" % (fn.__name__, e))
                self.stop.set()
        t = threading.Thread(target=body, name=fn.__name__, daemon=True)
        t.start()
        return t

    # -- one run ---------------------------------------------------------

    def heal(self):
        """Every fault undone: the broker running and not stopped."""
        with self.block:
            if self.paused and self.broker.proc is not None:
                os.kill(self.broker.pid(), signal.SIGCONT)
                self.paused = False
            if self.broker.proc is None or self.broker.proc.poll() is not None:
                self.broker.proc = None
                self.broker.start()

    def nemeses(self):
        """The nemesis threads' bodies, each called with a Random of its own."""
        return [self.broker_faults, self.client_faults]

    def healed(self):
        return "broker pid %d" % self.broker.pid()

    def run(self):
        log("%sseed %d, duration %d s, %d clients, %d users, run dir %s" % (
            self.mode_name, self.seed, self.duration, self.nclients,
            self.nusers, self.dir))
        t0 = time.monotonic()
        self.start_broker()
        self.setup_groups()
        self.start_clients()
        log("clients ready in %.1f s; faults for %d s" % (
            time.monotonic() - t0, self.duration))
        threads = [self._thread(fn, random.Random(self.rnd.getrandbits(64)))
                   for fn in self.nemeses()]
        self.stop.wait(self.duration)
        self.stop.set()
        for t in threads:
            t.join(timeout=120)
        self.heal()
        log("heal: %s; clients re-send what has no Receipt" % self.healed())
        open(os.path.join(self.ctl, "heal"), "w").close()
        not_quiet = self.wait_files(".quiet", 90, "quiet (every message with a Receipt)")
        if not_quiet:
            self.errors.append("not quiet after the heal: %s" % ",".join(not_quiet))
        open(os.path.join(self.ctl, "final"), "w").close()
        log("final syncs")
        deadline = time.monotonic() + 120
        for p, pr in sorted(self.procs.items()):
            try:
                rc = pr.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = None
            if rc != 0:
                self.errors.append("client %s: exit %s" % (p, rc))
        self.nem.close()

    def shutdown(self):
        for p, pr in self.procs.items():
            if pr.poll() is None:
                pr.kill()
                pr.wait()
        if self.broker is not None:
            with self.block:
                if self.paused and self.broker.proc is not None:
                    os.kill(self.broker.pid(), signal.SIGCONT)
                    self.paused = False
                try:
                    self.broker.stop()
                except Exception as e:
                    self.errors.append("broker stop: %r" % e)

    def check(self):
        hist = checker.load([self.hist])
        rep = checker.check(hist)
        print(rep.text(), flush=True)
        return rep

    def client_summaries(self):
        for p in sorted(self.procs):
            try:
                with open(os.path.join(self.logs, p + ".log"), errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for ln in lines[-3:]:
                print("  " + ln)


def one(seed, duration, keep=False, cls=Run, max_silence=None, **kw):
    """One run; True if it found nothing wrong."""
    r = cls(seed, duration, keep=keep, **kw)
    ok = False
    try:
        r.run()
    except Exception as e:
        r.errors.append("run: %r" % e)
        log("run failed: %r" % e)
    finally:
        r.shutdown()
    log("faults: " + ", ".join("%s %d" % kv for kv in sorted(r.faults.items())))
    r.client_summaries()
    rep = None
    try:
        rep = r.check()
    except Exception as e:
        r.errors.append("checker: %r" % e)
    if hasattr(r, "answers_by_fault"):
        try:
            for ln in r.answers_by_fault():
                print(ln)
        except Exception as e:
            print("answers under faults: %r" % e)
    live = getattr(rep, "liveness", None) if rep is not None else None
    if live is not None and max_silence is not None and live.stalls \
            and live.longest() > max_silence:
        r.errors.append("a request waited %.1f s for its answer (--max-silence %g)"
                        % (live.longest(), max_silence))
    for e in r.errors:
        log("ERROR " + e)
    ok = rep is not None and rep.ok and not r.errors
    if ok:
        log("seed %d: OK" % seed)
    else:
        log("seed %d: FAILED (%s); re-run: %s %s %s--seed %d --duration %d" % (
            seed, "anomalies: %s" % rep.by_kind() if rep is not None and not rep.ok
            else "; ".join(r.errors) or "the run did not complete", PY,
            os.path.join(HERE, "run.py"), r.repeat_flags, seed, duration))
    if ok and not keep:
        shutil.rmtree(r.dir, ignore_errors=True)
    else:
        log("run dir kept: %s (%s)" % (r.dir, r.kept_what))
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    m = ap.add_mutually_exclusive_group()
    m.add_argument("--short", action="store_true",
                   help="single broker: seeds %s, %d s each (about 3 minutes); "
                   "with --cluster: seeds %s, %d s each (about 4 minutes)" % (
                       ",".join(map(str, SHORT_SEEDS)), SHORT_DURATION,
                       ",".join(map(str, CLUSTER_SHORT_SEEDS)), CLUSTER_SHORT_DURATION))
    m.add_argument("--long", action="store_true",
                   help="30 minutes of %d s runs with random seeds (--total "
                   "to change)" % LONG_DURATION)
    ap.add_argument("--cluster", action="store_true",
                    help="3 brokers on PostgreSQL primary + synchronous "
                    "standby and 3 NATS nodes, behind TCP proxies")
    ap.add_argument("--seed", type=int, help="one run with this seed")
    ap.add_argument("--duration", type=int, default=60,
                    help="seconds of faults in one run (default 60)")
    ap.add_argument("--total", type=int, default=LONG_TOTAL // 60,
                    help="--long: minutes in all (default %d)" % (LONG_TOTAL // 60))
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--rate", type=float, default=8.0,
                    help="messages a second per client")
    ap.add_argument("--keep", action="store_true",
                    help="keep the run dir even when the run is clean")
    ap.add_argument("--faults", default=None,
                    help="--cluster: only these fault kinds, comma-separated "
                    "(cluster.py KINDS: kill-broker, pause-broker, pause-pg, "
                    "kill-promote, kill-standby, pause-nats, stop-nats, cut-pg, "
                    "cut-nats, cut-clients, disk-full); client disconnects "
                    "always run")
    ap.add_argument("--max-silence", type=float, default=None,
                    help="fail a run in which a request waited longer than "
                    "this many seconds for its answer on one connection "
                    "(default: liveness is reported, never fails a run)")
    a = ap.parse_args(argv)
    if not os.path.exists(PLUGIN):
        print("no plugin at %s: build it (cmake -S %s -B %s/build-nem "
              "-DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF && "
              "cmake --build %s/build-nem -j2) or set IM_PLUGIN" % (
                  PLUGIN, ROOT, ROOT, ROOT), file=sys.stderr)
        return 2
    kw = dict(clients=a.clients, users=a.users, groups=a.groups, rate=a.rate,
              keep=a.keep, max_silence=a.max_silence)
    seeds, short_dur = SHORT_SEEDS, SHORT_DURATION
    flags = ""
    if a.cluster:
        # cluster.py imports this module as "run": the one already loaded.
        sys.modules.setdefault("run", sys.modules[__name__])
        import cluster
        why = cluster.missing()
        if why:
            print("cluster mode cannot run here: %s" % why, file=sys.stderr)
            return 2
        kw["cls"] = cluster.ClusterRun
        if a.faults:
            cluster.ONLY = set(a.faults.split(","))
            unknown = cluster.ONLY - {k for k, _ in cluster.KINDS}
            if unknown:
                print("unknown fault kind(s): %s" % ", ".join(sorted(unknown)), file=sys.stderr)
                return 2
            cluster.ClusterRun.repeat_flags += "--faults %s " % a.faults
        seeds, short_dur = CLUSTER_SHORT_SEEDS, CLUSTER_SHORT_DURATION
        flags = cluster.ClusterRun.repeat_flags
    failed = []
    try:
        if a.short:
            for s in seeds:
                if not one(s, short_dur, **kw):
                    failed.append(s)
            dur = short_dur
        elif a.long:
            t_end = time.monotonic() + a.total * 60
            n = 0
            dur = LONG_DURATION
            # Bounded: no run starts that could not end by the deadline
            # (a run is its duration plus up to about 4 minutes of setup,
            # heal and final syncs in the worst case; usually 20 s).
            while time.monotonic() + dur + 30 < t_end and n < 1000:
                s = random.SystemRandom().randrange(1, 2 ** 31)
                n += 1
                if not one(s, dur, **kw):
                    failed.append(s)
        else:
            s = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 2 ** 31)
            dur = a.duration
            if not one(s, dur, **kw):
                failed.append(s)
    finally:
        shutil.rmtree(os.path.dirname(os.path.abspath(imtest.pb.__file__)),
                      ignore_errors=True)
    if failed:
        print("FAILED seeds: %s; re-run one with: %s %s %s--seed S --duration %d" % (
            ", ".join(map(str, failed)), PY, os.path.join(HERE, "run.py"), flags, dur))
        return 1
    print("all runs clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
