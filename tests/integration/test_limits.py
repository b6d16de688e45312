"""One client must not pin the broker, and what it asks is checked (issue
#11, findings 6, 8, 9): sync replies bounded per client, per-user rates,
and im-expiry parsed as a number of seconds in range."""
import socket
import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from imtest import SANITIZE, Client, decode_frame, pb, sync_all


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait(cond, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def string(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack("!H", len(x)) + x


def remaining(n):
    out = b""
    while True:
        d = n % 128
        n //= 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def raw_client(port, cid, user):
    s = socket.create_connection(("127.0.0.1", port))
    var = string("MQTT") + bytes([4, 0x82]) + struct.pack("!H", 600)
    body = var + string(cid) + string(user)
    s.sendall(b"\x10" + remaining(len(body)) + body)
    assert s.recv(4)[:2] == b"\x20\x02"
    return s


class Metrics:
    """$SYS/broker/im/... as the plugin publishes them."""

    def __init__(self, b):
        self.c = Client(b, "ops").connect()
        self.values = {}
        self.c.c.on_message = self._on
        self.c.subscribe("$SYS/broker/im/#", qos=0)

    def _on(self, c, u, m):
        try:
            self.values[m.topic.split("$SYS/broker/im/")[1]] = int(m.payload)
        except ValueError:
            pass

    def get(self, name):
        return self.values.get(name, 0)


def test_sync_flood_without_acknowledgements_is_bounded(make_broker):
    """mallory sends 10,000 sync requests for a full inbox and reads nothing
    (so acknowledges nothing). The replies the broker holds for her stay
    bounded (plugin_opt_reply_bytes_rate), and bob is served meanwhile."""
    b = make_broker({"nonim_acl": "allow", "metrics_interval": 1})
    feeder = Client(b, "feeder").connect()
    body = b"x" * 180
    for i in range(1500):
        feeder.publish("im/u/mallory", body, qos=0, wait=False)
    feeder.publish("im/u/mallory", b"last", qos=1)
    assert wait(lambda: len(sync_all(feeder, "u/feeder")[0]) == 1501)
    feeder.close()
    metrics = Metrics(b)
    base = rss_kib(b.proc.pid)
    s = raw_client(b.port, "mallory-flood", "mallory")
    req = pb.SyncRequest(timeline="u/mallory", after_seq=0).SerializeToString()
    pkt = b"\x30" + remaining(2 + len("$CONTROL/im/v1/sync") + len(req)) + string("$CONTROL/im/v1/sync") + req
    s.setblocking(False)
    pending = pkt * 10000
    bob = Client(b, "bob", v5=True).connect()
    served = 0
    deadline = time.time() + 120
    while (pending or metrics.get("sync/requests") < 10000) and time.time() < deadline:
        if pending:
            try:
                n = s.send(pending[:65536])
                pending = pending[n:]
            except BlockingIOError:
                pass
        r = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch, timeout=60)
        assert r.status == pb.OK                      # bob is served all along
        served += 1
    assert not pending and metrics.get("sync/requests") >= 10000, metrics.values
    grown = (rss_kib(b.proc.pid) - base) / 1024.0
    print("flood: RSS +%.1f MiB, %d limited, bob served %d times" % (grown, metrics.get("sync/limited"), served))
    assert metrics.get("sync/limited") > 0
    # Without the limits: +1,190 MiB. Under ASan freed blocks wait in its
    # quarantine (up to 256 MiB) before reuse, so RSS keeps more of the
    # replies' churn: 103 MiB was seen on the PostgreSQL store there.
    bound = 192 if SANITIZE else 96
    assert grown < bound, "broker RSS grew by %.1f MiB for a client that acknowledges nothing" % grown
    assert served > 0
    s.close()
    bob.close()


def test_sync_burst_answered_with_retry_after(make_broker):
    b = make_broker({"sync_inflight": 2, "reply_bytes_rate": 0})
    c = Client(b, "carol", v5=True).connect()
    req = pb.SyncRequest(timeline="u/carol", after_seq=0).SerializeToString()
    for _ in range(50):
        c.c.publish("$CONTROL/im/v1/sync", req, qos=0)
    statuses = []
    while len(statuses) < 50:
        m = c.get(timeout=60)
        r = pb.SyncBatch()
        r.ParseFromString(m.payload)
        statuses.append(r.status)
        if r.status == pb.TOO_MANY:
            assert r.retry_after_ms > 0 and "sync_inflight" in r.reason
    assert pb.OK in statuses and pb.TOO_MANY in statuses
    c.close()


def test_user_message_rate(make_broker):
    b = make_broker({"user_msg_rate": 2})
    alice = Client(b, "alice", v5=True).connect()
    t0 = time.time()
    for i in range(10):
        alice.publish("im/u/bob", b"m%d" % i, qos=1)
    elapsed = time.time() - t0
    frames, _ = sync_all(alice, "u/alice")
    assert 2 <= len(frames) <= 2 + int(elapsed * 2) + 1 < 10
    assert "plugin_opt_user_msg_rate" in b.read_log()
    # Others are not limited by alice's rate.
    carol = Client(b, "carol").connect()
    carol.publish("im/u/bob", b"from carol", qos=1)
    assert sync_all(carol, "u/carol")[0][0][1] == b"from carol"
    alice.close()
    carol.close()


def receipt(client, topic, body):
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "receipts/" + client.c._client_id.decode()
    client.c.publish(topic, body, qos=1, properties=p).wait_for_publish(timeout=30)
    while True:
        m = client.get(timeout=60)
        if m.topic.startswith("receipts/"):
            r = pb.Receipt()
            r.ParseFromString(m.payload)
            return r


def test_new_timelines_per_minute(make_broker):
    b = make_broker({"new_timelines_per_min": 3})
    alice = Client(b, "alice", client_id="alice-1", v5=True).connect()
    rs = [receipt(alice, "im/u/n%d" % i, b"hello") for i in range(4)]
    assert [r.status for r in rs] == [pb.OK, pb.OK, pb.OK, pb.TOO_MANY]
    assert "new_timelines_per_min" in rs[3].reason and not rs[3].HasField("seq")
    # Existing timelines are not new.
    r = receipt(alice, "im/u/n0", b"again")
    assert (r.status, r.seq) == (pb.OK, 2)
    # The refused one was not stored: n3 has nothing.
    n3 = Client(b, "n3", v5=True).connect()
    frames, batch = sync_all(n3, "u/n3")
    assert frames == [] and batch.head_seq == 0
    alice.close()
    n3.close()


@pytest.mark.parametrize("value", ["abc", "-5", "1e3", "99999999999999999999", "315360001", ""])
def test_bad_expiry_refused(make_broker, value):
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("im-expiry", value)]
    alice.c.publish("im/u/bob", b"expiring", qos=1, properties=p).wait_for_publish(timeout=30)
    alice.publish("im/u/bob", b"marker", qos=1)
    frames, _ = sync_all(alice, "u/alice")
    assert [body for _, body in frames] == [b"marker"]
    assert "im-expiry must be a whole number of seconds" in b.read_log()
    alice.close()


def test_expiry_in_range(make_broker):
    b = make_broker()
    bob = Client(b, "bob", v5=True).connect()
    bob.subscribe("im/u/bob")
    alice = Client(b, "alice", v5=True).connect()
    for v in ("60", "315360000", "0"):
        p = Properties(PacketTypes.PUBLISH)
        p.UserProperty = [("im-expiry", v)]
        alice.c.publish("im/u/bob", v.encode(), qos=1, properties=p).wait_for_publish(timeout=30)
    got = [bob.get(timeout=60) for _ in range(3)]
    heads = [decode_frame(m.payload)[0] for m in got]
    assert 59000 <= heads[0].expires_ms - heads[0].ts_ms <= 60000
    assert heads[1].expires_ms - heads[1].ts_ms == 315360000 * 1000
    assert heads[2].expires_ms == 0
    expiry = [getattr(m.properties, "MessageExpiryInterval", None) for m in got]
    assert 55 <= expiry[0] <= 60 and expiry[1] > 315000000 and expiry[2] is None
    alice.close()
    bob.close()
