"""Two brokers (nodes) sharing one PostgreSQL database.

Each node's store worker batches the messages it receives; the two
publishers below write the same five inboxes in opposite orders, so
without the batch's timelines locked up front in one order (prelock) the
two nodes' batches deadlock and PostgreSQL fails one of them after
deadlock_timeout. With it: no deadlock, and each inbox is one gap-free
sequence holding every message of both nodes once, in each sender's order.

With 4000 messages a node (IM_PG_NODES_N) the worker without prelock met
15 deadlocks (12 failed batches, 33 s); with it none (14 s).
"""
import os

import pytest

import pgserver
from imtest import WAIT, Client, decode_frame, sync_all, wait_until

pytestmark = pytest.mark.skipif(not pgserver.available(), reason="PostgreSQL server programs not found")

TARGETS = ["t%d" % i for i in range(5)]


def two_nodes(make_broker, srv):
    a = make_broker({"nonim_acl": "allow", "store": "postgresql"}, start=False)
    a.use_pg(srv)
    b = make_broker({"nonim_acl": "allow", "store": "postgresql"}, start=False)
    b.use_pg(srv)
    b.opts["pg_conninfo"] = a.opts["pg_conninfo"]     # one database, two node ids
    assert a.opts["node_id"] != b.opts["node_id"]
    a.start()
    b.start()
    return a, b


def test_opposite_orders_on_two_nodes_no_deadlock_one_sequence(make_broker, pg_server):
    a, b = two_nodes(make_broker, pg_server)
    warm = Client(a, "warm").connect()
    for t in TARGETS:                                   # every inbox exists: all of them are prelocked
        warm.publish("im/u/" + t, b"warm")
    warm.close()
    n = int(os.environ.get("IM_PG_NODES_N", "4000"))
    pubs = []
    for node, sender, order in ((a, "alice", TARGETS), (b, "bob", TARGETS[::-1])):
        p = Client(node, sender, client_id=sender + "-burst")
        p.c.max_inflight_messages_set(200)
        p.connect()
        pubs.append((p, [p.publish("im/u/" + order[k % 5], b"%s %04d" % (sender.encode(), k), wait=False)
                         for k in range(n)]))
    for p, infos in pubs:
        assert wait_until(lambda: all(i.is_published() for i in infos), WAIT), "not all acknowledged"

    reader = {t: Client(a if i % 2 else b, t, v5=True).connect() for i, t in enumerate(TARGETS)}
    want = 1 + 2 * n // 5
    for t, c in reader.items():
        def stored():
            frames, batch = sync_all(c, "u/" + t)
            return frames if batch.head_seq >= want else None
        frames = wait_until(stored, WAIT, 0.2)
        assert frames, "u/%s never reached seq %d" % (t, want)
        assert [h.seq for h, _ in frames] == list(range(1, want + 1))
        bodies = [body for _, body in frames[1:]]
        assert len(set(bodies)) == len(bodies) == want - 1
        for sender in (b"alice", b"bob"):
            mine = [x for x in bodies if x.startswith(sender)]
            assert mine == sorted(mine) and len(mine) == n // 5    # each sender's order kept
        c.close()
    for p, _ in pubs:
        p.close()
    logs = a.read_log() + b.read_log()
    deadlocks = logs.count("40P01")
    print("\n2 nodes, %d messages each, opposite orders: %d deadlocks, %d failed batches"
          % (n, deadlocks, logs.count("a batch of")))
    assert deadlocks == 0, "deadlocks between the nodes' batches"
    assert "a batch of" not in logs, "a batch failed"
    nodes = pg_server.sql("SELECT node_id FROM nodes ORDER BY node_id", a.pg_db)
    assert sorted([a.opts["node_id"], b.opts["node_id"]]) == [r[0] for r in nodes]
