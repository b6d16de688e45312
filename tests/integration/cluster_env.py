"""The services a cluster test runs on, each started here on 127.0.0.1 free
ports and stopped by the PID started: a PostgreSQL primary with one
synchronous standby, a NATS cluster, and brokers with the plugin on both.

PostgreSQL runs as the `postgres` user (tests run as root; initdb refuses
root), from Debian's /usr/lib/postgresql/<v>/bin.
"""
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.request

from imtest import WAIT, Broker, free_port, wait_until


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


def nats_bin():
    return shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)


def missing():
    """Why the cluster tests cannot run here, or None."""
    if pg_bin() is None:
        return "no PostgreSQL server programs (scripts/deps.sh installs postgresql)"
    if nats_bin() is None:
        return "no nats-server (scripts/deps.sh installs nats-server)"
    return None


class _AsPostgres:
    """Runs PostgreSQL programs as the postgres user when we are root."""

    def __init__(self):
        self.root = os.geteuid() == 0
        self.pw = pwd.getpwnam("postgres") if self.root else None

    def own(self, path):
        if self.root:
            for d, _dirs, files in os.walk(path):
                os.chown(d, self.pw.pw_uid, self.pw.pw_gid)
                for f in files:
                    os.chown(os.path.join(d, f), self.pw.pw_uid, self.pw.pw_gid)

    def run(self, args, **kw):
        if self.root:
            args = ["runuser", "-u", "postgres", "--"] + args
        return subprocess.run(args, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=kw.pop("timeout", WAIT), **kw)


class PgNode:
    def __init__(self, base, name, port):
        self.dir = os.path.join(base, name)
        self.port = port
        self.log = os.path.join(base, name + ".log")

    def pid(self):
        try:
            with open(os.path.join(self.dir, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None


class PgPair:
    """A primary and one synchronous standby (pg_basebackup -R)."""

    def __init__(self, standby=True):
        self.bin = pg_bin()
        self.as_pg = _AsPostgres()
        self.base = tempfile.mkdtemp(prefix="im-cluster-pg-")
        os.chmod(self.base, 0o755)
        self.as_pg.own(self.base)
        self.primary = PgNode(self.base, "primary", free_port())
        self.standby = PgNode(self.base, "standby", free_port()) if standby else None
        self.nodes = [n for n in (self.primary, self.standby) if n]

    def _ctl(self, node, *args):
        return self.as_pg.run([os.path.join(self.bin, "pg_ctl"), "-D", node.dir, "-l", node.log] + list(args),
                              timeout=3 * WAIT)

    def start(self):
        p = self.primary
        self.as_pg.run([os.path.join(self.bin, "initdb"), "-D", p.dir, "-U", "postgres", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], timeout=3 * WAIT)
        with open(os.path.join(p.dir, "postgresql.conf"), "a") as f:
            f.write("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"
                    "wal_level = replica\nmax_wal_senders = 5\nfsync = on\n"
                    "max_connections = 100\nshared_buffers = 32MB\n" % (p.port, self.base))
        with open(os.path.join(p.dir, "pg_hba.conf"), "a") as f:
            f.write("\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n")
        self._ctl(p, "-w", "start")
        self.psql(p, "CREATE DATABASE im")
        if self.standby:
            s = self.standby
            s.port = free_port()            # picked late: fewer chances for another to take it
            self.as_pg.run([os.path.join(self.bin, "pg_basebackup"), "-h", "127.0.0.1", "-p", str(p.port),
                            "-U", "postgres", "-D", s.dir, "-R", "-X", "stream", "--no-sync", "-c", "fast"], timeout=3 * WAIT)
            with open(os.path.join(s.dir, "postgresql.auto.conf"), "a") as f:
                f.write("\nport = %d\nprimary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=standby'\n"
                        % (s.port, p.port))
            self._ctl(s, "-w", "start")
            # Synchronous only now: before, every commit would wait for it.
            self.psql(p, "ALTER SYSTEM SET synchronous_standby_names = 'standby'")
            self.psql(p, "SELECT pg_reload_conf()")
            assert wait_until(lambda: self.psql(p, "SELECT sync_state FROM pg_stat_replication").strip() == "sync",
                              timeout=3 * WAIT), "the standby never became synchronous"
        return self

    def psql(self, node, sql, db="postgres"):
        out = self.as_pg.run([os.path.join(self.bin, "psql"), "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres",
                              "-d", db, "-At", "-c", sql])
        return out.stdout.decode()

    @property
    def uri(self):
        """A libpq URI naming both servers: the client finds the writable one."""
        hosts = ",".join("127.0.0.1:%d" % n.port for n in self.nodes)
        return "postgresql://postgres@%s/im?target_session_attrs=read-write&connect_timeout=2" % hosts

    def kill_primary(self):
        pid = self.primary.pid()
        assert pid, "no primary pid"
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), timeout=WAIT)

    def promote(self):
        self._ctl(self.standby, "-w", "promote")

    # -- for the nemesis (tests/nemesis/cluster.py) --------------------------

    def start_node(self, node):
        """Starts a node again on its folder and port (after a kill)."""
        self._ctl(node, "-w", "start")

    def node_pids(self, node):
        """The postmaster's PID and its children's (backends, walsender,
        startup...): a whole server to kill or stop."""
        pid = node.pid()
        if not pid or not _alive(pid):
            return []
        return [pid] + descendants(pid)

    def kill_node(self, node):
        """SIGKILL a whole server: its postmaster stopped first (it forks
        no new child while we look), then it and every child; returns once
        all are gone, so it can be started again on its folder and port."""
        pid = node.pid()
        if not pid or not _alive(pid):
            return
        os.kill(pid, signal.SIGSTOP)
        pids = self.node_pids(node)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Gone, not only dead: a postmaster that init has not reaped yet
        # still answers kill(pid, 0), and a new one on the folder refuses
        # to start ("lock file postmaster.pid already exists").
        assert wait_until(lambda: not any(_exists(p) for p in pids), timeout=WAIT), \
            "PostgreSQL at :%d did not die" % node.port

    def is_sync(self):
        """True if the primary has a synchronous standby streaming."""
        try:
            out = self.psql(self.primary, "SELECT sync_state FROM pg_stat_replication")
        except subprocess.SubprocessError:
            return False
        return "sync" in out.split()

    def rebuild_standby(self, port=None, name=None):
        """After a promotion: the promoted standby becomes the primary, and
        a fresh standby is made from it (pg_basebackup) on `port` (a free
        one if None), then made synchronous. The dead primary's folder is
        left where it is (stop() removes the base)."""
        old = self.primary
        self.primary = self.standby
        p = self.primary
        self._rebuilds = getattr(self, "_rebuilds", 0) + 1
        s = PgNode(self.base, name or "standby%d" % self._rebuilds, port or free_port())
        self.as_pg.run([os.path.join(self.bin, "pg_basebackup"), "-h", "127.0.0.1", "-p", str(p.port),
                        "-U", "postgres", "-D", s.dir, "-R", "-X", "stream", "--no-sync", "-c", "fast"],
                       timeout=3 * WAIT)
        with open(os.path.join(s.dir, "postgresql.auto.conf"), "a") as f:
            f.write("\nport = %d\nprimary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=standby'\n"
                    % (s.port, p.port))
        self.as_pg.own(s.dir)
        self._ctl(s, "-w", "start")
        self.standby = s
        self.nodes = [p, s]
        self.retired = getattr(self, "retired", []) + [old]
        self.psql(p, "ALTER SYSTEM SET synchronous_standby_names = 'standby'")
        self.psql(p, "SELECT pg_reload_conf()")
        assert wait_until(self.is_sync, timeout=3 * WAIT), "the new standby never became synchronous"
        return s

    def stop(self):
        for n in self.nodes:
            pid = n.pid()
            if pid and _alive(pid):
                try:
                    self._ctl(n, "-m", "immediate", "-w", "stop")
                except subprocess.SubprocessError:
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def descendants(pid):
    """Every descendant of pid, from /proc (bench/cluster.py counts a
    server's CPU with it too)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours counts as gone.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class NatsCluster:
    """n nats-server processes routed to each other."""

    def __init__(self, n=3, no_advertise=False):
        self.base = tempfile.mkdtemp(prefix="im-cluster-nats-")
        # no_advertise: clients learn no other server from INFO, so a client
        # that reaches the cluster through a proxy stays behind it.
        self.no_advertise = no_advertise
        self.nodes = [{"port": free_port(), "cport": free_port(), "mport": free_port(), "proc": None} for _ in range(n)]

    def _start_node(self, i):
        node = self.nodes[i]
        routes = ",".join("nats://127.0.0.1:%d" % o["cport"] for j, o in enumerate(self.nodes) if j != i)
        log = open(os.path.join(self.base, "nats%d.log" % i), "ab")
        node["proc"] = subprocess.Popen([nats_bin(), "-a", "127.0.0.1", "-p", str(node["port"]),
                                         "-m", str(node["mport"]), "--cluster_name", "im-test",
                                         "--cluster", "nats://127.0.0.1:%d" % node["cport"], "--routes", routes]
                                        + (["--no_advertise"] if self.no_advertise else []),
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _routes(self, i):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/routez" % self.nodes[i]["mport"], timeout=2) as r:
                return json.load(r).get("num_routes", 0)
        except OSError:
            return -1

    def start(self):
        for i in range(len(self.nodes)):
            self._start_node(i)
        self.wait_routed()
        return self

    def wait_routed(self):
        up = [i for i, n in enumerate(self.nodes) if n["proc"]]
        assert wait_until(lambda: all(self._routes(i) >= len(up) - 1 for i in up), timeout=3 * WAIT), \
            "the NATS nodes never routed to each other"

    @property
    def servers(self):
        return ",".join("nats://127.0.0.1:%d" % n["port"] for n in self.nodes)

    def start_node(self, i):
        """Starts node i again on its ports (after stop_node)."""
        self._start_node(i)

    def pid(self, i):
        p = self.nodes[i]["proc"]
        return p.pid if p is not None and p.poll() is None else None

    def stop_node(self, i):
        p = self.nodes[i]["proc"]
        p.terminate()
        p.wait(timeout=WAIT)
        self.nodes[i]["proc"] = None

    def stop(self):
        for n in self.nodes:
            if n["proc"]:
                n["proc"].kill()
                n["proc"].wait(timeout=WAIT)
        shutil.rmtree(self.base, ignore_errors=True)


def cluster_broker(pg, nats, node_id, opts=None):
    o = {"store": "postgresql", "pg_conninfo": pg.uri, "node_id": node_id, "nats_servers": nats.servers}
    o.update(opts or {})
    b = Broker(opts=o)
    return b



class NatsTap:
    """A bare NATS client speaking the text protocol: records what is
    published under a subject (wildcards allowed) and publishes raw bytes,
    as an attacker on the NATS network would."""

    def __init__(self, port, subject="im.>"):
        import socket
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.got = []
        self.lock = threading.Lock()
        self.buf = b""
        self._line()                                   # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB %s 1\r\nPING\r\n' % subject.encode())
        while self._line() != b"PONG":
            pass
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self):
        self.sock.settimeout(None)
        try:
            while True:
                line = self._line()
                if line.startswith(b"MSG "):
                    parts = line.split()
                    n = int(parts[-1])
                    while len(self.buf) < n + 2:
                        self._fill()
                    payload, self.buf = self.buf[:n], self.buf[n + 2:]
                    with self.lock:
                        self.got.append((parts[1].decode(), payload))
                elif line == b"PING":
                    self.sock.sendall(b"PONG\r\n")
        except (OSError, EOFError):
            pass

    def messages(self, suffix=""):
        with self.lock:
            return [(s, p) for s, p in self.got if s.endswith(suffix)]

    def publish(self, subject, payload):
        self.sock.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))

    def close(self):
        self.sock.close()
