"""The cluster mode of the nemesis runner (issue #21): `run.py --cluster`.

Three brokers (node ids n0, n1, n2) in cluster mode on one PostgreSQL
database (a primary and a synchronous standby, cluster_env.PgPair) and a
three-node NATS cluster (cluster_env.NatsCluster, started with
--no_advertise so that the brokers' NATS clients learn no address but the
proxies'). Between each broker and each PostgreSQL server, each broker and
each NATS node, and the clients and each broker, a TCP proxy (proxy.py):

    clients --[nX-clients]--> broker nX --[nX-pg]--> PG primary / standby
                                         --[nX-nats]--> NATS 0, 1, 2

Broker nX's pg_conninfo names its two nX-pg proxy ports (with
target_session_attrs=read-write, so it finds the writable one), its
nats_servers its three nX-nats ports; clients get the three nX-clients
ports and start on broker i % 3 (client.py --ports, --first).

The nemesis (one scheduler thread, from the seed) starts a fault every
0.5 to 3 s while fewer than MAX_ACTIVE run, each on a resource no other
running fault holds, so faults on different resources overlap. The first
faults of a run are every kind once in a random order, then kinds are
drawn by weight. Kinds (action, target as recorded in nemesis.jsonl):

    kill nX             SIGKILL a broker, down 0.1-3 s, restart on its
                        config, port and data (journal)
    pause nX            SIGSTOP a broker 0.3-8 s, SIGCONT
    pause pg-primary    SIGSTOP the primary's postmaster and every child
                        (backends, walsender...) 0.3-6 s, SIGCONT
    kill-promote pg-primary
                        SIGKILL the primary and its children, promote the
                        standby, build a new standby from it with
                        pg_basebackup on the dead primary's port (the
                        nX-pg proxies' first route points there) and make
                        it synchronous; at most once a run
    kill pg-standby     SIGKILL the synchronous standby and its children,
                        down 1-14 s, start it again, wait until it is
                        synchronous (commits wait meanwhile)
    pause nats-J        SIGSTOP a NATS node 0.3-8 s
    stop nats-J / kill nats-J
                        SIGTERM or SIGKILL a NATS node, down 0.5-6 s,
                        start it on its ports
    cut-blackhole nX-pg|nX-nats|nX-clients
    cut-reset nX-pg|nX-nats|nX-clients
                        a partition of one broker from PostgreSQL, from
                        NATS or from its clients, 0.5-8 s (proxy.py: a
                        blackhole holds connections, a reset closes them
                        and refuses new ones)
    disk-full nX-journal
                        (root only) broker nX's journal folder is a
                        16 MiB tmpfs; a file fills it for 1-6 s
    disconnect client:cI
                        as in the single-broker mode: a client closes its
                        socket (SIGUSR1)

Heal: the scheduler stops and every fault ends itself; then every proxy
is healed, every stopped process continued, every process started that is
not running, the primary has its synchronous standby again, the NATS
nodes are routed; then run.py's heal phase (re-send, final syncs,
checker).
"""

import collections
import errno
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time

import run as R
import imtest
import cluster_env as CE
from proxy import Proxy, BLACKHOLE, RESET

NODES = 3
MAX_ACTIVE = 3
JOURNAL_TMPFS = "16m"

# (kind, weight): the first faults of a run are each kind once.
KINDS = [
    ("kill-broker", 3.0),
    ("pause-broker", 2.0),
    ("pause-pg", 1.0),
    ("kill-promote", 0.5),
    ("kill-standby", 1.0),
    ("pause-nats", 1.0),
    ("stop-nats", 1.0),
    ("cut-pg", 2.0),
    ("cut-nats", 1.5),
    ("cut-clients", 1.5),
    ("disk-full", 1.0),
]


# run.py --faults: only these kinds (None: all of KINDS).
ONLY = None


def kinds():
    return [(k, w) for k, w in KINDS if ONLY is None or k in ONLY]


def missing():
    return CE.missing()


def log(msg):
    R.log(msg)


def _signal(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


class ClusterRun(R.Run):
    mode_name = "cluster: "
    repeat_flags = "--cluster "

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pg = None
        self.nats = None
        self.brokers = []
        self.proxies = {}            # (i, "pg"|"nats"|"clients") -> Proxy
        self.client_ports = []
        self.faults = collections.Counter()
        self.state = threading.Lock()
        self.busy = set()            # resources held by running faults
        self.paused = {}             # target -> pids stopped (SIGSTOP)
        self.promoted = False
        self.mounts = []             # tmpfs mount points (journal folders)
        self.fillers = {}            # i -> filler file path while full
        self.notes = []              # what the nemesis saw (not errors)
        self.kept_what = ("histories in history/, brokers' config, log and "
                          "journal in n0/ n1/ n2/, PostgreSQL and NATS logs "
                          "in pg/ and nats/, client logs in logs/")

    # -- the system ------------------------------------------------------

    def start_broker(self):
        t0 = time.monotonic()
        self.pg = CE.PgPair(standby=True).start()
        self.nats = CE.NatsCluster(NODES, no_advertise=True).start()
        log("PostgreSQL primary :%d (pid %s), sync standby :%d (pid %s); NATS %s" % (
            self.pg.primary.port, self.pg.primary.pid(), self.pg.standby.port,
            self.pg.standby.pid(), ",".join(str(n["port"]) for n in self.nats.nodes)))
        root = os.geteuid() == 0
        for i in range(NODES):
            name = "n%d" % i
            pgp = Proxy(name + "-pg")
            pg_ports = [pgp.add(n.port) for n in (self.pg.primary, self.pg.standby)]
            nxp = Proxy(name + "-nats")
            nats_ports = [nxp.add(n["port"]) for n in self.nats.nodes]
            self.proxies[(i, "pg")] = pgp
            self.proxies[(i, "nats")] = nxp
            conninfo = ("postgresql://postgres@%s/im?target_session_attrs=read-write"
                        "&connect_timeout=2" % ",".join("127.0.0.1:%d" % p for p in pg_ports))
            b = R.NemBroker(opts={"store": "postgresql", "pg_conninfo": conninfo,
                                  "node_id": name,
                                  "nats_servers": ",".join("nats://127.0.0.1:%d" % p
                                                           for p in nats_ports),
                                  "compress_min_bytes": 256,
                                  "journal_rotate_seconds": 5},
                            tmp=os.path.join(self.dir, name))
            if root:
                self.mount_journal(b)
            b.start()
            self.brokers.append(b)
            cp = Proxy(name + "-clients")
            self.proxies[(i, "clients")] = cp
            self.client_ports.append(cp.add(b.port))
            log("broker %s pid %d on :%d, clients through :%d" % (
                name, b.pid(), b.port, self.client_ports[-1]))
        self.broker = self.brokers[0]      # setup_groups() talks to it
        log("cluster up in %.1f s" % (time.monotonic() - t0))

    def journal_dir(self, b):
        return b.db_path + ".journal"

    def mount_journal(self, b):
        d = self.journal_dir(b)
        os.makedirs(d, exist_ok=True)
        try:
            pw = pwd.getpwnam("mosquitto")
            ids = ",uid=%d,gid=%d" % (pw.pw_uid, pw.pw_gid)
        except KeyError:
            ids = ""
        r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            "size=%s,mode=0700%s" % (JOURNAL_TMPFS, ids),
                            "tmpfs", d], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if r.returncode == 0:
            self.mounts.append(d)
        else:
            self.notes.append("no tmpfs for %s: %s" % (d, r.stdout.decode().strip()))

    def client_broker_args(self, i):
        return ["--ports", ",".join(map(str, self.client_ports)),
                "--first", str(i % NODES)]

    def healed(self):
        return "brokers %s; PG primary :%d + sync standby :%d; NATS routed" % (
            ",".join(str(b.pid()) for b in self.brokers),
            self.pg.primary.port, self.pg.standby.port)

    # -- the nemesis -----------------------------------------------------

    def nemeses(self):
        return [self.scheduler, self.client_faults]

    def _claim(self, res):
        with self.state:
            if self.busy & set(res):
                return False
            self.busy |= set(res)
            return True

    def _release(self, res):
        with self.state:
            self.busy -= set(res)

    def _count(self, action):
        with self.state:
            self.faults[action] += 1

    def scheduler(self, rnd):
        ks = kinds()
        first = [k for k, _ in ks]
        rnd.shuffle(first)
        active = []
        while not self._sleep(rnd.uniform(0.5, 3.0)):
            active = [t for t in active if t.is_alive()]
            if len(active) >= MAX_ACTIVE:
                continue
            from_first = bool(first)
            kind = first.pop(0) if first else rnd.choices(
                [k for k, _ in ks], [w for _, w in ks])[0]
            plan = self.plan(kind, rnd)
            if plan is None:
                continue
            res, fn, args = plan
            if not self._claim(res):
                if from_first:
                    first.append(kind)     # every kind once: later then
                continue
            sub = R.random.Random(rnd.getrandbits(64))
            t = threading.Thread(target=self._fault, args=(fn, sub, res) + args,
                                 name=kind, daemon=True)
            t.start()
            active.append(t)
        for t in active:
            t.join(timeout=180)
            if t.is_alive():
                self.errors.append("fault %s did not end" % t.name)

    def _fault(self, fn, rnd, res, *args):
        try:
            fn(rnd, *args)
        except Exception as e:
            self.errors.append("%s%r: %r" % (fn.__name__, args, e))
            log("nemesis %s%r failed: %r" % (fn.__name__, args, e))
        finally:
            self._release(res)

    def plan(self, kind, rnd):
        """(resources, function, args) for one fault of `kind`, or None."""
        i = rnd.randrange(NODES)
        if kind == "kill-broker":
            return ["broker%d" % i], self.kill_broker, (i,)
        if kind == "pause-broker":
            return ["broker%d" % i], self.pause_broker, (i,)
        if kind == "pause-pg":
            return ["pg-primary"], self.pause_pg, ()
        if kind == "kill-promote":
            if self.promoted:
                return None
            return ["pg-primary", "pg-standby"], self.kill_promote, ()
        if kind == "kill-standby":
            return ["pg-standby"], self.kill_standby, ()
        if kind == "pause-nats":
            return ["nats%d" % i], self.pause_nats, (i,)
        if kind == "stop-nats":
            return ["nats%d" % i], self.stop_nats, (i,)
        if kind.startswith("cut-"):
            link = kind[4:]
            return ["%d-%s" % (i, link)], self.cut, (i, link)
        if kind == "disk-full":
            if not self.mounts:
                return None
            return ["disk%d" % i], self.disk_full, (i,)
        raise ValueError(kind)

    def _begin(self, action, target, msg):
        self.nem.fault(action, target, "start")
        self._count(action)
        log("%s %s%s" % (action, target, msg))

    def _end(self, action, target):
        self.nem.fault(action, target, "end")

    # brokers

    def start_node(self, i):
        """Starts broker i again; a start that fails is left for the heal
        (and noted: a broker that cannot start under a fault)."""
        b = self.brokers[i]
        try:
            try:
                b.start()
            except RuntimeError as e:
                if "Address already in use" not in str(e).splitlines()[-1]:
                    raise
                # While the broker was down its port, from the ephemeral
                # range, became some connection's local port (a long run
                # makes thousands). Its clients reach it through its proxy
                # only: it moves to a new port and the proxy follows.
                old = b.port
                b.port = imtest.free_port()
                log("n%d: port %d taken meanwhile, moving to %d" % (i, old, b.port))
                b.start()
                cp = self.proxies[(i, "clients")]
                cp.retarget(cp.routes[0].port, b.port)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            self.notes.append("n%d did not start under faults: %s" % (i, first))
            log("n%d did not start: %s" % (i, first))
            if b.proc is not None and b.proc.poll() is not None:
                b.proc = None

    def kill_broker(self, rnd, i):
        b = self.brokers[i]
        down = rnd.uniform(0.1, 3.0)
        self._begin("kill", "n%d" % i, ", pid %s, down %.1f s" % (b.pid(), down))
        b.kill9()
        time.sleep(down)
        self.start_node(i)
        self._end("kill", "n%d" % i)

    def pause_broker(self, rnd, i):
        b = self.brokers[i]
        pid = b.pid()
        if pid is None:
            return
        self._pause("n%d" % i, pid, rnd.uniform(0.3, 8.0))

    def _pause(self, tgt, pid, length):
        """SIGSTOP one process for length seconds (a hung peer: its sockets
        stay open, nothing answers), then SIGCONT."""
        self._begin("pause", tgt, ", pid %d, %.1f s" % (pid, length))
        self.paused[tgt] = [pid]
        _signal([pid], signal.SIGSTOP)
        self._sleep(length)
        _signal([pid], signal.SIGCONT)
        self.paused.pop(tgt, None)
        self._end("pause", tgt)

    # PostgreSQL

    def _stop_server(self, node):
        """SIGSTOP a server's postmaster first (no new children), then its
        children: the list of PIDs stopped."""
        pid = node.pid()
        if not pid or not CE._alive(pid):
            return []
        _signal([pid], signal.SIGSTOP)
        pids = self.pg.node_pids(node)
        _signal(pids, signal.SIGSTOP)
        return pids

    def pause_pg(self, rnd):
        length = rnd.uniform(0.3, 6.0)
        node = self.pg.primary
        self._begin("pause", "pg-primary", " :%d, %.1f s" % (node.port, length))
        pids = self._stop_server(node)
        self.paused["pg-primary"] = pids
        self._sleep(length)
        _signal(pids, signal.SIGCONT)
        self.paused.pop("pg-primary", None)
        self._end("pause", "pg-primary")

    def kill_standby(self, rnd):
        # Long enough, sometimes, for a request to wait past the checker's
        # stall threshold (10 s): the plugin answers none meanwhile.
        down = rnd.uniform(1.0, 14.0)
        node = self.pg.standby
        self._begin("kill", "pg-standby", " :%d, down %.1f s" % (node.port, down))
        self.pg.kill_node(node)
        self._sleep(down)
        self._start_pg(node)
        if not imtest.wait_until(self.pg.is_sync, timeout=60):
            self.errors.append("the standby did not become synchronous again")
        self._end("kill", "pg-standby")

    def _start_pg(self, node, tries=5):
        """pg_ctl start, again after a pause if it fails (a killed server's
        port or shared memory not yet released): its output is logged."""
        for k in range(tries):
            try:
                self.pg.start_node(node)
                return
            except subprocess.CalledProcessError as e:
                out = (e.output or b"").decode("utf-8", "replace").strip().splitlines()
                log("PostgreSQL :%d did not start (%s)%s" % (
                    node.port, out[-1] if out else "no output",
                    "; again" if k + 1 < tries else ""))
                if k + 1 == tries:
                    raise
                time.sleep(1 + k)

    def kill_promote(self, rnd):
        old = self.pg.primary
        self.promoted = True
        self._begin("kill-promote", "pg-primary",
                    " :%d, promote :%d" % (old.port, self.pg.standby.port))
        self.pg.kill_node(old)
        self.pg.promote()
        self._sleep(rnd.uniform(0.5, 3.0))    # a while with no standby at all
        # The new standby on the dead primary's port if it is free (every
        # broker's first PostgreSQL route points there), else on another,
        # and the routes follow it.
        port = old.port if self._free(old.port) else imtest.free_port()
        new = self.pg.rebuild_standby(port=port)
        for i in range(NODES):
            px = self.proxies[(i, "pg")]
            px.retarget(px.routes[0].port, new.port)
        log("new primary :%d, new sync standby :%d" % (self.pg.primary.port, new.port))
        self._end("kill-promote", "pg-primary")

    # NATS

    def pause_nats(self, rnd, j):
        pid = self.nats.pid(j)
        if pid is None:
            return
        self._pause("nats%d" % j, pid, rnd.uniform(0.3, 8.0))

    def stop_nats(self, rnd, j):
        down = rnd.uniform(0.5, 6.0)
        action = "kill" if rnd.random() < 0.5 else "stop"
        tgt = "nats%d" % j
        self._begin(action, tgt, ", down %.1f s" % down)
        if action == "kill":
            p = self.nats.nodes[j]["proc"]
            p.kill()
            p.wait(timeout=30)
            self.nats.nodes[j]["proc"] = None
        else:
            self.nats.stop_node(j)
        self._sleep(down)
        self.nats.start_node(j)
        self._end(action, tgt)

    # partitions

    def cut(self, rnd, i, link):
        mode = BLACKHOLE if rnd.random() < 0.5 else RESET
        length = rnd.uniform(0.5, 8.0)
        tgt = "n%d-%s" % (i, link)
        action = "cut-" + mode
        self._begin(action, tgt, ", %.1f s" % length)
        px = self.proxies[(i, link)]
        px.cut(mode)
        self._sleep(length)
        px.heal()
        self._end(action, tgt)

    # the journal's disk

    def disk_full(self, rnd, i):
        d = self.journal_dir(self.brokers[i])
        if d not in self.mounts:
            return
        length = rnd.uniform(1.0, 6.0)
        tgt = "n%d-journal" % i
        self._begin("disk-full", tgt, ", %.1f s" % length)
        path = os.path.join(d, "nemesis-filler")
        self.fillers[i] = path
        try:
            # Unbuffered: every byte that fits is written, until ENOSPC.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for n in (1 << 20, 65536, 4096, 512, 1):
                    chunk = b"\0" * n
                    try:
                        while True:
                            os.write(fd, chunk)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
            finally:
                os.close(fd)
            self._sleep(length)
        finally:
            self.free_disk(i)
            self._end("disk-full", tgt)

    def free_disk(self, i):
        path = self.fillers.pop(i, None)
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- heal and shutdown -------------------------------------------------

    def heal(self):
        """Everything back: proxies healed, processes continued and
        running, PostgreSQL a primary with a synchronous standby, NATS
        routed, disks freed. (The faults ended themselves when the
        scheduler stopped; this repairs what a failed one left.)"""
        for px in self.proxies.values():
            px.heal()
        for tgt, pids in list(self.paused.items()):
            _signal(pids, signal.SIGCONT)
            self.paused.pop(tgt, None)
        for i in list(self.fillers):
            self.free_disk(i)
        for node in (self.pg.primary, self.pg.standby):
            pid = node.pid()
            if not pid or not CE._alive(pid):
                log("heal: starting PostgreSQL :%d" % node.port)
                self.pg.start_node(node)
        if not imtest.wait_until(self.pg.is_sync, timeout=90):
            raise RuntimeError("heal: the primary has no synchronous standby")
        for j in range(NODES):
            if self.nats.pid(j) is None:
                log("heal: starting NATS %d" % j)
                self.nats.start_node(j)
        self.nats.wait_routed()
        for i, b in enumerate(self.brokers):
            if b.proc is None or b.proc.poll() is not None:
                log("heal: starting n%d" % i)
                b.proc = None
                b.start()
            elif not imtest.wait_until(lambda: self._listens(b.port), timeout=60):
                raise RuntimeError("heal: n%d does not listen" % i)

    @staticmethod
    def _free(port):
        import socket
        with socket.socket() as sk:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sk.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    @staticmethod
    def _listens(port):
        import socket
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def shutdown(self):
        for p, pr in self.procs.items():
            if pr.poll() is None:
                pr.kill()
                pr.wait()
        for tgt, pids in list(self.paused.items()):
            _signal(pids, signal.SIGCONT)
        self.paused.clear()
        for i, b in enumerate(self.brokers):
            try:
                b.stop()
            except Exception as e:
                self.errors.append("broker n%d stop: %r" % (i, e))
        for px in self.proxies.values():
            try:
                px.close()
            except Exception as e:
                self.errors.append("proxy %s close: %r" % (px.name, e))
        for i in list(self.fillers):
            self.free_disk(i)
        for d in self.mounts:
            r = subprocess.run(["umount", d], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", d])
        self.mounts = []
        # The servers' logs go to the run dir (kept if the run fails).
        for src, dst in ((self.pg.base if self.pg else None, "pg"),
                         (self.nats.base if self.nats else None, "nats")):
            if src and os.path.isdir(src):
                os.makedirs(os.path.join(self.dir, dst), exist_ok=True)
                for f in os.listdir(src):
                    if f.endswith(".log"):
                        try:
                            shutil.copy(os.path.join(src, f), os.path.join(self.dir, dst, f))
                        except OSError:
                            pass
        if self.nats is not None:
            self.nats.stop()
        if self.pg is not None:
            self.pg.stop()
        for n in self.notes:
            log("note: " + n)

    # -- a summary of answers under faults ------------------------------

    def answers_by_fault(self):
        """Per fault kind: how many replies arrived while one of its kind
        ran, against the requests published meanwhile, and the longest
        time no reply arrived at all during one. A runner-side summary
        (the checker judges single requests): it shows whole-system
        silences, e.g. while the synchronous standby is down."""
        import glob
        import json
        req_t, rep_t, windows, opened = [], [], [], {}
        for path in glob.glob(os.path.join(self.hist, "*.jsonl")):
            with open(path, errors="replace") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    k = r.get("kind")
                    if k == "request":
                        req_t.append(r["t"])
                    elif k == "reply":
                        rep_t.append(r["t"])
                    elif k == "fault" and r.get("action") != "disconnect":
                        key = (r["action"], r["target"])
                        if r["phase"] == "start":
                            opened[key] = r["t"]
                        elif key in opened:
                            windows.append(key + (opened.pop(key), r["t"]))
        rep_t.sort()
        by = collections.OrderedDict()
        for action, target, t0, t1 in sorted(windows, key=lambda w: w[2]):
            kind = "%s %s" % (action, target.rstrip("0123456789") if
                              target.startswith("nats") else
                              target if target.startswith("pg") else
                              "n*" + target[2:])
            d = by.setdefault(kind, [0, 0.0, 0, 0, 0.0])
            inside = [t for t in rep_t if t0 <= t <= t1]
            pts = [t0] + inside + [t1]
            d[0] += 1
            d[1] += t1 - t0
            d[2] += sum(1 for t in req_t if t0 <= t <= t1)
            d[3] += len(inside)
            d[4] = max(d[4], max(b - a for a, b in zip(pts, pts[1:])))
        lines = ["answers under faults (whole system; kind: count, seconds, "
                 "requests sent, replies received, longest silence):"]
        for kind, (n, secs, nreq, nrep, gap) in by.items():
            lines.append("  %-26s %3d %6.1f s %6d req %6d replies  %5.1f s" % (
                kind, n, secs, nreq, nrep, gap))
        return lines
