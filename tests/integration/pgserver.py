"""A throwaway PostgreSQL server for the integration tests.

initdb into a temporary folder, the postmaster started directly (as the
`postgres` user when the tests run as root) on a free 127.0.0.1 port, and
stopped by the PID this module started. Waits are on conditions with a
deadline. tests/unit/pg_harness.h does the same for the C tests.

    srv = PgServer(); srv.start()
    srv.create_database("im_x"); srv.uri("im_x"); srv.sql("SELECT 1", "im_x")
    srv.stop(); srv.start()     # same data, same port (PostgreSQL down, back up)
    srv.cleanup()

shared() is one server per test process (the session fixture in
conftest.py, and imtest.Broker under IM_STORE=postgresql); it is stopped
at exit.
"""
import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile

from imtest import wait_until


def bin_dir():
    """Where initdb and postgres are (IM_PG_BIN, else the newest Debian version)."""
    env = os.environ.get("IM_PG_BIN")
    if env and os.path.exists(os.path.join(env, "postgres")):
        return env
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(re.search(r"/(\d+)/bin", p).group(1)))
    return os.path.dirname(found[-1]) if found else None


def available():
    return bin_dir() is not None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout, what):
    if not wait_until(cond, timeout, 0.05):
        raise TimeoutError("PostgreSQL: " + what)


class PgServer:
    def __init__(self, root=None):
        self.bin = bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server programs not found (IM_PG_BIN, or scripts/deps.sh)")
        self.root = root or tempfile.mkdtemp(prefix="im-pg-")
        self.data = os.path.join(self.root, "data")
        self.log_path = os.path.join(self.root, "postgres.log")
        self.port = None
        self.proc = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
            os.chmod(self.root, 0o755)
            os.chown(self.root, self._uid, self._gid)

    def _user(self):
        return {"user": self._uid, "group": self._gid, "extra_groups": []} if self._as_root else {}

    def _run(self, prog, *args):
        with open(self.log_path, "ab") as log:
            subprocess.run([os.path.join(self.bin, prog)] + list(args), stdout=log, stderr=subprocess.STDOUT,
                           check=True, **self._user())

    def conninfo(self, db="postgres"):
        return "host=127.0.0.1 port=%d user=postgres dbname=%s connect_timeout=2" % (self.port, db)

    def uri(self, db="postgres"):
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, db)

    def ready(self):
        r = subprocess.run(["pg_isready", "-q", "-d", self.conninfo()], capture_output=True) \
            if shutil.which("pg_isready") else \
            subprocess.run([os.path.join(self.bin, "pg_isready"), "-q", "-d", self.conninfo()], capture_output=True)
        return r.returncode == 0

    def start(self, timeout=60):
        """initdb on first use; then the postmaster on the same port as before."""
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        for _ in range(5):
            if self.port is None:
                self.port = _free_port()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [os.path.join(self.bin, "postgres"), "-D", self.data, "-p", str(self.port), "-k", self.root,
                 "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100", "-c", "fsync=on"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._user())
            log.close()
            try:
                _wait(lambda: self.proc.poll() is not None or self.ready(), timeout, "did not start")
            except TimeoutError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            self.proc = None
            self.port = None   # taken meanwhile (a restart keeps it, and should get it back)
        raise RuntimeError("PostgreSQL did not start:\n" + self.read_log())

    def stop(self, mode="fast"):
        """Stops the postmaster this object started, by its PID: fast (SIGINT,
        sessions cut, a clean checkpoint) or immediate (SIGQUIT, a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def sql(self, query, db="postgres"):
        """Runs SQL with psql; the rows as lists of strings."""
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                            "-d", self.conninfo(db), "-c", query], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("psql: %s: %s" % (query, r.stderr.strip()))
        return [line.split("\t") for line in r.stdout.splitlines() if line != ""]

    def create_database(self, name):
        """A database of that name, made if absent (a broker restarted on
        the same folder finds its data again)."""
        if not re.fullmatch(r"[a-z0-9_]{1,63}", name):
            raise ValueError("database name: " + name)
        if not self.sql("SELECT 1 FROM pg_database WHERE datname = '%s'" % name):
            self.sql('CREATE DATABASE "%s"' % name)
        return name

    def cleanup(self):
        self.stop()
        if not os.environ.get("IM_PG_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)


_shared = None


def shared():
    """One server for this test process, started on first use."""
    global _shared
    if _shared is None:
        _shared = PgServer().start()
        atexit.register(_shared.cleanup)
    elif not _shared.running:
        _shared.start()
    return _shared


def database_for(folder):
    """The database a broker whose data is in `folder` uses: one per folder."""
    base = re.sub(r"[^a-z0-9_]", "_", os.path.basename(folder.rstrip("/")).lower())
    return ("im_" + base)[:63]
