"""Issue #20, findings 3 and 4: a client that asks faster than it reads,
and a user who fills others' conversation lists, must not pin the broker's
memory or hold up other users' messages. Every request with a reply is
bounded per client and per user (requests waiting to be answered, reply
bytes), and membership has per-user limits with clear refusals."""
import statistics
import threading
import time

from imtest import SANITIZE, WAIT, Client, decode_frame, pb, wait_until
from test_limits import raw_client, remaining, rss_kib, string


def publish_packet(topic, payload):
    """A QoS 0 PUBLISH packet, as MQTT 3.1.1 puts it on the wire."""
    body = string(topic) + payload
    return b"\x30" + remaining(len(body)) + body


def pipelined(client, op, msgs, window=8):
    """Sends msgs as op requests, at most window waiting at a time, and
    returns the replies' statuses (Response has the status field first, as
    every reply does)."""
    want = "$CONTROL/im/v1/%s/response" % op
    statuses, sent = [], 0
    while len(statuses) < len(msgs):
        while sent < len(msgs) and sent - len(statuses) < window:
            client.c.publish("$CONTROL/im/v1/" + op, msgs[sent].SerializeToString(), qos=0)
            sent += 1
        m = client.get()
        if m.topic == want:
            r = pb.Response()
            r.ParseFromString(m.payload)
            statuses.append(r.status)
    return statuses


class DmProbe:
    """carol -> dave direct messages, one at a time: how long each took
    from publish to delivery."""

    def __init__(self, broker):
        self.dave = Client(broker, "dave").connect()
        assert self.dave.subscribe("im/u/dave") == [1]
        self.carol = Client(broker, "carol").connect()
        self.delays = []

    def once(self):
        body = b"probe %d" % len(self.delays)
        t0 = time.monotonic()
        self.carol.publish("im/u/dave", body, qos=1)
        while True:
            h, got = decode_frame(self.dave.get().payload)
            if got == body:
                break
        self.delays.append(time.monotonic() - t0)
        return self.delays[-1]

    def summary(self):
        return "DM latency max %.3f s, median %.3f s over %d DMs" % (
            max(self.delays), statistics.median(self.delays), len(self.delays))

    def close(self):
        self.carol.close()
        self.dave.close()


def test_conversations_flood_without_reading_is_bounded(make_broker):
    """mallory is in 200 groups, each with a long last message, so a page
    of 200 conversations is tens of KB. From a client that never reads she
    sends 4,000 such requests at QoS 0. Before: every page was built and
    queued for her (+171 MiB in the issue; here 4,000 pages) and another
    user's DM waited behind them. Now at most a few pages are waiting and
    the reply budget holds the rest: the broker grows by little, and DMs
    keep flowing."""
    b = make_broker({"nonim_acl": "allow"})
    mal = Client(b, "mallory", v5=True).connect()
    names = ["flood-%03d-" % i + "n" * 48 for i in range(200)]
    assert set(pipelined(mal, "group", [pb.GroupRequest(op="create", group=g) for g in names])) == {pb.OK}
    for g in names:
        mal.publish("im/g/" + g, ("last words of %s " % g).encode() * 4, qos=0, wait=False)
    assert mal.barrier()
    page = mal.request("conversations", pb.ConversationsRequest(limit=200), response_type=pb.ConversationsResponse)
    mal.close()
    assert page.status == pb.OK and len(page.conversations) == 200
    page_bytes = len(page.SerializeToString())

    probe = DmProbe(b)
    watch = Client(b, "watch").connect()
    assert watch.subscribe("im/e/u/watch", qos=0) == [0]
    probe.once()
    base = rss_kib(b.proc.pid)

    total = 4000
    s = raw_client(b.port, "mallory-flood", "mallory")
    flood = publish_packet("$CONTROL/im/v1/conversations", pb.ConversationsRequest(limit=200).SerializeToString())
    # After the flood, on the same connection: a typing signal to watch.
    # The broker handles a connection's packets in order, so when watch
    # gets it, the broker has seen all 4,000 requests.
    marker = publish_packet("$CONTROL/im/v1/typing", pb.TypingRequest(timeline="u/watch").SerializeToString())
    pending = flood * total + marker

    def send():
        nonlocal pending
        while pending:
            n = s.send(pending[:65536])
            pending = pending[n:]

    seen = []
    watch.c.on_message = lambda c, u, m: seen.append(m)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    deadline = time.monotonic() + WAIT
    while not seen and time.monotonic() < deadline:
        probe.once()
    assert seen, "the broker did not get through the flood within %s s" % WAIT
    t.join(WAIT)
    probe.once()        # after every page the flood got queued: the worker is through them
    grown = (rss_kib(b.proc.pid) - base) / 1024.0
    print("conversations flood: %d requests for %d-byte pages, never read: broker RSS +%.1f MiB; %s"
          % (total, page_bytes, grown, probe.summary()))
    # Before: every page was queued for her: +126 MiB here, +171 MiB in the issue.
    # Under ASan freed memory stays resident in its quarantine (256 MiB by
    # default): the bound is asserted in the plain pass, the ASan pass
    # checks what it is for (no error, no leak) and the latency.
    if not SANITIZE:
        assert grown < 48, "broker RSS grew by %.1f MiB for a client that reads nothing" % grown
    assert max(probe.delays) < 5.0, probe.summary()
    s.close()
    watch.close()
    probe.close()


def test_refusals_to_a_client_that_never_reads_are_bounded(make_broker):
    """Refusals cost little each, but a client can ask for them faster than
    it reads: 200,000 malformed requests at QoS 0, never read. Before,
    every one was answered and held for her. Now the answers given at once
    have a budget too (reply_bytes_rate): beyond it her requests are
    dropped, said once an episode in the log, and the broker grows by
    little."""
    b = make_broker({"nonim_acl": "allow"})
    probe = DmProbe(b)
    watch = Client(b, "watch").connect()
    assert watch.subscribe("im/e/u/watch", qos=0) == [0]
    seen = []
    watch.c.on_message = lambda c, u, m: seen.append(m)
    probe.once()
    base = rss_kib(b.proc.pid)
    total = 200000
    s = raw_client(b.port, "mallory-refused", "mallory")
    s.sendall(publish_packet("$CONTROL/im/v1/conversations", b"\xff") * total
              + publish_packet("$CONTROL/im/v1/typing", pb.TypingRequest(timeline="u/watch").SerializeToString()))
    assert wait_until(lambda: seen), "the broker did not get through the flood"
    probe.once()
    grown = (rss_kib(b.proc.pid) - base) / 1024.0
    print("refusal flood: %d malformed requests, never read: broker RSS +%.1f MiB; %s"
          % (total, grown, probe.summary()))
    log = b.read_log()
    # Said once per episode, not per dropped request: on a slow broker (the
    # ASan pass) the flood is read slower than her budget refills, and it
    # can come in two or three episodes; 200,000 requests must not give
    # more than a handful of lines.
    said = log.count('client "mallory-refused" asks faster than it reads its replies')
    assert 1 <= said <= 5, said
    if not SANITIZE:   # see above: ASan's quarantine
        assert grown < 40, "broker RSS grew by %.1f MiB for refusals nobody reads" % grown
    s.close()
    watch.close()
    probe.close()


def test_request_bound_per_client_and_user_answers_too_many(make_broker):
    """Each kind of request with a reply is bounded: a client with too many
    requests waiting gets TOO_MANY for the rest, naming the option; and the
    bound is per user too, across its client ids."""
    b = make_broker({"request_inflight": 2, "user_request_inflight": 3, "reply_bytes_rate": 0})
    alice = Client(b, "alice", v5=True).connect()
    assert alice.request("group", pb.GroupRequest(op="create", group="g1"), response_type=pb.GroupResponse).status == pb.OK
    cases = [("conversations", pb.ConversationsRequest(limit=10), pb.ConversationsResponse),
             ("reads", pb.ReadsRequest(timeline="g/g1"), pb.ReadsResponse),
             ("group", pb.GroupRequest(op="list"), pb.GroupResponse),
             ("unknown-op", None, pb.Response)]
    for op, msg, rtype in cases:
        payload = msg.SerializeToString() if msg is not None else b""
        for _ in range(30):
            alice.c.publish("$CONTROL/im/v1/" + op, payload, qos=0)
        statuses, reasons = [], set()
        for m in alice.get_n(30):
            r = rtype()
            r.ParseFromString(m.payload)
            statuses.append(r.status)
            if r.status == pb.TOO_MANY:
                reasons.add(r.reason)
        assert len(statuses) == 30, (op, statuses)
        assert pb.TOO_MANY in statuses and statuses.count(pb.TOO_MANY) < 30, (op, statuses)
        assert any("request_inflight" in why for why in reasons), (op, reasons)
    # Acks are not counted (one row of store work each; clients send one
    # per timeline at once): a burst of them is answered, none refused.
    for _ in range(30):
        alice.c.publish("$CONTROL/im/v1/ack", pb.Ack(timeline="u/alice", seq=0).SerializeToString(), qos=0)
    acks = []
    for m in alice.get_n(30):
        r = pb.AckResponse()
        r.ParseFromString(m.payload)
        acks.append(r.status)
    assert pb.TOO_MANY not in acks, acks
    alice.close()
    # Per user, over all its client ids: a broker with no per-client bound.
    # Two clients of bob each fire 30 requests back to back, interleaved;
    # a reply is counted off only when the broker thread publishes it, after
    # the pass that read the requests, so most of them find bob's 3 waiting.
    b2 = make_broker({"request_inflight": 0, "user_request_inflight": 3, "reply_bytes_rate": 0})
    bobs = [Client(b2, "bob", client_id="bob-%d" % i, v5=True).connect() for i in range(2)]
    req = pb.ConversationsRequest(limit=10).SerializeToString()
    for _ in range(30):
        for c in bobs:
            c.c.publish("$CONTROL/im/v1/conversations", req, qos=0)
    got = []
    for c in bobs:
        for m in c.get_n(30):
            r = pb.ConversationsResponse()
            r.ParseFromString(m.payload)
            got.append((r.status, r.reason))
    assert len(got) == 60
    statuses = [st for st, _ in got]
    assert statuses.count(pb.OK) >= 3, statuses
    assert any(st == pb.TOO_MANY and "user_request_inflight" in why for st, why in got), got
    assert not any("plugin_opt_request_inflight" in why for _, why in got), got
    # Answered requests no longer count: a fresh one goes through.
    r = bobs[0].request("conversations", pb.ConversationsRequest(limit=10), response_type=pb.ConversationsResponse)
    assert r.status == pb.OK
    for c in bobs:
        c.close()


def group(client, op, name, members=()):
    return client.request("group", pb.GroupRequest(op=op, group=name, members=list(members)),
                          response_type=pb.GroupResponse)


def test_membership_limits_refuse_the_whole_request(make_broker):
    """Nobody can be put in more than max_groups_per_user groups, nor create
    more than max_groups_created: a create or add that would pass a limit
    is refused as a whole, names the user, and changes nothing."""
    b = make_broker({"max_groups_created": 3, "max_groups_per_user": 4})
    alice = Client(b, "alice", v5=True).connect()
    dave = Client(b, "dave", v5=True).connect()
    for i in range(3):
        assert group(alice, "create", "a%d" % i, ["bob"]).status == pb.OK
    r = group(alice, "create", "a3", ["carol"])
    assert r.status == pb.FORBIDDEN and "alice" in r.reason and "max_groups_created" in r.reason, r
    assert group(alice, "info", "a3").status == pb.NOT_FOUND
    # bob is in 3 groups: one more is fine, then no more.
    assert group(dave, "create", "d0", ["bob"]).status == pb.OK
    r = group(dave, "create", "d1", ["carol", "bob"])
    assert r.status == pb.FORBIDDEN and "bob" in r.reason and "max_groups_per_user" in r.reason, r
    assert group(dave, "info", "d1").status == pb.NOT_FOUND          # nothing changed: not for carol either
    assert group(dave, "create", "d1", ["carol"]).status == pb.OK
    r = group(dave, "add", "d1", ["erin", "bob"])
    assert r.status == pb.FORBIDDEN and "bob" in r.reason, r
    assert sorted(group(dave, "info", "d1").members) == ["carol", "dave"]
    # Already a member: not counted again.
    assert group(dave, "add", "d0", ["bob", "erin"]).status == pb.OK
    # Leaving makes room.
    bob = Client(b, "bob", v5=True).connect()
    assert group(bob, "leave", "a0").status == pb.OK
    assert group(dave, "add", "d1", ["bob"]).status == pb.OK
    # The creator counts as a member too: bob is in a1, a2, d0 and d1.
    r = group(bob, "create", "b0")
    assert r.status == pb.FORBIDDEN and "bob" in r.reason and "max_groups_per_user" in r.reason, r
    assert group(bob, "info", "b0").status == pb.NOT_FOUND
    for c in (alice, bob, dave):
        c.close()


def test_queued_pages_of_one_user_do_not_hold_up_others(make_broker):
    """bob was put in 20,000 groups (the limit raised for the test). From
    ten client ids at once (ten each, under any per-client bound) he queues
    100 conversation pages. Before, each page took tens of ms on the store
    worker and carol's DM to dave waited behind all of them, seconds. Now
    at most user_request_inflight of his are waiting; the rest are refused
    at once."""
    b = make_broker({"max_groups_per_user": 0, "max_groups_created": 0, "batch_max": 256})
    n_groups, n_owners = 20000, 10
    owners = [Client(b, "owner%d" % i, v5=True).connect() for i in range(n_owners)]
    per = n_groups // n_owners
    done = []

    def make(i):
        reqs = [pb.GroupRequest(op="create", group="big-%d-%d" % (i, k), members=["bob"]) for k in range(per)]
        done.append(pipelined(owners[i], "group", reqs, window=8))

    t0 = time.monotonic()
    threads = [threading.Thread(target=make, args=(i,)) for i in range(n_owners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert len(done) == n_owners and all(set(d) == {pb.OK} for d in done)
    made = time.monotonic() - t0
    for c in owners:
        c.close()
    bobs = [Client(b, "bob", client_id="bob-%d" % i, v5=True).connect() for i in range(10)]
    t1 = time.monotonic()
    r = bobs[0].request("conversations", pb.ConversationsRequest(limit=200), response_type=pb.ConversationsResponse)
    one_page = time.monotonic() - t1
    assert r.status == pb.OK and len(r.conversations) == 200
    probe = DmProbe(b)
    probe.once()
    req = pb.ConversationsRequest(limit=200).SerializeToString()
    infos = [c.c.publish("$CONTROL/im/v1/conversations", req, qos=1) for c in bobs for _ in range(10)]
    # A request is acknowledged once the plugin handled it: all 100 are
    # queued or refused by now.
    assert wait_until(lambda: all(i.is_published() for i in infos))
    latency = probe.once()
    statuses, reasons = [], set()
    for c in bobs:
        for m in c.get_n(10):
            r = pb.ConversationsResponse()
            r.ParseFromString(m.payload)
            statuses.append(r.status)
            reasons.add(r.reason)
    print("20,000 groups made in %.1f s; one page %.3f s; with 100 pages of bob's queued, "
          "carol's DM to dave took %.3f s; %d of the 100 answered OK, %d TOO_MANY"
          % (made, one_page, latency, statuses.count(pb.OK), statuses.count(pb.TOO_MANY)))
    assert len(statuses) == 100
    # At most user_request_inflight (32) of them waiting at once; how many
    # more are answered OK depends on how fast pages go while the rest
    # arrive. Before: all 100 queued, none refused.
    assert pb.TOO_MANY in statuses and any("user_request_inflight" in why for why in reasons), reasons
    assert latency < 2.0, latency
    for c in bobs:
        c.close()
    probe.close()
