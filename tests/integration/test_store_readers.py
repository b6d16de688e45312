"""Issue #22: reads apart from the writer (plugin_opt_store_readers).

Sync, read marks, the conversation list and group list/info are answered
by reader threads on connections of their own, so a writer that cannot
commit does not hold them up. What a reader sees is the last commit, after
the writer stored the messages queued before the request (one second at
most): a client that publishes and then syncs sees its message.

The writer is held up here by a lock another SQLite connection takes on the
database (BEGIN IMMEDIATE): WAL readers go on reading, the writer's
batches fail and are tried again."""

import pytest

from imtest import WAIT, Client, decode_frame, pb, sync_all, wait_log, writer_held


def _sync(client, timeline, after=0, timeout=None):
    return client.request("sync", pb.SyncRequest(timeline=timeline, after_seq=after), response_type=pb.SyncBatch,
                          timeout=timeout)


def _group(client, op, name, members=()):
    req = pb.GroupRequest(op=op, members=list(members))
    if name is not None:
        req.group = name
    return client.request("group", req, response_type=pb.GroupResponse)


@pytest.mark.parametrize("readers", [2, 0])
def test_a_locked_writer_does_not_hold_up_reads(make_broker, readers):
    # The stall watch answers what waits for the writer after 1 s.
    b = make_broker({"store_readers": readers, "store_timeout": 1})
    alice = Client(b, "alice", v5=True).connect()
    bob = Client(b, "bob", v5=True).connect()
    assert bob.subscribe("im/u/bob") == [1]
    alice.publish("im/u/bob", b"m1", cmid="c1")
    assert decode_frame(bob.get().payload)[1] == b"m1"

    with writer_held(b):
        alice.publish("im/u/bob", b"m2", cmid="c2")          # acknowledged from the journal
        wait_log(b, "database is locked")
        r = _sync(bob, "u/bob")
        if readers:
            # Answered while the lock is still held, with what is committed.
            assert r.status == pb.OK, (r.status, r.reason)
            assert [decode_frame(f)[1] for f in r.frames] == [b"m1"]
            assert r.head_seq == 1
            convs = bob.request("conversations", pb.ConversationsRequest(), response_type=pb.ConversationsResponse)
            assert convs.status == pb.OK and [c.timeline for c in convs.conversations] == ["u/alice"]
            assert _group(bob, "list", None).status == pb.OK
        else:
            # Behind the writer, which retries its batch: the stall watch
            # answers it.
            assert r.status == pb.INTERNAL and "store stalled" in r.reason, (r.status, r.reason)
        # An ack needs the writer either way.
        r = bob.request("ack", pb.Ack(timeline="u/bob", seq=1), response_type=pb.AckResponse)
        assert r.status == pb.INTERNAL and "store stalled" in r.reason, (r.status, r.reason)
    # The writer goes on: m2 arrives live, once, and sync has both.
    assert decode_frame(bob.get(timeout=2 * WAIT).payload)[1] == b"m2"
    frames, batch = sync_all(bob, "u/bob")
    assert [body for _, body in frames] == [b"m1", b"m2"] and batch.head_seq == 2
    assert bob.none()


def test_a_sync_sees_what_was_acknowledged_before_it(make_broker):
    """Read-your-writes: the message's PUBACK comes before the sync is
    sent, so the sync holds it, although the writer stores it after the
    reader got the request (here: once a lock that held the writer up is
    gone)."""
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    bob = Client(b, "bob", v5=True).connect()
    for i in range(10):
        alice.publish("im/u/bob", b"r%d" % i, qos=1 + i % 2)
        r = _sync(bob, "u/bob", after=i)
        assert r.status == pb.OK, (r.status, r.reason)
        assert [decode_frame(f)[1] for f in r.frames] == [b"r%d" % i], "sync %d missed its message" % i
    with writer_held(b):
        alice.publish("im/u/bob", b"late", qos=1)          # acknowledged from the journal
        bob.c.publish("$CONTROL/im/v1/sync", pb.SyncRequest(timeline="u/bob", after_seq=10).SerializeToString(), qos=1)
        wait_log(b, "database is locked")
    m = bob.get()
    while m.topic != "$CONTROL/im/v1/sync/response":
        m = bob.get()
    r = pb.SyncBatch()
    r.ParseFromString(m.payload)
    assert r.status == pb.OK, (r.status, r.reason)
    assert [decode_frame(f)[1] for f in r.frames] == [b"late"]
    # The conversation list too.
    convs = alice.request("conversations", pb.ConversationsRequest(), response_type=pb.ConversationsResponse)
    assert [(c.timeline, c.last_seq) for c in convs.conversations] == [("u/bob", 11)]


def test_readers_follow_membership_changes(make_broker):
    """A reader caches member sets; a change the writer committed reaches
    it before the answer to the change reaches the client."""
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    bob = Client(b, "bob", v5=True).connect()
    carol = Client(b, "carol", v5=True).connect()
    assert _group(alice, "create", "team", ["bob"]).status == pb.OK
    for _ in range(4):                                      # every reader has looked at the group
        assert _sync(bob, "g/team").status == pb.OK
        assert _sync(carol, "g/team").status == pb.FORBIDDEN
    assert _group(alice, "remove", "team", ["bob"]).status == pb.OK
    assert _group(alice, "add", "team", ["carol"]).status == pb.OK
    for _ in range(4):
        r = _sync(bob, "g/team")
        assert r.status == pb.FORBIDDEN, (r.status, r.reason)
        r = _sync(carol, "g/team")
        assert r.status == pb.OK and len(r.frames) == 3, (r.status, r.reason, len(r.frames))
        info = _group(carol, "info", "team")
        assert info.status == pb.OK and list(info.members) == ["alice", "carol"]
        assert [g.name for g in _group(carol, "list", None).groups] == ["team"]
        assert list(_group(bob, "list", None).groups) == []
