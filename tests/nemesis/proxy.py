#!/usr/bin/python3
"""TCP proxies on 127.0.0.1 that a nemesis can cut and heal (issue #21).

A `Proxy` is one thread (a selector loop) serving one or more routes, each
a listening port on 127.0.0.1 forwarding to a target port on 127.0.0.1.
The cluster runner puts one between each broker and the PostgreSQL
servers (a route per server), one between each broker and the NATS nodes
(a route per node), and one between the clients and each broker, so that
one broker can be cut from PostgreSQL, from NATS or from its clients
while everything else goes on.

Modes, for every route of a proxy at once:

- "ok": bytes flow both ways.
- "blackhole": nothing flows and nothing is closed. Open connections are
  held (the proxy stops reading them: what the peers send waits in the
  kernel's buffers), new connections are accepted and held without
  connecting upstream. Seen from either side: a peer that hangs, which is
  how a dropped network looks to a program until a timeout fires (the
  proxy's kernel still acknowledges the TCP segments, so TCP's own
  retransmission timeouts do not fire: only the application's do). On
  heal the held connections go on where they stopped, with what was
  buffered, and the held new ones are connected upstream then.
- "reset": every open connection is closed with a RST on both sides, and
  new connections are accepted and reset at once (a refused connection,
  seen from the client).

Listening sockets stay open in every mode, so no one else can take a
port. `retarget()` points a route at another port (a replaced server).

    p = Proxy("b0-pg")
    port = p.add(5432)        # listen on a free port, forward to 5432
    p.cut("blackhole"); p.heal(); p.close()

Standard library only; runs in the runner's process.
"""

import errno
import selectors
import socket
import struct
import threading

BUF_LIMIT = 1 << 20        # bytes buffered one way before reading pauses
CHUNK = 65536

OK = "ok"
BLACKHOLE = "blackhole"
RESET = "reset"


def _rst(sock):
    """Closes sock with a RST (SO_LINGER 0), not a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Route:
    __slots__ = ("lsock", "port", "target")

    def __init__(self, lsock, port, target):
        self.lsock = lsock
        self.port = port
        self.target = target


class _Pair:
    """One proxied connection: the accepted socket `a`, the upstream `b`
    (None while held), and what waits to be written each way."""
    __slots__ = ("route", "a", "b", "a2b", "b2a", "b_ready", "a_eof",
                 "b_eof", "closed")

    def __init__(self, route, a):
        self.route = route
        self.a = a
        self.b = None
        self.a2b = bytearray()
        self.b2a = bytearray()
        self.b_ready = False      # upstream connect completed
        self.a_eof = False
        self.b_eof = False
        self.closed = False


class Proxy:
    def __init__(self, name):
        self.name = name
        self.mode = OK
        self.routes = []
        self.pairs = set()
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.cmds = []
        self.wr, self.ww = socket.socketpair()
        self.wr.setblocking(False)
        self.sel.register(self.wr, selectors.EVENT_READ, ("wake", None))
        self.stats = {"accepted": 0, "reset": 0, "bytes": 0}
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="proxy-" + name,
                                       daemon=True)
        self.thread.start()

    # -- the API (any thread) ------------------------------------------

    def add(self, target, port=0):
        """A new route: listens on 127.0.0.1:port (a free one if 0) and
        forwards to 127.0.0.1:target. Returns the listening port."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(128)
        ls.setblocking(False)
        r = _Route(ls, ls.getsockname()[1], target)
        self._call(lambda: self._add_route(r))
        return r.port

    def retarget(self, port, target):
        """The route listening on `port` forwards new connections to
        `target` from now on (open ones stay where they are)."""
        def do():
            for r in self.routes:
                if r.port == port:
                    r.target = target
        self._call(do)

    def cut(self, mode=BLACKHOLE):
        assert mode in (BLACKHOLE, RESET)
        self._call(lambda: self._set_mode(mode))

    def heal(self):
        self._call(lambda: self._set_mode(OK))

    def close(self):
        """Closes every connection and listener; the thread ends."""
        def do():
            for p in list(self.pairs):
                self._close(p, rst=True)
            for r in self.routes:
                self.sel.unregister(r.lsock)
                r.lsock.close()
            self.routes = []
            self.running = False
        if self.thread.is_alive():
            self._call(do)
            self.thread.join(timeout=5)
        self.wr.close()
        self.ww.close()

    def _call(self, fn):
        done = threading.Event()
        with self.lock:
            self.cmds.append((fn, done))
        try:
            self.ww.send(b"x")
        except OSError:
            pass
        if not done.wait(10):
            raise RuntimeError("proxy %s: its thread does not answer" % self.name)

    # -- the loop (its own thread) ---------------------------------------

    def _add_route(self, r):
        self.routes.append(r)
        self.sel.register(r.lsock, selectors.EVENT_READ, ("listen", r))

    def _set_mode(self, mode):
        self.mode = mode
        if mode == RESET:
            for p in list(self.pairs):
                self._close(p, rst=True)
                self.stats["reset"] += 1
        elif mode == OK:
            for p in list(self.pairs):
                if p.b is None and not p.closed:
                    self._connect_up(p)
        for p in list(self.pairs):
            self._interest(p)

    def _loop(self):
        while self.running:
            try:
                events = self.sel.select(0.5)
            except OSError:
                events = []
            for key, mask in events:
                what, obj = key.data
                try:
                    if what == "wake":
                        try:
                            self.wr.recv(4096)
                        except OSError:
                            pass
                    elif what == "listen":
                        self._accept(obj)
                    else:
                        self._io(obj, what, mask)
                except Exception as e:      # keep serving the others
                    if what not in ("wake", "listen"):
                        self._close(obj, rst=True)
                    else:
                        print("proxy %s: %r" % (self.name, e), flush=True)
            with self.lock:
                cmds, self.cmds = self.cmds, []
            for fn, done in cmds:
                try:
                    fn()
                finally:
                    done.set()

    def _accept(self, r):
        while True:
            try:
                s, _ = r.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.stats["accepted"] += 1
            if self.mode == RESET:
                _rst(s)
                self.stats["reset"] += 1
                continue
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            p = _Pair(r, s)
            self.pairs.add(p)
            if self.mode == OK:
                self._connect_up(p)
            self._interest(p)

    def _connect_up(self, p):
        b = socket.socket()
        b.setblocking(False)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = b.connect_ex(("127.0.0.1", p.route.target))
        if rc not in (0, errno.EINPROGRESS):
            b.close()
            self._close(p, rst=True)      # the target is down: refused
            return
        p.b = b
        p.b_ready = rc == 0

    def _interest(self, p):
        if p.closed:
            return
        flow = self.mode == OK
        ia = ib = 0
        if flow:
            if not p.a_eof and len(p.a2b) < BUF_LIMIT:
                ia |= selectors.EVENT_READ
            if p.b2a:
                ia |= selectors.EVENT_WRITE
            if p.b is not None:
                if not p.b_ready:
                    ib |= selectors.EVENT_WRITE
                else:
                    if not p.b_eof and len(p.b2a) < BUF_LIMIT:
                        ib |= selectors.EVENT_READ
                    if p.a2b:
                        ib |= selectors.EVENT_WRITE
        self._reg(p.a, ia, ("a", p))
        if p.b is not None:
            self._reg(p.b, ib, ("b", p))

    def _reg(self, sock, ev, data):
        try:
            key = self.sel.get_key(sock)
        except KeyError:
            key = None
        if ev == 0:
            if key is not None:
                self.sel.unregister(sock)
        elif key is None:
            self.sel.register(sock, ev, data)
        elif key.events != ev:
            self.sel.modify(sock, ev, data)

    def _io(self, p, side, mask):
        if p.closed or self.mode != OK:
            return
        if side == "b" and not p.b_ready:
            err = p.b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._close(p, rst=True)  # upstream refused: so are we
                return
            p.b_ready = True
            self._interest(p)
            return
        src, dst = (p.a, p.b) if side == "a" else (p.b, p.a)
        inbuf = p.a2b if side == "a" else p.b2a        # read from src
        outbuf = p.b2a if side == "a" else p.a2b       # written to src
        if mask & selectors.EVENT_READ:
            try:
                data = src.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(p, rst=True)
                return
            if data == b"":
                if side == "a":
                    p.a_eof = True
                else:
                    p.b_eof = True
            elif data:
                inbuf += data
                self.stats["bytes"] += len(data)
                self._flush(p, dst, inbuf)
        if mask & selectors.EVENT_WRITE and outbuf:
            self._flush(p, src, outbuf)
        if p.closed:
            return
        # One side closed and everything it sent has gone on: close both.
        if (p.a_eof and not p.a2b) or (p.b_eof and not p.b2a):
            self._close(p, rst=False)
            return
        self._interest(p)

    def _flush(self, p, sock, buf):
        if sock is None or (sock is p.b and not p.b_ready) or not buf:
            return
        try:
            n = sock.send(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(p, rst=True)
            return
        del buf[:n]

    def _close(self, p, rst):
        if p.closed:
            return
        p.closed = True
        self.pairs.discard(p)
        for s in (p.a, p.b):
            if s is None:
                continue
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            if rst:
                _rst(s)
            else:
                try:
                    s.close()
                except OSError:
                    pass


if __name__ == "__main__":
    # A manual check: proxy.py LISTEN_PORT TARGET_PORT
    import sys
    import time
    px = Proxy("manual")
    print("listening on", px.add(int(sys.argv[2]), int(sys.argv[1])))
    while True:
        time.sleep(3600)
