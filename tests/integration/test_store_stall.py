"""Issue #22: a store that stalls says so.

A commit that hangs (the synchronous standby is gone: PostgreSQL waits for
it forever) used to make the plugin answer no request at all, with no log
line. Now, once one batch has taken longer than plugin_opt_store_timeout,
the broker logs a WARNING, shows it in $SYS/broker/im/store/stalled, and
answers the requests waiting behind it INTERNAL "store stalled" (they
change nothing); messages are still acknowledged from the journal and,
when the standby is back, stored and delivered once, in order.

With readers (plugin_opt_store_readers, the default 2) a sync does not
wait for the writer at all: it is answered OK from a reader with what is
committed (the reader lets the writer store what was queued before it,
but one second at most). Without readers (0) it waits behind the writer
and is answered "store stalled" like the rest.

One broker on its own PostgreSQL primary with a synchronous standby
(cluster_env.PgPair; no NATS needed)."""
import pytest

from cluster_env import PgPair, missing
from imtest import WAIT, Client, decode_frame, pb, sync_all, wait_log, wait_until
from test_limits import Metrics

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

TIMEOUT_S = 1


def _sync_raw(client, timeline, timeout=None):
    """A sync request; the decoded SyncBatch (a bare Response decodes as
    one: status and reason are fields 1 and 2 of every reply)."""
    return client.request("sync", pb.SyncRequest(timeline=timeline), response_type=pb.SyncBatch,
                          timeout=timeout)


def _sync_ok(r, bodies):
    """A sync a reader answered: OK, with exactly what was committed."""
    assert r.status == pb.OK, (r.status, r.reason)
    assert [decode_frame(f)[1] for f in r.frames] == bodies


@pytest.mark.parametrize("readers", [2, 0])
def test_a_lost_synchronous_standby_is_said_and_nothing_is_lost(make_broker, readers):
    pg = PgPair(standby=True).start()
    try:
        b = make_broker({"store": "postgresql", "pg_conninfo": pg.uri, "store_timeout": TIMEOUT_S,
                         "metrics_interval": 1, "nonim_acl": "allow", "store_readers": readers})
        metrics = Metrics(b)
        alice = Client(b, "alice", client_id="alice-1", v5=True).connect()
        bob = Client(b, "bob", client_id="bob-1", v5=True).connect()
        assert bob.subscribe("im/u/bob") == [1]
        alice.publish("im/u/bob", b"before", cmid="c0")
        assert decode_frame(bob.get().payload)[1] == b"before"

        # The standby goes: every commit now waits for it.
        pg.kill_node(pg.standby)
        sent = [b"while-%d" % i for i in range(20)]
        for i, body in enumerate(sent):
            # Acknowledged from the journal: the promise does not wait.
            alice.publish("im/u/bob", body, qos=1 + i % 2, cmid="c%d" % (i + 1))

        # Requests are answered, INTERNAL with the reason, within about the
        # timeout (not left silent until the standby returns): also syncs
        # asked in the same instant as messages (a read never shares the
        # hung COMMIT of a batch that writes).
        carol = Client(b, "carol", client_id="carol-1", v5=True).connect()
        burst = [carol.publish("im/u/bob", b"burst-%d" % i, cmid="b%d" % i, wait=False) for i in range(10)]
        for k in range(5):
            carol.c.publish("$CONTROL/im/v1/sync", pb.SyncRequest(timeline="u/carol").SerializeToString(), qos=1)
        answers = [m for m in carol.get_n(5, timeout=6 * TIMEOUT_S + WAIT)
                   if m.topic == "$CONTROL/im/v1/sync/response"]
        assert len(answers) == 5, "%d of 5 syncs answered while the standby is down" % len(answers)
        for m in answers:
            r = pb.SyncBatch()
            r.ParseFromString(m.payload)
            if readers:
                _sync_ok(r, [])
            else:
                assert r.status == pb.INTERNAL and "store stalled" in r.reason, (r.status, r.reason)
        for info in burst:
            assert carol.wait_published(info), "the journal stopped acknowledging"
        sent += [b"burst-%d" % i for i in range(10)]
        r = _sync_raw(bob, "u/bob")
        if readers:
            # What is committed, not what waits for the standby.
            _sync_ok(r, [b"before"])
        else:
            assert r.status == pb.INTERNAL and "store stalled" in r.reason, (r.status, r.reason)
        r = bob.request("ack", pb.Ack(timeline="u/bob", seq=1), response_type=pb.AckResponse)
        assert r.status == pb.INTERNAL and "store stalled" in r.reason
        wait_log(b, "im: store: stalled")
        assert "synchronous standby" in b.read_log()
        assert wait_until(lambda: metrics.get("store/stalled") >= 1), "store/stalled not shown"
        assert wait_until(lambda: metrics.get("store/stalls") == 1), "store/stalls not 1"

        # The standby returns: everything acknowledged arrives once, in order.
        pg.start_node(pg.standby)
        got = [decode_frame(m.payload) for m in bob.get_n(len(sent), timeout=3 * WAIT)]
        assert [body for _, body in got] == sent
        assert [h.seq for h, _ in got] == list(range(2, 2 + len(sent)))
        wait_log(b, "im: store: moving again")
        assert wait_until(lambda: metrics.get("store/stalled") == 0)
        frames, batch = sync_all(bob, "u/bob")
        assert [body for _, body in frames] == [b"before"] + sent
        assert bob.none()
        for c in (alice, bob, carol, metrics.c):
            c.close()
    finally:
        pg.stop()
