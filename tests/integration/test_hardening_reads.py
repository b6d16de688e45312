"""Issue #20, findings 1, 2, 7 and the page cost of finding 4: what a read
mark tells whom, previews that go with their messages, edits and recalls
outside the unread counts, and a conversation page whose cost does not
depend on how many groups its reader was put in."""
import socket
import statistics
import threading
import time

from imtest import WAIT, Client, decode_frame, pb, sync_all, wait_until
from test_conversations import ack, create_group, receipt_publish, request, take
from test_hardening_flood import pipelined


def send(client, topic, body, **user_props):
    """Publishes with a Response Topic; returns the Receipt (status OK)."""
    r = receipt_publish(client, topic, body, **user_props)
    assert r.status == pb.OK, r
    return r


def reads(client, timeline):
    r = request(client, "reads", pb.ReadsRequest(timeline=timeline), response_type=pb.ReadsResponse)
    assert r.status == pb.OK, r
    return [(m.user, m.seq) for m in r.marks], r.head_seq


def convs(client, **kw):
    r = request(client, "conversations", pb.ConversationsRequest(**kw), response_type=pb.ConversationsResponse)
    assert r.status == pb.OK, r
    return {c.timeline: c for c in r.conversations}


def read_event(client, user):
    """The next READ event on the client's own event topic."""
    topic = "im/e/u/" + user
    h, _ = decode_frame(take(client, lambda m: m.topic == topic).payload)
    assert h.event.kind == pb.Event.READ
    return h.event


# ---- finding 1: a read mark tells a sender of her own messages only ----

def test_a_sender_learns_only_whether_her_own_messages_were_read(make_broker):
    """mallory writes bob once. Others write him too, and bob reads past
    her message. Before, mallory saw bob's whole mark (6) and his inbox
    head (8) in the READ event, in `reads u/bob` and in the conversation
    list: how much others write him and when he reads. Now each sender
    sees the highest of her own seqs that bob read, and the seq of her own
    last message as the head: alice (whom bob answers) the same way."""
    b = make_broker()
    users = {u: Client(b, u, v5=True).connect() for u in ("bob", "mallory", "alice", "carol", "dave")}
    bob, mallory, alice, carol, dave = (users[u] for u in ("bob", "mallory", "alice", "carol", "dave"))
    for u in ("mallory", "alice", "dave"):
        assert users[u].subscribe("im/e/u/" + u) == [1]
    assert send(mallory, "im/u/bob", b"hi bob").seq == 1
    assert [send(alice, "im/u/bob", b"a%d" % i).seq for i in range(3)] == [2, 3, 4]
    assert [send(carol, "im/u/bob", b"c%d" % i).seq for i in range(2)] == [5, 6]
    assert send(bob, "im/u/alice", b"hi alice").own_seq == 7     # bob's copy in u/bob
    assert send(alice, "im/u/bob", b"a3").seq == 8
    ack(bob, "u/bob", 6)

    ev = read_event(mallory, "mallory")
    assert (ev.user, ev.timeline, ev.seq) == ("bob", "u/bob", 1), ev
    assert reads(mallory, "u/bob") == ([("bob", 1)], 1)
    assert convs(mallory)["u/bob"].peer_read_seq == 1
    # alice: her seqs 2, 3, 4 are read, 8 is not; her last one is 8.
    ev = read_event(alice, "alice")
    assert (ev.user, ev.seq) == ("bob", 4), ev
    assert reads(alice, "u/bob") == ([("bob", 4)], 8)
    assert convs(alice)["u/bob"].peer_read_seq == 4
    # Someone bob has not read yet: no mark at all, not bob's.
    assert send(dave, "im/u/bob", b"d0").seq == 9
    assert reads(dave, "u/bob") == ([], 9)
    assert convs(dave)["u/bob"].peer_read_seq == 0
    # bob reads on: dave learns of his message; mallory of nothing.
    ack(bob, "u/bob", 9)
    ev = read_event(dave, "dave")
    assert (ev.user, ev.seq) == ("bob", 9), ev
    assert mallory.none()
    assert reads(mallory, "u/bob") == ([("bob", 1)], 1)
    ev = read_event(alice, "alice")
    assert ev.seq == 8, ev
    # bob himself sees his own mark and head.
    assert reads(bob, "u/bob") == ([("bob", 9)], 9)
    for c in users.values():
        c.close()


def test_removed_members_marks_are_not_listed(make_broker):
    b = make_broker()
    alice, carol, dave = (Client(b, u, v5=True).connect() for u in ("alice", "carol", "dave"))
    create_group(alice, "team", ["carol", "dave"])
    send(alice, "im/g/team", b"hello")
    ack(carol, "g/team", 2)
    ack(dave, "g/team", 1)
    assert reads(alice, "g/team")[0] == [("carol", 2), ("dave", 1)]
    r = request(alice, "group", pb.GroupRequest(op="remove", group="team", members=["carol"]),
                response_type=pb.GroupResponse)
    assert r.status == pb.OK, r
    marks, head = reads(alice, "g/team")
    assert marks == [("dave", 1)] and head == 3, (marks, head)
    for c in (alice, carol, dave):
        c.close()


# ---- finding 2: a preview never shows a body that sync would not return ----

def stored_bodies(client, timeline):
    return [body for _, body in sync_all(client, timeline)[0]]


def previews(client):
    return {t: (c.last_preview if c.HasField("last_preview") else None) for t, c in convs(client).items()}


def test_no_preview_once_the_message_expired(make_broker):
    b = make_broker()
    alice, bob, carol = (Client(b, u, v5=True).connect() for u in ("alice", "bob", "carol"))
    create_group(carol, "team", ["alice"])
    send(bob, "im/u/alice", b"PIN 4711", im_expiry=1)
    send(carol, "im/g/team", b"PIN 4711", im_expiry=1)
    assert previews(alice) == {"u/bob": "PIN 4711", "g/team": "PIN 4711"}
    assert wait_until(lambda: b"PIN 4711" not in stored_bodies(alice, "u/alice")
                      and b"PIN 4711" not in stored_bodies(alice, "g/team"))
    assert previews(alice) == {"u/bob": None, "g/team": None}
    assert previews(bob) == {"u/alice": None}                       # his copy expired too
    # The next message brings its preview.
    send(bob, "im/u/alice", b"new one")
    assert previews(alice)["u/bob"] == "new one"
    for c in (alice, bob, carol):
        c.close()


def first_seq(client, timeline):
    return sync_all(client, timeline)[1].first_seq


def test_no_preview_once_retention_removed_the_message(make_broker):
    # By count: bob's "PIN" leaves alice's inbox when carol's two arrive.
    b = make_broker({"retention_messages": 2})
    alice, bob, carol = (Client(b, u, v5=True).connect() for u in ("alice", "bob", "carol"))
    send(bob, "im/u/alice", b"PIN 4711")
    send(carol, "im/u/alice", b"one")
    send(carol, "im/u/alice", b"two")
    assert wait_until(lambda: first_seq(alice, "u/alice") == 2)
    assert b"PIN 4711" not in stored_bodies(alice, "u/alice")
    assert previews(alice) == {"u/carol": "two", "u/bob": None}
    assert previews(bob) == {"u/alice": "PIN 4711"}                 # still in u/bob: sync returns it
    for c in (alice, bob, carol):
        c.close()
    # By age: a group's and a conversation's last messages go.
    b = make_broker({"retention_seconds": 1})
    alice, bob, carol = (Client(b, u, v5=True).connect() for u in ("alice", "bob", "carol"))
    create_group(carol, "team", ["alice"])
    send(carol, "im/g/team", b"PIN 4711")
    send(bob, "im/u/alice", b"PIN 4711")
    assert wait_until(lambda: first_seq(alice, "g/team") == 3 and first_seq(alice, "u/alice") == 2)
    assert previews(alice) == {"u/bob": None, "g/team": None}
    for c in (alice, bob, carol):
        c.close()


# ---- finding 7: an edit or a recall is not a new message to read ----

def test_edits_and_recalls_add_nothing_to_unread(make_broker):
    b = make_broker()
    alice, bob = (Client(b, u, v5=True).connect() for u in ("alice", "bob"))
    m1 = send(alice, "im/u/bob", b"one")
    m2 = send(alice, "im/u/bob", b"two")
    create_group(alice, "team", ["bob"])
    g1 = send(alice, "im/g/team", b"g one")
    send(alice, "im/g/team", b"g two")

    def unread():
        return {t: c.unread for t, c in convs(bob).items()}

    assert unread() == {"u/alice": 2, "g/team": 3}                  # the create notice and two
    send(alice, "im/u/bob", b"one!", im_edit=m1.seq)
    send(alice, "im/u/bob", b"one!!", im_edit=m1.seq)
    send(alice, "im/g/team", b"g one!", im_edit=g1.seq)
    assert unread() == {"u/alice": 2, "g/team": 3}
    # A recalled message that was not read yet stays counted: sync still
    # returns its seq (FLAG_RECALLED, no body) and reading it clears it.
    send(alice, "im/u/bob", b"", im_recall=m2.seq)
    send(alice, "im/g/team", b"", im_recall=g1.seq)
    assert unread() == {"u/alice": 2, "g/team": 3}
    ack(bob, "u/bob", m1.seq)
    ack(bob, "g/team", g1.seq)
    assert unread() == {"u/alice": 1, "g/team": 1}
    head = sync_all(bob, "u/bob")[1].head_seq
    ack(bob, "u/bob", head)
    ack(bob, "g/team", sync_all(bob, "g/team")[1].head_seq)
    assert unread() == {"u/alice": 0, "g/team": 0}
    # After the marks, new edits still add nothing; a new message does.
    send(alice, "im/u/bob", b"one!!!", im_edit=m1.seq)
    send(alice, "im/u/bob", b"three")
    assert unread()["u/alice"] == 1
    for c in (alice, bob):
        c.close()


# ---- finding 4 (the page): its cost does not depend on the number of groups ----

def nodelay(client):
    """No Nagle on the client's side either (the broker's: set_tcp_nodelay):
    a round trip is then the page's cost plus a constant, not a delayed
    ACK's 40 ms."""
    client.c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def page_ms(client):
    t0 = time.perf_counter()
    r = client.request("conversations", pb.ConversationsRequest(limit=50), response_type=pb.ConversationsResponse)
    took = (time.perf_counter() - t0) * 1000
    assert r.status == pb.OK and len(r.conversations) == 50, r.status
    return took


def rounds_ms(clients, rounds=31):
    """Pages of 50 for each client in turns, so that the machine's load
    falls on all alike: the median round trip of each, in ms."""
    for _ in range(5):
        for c in clients:
            page_ms(c)                                              # warm
    times = [[] for _ in clients]
    for _ in range(rounds):
        for i, c in enumerate(clients):
            times[i].append(page_ms(c))
    return [statistics.median(t) for t in times]


def split_among(owners, reqs):
    """Group requests dealt out to the owners, each owner's pipelined on a
    thread of its own: every status."""
    got = [[] for _ in owners]

    def run(i):
        got[i] = pipelined(owners[i], "group", reqs[i::len(owners)])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(owners))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    return [st for g in got for st in g]


def test_page_cost_does_not_depend_on_the_number_of_groups(make_broker):
    """few is in 5 groups; then bob is put in 20,000 (by ten owners, the
    group limits lifted for the test). Each wrote to 50 people before.
    Before, a page joined the user's memberships with every group's last
    message and sorted them: 20,000 groups made everyone's page tens of ms.
    Now a page reads one index range of each kind, whoever has how many."""
    b = make_broker({"max_groups_per_user": 0, "max_groups_created": 0}, extra_conf="set_tcp_nodelay true")
    bob = nodelay(Client(b, "bob", v5=True).connect())
    few = nodelay(Client(b, "few", v5=True).connect())
    for i in range(50):
        bob.publish("im/u/peer%02d" % i, b"dm %d" % i)
        few.publish("im/u/peer%02d" % i, b"dm %d" % i)
    n_groups, n_owners = 20000, 10
    owners = [Client(b, "owner%d" % i, v5=True).connect() for i in range(n_owners)]
    assert set(pipelined(owners[0], "group", [pb.GroupRequest(op="create", group="few-%d" % k, members=["few", "bob"])
                                              for k in range(5)])) == {pb.OK}
    m_before, = rounds_ms([few])
    t0 = time.monotonic()
    statuses = split_among(owners, [pb.GroupRequest(op="create", group="g-%05d" % k, members=["bob"])
                                    for k in range(n_groups - 5)])
    assert len(statuses) == n_groups - 5 and set(statuses) == {pb.OK}
    made = time.monotonic() - t0
    for c in owners:
        c.close()
    # The list is right: latest first, paged, the groups before the older
    # direct conversations.
    seen, before = [], None
    while len(seen) < 200:
        req = pb.ConversationsRequest(limit=50)
        if before:
            req.before_ts_ms, req.before_timeline = before
        r = bob.request("conversations", req, response_type=pb.ConversationsResponse)
        assert r.status == pb.OK and len(r.conversations) == 50 and r.has_more
        seen += [(c.last_ts_ms, c.timeline) for c in r.conversations]
        before = seen[-1]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 200
    assert all(t.startswith("g/") for _, t in seen)
    mine = convs(few, limit=200)
    assert len(mine) == 55 and sum(1 for t in mine if t.startswith("g/")) == 5
    # A shared machine's load comes and goes: measured again (up to three
    # times) before a ratio over 2 fails the test.
    for _ in range(3):
        m_few, m_bob = rounds_ms([few, bob])
        print("\n20,000 groups made in %.1f s. One page of 50 (median of 31 round trips): "
              "in 5 groups of 5 %.2f ms; in 5 groups of 20,000 %.2f ms; in 20,000 groups %.2f ms (%.2fx)"
              % (made, m_before, m_few, m_bob, m_bob / m_before))
        if m_bob < 2 * m_before and m_few < 2 * m_before:
            break
    assert m_bob < 2 * m_before and m_few < 2 * m_before, (m_before, m_few, m_bob)
    bob.close()
    few.close()
