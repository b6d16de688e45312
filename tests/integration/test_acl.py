"""Who may publish, subscribe to and read what: inboxes, wildcards, names,
sizes, wills, retained messages, non-IM topics, $CONTROL and options."""
import os

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from imtest import Client, decode_frame, inbox, log_offset, pb, sync_all, wait_until

DENIED_V311 = 0x80
DENIED_V5 = 0x87


def assert_empty_inbox(broker, user):
    frames, batch = inbox(broker, user)
    assert frames == [] and batch.head_seq == 0, [(h.seq, b) for h, b in frames]


def bodies(msgs):
    return [decode_frame(m.payload)[1] for m in msgs]


def try_publish(broker, user, topic, body, qos=1, v5=False, retain=False):
    """Publishes once from a fresh connection; True if acknowledged.

    Returns once the broker has processed the publish: it was acknowledged
    or the connection closed (QoS 1, 2), or a marker sent after it on the
    same connection was answered (QoS 0). So whatever the publish sends to
    subscribers is on its way before a receiver's own marker (none()).

    Fresh each time: with "max_queued_messages 0", Debian's 2.0.11
    (CVE-2023-28366 patch) drops the connection after any denied PUBLISH,
    so a second publish on the same connection would prove nothing.
    """
    c = Client(broker, user, v5=v5)
    c.c.reconnect_delay_set(0.05, 0.05)      # close() waits out paho's reconnect delay
    c.connect()
    info = c.c.publish(topic, body, qos=qos, retain=retain)
    if qos:
        c.wait_published(info)
    else:
        c.barrier()
    c.close()
    return info.is_published()


def wait_refused(broker, since, receiver, *why):
    """Waits until the broker logs (after offset since) one of the refusals
    `why`, or something reaches receiver: a will is sent by the broker on
    its own schedule, so this is the sign that it was processed."""
    assert wait_until(lambda: any(w in broker.read_log()[since:] for w in why) or not receiver.msgs.empty(),
                      interval=0.05), "the broker never logged any of %r" % (why,)


# ---------------------------------------------------------------- inboxes

@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
def test_eve_cannot_subscribe_to_bobs_inbox(broker, v5):
    eve = Client(broker, "eve", v5=v5).connect()
    assert eve.subscribe("im/u/bob") == [DENIED_V5 if v5 else DENIED_V311]
    try_publish(broker, "alice", "im/u/bob", b"for bob only")
    assert eve.none()
    assert 'im: denied subscribe on "im/u/bob"' in broker.read_log()
    eve.close()


def test_wildcards_never_leak_bobs_messages(broker):
    bob = Client(broker, "bob").connect()
    assert bob.subscribe("im/u/bob") == [1]
    bob2 = Client(broker, "bob", v5=True).connect()          # bob's second device, by wildcard
    assert bob2.subscribe("im/#") == [1]
    eves = {}
    for f in ("im/#", "#", "im/u/+", "+/u/bob"):
        for v5 in (False, True):
            e = Client(broker, "eve", v5=v5).connect()
            assert e.subscribe(f) == [1], f           # the filter itself is allowed
            eves[(f, v5)] = e
    alice = Client(broker, "alice").connect()
    for n in range(3):
        alice.publish("im/u/bob", b"secret %d" % n, qos=n % 2 + 1)
    assert bodies(bob.get_n(3)) == [b"secret 0", b"secret 1", b"secret 2"]
    assert bodies(bob2.get_n(3)) == [b"secret 0", b"secret 1", b"secret 2"]
    for key, e in eves.items():
        assert e.none(), "leak to eve via %r" % (key,)
    for c in [bob, bob2, alice] + list(eves.values()):
        c.close()


def test_without_username_no_publish_no_subscribe(broker):
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob")
    for v5 in (False, True):
        anon = Client(broker, None, v5=v5).connect()
        assert anon.subscribe("im/u/bob") == [DENIED_V5 if v5 else DENIED_V311]
        anon.close()
        for qos in (0, 1, 2):
            try_publish(broker, None, "im/u/bob", b"anonymous q%d" % qos, qos=qos, v5=v5)
    assert bob.none()
    assert_empty_inbox(broker, "bob")
    assert "IM topics need a username" in broker.read_log()
    bob.close()


def test_retained_publish_refused(broker):
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob")
    for v5 in (False, True):
        for qos in (0, 1, 2):
            try_publish(broker, "alice", "im/u/bob", b"retained q%d" % qos, qos=qos, v5=v5, retain=True)
    assert bob.none()
    late = Client(broker, "bob", v5=True).connect()
    late.subscribe("im/u/bob")                      # a retained message would follow the SUBACK
    assert late.none(), "a retained message was kept on an IM topic"
    assert_empty_inbox(broker, "bob")
    assert "retained messages are refused" in broker.read_log()
    for c in (bob, late):
        c.close()


def _drop(client):
    """Closes the TCP connection without DISCONNECT: the broker sends the will."""
    client.c.loop_stop()
    client.c.socket().close()


def test_will_on_im_topic_refused(broker):
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob")
    w = Client(broker, "alice", client_id="alice-will")
    w.c.will_set("im/u/bob", b"my will", qos=1)
    w.connect()
    since = log_offset(broker)
    _drop(w)
    wait_refused(broker, since, bob, "wills bypass sequencing")
    assert bob.none()
    assert_empty_inbox(broker, "bob")
    assert "wills bypass sequencing" in broker.read_log()
    bob.close()


def test_delayed_will_on_im_topic_refused(broker):
    """A delayed will passes no publish-time check the plugin sees; it is
    refused at delivery because it is not a frame."""
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob")
    w = Client(broker, "alice", client_id="alice-dwill", v5=True, clean=False)
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = 1
    w.c.will_set("im/u/bob", b"my delayed will", qos=1, properties=wp)
    w.connect()
    since = log_offset(broker)
    _drop(w)
    # Sent a second after the drop; refused when checked for bob (or earlier).
    wait_refused(broker, since, bob, "not sent by the plugin", "wills bypass sequencing")
    got = bob.drain()
    assert got == [], "delivered: %r" % [m.payload for m in got]
    assert_empty_inbox(broker, "bob")
    bob.close()


def test_will_on_session_takeover_refused(broker):
    """Sent before any disconnect event: refused at delivery (not a frame)."""
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob")
    w = Client(broker, "alice", client_id="alice-takeover")
    w.c.will_set("im/u/bob", b"will by takeover", qos=1)
    w.connect()
    w.c.loop_stop()                      # no reconnect fight with the newcomer
    since = log_offset(broker)
    newcomer = Client(broker, "alice", client_id="alice-takeover").connect()
    wait_refused(broker, since, bob, "not sent by the plugin")
    got = bob.drain()
    assert got == [], "delivered: %r" % [m.payload for m in got]
    assert_empty_inbox(broker, "bob")
    assert "not sent by the plugin" in broker.read_log()
    newcomer.close()
    bob.close()


# ---------------------------------------------------------------- names and sizes

def test_invalid_names_refused(broker):
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob")
    bob.subscribe("im/#")
    eve = Client(broker, "eve").connect()
    eve.subscribe("#")
    alice_copy = Client(broker, "alice").connect()
    alice_copy.subscribe("im/u/alice")
    # im/g/team: no such group, so alice is no member of it.
    bad = ["im/u/" + "a" * 65, "im/x/bob", "im/u/bob/extra", "im/g/team", "im/u/", "im/u",
           "im", "im/u/bob/", "im/u/$bob", "im/U/bob"]
    for t in bad:
        for qos in (0, 1):
            try_publish(broker, "alice", t, b"q%d to %s" % (qos, t.encode()), qos=qos)
    try_publish(broker, "alice", "im/g/team", b"v5 to a group", qos=1, v5=True)
    assert bob.none() and eve.none() and alice_copy.none()
    assert_empty_inbox(broker, "bob")
    assert_empty_inbox(broker, "alice")
    log = broker.read_log()
    for t in bad:
        assert 'im: denied publish on "%s"' % t in log, t
    # The longest valid name (64 bytes) is accepted.
    long_name = "a" * 64
    rcv = Client(broker, long_name).connect()
    assert rcv.subscribe("im/u/" + long_name) == [1]
    assert try_publish(broker, "alice", "im/u/" + long_name, b"edge")
    h, body = decode_frame(rcv.get().payload)
    assert (h.timeline, h.seq, body) == ("u/" + long_name, 1, b"edge")
    for c in (bob, eve, alice_copy, rcv):
        c.close()


def test_username_that_is_not_a_valid_name(broker):
    odd = Client(broker, "a/b").connect()
    assert odd.subscribe("im/u/a/b") == [DENIED_V311]
    odd.close()
    try_publish(broker, "a/b", "im/u/bob", b"from a/b")
    assert_empty_inbox(broker, "bob")
    assert "the username is not a valid IM name" in broker.read_log()


def test_max_body(make_broker):
    b = make_broker({"nonim_acl": "allow", "max_body": 1024})
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob")
    try_publish(b, "carol", "im/u/bob", b"x" * 2000, v5=True)
    try_publish(b, "alice", "im/u/bob", b"y" * 2000)
    try_publish(b, "alice", "im/u/bob", b"z" * 1025, qos=0)
    assert try_publish(b, "alice", "im/u/bob", b"a" * 1000)
    assert try_publish(b, "alice", "im/u/bob", b"b" * 1024, v5=True)
    assert bodies(bob.get_n(2)) == [b"a" * 1000, b"b" * 1024]
    assert bob.none()
    frames, batch = inbox(b, "bob")
    assert [(h.seq, len(body)) for h, body in frames] == [(1, 1000), (2, 1024)]
    assert "body larger than plugin_opt_max_body" in b.read_log()
    bob.close()


# ---------------------------------------------------------------- non-IM topics

def _plain_delivered(b):
    sub = Client(b, "bob").connect()
    granted = sub.subscribe("chat/room")
    try_publish(b, "alice", "chat/room", b"plain")
    got = [m.payload for m in sub.drain()]
    sub.close()
    return granted, got == [b"plain"]


def _im_works(b):
    bob = Client(b, "bob").connect()
    assert bob.subscribe("im/u/bob") == [1]
    assert try_publish(b, "alice", "im/u/bob", b"im works")
    h, body = decode_frame(bob.get().payload)
    bob.close()
    return body == b"im works"


def test_nonim_default_defer_denies_plain_topics(make_broker):
    b = make_broker()
    granted, delivered = _plain_delivered(b)
    assert not delivered
    assert granted == [DENIED_V311]
    assert "nonim_acl defer" in b.read_log()
    assert _im_works(b)


def test_nonim_allow_delivers_plain_topics(make_broker):
    b = make_broker({"nonim_acl": "allow"})
    granted, delivered = _plain_delivered(b)
    assert granted == [1] and delivered
    assert "ALLOWED" in b.read_log()
    assert _im_works(b)


def test_acl_file_decides_non_im_topics(make_broker):
    b = make_broker({"nonim_acl": "allow"}, start=False)
    acl = os.path.join(b.dir, "acl")
    with open(acl, "w") as f:
        f.write("user alice\ntopic readwrite chat/ok\n"
                "user bob\ntopic readwrite chat/ok\ntopic read chat/room\n"
                "user carol\ntopic read im/#\ntopic read #\n")
    b.extra_conf = "acl_file %s" % acl
    b.start()
    sub = Client(b, "bob").connect()
    for f in ("chat/ok", "chat/room", "chat/other"):
        sub.subscribe(f)
    assert try_publish(b, "alice", "chat/ok", b"granted")
    try_publish(b, "alice", "chat/room", b"alice may not write here")
    try_publish(b, "alice", "chat/other", b"nobody may")
    m = sub.get()
    assert (m.topic, m.payload) == ("chat/ok", b"granted")
    assert sub.none(), "acl_file did not decide: %r" % sub.get().payload
    # carol's "topic read im/#" grants nothing on IM topics: the plugin
    # decides those before acl_file is asked.
    snoop = Client(b, "carol").connect()
    snoop.subscribe("im/#")
    snoop.subscribe("im/u/bob")
    assert _im_works(b)
    assert snoop.none()
    assert "nonim_acl allow" in b.read_log()
    sub.close()
    snoop.close()


# ---------------------------------------------------------------- $CONTROL and the sink

def _bad_requests_answered(b):
    for v5 in (False, True):
        for qos in (0, 1):
            c = Client(b, "alice", v5=v5).connect()
            c.c.publish("$CONTROL/im/v1/bogus", b"", qos=qos)
            m = c.get()
            assert m.topic == "$CONTROL/im/v1/bogus/response"
            r = pb.Response()
            r.ParseFromString(m.payload)
            assert r.status == pb.NOT_FOUND and "unknown op" in r.reason
            c.close()
            anon = Client(b, None, v5=v5).connect()
            r = anon.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.Response)
            assert r.status == pb.UNAUTHENTICATED
            anon.close()
    anon = Client(b, None).connect()
    r = anon.request("ack", pb.Ack(timeline="u/bob", seq=1), response_type=pb.Response)
    assert r.status == pb.UNAUTHENTICATED
    anon.close()


@pytest.mark.parametrize("max_queued", ["0", "1000"])
def test_control_unknown_op_and_unauthenticated(make_broker, max_queued):
    """Bad requests are answered, also where a denied PUBLISH would cost the
    connection (max_queued_messages 0 with Debian's 2.0.11 CVE-2023-28366
    patch: every denied PUBLISH, any QoS, v3.1.1 and v5, closes it)."""
    b = make_broker({"nonim_acl": "allow"}, extra_conf="max_queued_messages " + max_queued)
    _bad_requests_answered(b)


def test_control_subscriptions_limited_to_responses(broker):
    eve = Client(broker, "eve", v5=True).connect()
    for f in ("$CONTROL/im/v1/#", "$CONTROL/im/v1/+", "$CONTROL/im/v1/sync", "$CONTROL/im/v1/sync/#",
              "$CONTROL/im/v1/+/#", "$CONTROL/im/v1/sync/response/x"):
        assert eve.subscribe(f) == [DENIED_V5], f
    assert eve.subscribe("$CONTROL/im/v1/sync/response") == [1]
    assert eve.subscribe("$CONTROL/im/v1/+/response") == [1]
    # A broad $CONTROL filter is not the plugin's to refuse (nonim allow),
    # but replies go to the requester only: eve sees none of bob's.
    eve.subscribe("$CONTROL/#")
    assert try_publish(broker, "alice", "im/u/bob", b"hi bob")
    frames, batch = inbox(broker, "bob")
    assert [b for _, b in frames] == [b"hi bob"]
    assert eve.none()
    eve.close()


def test_sync_of_someone_elses_inbox_forbidden(broker):
    assert try_publish(broker, "alice", "im/u/bob", b"private")
    eve = Client(broker, "eve", v5=True).connect()
    b = eve.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
    assert b.status == pb.FORBIDDEN and len(b.frames) == 0
    # The v5 user-property form is checked the same way.
    b = eve.request("sync", user_props={"timeline": "u/bob", "after": "0"}, response_type=pb.SyncBatch)
    assert b.status == pb.FORBIDDEN and len(b.frames) == 0
    r = eve.request("ack", pb.Ack(timeline="u/bob", seq=1), response_type=pb.AckResponse)
    assert r.status == pb.FORBIDDEN
    eve.close()


def test_sink_topic_cannot_be_subscribed(broker):
    for v5 in (False, True):
        eve = Client(broker, "eve", v5=v5).connect()
        for f in ("$IMD", "$IMD/#", "$IMD/+"):
            assert eve.subscribe(f) == [DENIED_V5 if v5 else DENIED_V311], f
        assert try_publish(broker, "alice", "im/u/bob", b"goes to the sink", v5=v5)
        assert eve.none()
        eve.close()


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("opt,value", [("bogus", "1"), ("synchronous", "sometimes"), ("max_body", "-1"),
                                       ("max_body", "12abc"), ("nonim_acl", "maybe"), ("prefix", "$im"),
                                       ("nats_servers", "nats://127.0.0.1:4222")])  # cluster mode needs PostgreSQL
def test_bad_option_stops_broker(make_broker, opt, value):
    b = make_broker({opt: value}, start=False)
    rc = b.start(expect_fail=True)
    assert rc != 0
    log = b.read_log()
    assert "plugin_opt_%s" % opt in log, log


def test_crafted_frame_will_refused(broker):
    """A will whose body is made up as a frame of bob's inbox, with the next
    seq, sent at a session takeover: refused at delivery (the seq was never
    handed out), so it cannot take the place of bob's real next message."""
    header = pb.Header(timeline="u/bob", seq=1, sender="alice", ts_ms=1, to="u/bob").SerializeToString()
    fake = b"IM\x01" + len(header).to_bytes(2, "big") + header + b"forged"
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob")
    w = Client(broker, "mallory", client_id="mallory-takeover")
    w.c.will_set("im/u/bob", fake, qos=1)
    w.connect()
    w.c.loop_stop()
    since = log_offset(broker)
    newcomer = Client(broker, "mallory", client_id="mallory-takeover").connect()
    wait_refused(broker, since, bob, "not sent by the plugin")
    # The real seq 1 still arrives as seq 1, and first: the will was
    # handled before alice's publish, so it would have come before it.
    alice = Client(broker, "alice").connect()
    alice.publish("im/u/bob", b"real", qos=1)
    h, body = decode_frame(bob.get().payload)
    assert (h.seq, body) == (1, b"real"), "delivered first: %r" % body
    for c in (alice, newcomer, bob):
        c.close()
