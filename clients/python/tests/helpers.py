"""Test helpers: a client that records every callback, and waits with a deadline."""
import threading
import time

from conftest import WAIT
from mosquitto_im import Client, MemoryStore


class Seen:
    """Everything a Client told its callbacks, in order."""

    def __init__(self, client):
        self.c = client
        self.lock = threading.Lock()
        self.messages = []
        self.edits = []
        self.recalls = []
        self.reads = []
        self.typing = []
        self.resets = []
        self.membership = []
        self.receipts = []
        self.gaps = []
        self.errors = []
        self.status = []
        client.on_message = self._add(self.messages)
        client.on_edit = lambda e, o: self._put(self.edits, (e, o))
        client.on_recall = lambda r, o: self._put(self.recalls, (r, o))
        client.on_read = self._add(self.reads)
        client.on_typing = self._add(self.typing)
        client.on_reset = lambda a, b: self._put(self.resets, (a, b))
        client.on_membership = self._add(self.membership)
        client.on_receipt = self._add(self.receipts)
        client.on_gap = lambda t, a, b: self._put(self.gaps, (t, a, b))
        client.on_error = self._add(self.errors)
        client.on_status = self._add(self.status)

    def _put(self, lst, v):
        with self.lock:
            lst.append(v)

    def _add(self, lst):
        return lambda v: self._put(lst, v)

    def bodies(self, timeline=None):
        with self.lock:
            return [m.body for m in self.messages if timeline is None or m.timeline == timeline]

    def of(self, timeline):
        with self.lock:
            return [m for m in self.messages if m.timeline == timeline]


def wait_until(cond, timeout=None, what="condition"):
    deadline = time.monotonic() + (timeout or WAIT)
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("not within %s s: %s" % (timeout or WAIT, what))
        time.sleep(0.01)


def make_client(clients, broker_or_port, user, store=None, start=True, **kw):
    port = broker_or_port if isinstance(broker_or_port, int) else broker_or_port.port
    c = Client(user, "127.0.0.1", port, store=store or MemoryStore(), **kw)
    seen = Seen(c)
    clients.append(c)
    if start:
        c.start()
        assert c.wait_online(WAIT), "%s not online" % user
    return c, seen
