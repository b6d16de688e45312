"""PostgreSQL store: the server stopped while clients publish.

The local journal is the acknowledgement point, so a publish is
acknowledged while PostgreSQL is down, up to plugin_opt_backlog_max bytes
not yet stored; past that it is refused without acknowledgement. Once the
server is back the worker reconnects and ships the backlog: every
acknowledged message delivered once, in order, no seq skipped or reused.

Also measures (printed; run with -s to see): how fast a backlog ships after
the server comes back, and the ship delay (journal append -> commit in
PostgreSQL, $SYS/broker/im/store/ship_us_p50/p99) under a steady load.
"""
import collections
import json
import time

import pytest

import pgserver
from imtest import WAIT, Client, decode_frame, inbox, publish_until_refused, wait_until

pytestmark = pytest.mark.skipif(not pgserver.available(), reason="PostgreSQL server programs not found")


@pytest.fixture
def pg():
    """A server of this test's own: it is stopped and started again."""
    srv = pgserver.PgServer().start()
    yield srv
    srv.cleanup()


def pg_broker(make_broker, srv, opts):
    b = make_broker(dict({"nonim_acl": "allow", "store": "postgresql"}, **opts), start=False)
    b.use_pg(srv)
    b.start()
    return b


def frames(client, n):
    """The next n frames on the client's subscription: [(seq, body)]."""
    return [(h.seq, body) for h, body in (decode_frame(m.payload) for m in client.get_n(n))]


def test_down_acknowledged_up_to_backlog_max_then_shipped_once_in_order(make_broker, pg):
    b = pg_broker(make_broker, pg, {"backlog_max": 1024 * 1024})
    bob = Client(b, "bob", client_id="bob-live").connect()
    bob.subscribe("im/u/bob")
    pub = Client(b, "alice", client_id="alice-outage", clean=False)
    pub.c.reconnect_delay_set(1, 1)
    pub.c.max_inflight_messages_set(1)
    pub.connect()
    pub.publish("im/u/bob", b"before")
    assert frames(bob, 1) == [(1, b"before")]

    pg.stop()
    acked, failed = publish_until_refused(pub, "im/u/bob", b"p")
    assert failed, "4 MB acknowledged while PostgreSQL was down"
    assert 200 <= len(acked) <= 520, len(acked)          # about backlog_max worth, each in the journal
    assert wait_until(lambda: "plugin_opt_backlog_max" in b.read_log(), 30)

    pg.start()
    t_up = time.monotonic()
    got = frames(bob, 1)                                 # shipped, then delivered
    t_first = time.monotonic()
    got += frames(bob, len(acked) - 1)
    t_last = time.monotonic()
    assert got == [(n + 2, body) for n, body in enumerate(acked)], "not once, in order, gap-free"
    print("\nbacklog of %d messages (%d KiB): first delivered %.2f s after PostgreSQL was up (the worker's"
          " retry pause), all in %.2f s more: %.0f messages/s"
          % (len(acked), len(acked) * 2048 // 1024, t_first - t_up, t_last - t_first,
             (len(acked) - 1) / max(t_last - t_first, 1e-3)))
    assert wait_until(lambda: "reconnected to PostgreSQL" in b.read_log(), WAIT)

    # The refused publish is re-sent by the client and stored once, after.
    info, body = failed
    info.wait_for_publish(timeout=WAIT)
    assert info.is_published(), "not taken after PostgreSQL came back"
    assert frames(bob, 1) == [(len(acked) + 2, body)]
    pub.publish("im/u/bob", b"after")
    assert frames(bob, 1) == [(len(acked) + 3, b"after")]   # no seq reused
    pub.close()
    bob.close()
    stored, batch = inbox(b, "bob")
    assert [h.seq for h, _ in stored] == list(range(1, len(acked) + 4))
    assert [body for _, body in stored] == [b"before"] + acked + [body, b"after"]
    own, _ = inbox(b, "alice")                            # the sender's copies too
    assert [h.seq for h, _ in own] == list(range(1, len(acked) + 4))
    rows = pg.sql("SELECT count(*), count(DISTINCT body) FROM messages m JOIN timelines t ON t.id = m.tl"
                  " WHERE t.name = 'u/bob'", b.pg_db)
    assert rows == [[str(len(acked) + 3)] * 2]


def test_backlog_of_small_messages_ships_in_order(make_broker, pg):
    """A larger backlog (small bodies, many in flight) to measure shipping."""
    b = pg_broker(make_broker, pg, {"backlog_max": 64 * 1024 * 1024})
    bob = Client(b, "bob", client_id="bob-ship").connect()
    bob.subscribe("im/u/bob")
    pub = Client(b, "alice", client_id="alice-ship")
    pub.c.max_inflight_messages_set(100)
    pub.connect()
    pg.stop()
    total = 5000
    infos = [pub.publish("im/u/bob", b"s%05d" % n + b"." * 150, wait=False) for n in range(total)]
    assert wait_until(lambda: all(i.is_published() for i in infos), WAIT), "not all acknowledged while down"
    pg.start()
    got = frames(bob, 1)
    t_first = time.monotonic()
    got += frames(bob, total - 1)
    t = time.monotonic() - t_first
    assert got == [(n + 1, b"s%05d" % n + b"." * 150) for n in range(total)]
    print("\nbacklog of %d messages of 156 bytes shipped at %.0f messages/s (%.2f s)" % (total, (total - 1) / t, t))
    pub.close()
    bob.close()


def test_down_at_start_fails_with_one_line_naming_the_option(make_broker, pg):
    b = make_broker({"nonim_acl": "allow", "store": "postgresql"}, start=False)
    b.use_pg(pg)
    b.opts["pg_conninfo"] = "postgresql://postgres:s3cret-pw@127.0.0.1:%d/%s?connect_timeout=2" % (pg.port, b.pg_db)
    pg.stop()
    assert b.start(expect_fail=True) != 0
    log = b.read_log()
    named = [ln for ln in log.splitlines() if "plugin_opt_pg_conninfo" in ln]
    assert named and "127.0.0.1" in named[0], log
    assert "s3cret-pw" not in log, "the password was logged"
    pg.start()


def test_missing_conninfo_refused(make_broker):
    b = make_broker({"nonim_acl": "allow", "store": "postgresql"}, start=False)
    assert b.start(expect_fail=True) != 0
    assert "plugin_opt_pg_conninfo" in b.read_log()


def test_ship_delay_under_steady_load(make_broker, pg):
    """Journal append -> PostgreSQL commit, per message, as the metrics
    report it (log2 buckets: 4096 means 2-4 ms) over 1 s intervals."""
    b = pg_broker(make_broker, pg, {"metrics_interval": 1})
    stats = []
    mon = Client(b, "monitor").connect()
    mon.c.on_message = lambda c, u, m: stats.append(json.loads(m.payload)) if m.topic.endswith("/stats") else None
    mon.subscribe("$SYS/broker/im/stats")
    pub = Client(b, "alice", client_id="alice-steady").connect()
    pub.c.max_inflight_messages_set(20)
    # Steady load for 5 s, paced by the broker's acknowledgements (at most
    # 20 unacknowledged), not by a clock.
    window = collections.deque()
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 5:
        window.append(pub.publish("im/u/bob%d" % (n % 50), b"steady %d" % n, wait=False))
        n += 1
        if len(window) >= 20:
            assert pub.wait_published(window.popleft()), "the publisher lost its connection"
    assert wait_until(lambda: sum(s.get("sequenced", 0) >= n for s in stats) >= 1, WAIT)
    busy = [s for s in stats if s.get("ship_us_p50")]
    assert busy, "no ship delay reported: %r" % stats[-3:]
    p50 = sorted(s["ship_us_p50"] for s in busy)[len(busy) // 2]
    p99 = max(s["ship_us_p99"] for s in busy)
    print("\n%d messages in 5 s (%.0f/s): ship delay p50 <= %d us, p99 <= %d us (worst 1 s interval)"
          % (n, n / 5, p50, p99))
    assert 0 < p50 <= p99
    mon.close()
    pub.close()
