"""Conversations (issue #15): read receipts from the cursors, typing,
edit and recall as sequenced events, the conversation list. Each rule and
each refusal against a real broker; stock tools drive typing and recall."""
import os
import subprocess

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from imtest import STORE, WAIT, Client, decode_frame, pb, sync_all, wait_log, wait_until, writer_held

EDIT, RECALL, EDITED, RECALLED = 4, 8, 16, 32


def take(client, pred):
    """The first message that pred accepts; the others stay, in order, for
    later reads."""
    others = []
    try:
        while True:
            m = client.get()
            if pred(m):
                return m
            others.append(m)
    finally:
        client.back.extendleft(reversed(others))


def receipt_publish(client, topic, body, **user_props):
    """Publishes with a Response Topic and returns the Receipt."""
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "receipts/" + client.c._client_id.decode()
    if user_props:
        p.UserProperty = [(k.replace("_", "-"), str(v)) for k, v in user_props.items()]
    client.c.publish(topic, body, qos=1, properties=p).wait_for_publish(timeout=WAIT)
    r = pb.Receipt()
    r.ParseFromString(take(client, lambda m: m.topic.startswith("receipts/")).payload)
    return r


def next_frame(client, topic):
    """The next message on topic, decoded (header, body); others stay."""
    return decode_frame(take(client, lambda m: m.topic == topic).payload)


def request(client, op, msg=None, response_type=None, **kw):
    """client.request, keeping what arrived meanwhile for later reads."""
    r = client.request(op, msg, response_type=response_type, **kw)
    client.back.extend(client.stash)
    client.stash.clear()
    return r


def ack(client, timeline, seq):
    r = request(client, "ack", pb.Ack(timeline=timeline, seq=seq), response_type=pb.AckResponse)
    assert r.status == pb.OK, r
    return r


def test_read_receipt_live_on_request_and_after_restart(make_broker):
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    alice.subscribe("im/e/u/alice")
    alice.subscribe("im/u/alice")
    rs = [receipt_publish(alice, "im/u/bob", b"m%d" % i) for i in range(3)]
    assert [r.seq for r in rs] == [1, 2, 3]
    # alice's copies name the seq each message has in u/bob (peer_seq).
    copies = [next_frame(alice, "im/u/alice")[0] for _ in range(3)]
    assert [(h.seq, h.peer_seq) for h in copies] == [(1, 1), (2, 2), (3, 3)]
    bob = Client(b, "bob", client_id="bob-phone", v5=True).connect()
    ack(bob, "u/bob", 2)
    h, _ = next_frame(alice, "im/e/u/alice")
    assert (h.event.kind, h.event.user, h.event.timeline, h.event.seq) == (pb.Event.READ, "bob", "u/bob", 2)
    assert h.seq == 0 and h.timeline == "u/alice"
    # Another device of bob's behind the mark moves nothing and says nothing.
    bob2 = Client(b, "bob", client_id="bob-laptop", v5=True).connect()
    ack(bob2, "u/bob", 1)
    ack(bob, "u/bob", 3)
    h, _ = next_frame(alice, "im/e/u/alice")
    assert h.event.seq == 3                                     # not a 1 before it
    # Offline: a request tells the same.
    r = request(alice, "reads", pb.ReadsRequest(timeline="u/bob"), response_type=pb.ReadsResponse)
    assert r.status == pb.OK and [(m.user, m.seq) for m in r.marks] == [("bob", 3)] and r.head_seq == 3
    # Someone bob never exchanged a message with may not ask.
    eve = Client(b, "eve", v5=True).connect()
    r = request(eve, "reads", pb.ReadsRequest(timeline="u/bob"), response_type=pb.ReadsResponse)
    assert r.status == pb.FORBIDDEN and r.reason and not r.marks
    assert eve.subscribe("im/e/u/alice")[0] >= 0x80
    for c in (alice, bob, bob2, eve):
        c.close()
    b.restart()
    alice = Client(b, "alice", v5=True).connect()
    r = request(alice, "reads", pb.ReadsRequest(timeline="u/bob"), response_type=pb.ReadsResponse)
    assert [(m.user, m.seq) for m in r.marks] == [("bob", 3)]
    convs = request(alice, "conversations", pb.ConversationsRequest(), response_type=pb.ConversationsResponse)
    assert [(c.timeline, c.peer_read_seq) for c in convs.conversations] == [("u/bob", 3)]
    alice.close()


def test_group_read_marks_read_by_n_of_m(make_broker):
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    create_group(alice, "team", ["carol", "dave"])
    dave = Client(b, "dave", v5=True).connect()
    dave.subscribe("im/e/g/team")
    for i in range(3):
        receipt_publish(alice, "im/g/team", b"g%d" % i)          # seqs 2, 3, 4 (1 is the create notice)
    carol = Client(b, "carol", v5=True).connect()
    ack(carol, "g/team", 3)
    h, _ = next_frame(dave, "im/e/g/team")
    assert (h.event.kind, h.event.user, h.event.timeline, h.event.seq) == (pb.Event.READ, "carol", "g/team", 3)
    ack(dave, "g/team", 4)
    r = request(alice, "reads", pb.ReadsRequest(timeline="g/team"), response_type=pb.ReadsResponse)
    marks = {m.user: m.seq for m in r.marks}
    assert marks == {"carol": 3, "dave": 4} and r.head_seq == 4
    # "read by N of M" for seq 3: carol and dave of the 2 others.
    assert sum(1 for s in marks.values() if s >= 3) == 2
    eve = Client(b, "eve", v5=True).connect()
    assert request(eve, "reads", pb.ReadsRequest(timeline="g/team"), response_type=pb.ReadsResponse).status == pb.FORBIDDEN
    assert eve.subscribe("im/e/g/team")[0] >= 0x80
    for c in (alice, carol, dave, eve):
        c.close()


def test_typing_reaches_only_who_is_online_and_stores_nothing(make_broker):
    b = make_broker({"typing_rate": 5})
    bob = Client(b, "bob", v5=True).connect()
    bob.subscribe("im/e/u/bob")
    alice = Client(b, "alice", v5=True).connect()
    r = request(alice, "typing", pb.TypingRequest(timeline="u/bob", typing=True), response_type=pb.Response)
    assert r.status == pb.OK
    h, _ = next_frame(bob, "im/e/u/bob")
    assert (h.event.kind, h.event.user, h.event.timeline, h.event.typing) == (pb.Event.TYPING, "alice", "u/alice", True)
    # Stock tools: mosquitto_pub with user properties.
    subprocess.run(["mosquitto_pub", "-p", str(b.port), "-u", "alice", "-V", "5", "-t", "$CONTROL/im/v1/typing",
                    "-D", "publish", "user-property", "timeline", "u/bob",
                    "-D", "publish", "user-property", "state", "stopped", "-n"], check=True, timeout=WAIT)
    h, _ = next_frame(bob, "im/e/u/bob")
    assert (h.event.user, h.event.typing) == ("alice", False)
    # Nothing stored or sequenced.
    frames, batch = sync_all(bob, "u/bob")
    assert frames == [] and batch.head_seq == 0
    # In a group: to its members; not from a stranger.
    create_group(alice, "g1", ["bob"])
    h, _ = next_frame(bob, "im/e/u/bob")            # the news that he is in it (11.1)
    assert (h.event.kind, h.event.timeline, h.event.member) == (pb.Event.MEMBERSHIP, "g/g1", True)
    bob.subscribe("im/e/g/g1")
    assert request(alice, "typing", pb.TypingRequest(timeline="g/g1"), response_type=pb.Response).status == pb.OK
    h, _ = next_frame(bob, "im/e/g/g1")
    assert (h.event.user, h.event.timeline, h.event.typing) == ("alice", "g/g1", True)
    eve = Client(b, "eve", v5=True).connect()
    r = request(eve, "typing", pb.TypingRequest(timeline="g/g1"), response_type=pb.Response)
    assert r.status == pb.FORBIDDEN and "member" in r.reason
    # Someone who could not get a DM at all: not a valid name.
    r = request(eve, "typing", pb.TypingRequest(timeline="u/a+b"), response_type=pb.Response)
    assert r.status == pb.BAD_REQUEST
    # Rate-limited per sender.
    statuses = [request(eve, "typing", pb.TypingRequest(timeline="u/bob"), response_type=pb.Response).status
                for _ in range(30)]
    assert pb.TOO_MANY in statuses and statuses[0] == pb.OK
    # Nobody publishes on an event topic but the plugin.
    eve.c.publish("im/e/u/bob", b"forged", qos=1).wait_for_publish(timeout=WAIT)
    r = request(alice, "typing", pb.TypingRequest(timeline="u/bob", typing=True), response_type=pb.Response)
    h, _ = next_frame(bob, "im/e/u/bob")            # eve's 12 typings (before 429) ... then alice's, no forgery
    while h.event.user == "eve":
        h, _ = next_frame(bob, "im/e/u/bob")
    assert h.event.user == "alice"
    for c in (alice, bob, eve):
        c.close()


def create_group(owner, group, members):
    r = request(owner, "group", pb.GroupRequest(op="create", group=group, members=members), response_type=pb.GroupResponse)
    assert r.status == pb.OK, r.reason


def store_files(b):
    """Every file the store and its journal keep: the database, its WAL, the segments."""
    for root, _, names in os.walk(b.data):
        for n in names:
            if n.startswith("im.db") or root.endswith(".journal"):
                yield os.path.join(root, n)


def holds(b, needle):
    for f in store_files(b):
        try:
            with open(f, "rb") as fh:
                if needle in fh.read():
                    return True
        except FileNotFoundError:       # a segment cut meanwhile
            pass
    return False


def test_edit_and_recall_are_sequenced_events(make_broker):
    b = make_broker(opts={"journal_rotate_seconds": "1"})
    bob = Client(b, "bob", v5=True).connect()
    bob.subscribe("im/u/bob")
    alice = Client(b, "alice", v5=True).connect()
    alice.subscribe("im/u/alice")
    r = receipt_publish(alice, "im/u/bob", b"hello")
    seq, own = r.seq, r.own_seq
    next_frame(bob, "im/u/bob")
    next_frame(alice, "im/u/alice")
    r = receipt_publish(alice, "im/u/bob", b"hello (edited)", im_edit=seq)
    assert r.status == pb.OK and r.seq == seq + 1
    h, body = next_frame(bob, "im/u/bob")
    assert (h.seq, h.flags & EDIT, h.ref_seq, body) == (seq + 1, EDIT, seq, b"hello (edited)")
    h, body = next_frame(alice, "im/u/alice")            # her copy names her own seq
    assert (h.flags & EDIT, h.ref_seq, body) == (EDIT, own, b"hello (edited)")
    frames, _ = sync_all(bob, "u/bob")
    assert frames[0][0].flags & EDITED and frames[0][1] == b"hello (edited)"
    assert wait_until(lambda: holds(b, b"hello"))                         # the check below can see it
    # Recall with the stock tool.
    subprocess.run(["mosquitto_pub", "-p", str(b.port), "-u", "alice", "-V", "5", "-q", "1", "-t", "im/u/bob",
                    "-D", "publish", "user-property", "im-recall", str(seq), "-n"], check=True, timeout=WAIT)
    h, body = next_frame(bob, "im/u/bob")
    assert (h.flags & RECALL, h.ref_seq, body) == (RECALL, seq, b"")
    frames, _ = sync_all(bob, "u/bob")
    assert [h.seq for h, _ in frames] == [1, 2, 3]                      # gap checks stay exact
    first = frames[0][0]
    assert first.flags & RECALLED and frames[0][1] == b"" and first.body_len == 0
    frames, _ = sync_all(alice, "u/alice")
    assert frames[0][0].flags & RECALLED and frames[0][1] == b""
    # Erased at rest: the body is in no file of the store or the journal once
    # checkpointed and the journal segment that held it was rotated and cut.
    assert wait_until(lambda: not holds(b, b"hello"), timeout=3 * WAIT)
    # Refusals, each with its reason, changing nothing.
    carol = Client(b, "carol", v5=True).connect()
    r2 = receipt_publish(alice, "im/u/bob", b"second")
    bad = receipt_publish(carol, "im/u/bob", b"x", im_edit=r2.seq)
    assert bad.status == pb.FORBIDDEN and "sender" in bad.reason and not bad.HasField("seq")
    bad = receipt_publish(alice, "im/u/bob", b"", im_recall=999)
    assert bad.status == pb.NOT_FOUND and bad.reason
    bad = receipt_publish(alice, "im/u/bob", b"x", im_edit=seq)
    assert bad.status == pb.CONFLICT                                    # recalled already
    bad = receipt_publish(alice, "im/u/bob", b"x", im_edit=seq + 1)
    assert bad.status == pb.BAD_REQUEST                                 # an edit is not editable
    frames, _ = sync_all(bob, "u/bob")
    assert [h.seq for h, _ in frames] == [1, 2, 3, 4] and frames[3][1] == b"second"
    # A repeat of an edit with its cmid is answered as one, and changes nothing.
    e1 = receipt_publish(alice, "im/u/bob", b"second!", im_edit=r2.seq, im_cmid="e-1")
    e2 = receipt_publish(alice, "im/u/bob", b"second!!", im_edit=r2.seq, im_cmid="e-1")
    assert (e1.duplicate, e2.duplicate, e2.seq) == (False, True, e1.seq)
    frames, _ = sync_all(bob, "u/bob")
    assert frames[3][1] == b"second!"
    for c in (alice, bob, carol):
        c.close()


def test_group_recall_by_owner_and_offline_catch_up(make_broker):
    b = make_broker()
    carol = Client(b, "carol", v5=True).connect()
    create_group(carol, "team", ["alice", "dave"])
    alice = Client(b, "alice", v5=True).connect()
    m = receipt_publish(alice, "im/g/team", b"oops")
    e = receipt_publish(alice, "im/g/team", b"fine", )
    edit = receipt_publish(alice, "im/g/team", b"fine, edited", im_edit=e.seq)
    assert edit.status == pb.OK
    dave = Client(b, "dave", v5=True).connect()
    bad = receipt_publish(dave, "im/g/team", b"", im_recall=m.seq)
    assert bad.status == pb.FORBIDDEN
    ok = receipt_publish(carol, "im/g/team", b"", im_recall=m.seq)     # the owner may
    assert ok.status == pb.OK
    # bob was never online: he joins and catches up in order.
    assert request(carol, "group", pb.GroupRequest(op="add", group="team", members=["bob"]),
                         response_type=pb.GroupResponse).status == pb.OK
    bob = Client(b, "bob", v5=True).connect()
    frames, _ = sync_all(bob, "g/team")
    got = [(h.seq, h.flags & (EDIT | RECALL | EDITED | RECALLED), h.ref_seq, body) for h, body in frames[1:]]
    assert got == [(m.seq, RECALLED, 0, b""), (e.seq, EDITED, 0, b"fine, edited"),
                   (edit.seq, EDIT, e.seq, b"fine, edited"), (ok.seq, RECALL, m.seq, b""),
                   (ok.seq + 1, 0, 0, frames[-1][1])]
    for c in (alice, bob, carol, dave):
        c.close()


def test_conversation_list(make_broker):
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    bob = Client(b, "bob", v5=True).connect()
    carol = Client(b, "carol", v5=True).connect()
    receipt_publish(bob, "im/u/alice", b"from bob 1")
    receipt_publish(bob, "im/u/alice", b"from bob 2")
    create_group(carol, "team", ["alice"])
    receipt_publish(carol, "im/g/team", b"hi team")
    receipt_publish(carol, "im/u/alice", b"\x00\x01binary")
    r = request(alice, "conversations", pb.ConversationsRequest(), response_type=pb.ConversationsResponse)
    assert r.status == pb.OK and not r.has_more
    got = [(c.timeline, c.last_sender, c.last_preview, c.unread) for c in r.conversations]
    assert got == [("u/carol", "carol", "", 1), ("g/team", "carol", "hi team", 2), ("u/bob", "bob", "from bob 2", 2)]
    # Reading moves the counts; a reply moves the conversation up.
    ack(alice, "u/alice", 2)
    receipt_publish(alice, "im/u/bob", b"thanks")
    r = request(alice, "conversations", pb.ConversationsRequest(), response_type=pb.ConversationsResponse)
    got = [(c.timeline, c.last_sender, c.last_preview, c.unread) for c in r.conversations]
    assert got[0] == ("u/bob", "alice", "thanks", 0) and got[1] == ("u/carol", "carol", "", 1)
    # Paged, latest first, with mosquitto_rr-style user properties too.
    page1 = request(alice, "conversations", user_props={"limit": "2"}, response_type=pb.ConversationsResponse)
    assert [c.timeline for c in page1.conversations] == ["u/bob", "u/carol"] and page1.has_more
    last = page1.conversations[-1]
    page2 = request(alice, "conversations", pb.ConversationsRequest(limit=2, before_ts_ms=last.last_ts_ms,
                                                                    before_timeline=last.timeline),
                          response_type=pb.ConversationsResponse)
    assert [c.timeline for c in page2.conversations] == ["g/team"] and not page2.has_more
    for c in (alice, bob, carol):
        c.close()


def test_group_notes_of_one_batch(make_broker):
    """A batch's messages to a group note the group's last message once
    (worker/msg.c): the list still shows the batch's last message, first,
    with every message counted unread and every edit and recall left out.
    On SQLite another connection's lock holds the writer, so that the
    messages queue and are stored in one batch."""
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    carol = Client(b, "carol", v5=True).connect()
    bob = Client(b, "bob", v5=True).connect()
    create_group(carol, "team", ["alice", "bob"])              # 3 members: each member's row is noted
    ack(alice, "g/team", 1)                                     # the create notice
    first = receipt_publish(carol, "im/g/team", b"first")
    second = receipt_publish(carol, "im/g/team", b"second")
    dave = Client(b, "dave", v5=True).connect()
    receipt_publish(dave, "im/u/alice", b"from dave")          # after the group's last message
    with writer_held(b):
        for i in range(3):
            carol.publish("im/g/team", b"burst %d" % i)         # acknowledged from the journal
        carol.publish("im/g/team", b"first, edited", props={"UserProperty": [("im-edit", str(first.seq))]})
        carol.publish("im/g/team", b"", props={"UserProperty": [("im-recall", str(second.seq))]})
        bob.publish("im/g/team", b"last one")
        if STORE == "sqlite":
            wait_log(b, "database is locked")
    head = second.seq + 6

    def listed():
        r = request(alice, "conversations", pb.ConversationsRequest(), response_type=pb.ConversationsResponse)
        assert r.status == pb.OK, r.reason
        return [(c.timeline, c.last_seq, c.last_sender, c.last_preview, c.unread) for c in r.conversations]

    want = [("g/team", head, "bob", "last one", 6), ("u/dave", 1, "dave", "from dave", 1)]
    assert wait_until(lambda: listed() == want), listed()
    # The edit and the recall are not messages to read: reading to the
    # head leaves nothing unread; a mark before them counts what is left.
    ack(alice, "g/team", second.seq + 3)
    assert listed()[0][4] == 1
    ack(alice, "g/team", head)
    assert listed()[0][4] == 0
    for c in (alice, bob, carol, dave):
        c.close()


def test_many_conversations_paged(make_broker):
    b = make_broker({"new_timelines_per_min": 0})
    alice = Client(b, "alice", v5=True).connect()
    for i in range(300):
        alice.publish("im/u/peer%03d" % i, b"hi %d" % i, qos=1)
    seen, before = [], None
    while True:
        req = pb.ConversationsRequest(limit=50)
        if before:
            req.before_ts_ms, req.before_timeline = before
        r = request(alice, "conversations", req, response_type=pb.ConversationsResponse)
        assert r.status == pb.OK and len(r.conversations) <= 50
        seen += [c.timeline for c in r.conversations]
        if not r.has_more:
            break
        before = (r.conversations[-1].last_ts_ms, r.conversations[-1].timeline)
    assert len(seen) == 300 and len(set(seen)) == 300
    assert seen[0] == "u/peer299"                                   # latest first
    alice.close()


def test_no_preview_when_bodies_are_encrypted_at_rest(make_broker):
    b = make_broker(start=False)
    b.opts["store_key_file"] = b.put_file("keys", "1 " + "cd" * 32 + "\n")
    b.start()
    bob = Client(b, "bob", v5=True).connect()
    receipt_publish(bob, "im/u/alice", b"secret text")
    alice = Client(b, "alice", v5=True).connect()
    r = request(alice, "conversations", pb.ConversationsRequest(), response_type=pb.ConversationsResponse)
    assert [(c.timeline, c.HasField("last_preview")) for c in r.conversations] == [("u/bob", False)]
    alice.close()
    bob.close()
