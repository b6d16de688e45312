"""Durability: restarts, crashes, a locked or full or read-only database,
and what a QoS 2 re-send after a lost PUBREC does to the timeline."""
import os
import resource
import signal
import socket
import sqlite3
import struct

import pytest

from imtest import WAIT, Client, decode_frame, log_offset, publish_until_refused, sqlite_only, sync_all, wait_log, wait_until
from imtest import inbox as inbox_frames


def inbox(broker, user):
    """[(seq, body)] of u/<user> and the last batch, read by <user>."""
    frames, batch = inbox_frames(broker, user)
    return [(h.seq, body) for h, body in frames], batch


def assert_gap_free(stored):
    assert [s for s, _ in stored] == list(range(1, len(stored) + 1)), [s for s, _ in stored]


# ---------------------------------------------------------------- restarts and crashes

def test_seq_continues_across_restart_and_kill9(make_broker):
    b = make_broker({"nonim_acl": "allow"})

    def send(lo, hi):
        alice = Client(b, "alice").connect()
        for n in range(lo, hi):
            alice.publish("im/u/bob", b"m%d" % n)
        alice.close()

    send(1, 6)
    b.restart()
    send(6, 11)
    stored, batch = inbox(b, "bob")
    assert stored == [(n, b"m%d" % n) for n in range(1, 11)] and batch.head_seq == 10
    b.kill9()
    b.start()
    send(11, 12)
    stored, batch = inbox(b, "bob")
    assert stored == [(n, b"m%d" % n) for n in range(1, 12)] and batch.head_seq == 11
    # The sender's copies went through the same restarts.
    own, _ = inbox(b, "alice")
    assert own == [(n, b"m%d" % n) for n in range(1, 12)]


def test_kill9_mid_burst_keeps_every_acknowledged_message(make_broker):
    b = make_broker({"nonim_acl": "allow"})
    pub = Client(b, "alice", client_id="alice-burst")
    pub.c.max_inflight_messages_set(100)
    pub.connect()
    total = 2000
    sent = {}
    for n in range(total):
        info = pub.c.publish("im/u/bob", b"n:%d" % n, qos=1)
        sent[info.mid] = b"n:%d" % n
    wait_until(lambda: len(pub.acks) >= total // 4, interval=0.001)
    os.kill(b.proc.pid, signal.SIGSTOP)   # frozen at once: it acknowledges nothing more
    b.kill9()
    pub.c.loop_stop()                  # no reconnect and re-send: only what was acknowledged counts
    acked = {sent[mid] for mid in list(pub.acks)}
    assert total // 4 <= len(acked) < total, "the burst was not cut: %d acknowledged" % len(acked)
    b.start()
    stored, _ = inbox(b, "bob")
    assert_gap_free(stored)
    got = [body for _, body in stored]
    assert len(set(got)) == len(got), "duplicate bodies"
    assert acked <= set(got), "acknowledged but lost: %r" % sorted(acked - set(got))[:5]
    # One connection, in order: what survived is exactly the first k sent.
    assert got == [b"n:%d" % n for n in range(len(got))]


# ---------------------------------------------------------------- store failures

@sqlite_only("locks or write-protects the database file (test_pg_outage.py stops PostgreSQL instead)")
@pytest.mark.parametrize("warm", [True, False], ids=["timelines-cached", "cold-start"])
def test_locked_database_acknowledged_from_the_journal_stored_once(make_broker, warm):
    """The journal is the acknowledgement point: a locked database delays
    storing, never the acknowledgement, and loses nothing."""
    b = make_broker({"nonim_acl": "allow"})
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob")
    if warm:
        w = Client(b, "alice").connect()
        w.publish("im/u/bob", b"warm-up")
        w.close()
        assert decode_frame(bob.get(timeout=WAIT).payload)[1] == b"warm-up"   # stored and delivered
    lock = sqlite3.connect(b.db_path, isolation_level=None, timeout=WAIT)
    lock.execute("BEGIN EXCLUSIVE")
    pub = Client(b, "alice", client_id="alice-lock", clean=False).connect()
    try:
        info = pub.publish("im/u/bob", b"while locked", qos=1)   # waits for the PUBACK
        assert info.is_published()
        assert wait_until(lambda: "database is locked" in b.read_log(), WAIT), "the worker never met the lock"
        assert not pub.disconnected.is_set()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    m = bob.get(timeout=WAIT)                     # stored once the lock is gone, then delivered
    h, body = decode_frame(m.payload)
    assert body == b"while locked" and h.seq == (2 if warm else 1)
    assert wait_until(lambda: "committed after" in b.read_log(), WAIT)
    pub.close()
    bob.close()
    stored, _ = inbox(b, "bob")
    assert [body for _, body in stored] == ([b"warm-up"] if warm else []) + [b"while locked"]
    assert_gap_free(stored)


@sqlite_only("locks or write-protects the database file (test_pg_outage.py stops PostgreSQL instead)")
def test_store_too_far_behind_refuses_without_acknowledging(make_broker):
    """While the store cannot keep up (here: locked), the journal takes up to
    backlog_max bytes; past that a publish is refused unacknowledged, and the
    client's re-send after the store recovers is stored once, in order."""
    b = make_broker({"nonim_acl": "allow", "backlog_max": 1024 * 1024})
    lock = sqlite3.connect(b.db_path, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    pub = Client(b, "alice", client_id="alice-backlog", clean=False)
    pub.c.reconnect_delay_set(1, 1)
    pub.connect()
    try:
        acked, failed = publish_until_refused(pub, "im/u/bob", b"y")
        assert failed, "4 MB taken while the store was locked"
        assert 200 <= len(acked) <= 520, len(acked)     # about backlog_max worth
        assert wait_until(pub.disconnected.is_set, 30)
        assert wait_until(lambda: "plugin_opt_backlog_max" in b.read_log(), 30)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    info, body = failed
    info.wait_for_publish(timeout=60)
    assert info.is_published(), "not taken after the store recovered"
    pub.close()
    stored, _ = inbox(b, "bob")
    assert [bd for _, bd in stored] == acked + [body]
    assert_gap_free(stored)


def _fsize_limit(n):
    """A soft limit only: lifting it later must not need CAP_SYS_RESOURCE."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def test_disk_full_not_acknowledged_then_resent_once(make_broker):
    # prlimit on another process needs the same uid or CAP_SYS_RESOURCE
    # (which a container's root may lack): as root, keep the broker root.
    b = make_broker({"nonim_acl": "allow"}, extra_conf="user root" if os.geteuid() == 0 else "")
    b.stop()                                    # the database exists, the WAL is checkpointed away
    sizes = {f: os.path.getsize(os.path.join(b.data, f)) for f in os.listdir(b.data)}
    limit = 256 * 1024
    assert max(sizes.values()) < limit // 2, sizes
    b.start(preexec_fn=_fsize_limit(limit))
    pub = Client(b, "alice", client_id="alice-full", clean=False)
    pub.c.reconnect_delay_set(1, 1)
    pub.connect()
    acked, failed = [], None
    try:
        for n in range(1000):
            body = b"%04d:" % n + b"x" * 1019
            info = pub.c.publish("im/u/bob", body, qos=1)
            if not pub.wait_published(info):               # the connection closed instead
                failed = (info, body)
                break
            acked.append(body)
        assert failed, "1000 KB stored under a 256 KiB file size limit"
        assert acked, "nothing fitted under the limit"
        assert pub.disconnected.is_set()
        assert "journal: cannot append" in b.read_log()
    finally:
        hard = resource.prlimit(b.proc.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(b.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    info, body = failed
    assert wait_until(info.is_published), "not stored after the limit was lifted"
    pub.publish("im/u/bob", b"after")            # the store is usable again
    pub.close()
    stored, _ = inbox(b, "bob")
    assert [bd for _, bd in stored] == acked + [body, b"after"]
    assert_gap_free(stored)


@sqlite_only("locks or write-protects the database file (test_pg_outage.py stops PostgreSQL instead)")
@pytest.mark.parametrize("folder_too", [True, False], ids=["file-and-folder", "file-only"])
def test_read_only_database_stops_the_broker(make_broker, folder_too):
    b = make_broker({"nonim_acl": "allow"})
    b.stop()
    os.chmod(b.db_path, 0o444)
    if folder_too:
        os.chmod(b.data, 0o555)
    try:
        assert b.start(expect_fail=True) != 0
        tail = b.read_log().split("mosquitto version 2.0.11 running")[-1]
        named = [ln for ln in tail.splitlines() if "im: store" in ln and '"%s"' % b.db_path in ln]
        assert named and any("writable" in ln or "read-only" in ln for ln in named), tail
    finally:
        os.chmod(b.data, 0o755)


# ---------------------------------------------------------------- QoS 2 re-send after a lost PUBREC

def _s(v):
    v = v.encode() if isinstance(v, str) else v
    return struct.pack("!H", len(v)) + v


def _varint(n):
    out = bytearray()
    while True:
        d, n = n % 128, n // 128
        out.append(d | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first, body):
    return bytes([first]) + _varint(len(body)) + body


class RawMQTT:
    """Just enough MQTT 3.1.1 / 5 to do what paho will not: drop a PUBREC."""

    def __init__(self, port, client_id, user, v5=False):
        self.v5 = v5
        self.s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        vh = _s("MQTT") + bytes([5 if v5 else 4, 0x80]) + struct.pack("!H", 30)   # username, clean=0
        if v5:
            props = b"\x11" + struct.pack("!I", 3600)                       # session expiry
            vh += _varint(len(props)) + props
        self.s.sendall(_packet(0x10, vh + _s(client_id) + _s(user)))
        first, body = self.read()
        assert first == 0x20 and body[1] == 0, (first, body)
        self.session_present = bool(body[0] & 1)

    def _recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the broker")
            buf += chunk
        return buf

    def read(self):
        first = self._recv(1)[0]
        n, mult = 0, 1
        while True:
            d = self._recv(1)[0]
            n += (d & 0x7F) * mult
            mult *= 128
            if not d & 0x80:
                return first, self._recv(n)

    def publish_qos2(self, topic, mid, payload, dup=False, cmid=None):
        vh = _s(topic) + struct.pack("!H", mid)
        if self.v5:
            props = b"\x26" + _s("im-cmid") + _s(cmid) if cmid else b""
            vh += _varint(len(props)) + props
        self.s.sendall(_packet(0x34 | (0x08 if dup else 0), vh + payload))

    def expect(self, ptype, mid):
        """Reads until a packet of ptype (upper nibble) for mid; returns all read."""
        seen = []
        while True:
            first, body = self.read()
            seen.append((first >> 4, body))
            if first >> 4 == ptype and struct.unpack("!H", body[:2])[0] == mid:
                return seen

    def disconnect(self):
        self.s.sendall(b"\xe0\x00")
        self.s.close()


@pytest.mark.parametrize("v5,cmid", [(False, None), (True, None), (True, "c-7")],
                         ids=["v311-no-cmid", "v5-no-cmid", "v5-cmid"])
def test_qos2_resend_after_lost_pubrec(make_broker, v5, cmid):
    """Measured: MOSQ_EVT_MESSAGE runs on the re-sent PUBLISH too. Without a
    cmid the message is sequenced, stored and delivered twice (the broker
    still completes one QoS 2 flow: PUBREC, PUBREL, PUBCOMP); with a cmid,
    once."""
    b = make_broker({"nonim_acl": "allow"})
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob", qos=2)
    body = b"qos2 body"
    r1 = RawMQTT(b.port, "alice-q2", "alice", v5=v5)
    r1.publish_qos2("im/u/bob", 7, body, cmid=cmid)
    r1.expect(5, 7)                        # the broker has read it and sent PUBREC ...
    since = log_offset(b)
    r1.s.close()                           # ... which we answer with nothing: as if lost
    wait_log(b, "Client alice-q2 closed its connection.", since)
    r2 = RawMQTT(b.port, "alice-q2", "alice", v5=v5)
    assert r2.session_present
    r2.publish_qos2("im/u/bob", 7, body, dup=True, cmid=cmid)
    seen = r2.expect(5, 7)                 # PUBREC
    assert [t for t, _ in seen] == [5]
    if v5:
        assert len(seen[0][1]) == 2 or seen[0][1][2] < 0x80, "PUBREC carries an error: %r" % seen[0][1]
    r2.s.sendall(_packet(0x62, struct.pack("!H", 7)))   # PUBREL
    assert [t for t, _ in r2.expect(7, 7)] == [7]       # PUBCOMP
    r2.disconnect()
    # The broker matched the re-send to the stored message (no "Reused
    # message ID"): one QoS 2 flow, yet the plugin ran twice.
    assert "Reused message ID" not in b.read_log()

    times = 1 if cmid else 2
    live = bob.get_n(times) + bob.drain()
    assert [(decode_frame(m.payload)[0].seq, decode_frame(m.payload)[1]) for m in live] == \
        [(n, body) for n in range(1, times + 1)]
    stored, batch = inbox(b, "bob")
    assert stored == [(n, body) for n in range(1, times + 1)] and batch.head_seq == times
    own, _ = inbox(b, "alice")
    assert own == [(n, body) for n in range(1, times + 1)]
    bob.close()


def test_qos2_lost_pubcomp_resend_pubrel_stores_once(make_broker):
    """The other half of the QoS 2 window: once PUBREC arrived, re-sending
    PUBREL after a reconnect runs no plugin code, so nothing repeats."""
    b = make_broker({"nonim_acl": "allow"})
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob", qos=2)
    r1 = RawMQTT(b.port, "alice-q2c", "alice")
    r1.publish_qos2("im/u/bob", 9, b"once")
    r1.expect(5, 9)
    r1.s.sendall(_packet(0x62, struct.pack("!H", 9)))
    since = log_offset(b)
    r1.s.close()                           # PUBCOMP never read
    wait_log(b, "Client alice-q2c closed its connection.", since)
    r2 = RawMQTT(b.port, "alice-q2c", "alice")
    r2.s.sendall(_packet(0x62, struct.pack("!H", 9)))
    assert [t for t, _ in r2.expect(7, 9)] == [7]
    r2.disconnect()
    assert [decode_frame(m.payload)[1] for m in bob.get_n(1) + bob.drain()] == [b"once"]
    stored, _ = inbox(b, "bob")
    assert stored == [(1, b"once")]
    bob.close()
