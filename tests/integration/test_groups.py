"""Groups: membership requests, one order for all members, refusals,
removal on a live subscription, restart, and a 1,000-member fan-out."""
import json
import resource
import selectors
import socket
import struct
import threading
import time

from imtest import WAIT, Client, decode_frame, pb, sync_all

SYSTEM = 1


def group(client, op, name=None, members=()):
    req = pb.GroupRequest(op=op, members=list(members))
    if name is not None:
        req.group = name
    return client.request("group", req, response_type=pb.GroupResponse)


def test_lifecycle_and_system_messages(make_broker):
    b = make_broker()
    alice = Client(b, "alice").connect()
    r = group(alice, "create", "team", ["bob", "carol"])
    assert (r.status, r.seq, r.head_seq) == (pb.OK, 1, 1)
    r = group(alice, "info", "team")
    assert (r.owner, list(r.members), r.head_seq) == ("alice", ["alice", "bob", "carol"], 1)
    assert group(alice, "add", "team", ["dave"]).status == pb.OK
    assert group(alice, "remove", "team", ["carol"]).status == pb.OK
    dave = Client(b, "dave").connect()
    assert group(dave, "leave", "team").status == pb.OK
    assert list(group(alice, "info", "team").members) == ["alice", "bob"]
    # The history says who joined and left, in order, marked as system.
    frames, batch = sync_all(alice, "g/team")
    events = [json.loads(body) for h, body in frames]
    assert all(h.flags & SYSTEM and h.timeline == "g/team" for h, _ in frames)
    assert [(e["event"], e["by"], e["users"]) for e in events] == [
        ("create", "alice", ["bob", "carol"]), ("add", "alice", ["dave"]),
        ("remove", "alice", ["carol"]), ("leave", "dave", [])]
    assert [h.seq for h, _ in frames] == [1, 2, 3, 4]
    alice.close()
    dave.close()


def test_members_chatting_concurrently_see_one_order(make_broker):
    b = make_broker()
    names = ["alice", "bob", "carol"]
    owner = Client(b, "alice").connect()
    assert group(owner, "create", "trio", names[1:]).status == pb.OK
    readers = {n: Client(b, n, client_id=n + "-r").connect() for n in names}
    for c in readers.values():
        assert c.subscribe("im/g/trio") == [1]
    per = 150

    def chat(n):
        c = Client(b, n).connect()
        for i in range(per):
            c.publish("im/g/trio", b"%s:%d" % (n.encode(), i), qos=1 + i % 2)
        c.close()

    threads = [threading.Thread(target=chat, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = {}
    for n, c in readers.items():
        got = c.get_n(per * 3)
        seen[n] = [(decode_frame(m.payload)[0].seq, decode_frame(m.payload)[1]) for m in got]
        assert [s for s, _ in seen[n]] == list(range(2, per * 3 + 2))   # seq 1: the create notice
    assert seen["alice"] == seen["bob"] == seen["carol"]
    frames, _ = sync_all(owner, "g/trio")
    assert [(h.seq, body) for h, body in frames[1:]] == seen["alice"]
    for c in list(readers.values()) + [owner]:
        c.close()


def test_non_member_refused_everywhere(make_broker):
    b = make_broker({"nonim_acl": "allow"})
    alice = Client(b, "alice").connect()
    group(alice, "create", "club", ["bob"])
    bob = Client(b, "bob").connect()
    bob.subscribe("im/g/club")
    eve = Client(b, "eve", v5=True).connect()
    assert eve.subscribe("im/g/club")[0] >= 0x80
    for f in ("im/g/+", "im/#", "#"):
        eve.subscribe(f)
    eve.publish("im/g/club", b"let me in", qos=1, wait=False)
    assert eve.barrier()                                      # her publish has been decided
    alice.publish("im/g/club", b"members only", qos=1)
    m = bob.get()
    assert decode_frame(m.payload)[1] == b"members only"      # eve's publish never got a seq
    assert decode_frame(m.payload)[0].seq == 2
    assert eve.none()
    r = eve.request("sync", pb.SyncRequest(timeline="g/club", after_seq=0), response_type=pb.SyncBatch)
    assert r.status == pb.FORBIDDEN and not r.frames
    r = eve.request("ack", pb.Ack(timeline="g/club", seq=1), response_type=pb.AckResponse)
    assert r.status == pb.FORBIDDEN
    assert group(eve, "info", "club").status == pb.FORBIDDEN
    for c in (alice, bob, eve):
        c.close()


def test_removal_takes_effect_on_live_subscription(make_broker):
    b = make_broker()
    alice = Client(b, "alice").connect()
    group(alice, "create", "g1", ["bob"])
    bob = Client(b, "bob").connect()
    bob.subscribe("im/g/g1")
    alice.publish("im/g/g1", b"before", qos=1)
    assert decode_frame(bob.get().payload)[1] == b"before"
    assert group(alice, "remove", "g1", ["bob"]).status == pb.OK
    alice.publish("im/g/g1", b"after", qos=1)
    got = bob.drain()                                  # the removal notice may come, "after" not
    assert b"after" not in [decode_frame(m.payload)[1] for m in got]
    bob.close()
    alice.close()


def test_membership_survives_restart_and_list_unread(make_broker):
    b = make_broker()
    alice = Client(b, "alice", client_id="alice-1").connect()
    group(alice, "create", "a1", ["bob"])
    group(alice, "create", "a2", [])
    for i in range(3):
        alice.publish("im/g/a1", b"x%d" % i, qos=1)
    alice.close()
    b.restart()
    bob = Client(b, "bob", client_id="bob-1").connect()
    bob.request("ack", pb.Ack(timeline="g/a1", seq=2), response_type=pb.AckResponse)
    r = group(bob, "list")
    assert r.status == pb.OK
    assert [(g.name, g.head_seq, g.cursor, g.unread) for g in r.groups] == [("a1", 4, 2, 2)]
    alice = Client(b, "alice", client_id="alice-1").connect()
    assert [g.name for g in group(alice, "list").groups] == ["a1", "a2"]
    assert list(group(alice, "info", "a1").members) == ["alice", "bob"]
    bob.subscribe("im/g/a1")
    alice.publish("im/g/a1", b"after restart", qos=1)
    h, body = decode_frame(bob.get().payload)
    assert (h.seq, body) == (5, b"after restart")
    bob.close()
    alice.close()


def test_bad_requests_change_nothing(make_broker):
    b = make_broker({"admins": "root1"})
    alice = Client(b, "alice").connect()
    bob = Client(b, "bob").connect()
    assert group(alice, "create", "g", ["bob"]).status == pb.OK
    cases = [
        (alice, "explode", "g", [], pb.BAD_REQUEST),
        (alice, "add", None, ["x"], pb.BAD_REQUEST),
        (alice, "remove", "g", ["alice"], pb.BAD_REQUEST),      # the owner
        (bob, "add", "g", ["carol"], pb.FORBIDDEN),             # not the owner
        (bob, "remove", "g", ["alice"], pb.FORBIDDEN),
        (alice, "create", "g", [], pb.CONFLICT),
        (alice, "create", "bad/name", [], pb.BAD_REQUEST),
        (alice, "create", "x" * 65, [], pb.BAD_REQUEST),
        (alice, "add", "g", ["ok", "bad+name"], pb.BAD_REQUEST),
        (alice, "add", "g", [], pb.BAD_REQUEST),
        (alice, "add", "nope", ["bob"], pb.NOT_FOUND),
        (alice, "leave", "g", [], pb.CONFLICT),                 # the owner cannot leave
    ]
    for client, op, name, members, status in cases:
        r = group(client, op, name, members)
        assert r.status == status, (op, name, members, r)
        assert r.reason
    info = group(alice, "info", "g")
    assert list(info.members) == ["alice", "bob"] and info.head_seq == 1   # nothing changed
    raw = Client(b, "alice").connect()
    raw.c.publish("$CONTROL/im/v1/group", b"\xff\x00\xff", qos=1)
    m = raw.get()
    gr = pb.GroupResponse()
    gr.ParseFromString(m.payload)
    assert gr.status == pb.BAD_REQUEST
    # An admin may manage any group.
    root = Client(b, "root1").connect()
    assert group(root, "add", "g", ["carol"]).status == pb.OK
    assert list(group(root, "info", "g").members) == ["alice", "bob", "carol"]
    for c in (alice, bob, raw, root):
        c.close()


def test_group_requests_from_user_properties(make_broker):
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    r = alice.request("group", None, user_props={"op": "create", "group": "cli", "members": "bob,carol"},
                      response_type=pb.GroupResponse)
    assert r.status == pb.OK
    r = alice.request("group", None, user_props={"op": "info", "group": "cli"}, response_type=pb.GroupResponse)
    assert list(r.members) == ["alice", "bob", "carol"]
    alice.close()


# ---------------------------------------------------------------- fan-out to 1,000 members

def _packet(ptype, body):
    rl, enc = len(body), b""
    while True:
        d = rl % 128
        rl //= 128
        enc += bytes([d | (0x80 if rl else 0)])
        if not rl:
            break
    return bytes([ptype]) + enc + body


def _s(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _connect(user, cid):
    var = _s("MQTT") + bytes([4, 0x82]) + struct.pack("!H", 60)
    return _packet(0x10, var + _s(cid) + _s(user))


def _packets(buf):
    """Splits complete MQTT packets off buf; returns (packets, rest)."""
    out = []
    while len(buf) >= 2:
        mult, rl, i = 1, 0, 1
        while True:
            if i >= len(buf):
                return out, buf
            d = buf[i]
            rl += (d & 127) * mult
            mult *= 128
            i += 1
            if not d & 128:
                break
        if len(buf) < i + rl:
            break
        out.append((buf[0], buf[i:i + rl]))
        buf = buf[i + rl:]
    return out, buf


def test_fanout_to_a_thousand_subscribed_members(make_broker):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    b = make_broker(start=False)
    b.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096)))
    n, msgs = 1000, 3
    members = ["m%04d" % i for i in range(n)]
    owner = Client(b, "owner").connect()
    assert group(owner, "create", "big", members).status == pb.OK
    sel = selectors.DefaultSelector()
    socks = []
    for i, u in enumerate(members):
        s = socket.create_connection(("127.0.0.1", b.port))
        s.sendall(_connect(u, "fan-%d" % i) + _packet(0x82, struct.pack("!H", 1) + _s("im/g/big") + b"\x00"))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, {"buf": b"", "subacked": False, "got": []})
        socks.append(s)
    ready = lambda: all(k.data["subacked"] for k in sel.get_map().values())

    def pump(until, timeout):
        deadline = time.time() + timeout
        while not until() and time.time() < deadline:
            for key, _ in sel.select(timeout=0.2):
                data = key.fileobj.recv(65536)
                if not data:
                    continue
                pk, key.data["buf"] = _packets(key.data["buf"] + data)
                for ptype, body in pk:
                    if ptype >> 4 == 9:
                        key.data["subacked"] = body[2] == 0
                    elif ptype >> 4 == 3:
                        tlen = struct.unpack("!H", body[:2])[0]
                        key.data["got"].append(body[2 + tlen:])

    pump(ready, WAIT)
    assert ready(), "not every member could subscribe"
    for i in range(msgs):
        owner.publish("im/g/big", b"hello all %d" % i, qos=1)
    done = lambda: all(len(k.data["got"]) == msgs for k in sel.get_map().values())
    pump(done, WAIT)
    counts = [len(k.data["got"]) for k in sel.get_map().values()]
    assert counts.count(msgs) == n, "members short of messages: %d" % (n - counts.count(msgs))
    for k in sel.get_map().values():
        seqs = [decode_frame(p)[0].seq for p in k.data["got"]]
        assert seqs == [2, 3, 4]
    for s in socks:
        s.close()
    owner.close()


def _membership_news(client, topic, n):
    """The next n events on topic (frames of the groups the client reads
    may come between them: skipped). What came during a request first."""
    client.back.extend(client.stash)
    client.stash.clear()
    out = []
    deadline = time.monotonic() + WAIT
    while len(out) < n and time.monotonic() < deadline:
        for m in client.get_n(1, timeout=max(0.1, deadline - time.monotonic())):
            if m.topic != topic:
                assert m.topic.startswith("im/g/"), m.topic
                continue
            h, body = decode_frame(m.payload)
            assert (h.seq, body) == (0, b"")                     # an event: no seq, no body
            e = h.event
            out.append((e.kind, e.user, e.timeline, e.seq, e.member))
    return out


def test_membership_news_on_the_users_own_event_topic(make_broker):
    # A device hears at once that it was put in a group (and can subscribe
    # and sync it) or taken out, without polling `list` (PROTOCOL.md 11.1).
    b = make_broker()
    alice = Client(b, "alice").connect()
    bob = Client(b, "bob", client_id="bob-dev").connect()
    carol = Client(b, "carol", client_id="carol-dev").connect()
    for c, u in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        assert c.subscribe("im/e/u/" + u)[0] < 0x80
    M = pb.Event.MEMBERSHIP
    assert group(alice, "create", "crew", ["bob"]).seq == 1
    assert _membership_news(bob, "im/e/u/bob", 1) == [(M, "bob", "g/crew", 1, True)]
    assert _membership_news(alice, "im/e/u/alice", 1) == [(M, "alice", "g/crew", 1, True)]
    # On the news, bob's subscription is allowed and his sync has the change.
    assert bob.subscribe("im/g/crew")[0] < 0x80
    frames, _ = sync_all(bob, "g/crew")
    assert [h.seq for h, _ in frames] == [1]
    assert group(alice, "add", "crew", ["carol"]).seq == 2
    assert _membership_news(carol, "im/e/u/carol", 1) == [(M, "carol", "g/crew", 2, True)]
    # News only for whom it changes: bob is in already, dave was not.
    assert group(alice, "add", "crew", ["bob", "dave"]).seq == 3
    assert group(alice, "remove", "crew", ["bob", "erin"]).seq == 4
    assert _membership_news(bob, "im/e/u/bob", 1) == [(M, "bob", "g/crew", 4, False)]
    assert group(carol, "leave", "crew").seq == 5
    assert _membership_news(carol, "im/e/u/carol", 1) == [(M, "carol", "g/crew", 5, False)]
    # Nobody else heard any of it: news goes to the user concerned only.
    # And a refused change tells nobody anything.
    assert group(bob, "add", "crew", ["frank"]).status != pb.OK
    for c in (alice, bob, carol):
        late = c.stash + c.drain()
        assert [m.topic for m in late if m.topic.startswith("im/e/")] == []
    for c in (alice, bob, carol):
        c.close()
