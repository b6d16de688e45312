"""The client against a real broker: messages, receipts, edits, recalls,
read marks, typing, groups, membership news, the conversation list."""
import pytest

from conftest import WAIT
from helpers import make_client, wait_until
import imtest
from mosquitto_im import Flag, RefusedError, Status


def test_send_receive_receipt(broker, clients):
    alice, sa = make_client(clients, broker, "alice")
    bob, sb = make_client(clients, broker, "bob")
    r = alice.send("u/bob", "hello bob").result(WAIT)
    assert r.status == Status.OK and r.timeline == "u/bob" and r.seq == 1 and r.own_seq == 1
    assert r.store_id and not r.duplicate
    wait_until(lambda: sb.bodies("u/bob") == [b"hello bob"], what="bob gets it")
    m = sb.of("u/bob")[0]
    assert (m.sender, m.seq, m.text, m.conversation, m.outgoing) == ("alice", 1, "hello bob", "u/alice", False)
    assert m.content_type.startswith("text/plain")
    # alice's own copy, in her inbox
    wait_until(lambda: sa.bodies("u/alice") == [b"hello bob"], what="alice's copy")
    mine = sa.of("u/alice")[0]
    assert mine.outgoing and mine.conversation == "u/bob" and mine.peer_seq == 1
    assert mine.target() == ("u/bob", 1)
    assert alice.store_id == bob.store_id == r.store_id
    assert alice.flush(WAIT) and not alice.pending()
    assert sb.errors == [] and sa.errors == []


def test_refused_message_fails_its_future(broker, clients):
    alice, _ = make_client(clients, broker, "alice")
    with pytest.raises(RefusedError) as e:
        alice.send("g/nosuchgroup", "hi").result(WAIT)    # not a member: the broker refuses (0x87)
    assert e.value.mqtt_reason == 0x87
    assert not alice.pending()
    with pytest.raises(ValueError):
        alice.send("bob", "no timeline")


def test_edit_recall_read_typing(broker, clients):
    alice, sa = make_client(clients, broker, "alice")
    bob, sb = make_client(clients, broker, "bob", auto_ack=False)
    r1 = alice.send("u/bob", "helo").result(WAIT)
    r2 = alice.send("u/bob", "oops").result(WAIT)
    wait_until(lambda: len(sb.of("u/bob")) == 2, what="two messages")

    e = alice.edit("u/bob", r1.seq, "hello").result(WAIT)
    assert e.status == Status.OK and e.seq == 3
    wait_until(lambda: sb.edits, what="bob sees the edit")
    edit, orig = sb.edits[0]
    assert edit.flags & Flag.EDIT and edit.ref_seq == r1.seq and edit.body == b"hello"
    assert orig is not None and orig.seq == r1.seq and orig.body == b"hello" and orig.edited
    # alice applies it to her own copy too (ref_seq in her inbox)
    wait_until(lambda: sa.edits, what="alice's copy edited")
    assert sa.edits[0][1].body == b"hello" and sa.edits[0][1].seq == r1.own_seq

    target = sa.of("u/alice")[1].target()
    assert target == ("u/bob", r2.seq)
    alice.recall(*target).result(WAIT)
    wait_until(lambda: sb.recalls, what="bob sees the recall")
    rec, orig = sb.recalls[0]
    assert rec.flags & Flag.RECALL and orig.seq == r2.seq and orig.recalled and orig.body == b""
    assert [m.body for m in bob.messages("u/bob")] == [b"hello", b""]

    # a read mark: bob reads up to the first message; alice hears it
    bob.ack("u/bob", r1.seq)
    wait_until(lambda: sa.reads, what="alice gets the read mark")
    assert sa.reads[0].timeline == "u/bob" and sa.reads[0].user == "bob" and sa.reads[0].seq == r1.seq
    assert alice.read_mark("u/bob", "bob") == r1.seq
    marks = alice.reads("u/bob").result(WAIT)
    assert [(m.user, m.seq) for m in marks] == [("bob", r1.seq)]

    # typing, both ways
    bob.typing("u/alice").result(WAIT)
    wait_until(lambda: sa.typing, what="alice sees bob typing")
    t = sa.typing[0]
    assert (t.timeline, t.user, t.typing) == ("u/bob", "bob", True)
    bob.typing("u/alice", False).result(WAIT)
    wait_until(lambda: len(sa.typing) == 2 and not sa.typing[1].typing, what="stopped")

    # the conversation list
    page = alice.conversations().result(WAIT)
    assert [c.timeline for c in page.conversations] == ["u/bob"] and not page.has_more
    assert page.conversations[0].peer_read_seq == r1.seq
    assert sa.errors == [] and sb.errors == []


def plugin_tells_membership(broker):
    """True if this plugin sends MEMBERSHIP events (PROTOCOL.md 11.1):
    probed with plain MQTT clients. The event is queued with the change,
    before the reply; a marker request of bob's, answered in the same
    order, shows whether it came."""
    a = imtest.Client(broker, "probe-owner", v5=True).connect()
    b = imtest.Client(broker, "probe-member", v5=True).connect()
    try:
        b.subscribe("im/e/u/probe-member")
        r = a.request("group", imtest.pb.GroupRequest(op="create", group="probe", members=["probe-member"]),
                      response_type=imtest.pb.GroupResponse)
        assert r.status == imtest.pb.OK, r
        for m in b.drain():
            h, _ = imtest.decode_frame(m.payload)
            if h.HasField("event") and h.event.kind == 3:
                return True
        return False
    finally:
        a.close()
        b.close()


def test_groups(broker, clients):
    """Group requests, group typing and read marks; bob follows the group
    after asking for his groups (any plugin)."""
    alice, sa = make_client(clients, broker, "alice")
    bob, sb = make_client(clients, broker, "bob")
    g = alice.create_group("team", ["bob"]).result(WAIT)
    assert g.op == "create" and g.group == "team" and g.seq == 1
    infos = bob.groups().result(WAIT)
    assert [(i.name, i.head_seq) for i in infos] == [("team", 1)]
    wait_until(lambda: "g/team" in bob.timelines() and bob.wait_online(0.01), what="bob follows g/team")
    wait_until(lambda: "g/team" in alice.timelines(), what="alice follows g/team")
    r = alice.send("g/team", "hi team").result(WAIT)
    assert r.timeline == "g/team" and r.seq == 2 and not r.own_seq
    wait_until(lambda: sb.bodies("g/team")[-1:] == [b"hi team"], what="bob gets the group message")
    sysmsg = sb.of("g/team")[0]
    assert sysmsg.system and sysmsg.seq == 1 and b'"create"' in sysmsg.body
    info = alice.group_info("team").result(WAIT)
    assert info.owner == "alice" and info.members == ("alice", "bob") and info.head_seq == 2

    bob.typing("g/team").result(WAIT)
    wait_until(lambda: any(t.timeline == "g/team" and t.user == "bob" for t in sa.typing), what="group typing")
    wait_until(lambda: alice.read_mark("g/team", "bob") >= 2, what="bob's read mark in the group")
    assert alice.readers("g/team")["bob"] == 2

    with pytest.raises(RefusedError) as e:
        alice.create_group("team").result(WAIT)
    assert e.value.status == Status.CONFLICT
    alice.remove_members("team", ["bob"]).result(WAIT)
    bob.groups().result(WAIT)
    wait_until(lambda: "g/team" not in bob.timelines(), what="bob drops g/team")
    with pytest.raises(RefusedError) as e:
        bob.group_info("team").result(WAIT)
    assert e.value.status == Status.FORBIDDEN
    convs = alice.conversations().result(WAIT).conversations
    assert [c.timeline for c in convs] == ["g/team"]
    assert sa.errors == [] and sb.errors == []


def test_membership_news(broker, clients):
    """Added to a group, a device subscribes and syncs it at once, without
    asking; removed, it drops it (the MEMBERSHIP event)."""
    if not plugin_tells_membership(broker):
        pytest.skip("this plugin does not send MEMBERSHIP events yet (PROTOCOL.md 11.1)")
    alice, sa = make_client(clients, broker, "alice")
    bob, sb = make_client(clients, broker, "bob")
    carol, sc = make_client(clients, broker, "carol")
    alice.create_group("team", ["bob"]).result(WAIT)
    wait_until(lambda: "g/team" in bob.timelines(), what="bob follows g/team")
    wait_until(lambda: [(m.group, m.member, m.seq) for m in sb.membership] == [("team", True, 1)],
               what="bob's membership news")
    alice.send("g/team", "hi team").result(WAIT)
    wait_until(lambda: sb.bodies("g/team")[-1:] == [b"hi team"], what="bob gets the group message")

    alice.add_members("team", ["carol"]).result(WAIT)
    wait_until(lambda: len(sc.of("g/team")) == 3, what="carol synced the group from 0")
    assert [m.seq for m in sc.of("g/team")] == [1, 2, 3]
    assert sc.of("g/team")[2].system and b'"add"' in sc.of("g/team")[2].body

    alice.remove_members("team", ["bob"]).result(WAIT)
    wait_until(lambda: "g/team" not in bob.timelines(), what="bob drops g/team")
    assert [(m.group, m.member) for m in sb.membership] == [("team", True), ("team", False)]
    carol.leave_group("team").result(WAIT)
    wait_until(lambda: "g/team" not in carol.timelines(), what="carol drops g/team")
    alice.send("g/team", "after").result(WAIT)
    wait_until(lambda: sa.bodies("g/team")[-1:] == [b"after"], what="alice gets it")
    assert b"after" not in sb.bodies() and b"after" not in sc.bodies()
    assert sa.errors == [] and sb.errors == [] and sc.errors == []


def test_compressed_bodies_are_inflated(make_broker, clients):
    b = make_broker({"compress_min_bytes": 64})
    alice, _ = make_client(clients, b, "alice")
    bob, sb = make_client(clients, b, "bob")
    body = b"lorem ipsum dolor sit amet " * 200
    alice.send("u/bob", body).result(WAIT)
    wait_until(lambda: sb.bodies("u/bob") == [body], what="bob gets it inflated")
    bob.close()
    # and from a sync (a new device of bob's)
    bob2, sb2 = make_client(clients, b, "bob")
    wait_until(lambda: sb2.bodies("u/bob") == [body], what="synced and inflated")
    assert not sb2.of("u/bob")[0].flags & Flag.COMPRESSED
