"""Test harness: a real mosquitto with the built plugin, real MQTT clients.

Each Broker gets its own free port on 127.0.0.1, its own config and data
folder, and is stopped by the PID it was started with. Under
IM_SANITIZE=ON the broker runs with the ASan runtime preloaded and every
report that names the plugin fails the test that stopped the broker.
"""
import collections
import contextlib
import glob
import itertools
import os
import pwd
import queue
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BUILD = os.environ.get("IM_BUILD_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
PLUGIN = os.environ.get("IM_PLUGIN", os.path.join(BUILD, "mosquitto_im.so"))
IMCAT = os.environ.get("IM_IMCAT", os.path.join(BUILD, "examples", "imcat"))
SANITIZE = os.environ.get("IM_SANITIZE", "OFF").upper() in ("ON", "1", "TRUE", "YES")
TSAN = os.environ.get("IM_TSAN", "OFF").upper() in ("ON", "1", "TRUE", "YES")
# The broker binary: Debian's mosquitto on PATH unless a test run names
# another (tests/CMakeLists.txt runs the suite once per broker it finds).
MOSQUITTO = os.environ.get("IM_MOSQUITTO") or "mosquitto"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# IM_STORE=postgresql: every Broker that does not choose a store itself
# runs on PostgreSQL (pgserver.shared()), a database of its own per data
# folder (a restart on the same folder finds its data again).
STORE = os.environ.get("IM_STORE", "sqlite")


def sqlite_only(reason):
    """Marks a test that looks inside the SQLite file: skipped on PostgreSQL."""
    import pytest
    return pytest.mark.skipif(STORE == "postgresql", reason="SQLite store only: " + reason)


def _load_pb2():
    """Compiles proto/im.proto with protoc into a temp folder and imports it."""
    out = tempfile.mkdtemp(prefix="im-pb2-")
    subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out", out,
                    os.path.join(ROOT, "proto", "im.proto")], check=True)
    sys.path.insert(0, out)
    import im_pb2  # noqa: E402
    return im_pb2


pb = _load_pb2()


_given_ports = set()


def free_port():
    """A port nobody listens on now, and never one this process handed out
    before: the kernel may give the same free port twice in a row (a NATS
    node once got its neighbour's cluster port and died)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def decode_frame(payload):
    """Splits a frame into (Header, body). Raises ValueError if it is not one."""
    if len(payload) < 5 or payload[:3] != b"IM\x01":
        raise ValueError("not a frame: %r" % payload[:16])
    hlen = int.from_bytes(payload[3:5], "big")
    if 5 + hlen > len(payload):
        raise ValueError("truncated frame")
    h = pb.Header()
    h.ParseFromString(payload[5:5 + hlen])
    return h, payload[5 + hlen:]


class Broker:
    """A mosquitto process with the plugin loaded. opts: plugin_opt_* dict."""

    def __init__(self, opts=None, extra_conf="", plugin=True, tmp=None, pre_conf=""):
        self.dir = tmp or tempfile.mkdtemp(prefix="im-broker-")
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data, exist_ok=True)
        self.port = free_port()
        self.opts = {"db_path": os.path.join(self.data, "im.db")}
        self.opts.update(opts or {})
        self.pg = None
        self.extra_env = {}         # for the broker's process (e.g. a preloaded fake clock)
        if STORE == "postgresql" and plugin and "store" not in self.opts:
            self.use_pg()
        self.extra_conf = extra_conf
        self.pre_conf = pre_conf             # lines before the plugin line (another plugin first)
        self.plugin = plugin
        self.proc = None
        self.log_path = os.path.join(self.dir, "broker.log")
        self.asan_dir = os.path.join(self.dir, "asan")
        os.makedirs(self.asan_dir, exist_ok=True)
        self._chown(self.dir)

    def use_pg(self, server=None):
        """Runs on PostgreSQL: the shared server unless one is given, the
        database of this data folder, the folder's name as node id."""
        import pgserver
        self.pg = server or pgserver.shared()
        self.pg_db = self.pg.create_database(pgserver.database_for(self.dir))
        self.opts.update({"store": "postgresql", "pg_conninfo": self.pg.uri(self.pg_db),
                          "node_id": os.path.basename(self.dir.rstrip("/"))})

    def _chown(self, path):
        # Started as root, mosquitto becomes the 'mosquitto' user before it
        # loads the plugin: the data folder must be writable by that user.
        if os.geteuid() != 0:
            return
        try:
            pw = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        for d, _dirs, files in os.walk(path):
            os.chown(d, pw.pw_uid, pw.pw_gid)
            for f in files:
                os.chown(os.path.join(d, f), pw.pw_uid, pw.pw_gid)

    def put_file(self, name, data, mode=0o600):
        """Writes a file the broker's user can read (keys, password files)."""
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        os.chmod(path, mode)
        self._chown(self.dir)
        return path

    @property
    def db_path(self):
        return self.opts["db_path"]

    def write_conf(self):
        lines = ["listener %d 127.0.0.1" % self.port, "allow_anonymous true",
                 "log_dest stderr", "log_type all",
                 # Not 0: Debian's 2.0.11 (CVE-2023-28366 patch) closes the
                 # connection of every client whose publish is denied when
                 # out_packet_count >= max_queued_messages, always true at 0.
                 "max_queued_messages 1000000",
                 "persistence false"]
        if self.pre_conf:
            lines.append(self.pre_conf)
        if self.plugin:
            lines.append("plugin %s" % PLUGIN)
            for k, v in self.opts.items():
                lines.append("plugin_opt_%s %s" % (k, v))
        lines.append(self.extra_conf)
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._chown(self.dir)

    def env(self):
        env = dict(os.environ)
        if SANITIZE:
            asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                                  text=True).stdout.strip()
            env["LD_PRELOAD"] = asan
            env["ASAN_OPTIONS"] = "detect_leaks=1:log_path=%s/asan:abort_on_error=0" % self.asan_dir
            env["UBSAN_OPTIONS"] = "print_stacktrace=1:log_path=%s/ubsan" % self.asan_dir
        if TSAN:
            tsan = subprocess.run(["gcc", "-print-file-name=libtsan.so"], capture_output=True,
                                  text=True).stdout.strip()
            env["LD_PRELOAD"] = tsan
            env["TSAN_OPTIONS"] = "log_path=%s/tsan:halt_on_error=0:report_signal_unsafe=0" % self.asan_dir
        env.update(self.extra_env)
        return env

    def start(self, expect_fail=False, preexec_fn=None):
        self.write_conf()
        self.log = open(self.log_path, "ab")
        since = self.log.tell()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env(),
                                     preexec_fn=preexec_fn)
        deadline = time.time() + 20
        # ctest runs tests in parallel: another test's broker may take the
        # port between free_port() and this bind. Then this one exits with
        # "Address already in use" while the port answers: a listener is
        # ours only once this start's log says it opened it and runs. On a
        # first start a new port is picked; on a restart the port must stay
        # (clients use it).
        listening = "listen socket on port %d." % self.port
        first = not getattr(self, "_started", False)

        def ours():
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
            at = text.find(listening)
            return at >= 0 and text.find(" running", at) >= 0
        while time.time() < deadline:
            if self.proc.poll() is not None:
                if first and not expect_fail and "Address already in use" in self.read_log():
                    self.port = free_port()
                    listening = "listen socket on port %d." % self.port
                    self.write_conf()
                    since = self.log.tell()
                    self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=self.log,
                                                 stderr=subprocess.STDOUT, env=self.env(),
                                                 preexec_fn=preexec_fn)
                    continue
                if expect_fail:
                    return self.proc.returncode
                raise RuntimeError("broker exited (%s):\n%s" % (self.proc.returncode, self.read_log()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if not ours():
                time.sleep(0.05)
                continue
            if expect_fail:
                raise RuntimeError("broker started but was expected to fail")
            self._started = True
            return 0
        raise RuntimeError("broker did not listen:\n" + self.read_log())

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM, wait, and fail on any sanitizer report about the plugin."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.check_sanitizers()

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def check_sanitizers(self):
        bad = []
        for path in glob.glob(os.path.join(self.asan_dir, "*")):
            with open(path, errors="replace") as f:
                text = f.read()
            # Leaks and errors of the broker itself are not ours to fail on;
            # any report whose stack passes through the plugin is.
            for report in text.split("\n\n"):
                if "mosquitto_im" in report or "/plugin/" in report:
                    bad.append(report)
            os.rename(path, path + ".seen")
        if bad:
            raise AssertionError("sanitizer reports in the plugin:\n" + "\n\n".join(bad[:5]))

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """A paho client that records what it receives.

    Waits are conditions against WAIT, never idle gaps: get() and get_n()
    wait for messages that must come; none() and drain() prove that
    nothing (else) came with a marker (see mark()).
    """

    _marks = itertools.count(1)

    def __init__(self, broker, user=None, client_id="", v5=False, clean=True, password=None):
        self.broker = broker
        self.v5 = v5
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        if v5:
            self.c = mqtt.Client(client_id=client_id, protocol=proto)
        else:
            self.c = mqtt.Client(client_id=client_id, clean_session=clean, protocol=proto)
        self.clean = clean
        if user is not None:
            self.c.username_pw_set(user, password)
        self.msgs = queue.Queue()
        self.back = collections.deque()    # read from msgs by mark(), not yet consumed
        self.stash = []
        self.acks = {}
        self.suback = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnects = 0
        self.rc = None
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = lambda c, u, mid: self.acks.__setitem__(mid, True)

    def _on_connect(self, c, u, flags, rc, props=None):
        self.rc = rc
        self.connected.set()

    def _on_disconnect(self, c, u, rc, props=None):
        self.disconnects += 1
        self.disconnected.set()

    def _on_subscribe(self, c, u, mid, granted, props=None):
        self.suback.put([int(getattr(g, "value", g)) for g in granted])

    def connect(self, timeout=None):
        if self.v5:
            props = None
            if not self.clean:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 3600
            self.c.connect("127.0.0.1", self.broker.port, keepalive=30, clean_start=self.clean,
                           properties=props)
        else:
            self.c.connect("127.0.0.1", self.broker.port, keepalive=30)
        self.c.loop_start()
        # A connection that drops before its CONNACK fails at once.
        wait_until(lambda: self.connected.is_set() or self.disconnected.is_set(), timeout or WAIT)
        assert self.connected.is_set(), "no CONNACK"
        return self

    def subscribe(self, topic, qos=1, timeout=None):
        self.c.subscribe(topic, qos)
        return self.suback.get(timeout=timeout or WAIT)

    def publish(self, topic, payload, qos=1, cmid=None, props=None, retain=False, wait=True):
        if self.v5 and (cmid is not None or props):
            p = Properties(PacketTypes.PUBLISH)
            if cmid is not None:
                p.UserProperty = [("im-cmid", cmid)]
            for k, v in (props or {}).items():
                setattr(p, k, v)
        else:
            p = None
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=p)
        if wait and qos > 0:
            self.wait_published(info)
            assert info.is_published(), "publish not acknowledged"
        return info

    def wait_published(self, info, timeout=None):
        """Waits until info is acknowledged or this connection drops; True if acknowledged."""
        d0 = self.disconnects
        return wait_until(lambda: info.is_published() or self.disconnects > d0, timeout or WAIT) \
            and info.is_published()

    def _next(self, timeout):
        while True:
            if self.back:
                return self.back.popleft()
            m = self.msgs.get(timeout=timeout)
            if not m.topic.startswith(MARK_TOPIC):     # the late reply to a mark() given up on
                return m

    def get(self, timeout=None):
        """The next message; waits up to timeout (default WAIT) for it."""
        return self._next(timeout or WAIT)

    def get_n(self, n, timeout=None):
        """The next n messages, or fewer if timeout (default WAIT) runs out first."""
        out = []
        deadline = time.monotonic() + (timeout or WAIT)
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self._next(left))
            except queue.Empty:
                break
        return out

    def mark(self, timeout=None):
        """Everything this client receives before a marker: ([messages], True),
        or ([messages], False) if the connection dropped before the marker's reply.

        The marker is a request of an unknown op; the plugin answers it
        (NOT_FOUND) through the broker's one FIFO of plugin messages, the
        same that carries every frame, reply and presence message, and the
        broker delivers to a client in order. So the reply arrives after
        anything published to this client by a packet the broker processed
        before the marker (an acknowledged publish, a processed request, a
        SUBACK). Published at QoS 0, so that paho never re-sends it, and on
        this client's connection, after everything it sent before.
        """
        op = "imtest-mark-%d" % next(Client._marks)
        want = "%s%s/response" % (MARK_TOPIC, op[len("imtest-mark-"):])
        d0 = self.disconnects
        before = []
        if self.c.publish("$CONTROL/im/v1/" + op, b"", qos=0).rc != mqtt.MQTT_ERR_SUCCESS:
            return before, False                      # not connected
        deadline = time.monotonic() + (timeout or WAIT)
        while True:
            if self.back:
                m = self.back.popleft()
            else:
                try:
                    m = self.msgs.get(timeout=0.05)
                except queue.Empty:
                    if self.disconnects > d0:
                        return before, False
                    assert time.monotonic() < deadline, "no reply to the marker %s" % op
                    continue
            if m.topic == want:
                return before, True
            if not m.topic.startswith(MARK_TOPIC):
                before.append(m)

    def drain(self, timeout=None):
        """Consumes and returns every message that came before a marker."""
        before, _ = self.mark(timeout)
        return before

    def none(self, wait=None):
        """True if nothing came for this client before a marker (mark()): no
        message was waiting. What did come stays for get(). `wait` is
        ignored (it was an idle time once)."""
        before, _ = self.mark()
        self.back.extendleft(reversed(before))
        return not before

    def barrier(self, timeout=None):
        """Returns once the broker has processed everything this client sent
        so far (True), or the connection dropped (False). Messages stay for get()."""
        before, ok = self.mark(timeout)
        self.back.extendleft(reversed(before))
        return ok

    def request(self, op, msg=None, user_props=None, timeout=None, response_type=None):
        """Sends a $CONTROL/im/v1/<op> request, returns the decoded reply."""
        payload = msg.SerializeToString() if msg is not None else b""
        p = None
        if self.v5 and user_props:
            p = Properties(PacketTypes.PUBLISH)
            p.UserProperty = list(user_props.items())
        self.c.publish("$CONTROL/im/v1/" + op, payload, qos=1, properties=p)
        want = "$CONTROL/im/v1/%s/response" % op
        deadline = time.monotonic() + (timeout or WAIT)
        while True:
            m = self.get(max(0.01, deadline - time.monotonic()))
            if m.topic == want:
                break
            self.stash.append(m)   # live frames that arrived meanwhile, in order
        if response_type is None:
            return m
        r = response_type()
        r.ParseFromString(m.payload)
        return r

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()


# Every wait in the tests is a condition against this deadline, never a
# fixed sleep or an idle gap: long enough for the ASan pass on a shared,
# loaded 2-core machine; reached only when something is really wrong.
WAIT = float(os.environ.get("IM_TEST_WAIT", "120"))

# Replies to Client.mark(): "$CONTROL/im/v1/imtest-mark-<n>/response".
MARK_TOPIC = "$CONTROL/im/v1/imtest-mark-"


def wait_until(cond, timeout=None, interval=0.01):
    """Polls cond() until it is true or timeout (default WAIT) has passed;
    returns its last value."""
    deadline = time.monotonic() + (timeout or WAIT)
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


@contextlib.contextmanager
def writer_held(broker):
    """Holds the SQLite store's write lock from another connection (BEGIN
    IMMEDIATE) until the block ends: the writer's batches fail and are
    tried again, WAL readers go on; what is published meanwhile is
    acknowledged from the journal and queues. No-op on PostgreSQL."""
    if STORE != "sqlite":
        yield
        return
    lock = sqlite3.connect(broker.db_path, isolation_level=None, timeout=5)
    lock.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def wait_log(broker, text, since=0, timeout=None):
    """Waits until text is in the broker's log after offset `since` (from
    log_offset()); returns the offset just past it. Fails at the deadline."""
    where = wait_until(lambda: broker.read_log().find(text, since) + 1, timeout, 0.05)
    assert where, "not in the broker log within %s s: %r" % (timeout or WAIT, text)
    return where - 1 + len(text)


def log_offset(broker):
    """Where the broker's log ends now (for wait_log's `since`)."""
    return len(broker.read_log())


def sync_all(client, timeline, after=0, limit=None):
    """Loops sync until has_more is false; returns [(Header, body)], last batch."""
    out = []
    while True:
        req = pb.SyncRequest(timeline=timeline, after_seq=after)
        if limit:
            req.limit = limit
        b = client.request("sync", req, response_type=pb.SyncBatch)
        assert b.status == pb.OK, (b.status, b.reason)
        for f in b.frames:
            h, body = decode_frame(f)
            out.append((h, body))
            after = h.seq
        if not b.has_more:
            return out, b


def publish_until_refused(pub, topic, filler, count=2000):
    """Publishes 2 KiB bodies ("%04d:" + filler) at QoS 1, one at a time,
    until one is not acknowledged within 5 s (the store's backlog is full):
    (acknowledged bodies, (info, body) of the refused one or None)."""
    acked = []
    for n in range(count):
        body = b"%04d:" % n + filler * 2043
        info = pub.c.publish(topic, body, qos=1)
        info.wait_for_publish(timeout=5)
        if not info.is_published():
            return acked, (info, body)
        acked.append(body)
    return acked, None


def run_tool(args, timeout=None, **kw):
    return subprocess.run(args, capture_output=True, timeout=timeout or WAIT, **kw)


def inbox(broker, user):
    """Everything stored in u/<user>, read by <user> with a fresh client:
    ([(Header, body)], last batch)."""
    c = Client(broker, user, v5=True).connect()
    try:
        return sync_all(c, "u/" + user)
    finally:
        c.close()


def replace_store(broker):
    """Stops the broker, deletes its database (the file, its WAL and shared
    memory, and the journal folder) and starts it again on the same port:
    a new, empty store with a new store id, handing out seqs 1, 2, ...
    again."""
    broker.stop()
    if broker.pg:                                   # PostgreSQL: a new database of the same name
        broker.pg.sql('DROP DATABASE "%s" WITH (FORCE)' % broker.pg_db)
        broker.pg.create_database(broker.pg_db)
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(broker.db_path + suffix)
        except FileNotFoundError:
            pass
    shutil.rmtree(broker.db_path + ".journal", ignore_errors=True)
    broker.start()


def store_id(broker, user="bob"):
    """The broker's store id, as a sync of u/<user> reports it."""
    _, batch = inbox(broker, user)
    return batch.store_id


class Lines:
    """The stdout lines of a running process, read by a thread, so a test
    can wait for them with a deadline."""

    def __init__(self, proc):
        self.q = queue.Queue()
        self.got = []
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, f):
        for line in f:
            self.q.put(line.decode().rstrip("\n"))

    def wait(self, n, timeout=30):
        """All lines so far once there are at least n (fewer at the deadline)."""
        return self.wait_for(lambda got: len(got) >= n, timeout)

    def wait_for(self, cond, timeout=30):
        """All lines so far once cond(lines) is true (or at the deadline)."""
        deadline = time.time() + timeout
        while not cond(self.got):
            left = deadline - time.time()
            if left <= 0:
                break
            try:
                self.got.append(self.q.get(timeout=left))
            except queue.Empty:
                break
        return list(self.got)
