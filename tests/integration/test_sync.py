"""Offline catch-up: sync batches, cursors, retention, expiry, notify mode,
and every bad request answered."""
import sqlite3
import subprocess
import time

import pytest

from imtest import WAIT, Client, decode_frame, pb, sync_all, wait_until, IMCAT
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def fill(broker, n, to="bob", sender="alice", qos=1, prefix=b"m"):
    a = Client(broker, sender).connect()
    infos = [a.publish("im/u/" + to, prefix + b"%d" % i, qos=qos, wait=False) for i in range(n)]
    for info in infos:
        assert a.wait_published(info), "publish not acknowledged"
    a.close()


def test_ten_thousand_offline_caught_up_in_order_once(make_broker):
    b = make_broker({"sync_max_frames": 500})
    fill(b, 10000)
    bob = Client(b, "bob", client_id="bob-phone").connect()
    frames, last = sync_all(bob, "u/bob")
    assert [h.seq for h, _ in frames] == list(range(1, 10001))
    assert [body for _, body in frames] == [b"m%d" % i for i in range(10000)]
    assert last.head_seq == 10000 and last.first_seq == 1 and not last.has_more
    bob.close()


def test_batches_bounded_by_count_and_bytes(make_broker):
    b = make_broker({"sync_max_frames": 50, "sync_max_bytes": 4096})
    fill(b, 120, prefix=b"x" * 200)
    bob = Client(b, "bob").connect()
    sizes, after = [], 0
    while True:
        batch = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=after, limit=1000),
                            response_type=pb.SyncBatch)
        assert batch.status == pb.OK
        assert sum(len(f) for f in batch.frames) <= 4096
        assert 0 < len(batch.frames) <= 50
        sizes.append(len(batch.frames))
        after = decode_frame(batch.frames[-1])[0].seq
        if not batch.has_more:
            break
    assert sum(sizes) == 120 and after == 120 and len(sizes) > 120 // 50
    # A client limit below the server's is honoured.
    batch = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0, limit=7),
                        response_type=pb.SyncBatch)
    assert len(batch.frames) == 7 and batch.has_more
    bob.close()


def test_cursor_resume_per_device_and_unread(make_broker):
    b = make_broker()
    fill(b, 10)
    phone = Client(b, "bob", client_id="bob-phone").connect()
    laptop = Client(b, "bob", client_id="bob-laptop").connect()
    r = phone.request("ack", pb.Ack(timeline="u/bob", seq=4), response_type=pb.AckResponse)
    assert (r.status, r.cursor, r.head_seq) == (pb.OK, 4, 10)
    r = laptop.request("ack", pb.Ack(timeline="u/bob", seq=7), response_type=pb.AckResponse)
    assert r.cursor == 7
    # The cursor never moves back.
    r = phone.request("ack", pb.Ack(timeline="u/bob", seq=2), response_type=pb.AckResponse)
    assert (r.status, r.cursor) == (pb.OK, 4)
    # Omitted after_seq resumes from this device's cursor.
    p = phone.request("sync", pb.SyncRequest(timeline="u/bob"), response_type=pb.SyncBatch)
    assert [decode_frame(f)[0].seq for f in p.frames] == list(range(5, 11))
    assert (p.cursor, p.unread, p.after_seq) == (4, 6, 4)
    l = laptop.request("sync", pb.SyncRequest(timeline="u/bob"), response_type=pb.SyncBatch)
    assert [decode_frame(f)[0].seq for f in l.frames] == [8, 9, 10]
    assert l.unread == 3
    phone.close()
    laptop.close()
    # Cursors survive a restart.
    b.restart()
    phone = Client(b, "bob", client_id="bob-phone").connect()
    p = phone.request("sync", pb.SyncRequest(timeline="u/bob"), response_type=pb.SyncBatch)
    assert p.cursor == 4
    phone.close()


def test_persistent_queue_and_sync_overlap_each_seq_once(make_broker):
    """The client algorithm of PROTOCOL.md: queue + sync overlap, drop by seq."""
    b = make_broker()
    bob = Client(b, "bob", client_id="bob-1", clean=False).connect()
    bob.subscribe("im/u/bob", qos=1)
    bob.close()
    fill(b, 300)                                     # queued in the persistent session
    bob = Client(b, "bob", client_id="bob-1", clean=False)
    bob.connect()
    frames, _ = sync_all(bob, "u/bob", limit=100)    # replies interleave with the queue
    live = [decode_frame(m.payload)[0].seq for m in bob.stash if m.topic == "im/u/bob"]
    while len(live) < 300:                           # the rest of the queue
        m = bob.get()
        if m.topic == "im/u/bob":
            live.append(decode_frame(m.payload)[0].seq)
    live += [decode_frame(m.payload)[0].seq for m in bob.drain() if m.topic == "im/u/bob"]   # nothing more
    last, shown = 0, []
    for seq in [h.seq for h, _ in frames] + live:
        if seq <= last:
            continue                               # duplicate: drop
        assert seq == last + 1, "gap at %d" % seq
        shown.append(seq)
        last = seq
    assert shown == list(range(1, 301))
    assert len(live) == 300                          # the queue delivered too: overlap was real
    bob.close()


def test_sync_reply_honours_response_topic_and_correlation(make_broker):
    b = make_broker()
    fill(b, 3)
    bob = Client(b, "bob", v5=True).connect()
    bob.subscribe("my/replies")
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "my/replies"
    p.CorrelationData = b"req-1"
    bob.c.publish("$CONTROL/im/v1/sync", pb.SyncRequest(timeline="u/bob", after_seq=1).SerializeToString(),
                  qos=1, properties=p)
    m = bob.get()
    assert m.topic == "my/replies" and m.properties.CorrelationData == b"req-1"
    batch = pb.SyncBatch()
    batch.ParseFromString(m.payload)
    assert [decode_frame(f)[0].seq for f in batch.frames] == [2, 3]
    bob.close()


def test_mosquitto_rr_with_user_properties(make_broker):
    b = make_broker()
    fill(b, 3)
    out = subprocess.run(["mosquitto_rr", "-p", str(b.port), "-u", "bob", "-t", "$CONTROL/im/v1/sync",
                          "-e", "$CONTROL/im/v1/sync/response", "-D", "publish", "user-property", "timeline",
                          "u/bob", "-D", "publish", "user-property", "after", "1", "-m", "", "-F", "%x",
                          "-W", str(int(WAIT))], capture_output=True, timeout=WAIT + 10, check=True).stdout
    text = subprocess.run([IMCAT], input=out, capture_output=True, check=True).stdout.decode()
    assert "sync u/bob: OK, 2 frames, head 3" in text
    assert "u/bob #2 " in text and text.rstrip().endswith("alice: m2")


def test_bad_requests_answered_and_change_nothing(make_broker):
    b = make_broker()
    fill(b, 2)
    bob = Client(b, "bob", v5=True, client_id="bob-x").connect()
    cases = [
        ("sync", b"\xff\xff\xff", pb.SyncBatch, pb.BAD_REQUEST),          # malformed protobuf
        ("sync", pb.SyncRequest(after_seq=0), pb.SyncBatch, pb.BAD_REQUEST),  # missing timeline
        ("sync", pb.SyncRequest(timeline="u/alice"), pb.SyncBatch, pb.FORBIDDEN),
        ("sync", pb.SyncRequest(timeline="u/bad+name"), pb.SyncBatch, pb.BAD_REQUEST),
        ("sync", pb.SyncRequest(timeline="x/bob"), pb.SyncBatch, pb.BAD_REQUEST),
        ("ack", pb.Ack(timeline="u/bob", seq=99), pb.AckResponse, pb.BAD_REQUEST),  # beyond head
        ("sync", pb.SyncRequest(timeline="u/bob", after_seq=2**63), pb.SyncBatch, pb.BAD_REQUEST),
        ("sync", pb.SyncRequest(timeline="u/bob", after_seq=2**64 - 1), pb.SyncBatch, pb.BAD_REQUEST),
        ("ack", pb.Ack(timeline="u/bob"), pb.AckResponse, pb.BAD_REQUEST),          # no seq
        ("ack", pb.Ack(timeline="u/alice", seq=1), pb.AckResponse, pb.FORBIDDEN),
        ("ack", b"\x0a\xff", pb.AckResponse, pb.BAD_REQUEST),
        ("nosuchop", b"x", pb.Response, pb.NOT_FOUND),
    ]
    for op, msg, rtype, status in cases:
        payload = msg if isinstance(msg, bytes) else msg.SerializeToString()
        bob.c.publish("$CONTROL/im/v1/" + op, payload, qos=1)
        m = bob.get()
        assert m.topic == "$CONTROL/im/v1/%s/response" % op
        r = rtype()
        r.ParseFromString(m.payload)
        assert r.status == status, (op, msg, r)
        assert r.reason, "an error must say why"
    # A refused ack still says where the timeline is.
    r = bob.request("ack", pb.Ack(timeline="u/bob", seq=99), response_type=pb.AckResponse)
    assert (r.status, r.head_seq, r.cursor) == (pb.BAD_REQUEST, 2, 0) and r.HasField("head_seq")
    # Bad user properties.
    r = bob.request("sync", user_props={"timeline": "u/bob", "after": "minus-one"}, response_type=pb.SyncBatch)
    assert r.status == pb.BAD_REQUEST
    # Nothing changed: cursor still 0, messages intact.
    r = bob.request("sync", pb.SyncRequest(timeline="u/bob"), response_type=pb.SyncBatch)
    assert r.status == pb.OK and r.cursor == 0 and len(r.frames) == 2
    bob.close()
    # No username: refused with a reply.
    anon = Client(b, None).connect()
    anon.c.publish("$CONTROL/im/v1/sync", pb.SyncRequest(timeline="u/bob").SerializeToString(), qos=1)
    m = anon.get()
    r = pb.Response()
    r.ParseFromString(m.payload)
    assert r.status == pb.UNAUTHENTICATED
    anon.close()


def test_retention_by_count_and_first_seq(make_broker):
    b = make_broker({"retention_messages": 10, "trim_batch": 7})
    fill(b, 40)
    bob = Client(b, "bob").connect()

    def trimmed():
        batch = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
        return batch if batch.first_seq == 31 else None
    batch = wait_until(trimmed, interval=0.3) or trimmed()
    assert batch and batch.first_seq == 31 and batch.head_seq == 40
    assert [decode_frame(f)[0].seq for f in batch.frames] == list(range(31, 41))
    # The sequence continues after trimming, and a restart keeps first_seq.
    fill(b, 1)
    b.restart()
    bob2 = Client(b, "bob").connect()
    batch = bob2.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
    assert batch.head_seq == 41 and batch.first_seq >= 31
    assert decode_frame(batch.frames[-1])[0].seq == 41
    bob.close()
    bob2.close()


def test_retention_by_age(make_broker):
    """Messages older than retention_seconds go, younger ones stay. The old
    ones are made old in the store (their server time moved back by more
    than the limit) rather than by waiting: with a limit of 10 minutes the
    new ones cannot age out while the test runs, however slow the machine."""
    limit = 600
    b = make_broker({"retention_seconds": limit})
    fill(b, 5)
    b.stop()
    if b.pg:
        b.pg.sql("UPDATE messages SET ts_ms = ts_ms - %d" % ((limit + 60) * 1000), b.pg_db)
    else:
        con = sqlite3.connect(b.db_path)
        with con:
            con.execute("UPDATE messages SET ts_ms = ts_ms - ?", ((limit + 60) * 1000,))
        con.close()
    b._chown(b.dir)
    b.start()
    fill(b, 2, prefix=b"new")
    bob = Client(b, "bob").connect()

    def trimmed():
        batch = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
        return batch if batch.first_seq == 6 else None
    batch = wait_until(trimmed, interval=0.3) or trimmed()
    assert batch and batch.first_seq == 6
    assert [decode_frame(f)[1] for f in batch.frames] == [b"new0", b"new1"]
    if b.pg:
        rows = b.pg.sql("SELECT min(seq) FROM messages m JOIN timelines t ON t.id = m.tl WHERE t.name = 'u/bob'", b.pg_db)
        assert rows == [["6"]]
    else:
        con = sqlite3.connect(b.db_path)
        tl = con.execute("SELECT id FROM timelines WHERE name='u/bob'").fetchone()[0]
        assert con.execute("SELECT min(seq) FROM messages WHERE tl=?", (tl,)).fetchone()[0] == 6
        con.close()
    bob.close()


def test_expiry_not_returned(make_broker):
    b = make_broker()
    a = Client(b, "alice", v5=True).connect()
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("im-expiry", "1")]
    a.c.publish("im/u/bob", b"short-lived", qos=1, properties=p).wait_for_publish(5)
    a.publish("im/u/bob", b"forever", qos=1)
    a.close()
    bob = Client(b, "bob").connect()

    def expired():
        frames, batch = sync_all(bob, "u/bob")
        return (frames, batch) if b"short-lived" not in [body for _, body in frames] else None
    frames, batch = wait_until(expired, interval=0.2) or sync_all(bob, "u/bob")   # after its second
    assert [body for _, body in frames] == [b"forever"]
    assert [h.seq for h, _ in frames] == [2] and batch.head_seq == 2
    bob.close()


def test_notify_mode(make_broker):
    b = make_broker({"delivery": "notify"})
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob")
    a = Client(b, "alice").connect()
    a.publish("im/u/bob", b"the body", qos=1)
    h, body = decode_frame(bob.get().payload)
    assert h.body_omitted and h.body_len == 8 and body == b"" and h.seq == 1
    frames, _ = sync_all(bob, "u/bob")                 # the client pulls
    assert frames[0][1] == b"the body" and not frames[0][0].body_omitted
    a.close()
    bob.close()


def test_kill9_during_qos2_burst_every_acked_message_synced(make_broker):
    b = make_broker()
    a = Client(b, "alice").connect()
    acked = set()
    mids = {}
    a.c.on_publish = lambda c, u, mid: acked.add(mids.get(mid))
    for i in range(1501):
        info = a.c.publish("im/u/bob", b"k%d" % i, qos=2)
        mids[info.mid] = i
    wait_until(lambda: len(acked) >= 50, interval=0.001)    # mid-burst: some acknowledged, most not
    b.kill9()
    # paho sees the close after everything the broker sent before it.
    assert wait_until(lambda: a.disconnects >= 1), "the client did not see the broker die"
    a.c.loop_stop()
    acked.discard(None)
    b.start()
    bob = Client(b, "bob").connect()
    frames, batch = sync_all(bob, "u/bob")
    bodies = [body for _, body in frames]
    assert [h.seq for h, _ in frames] == list(range(1, len(frames) + 1))
    assert len(set(bodies)) == len(bodies)
    assert {b"k%d" % i for i in acked} <= set(bodies)
    assert len(acked) >= 50
    bob.close()


def test_sync_rate_limit_answers_too_many(make_broker):
    b = make_broker({"sync_rate": 20})
    fill(b, 1)
    bob = Client(b, "bob", client_id="bob-flood").connect()
    req = pb.SyncRequest(timeline="u/bob", after_seq=0).SerializeToString()
    t0 = time.monotonic()
    for _ in range(100):
        bob.c.publish("$CONTROL/im/v1/sync", req, qos=0)
    statuses = []
    for m in bob.get_n(100):
        r = pb.SyncBatch()
        r.ParseFromString(m.payload)
        statuses.append(r.status)
    took = time.monotonic() - t0                      # the broker answered them all within this
    assert len(statuses) == 100                       # every request answered
    assert pb.TOO_MANY in statuses and pb.OK in statuses
    # A bucket of one second's worth (20), refilled at 20 per second: at
    # most that many in the time it took, however long that was.
    assert statuses.count(pb.OK) <= 20 + 20 * took + 1, (statuses.count(pb.OK), took)
    time.sleep(1.1)                                   # wall-clock time: the bucket refills
    r = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
    assert r.status == pb.OK
    # Others are not affected.
    other = Client(b, "bob", client_id="bob-other").connect()
    r = other.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
    assert r.status == pb.OK
    bob.close()
    other.close()
