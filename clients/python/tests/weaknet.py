"""A weak network link for tests: a TCP proxy on 127.0.0.1 that forwards
to a broker and closes every connection it holds every `period` seconds
(a phone between cells). One thread, select-driven; stop() ends it.

    link = WeakLink(broker.port, period=0.5).start()
    client = Client("alice", "127.0.0.1", link.port, ...)
    ...
    link.stop()
"""
import selectors
import socket
import threading
import time


class WeakLink(threading.Thread):
    def __init__(self, upstream_port, period=0.5, host="127.0.0.1"):
        super().__init__(name="weaknet", daemon=True)
        self.upstream = (host, upstream_port)
        self.period = period
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.accepted = 0          # connections forwarded
        self.refused = 0           # connections closed at once: the broker was not there
        self.drops = 0             # connections cut by the period
        self._halt = threading.Event()
        self._pairs = {}           # socket -> [peer socket, bytes waiting to be written to peer]

    def start(self):
        super().start()
        return self

    def stop(self):
        self._halt.set()
        self.join(10)

    def _close_pair(self, sel, s):
        ent = self._pairs.pop(s, None)
        if ent is None:
            return
        peer = ent[0]
        self._pairs.pop(peer, None)
        for x in (s, peer):
            try:
                sel.unregister(x)
            except (KeyError, ValueError):
                pass
            try:
                x.close()
            except OSError:
                pass

    def _events(self, s):
        ent = self._pairs[s]
        # write to s what its peer sent (the peer's entry holds it)
        peer_ent = self._pairs.get(ent[0])
        ev = selectors.EVENT_READ
        if peer_ent is not None and peer_ent[1]:
            ev |= selectors.EVENT_WRITE
        return ev

    def _rearm(self, sel, *socks):
        for s in socks:
            if s in self._pairs:
                sel.modify(s, self._events(s))

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.lsock, selectors.EVENT_READ)
        next_drop = time.monotonic() + self.period
        try:
            while not self._halt.is_set():
                timeout = max(0.0, min(0.1, next_drop - time.monotonic()))
                for key, ev in sel.select(timeout):
                    s = key.fileobj
                    if s is self.lsock:
                        self._accept(sel)
                        continue
                    if s not in self._pairs:
                        continue
                    peer, _buf = self._pairs[s]
                    if ev & selectors.EVENT_READ:
                        try:
                            data = s.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            data = None
                        except OSError:
                            data = b""
                        if data == b"":
                            self._close_pair(sel, s)
                            continue
                        if data:
                            self._pairs[s][1] += data      # to be written to peer
                            self._flush(sel, s)
                    if s in self._pairs and ev & selectors.EVENT_WRITE:
                        self._flush(sel, peer)
                if time.monotonic() >= next_drop:
                    next_drop = time.monotonic() + self.period
                    seen = set()
                    for s in list(self._pairs):
                        if s in self._pairs and s not in seen:
                            seen.add(self._pairs[s][0])
                            self._close_pair(sel, s)
                            self.drops += 1
        finally:
            for s in list(self._pairs):
                self._close_pair(sel, s)
            sel.close()
            self.lsock.close()

    def _flush(self, sel, src):
        """Writes what src sent to its peer, as far as the peer takes it."""
        ent = self._pairs.get(src)
        if ent is None:
            return
        peer = ent[0]
        if ent[1]:
            try:
                n = peer.send(ent[1])
                ent[1] = ent[1][n:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close_pair(sel, src)
                return
        self._rearm(sel, src, peer)

    def _accept(self, sel):
        try:
            c, _ = self.lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            u = socket.create_connection(self.upstream, timeout=1.0)
        except OSError:
            self.refused += 1
            c.close()
            return
        for x in (c, u):
            x.setblocking(False)
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs[c] = [u, b""]
        self._pairs[u] = [c, b""]
        sel.register(c, selectors.EVENT_READ)
        sel.register(u, selectors.EVENT_READ)
        self.accepted += 1
