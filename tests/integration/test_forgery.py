"""Only the plugin speaks on IM topics and on its response topics (issue #11,
findings 1, 2, 4, 11, 12). A will or a retained message reaches subscribers
without passing the publish path; each test here would deliver a forgery if
the plugin trusted anything it did not send itself.

"Nothing forged arrives" is shown with a marker, never an idle wait: the
forgery is given to the broker first, then something genuine is sent that
reaches the same client after anything the forgery would have produced (one
FIFO per client); the first thing the client gets must be the genuine one.
"""
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import imtest
from imtest import Client, decode_frame, pb, sync_all


def frame(tl, seq, sender, body, tag=None):
    h = pb.Header(timeline=tl, seq=seq, sender=sender, ts_ms=int(time.time() * 1000), to=tl,
                  body_len=len(body))
    if tag is not None:
        h.auth_tag = tag
    hb = h.SerializeToString()
    return b"IM\x01" + len(hb).to_bytes(2, "big") + hb + body


def wait_log(broker, text, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in broker.read_log():
            return True
        time.sleep(0.05)
    return False


def drop(client):
    """Closes the TCP connection without DISCONNECT: the broker sends the will."""
    client.c.loop_stop()
    client.c.socket().close()


def will_client(b, user, cid, topic, payload, v5, retain=False, delay=0):
    w = Client(b, user, client_id=cid, v5=v5, clean=not delay)
    props = None
    if delay:
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = delay
    w.c.will_set(topic, payload, qos=1, retain=retain, properties=props)
    return w.connect()


def setup_timeline(b, where):
    """A timeline with a seq already handed out (the forgery names seq 1)."""
    alice = Client(b, "alice", v5=True).connect()
    if where == "group":
        r = alice.request("group", pb.GroupRequest(op="create", group="team", members=["bob", "mallory"]),
                          response_type=pb.GroupResponse)
        assert r.status == pb.OK
        return alice, "im/g/team", "g/team"
    alice.publish("im/u/bob", b"genuine 1", qos=1)
    return alice, "im/u/bob", "u/bob"


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
@pytest.mark.parametrize("where", ["inbox", "group"])
@pytest.mark.parametrize("how", ["takeover", "will-delay"])
@pytest.mark.parametrize("payload", ["frame", "raw"])
def test_will_with_a_forged_frame_never_reaches_a_subscriber(make_broker, v5, where, how, payload):
    if how == "will-delay" and not v5:
        pytest.skip("Will Delay Interval is MQTT v5")
    b = make_broker({"payload": payload})
    alice, topic, tl = setup_timeline(b, where)
    bob = Client(b, "bob").connect()
    bob.subscribe(topic)
    forged = frame(tl, 1, "alice", b"FORGED by mallory", tag=0x1122334455667788)
    if how == "takeover":
        w = will_client(b, "mallory", "mallory-1", topic, forged, v5)
        w.c.loop_stop()                              # no reconnect fight with the newcomer
        newcomer = Client(b, "mallory", client_id="mallory-1", v5=v5).connect()   # the will goes now
    else:
        w = will_client(b, "mallory", "mallory-1", topic, forged, v5, delay=1)
        drop(w)
        newcomer = None
    assert wait_log(b, "not sent by the plugin"), "the forged will was never refused at delivery"
    alice.publish(topic, b"genuine after", qos=1)
    # Everything bob gets up to the marker is genuine (the setup's own
    # message may arrive first: it is delivered once it is stored).
    while True:
        m = bob.get(timeout=60)
        assert b"FORGED" not in m.payload
        if payload == "frame":
            h, body = decode_frame(m.payload)
            assert (h.timeline, h.sender) == (tl, "alice")
        else:
            body = m.payload
        if body == b"genuine after":
            break
    for c in (alice, bob, newcomer):
        if c:
            c.close()


@pytest.mark.parametrize("retain", [False, True], ids=["plain", "retained"])
@pytest.mark.parametrize("how", ["drop", "takeover"])
def test_will_on_a_response_topic_is_refused(make_broker, retain, how):
    """mallory leaves a will on $CONTROL/im/v1/sync/response holding a
    SyncBatch with a forged frame; bob (and the README's mosquitto_rr) reads
    that topic."""
    b = make_broker()
    bob = Client(b, "bob", v5=True).connect()
    assert bob.subscribe("$CONTROL/im/v1/sync/response") == [1]
    fake = pb.SyncBatch(status=pb.OK, timeline="u/bob", head_seq=1, has_more=False,
                        frames=[frame("u/bob", 1, "alice", b"FORGED")]).SerializeToString()
    try:
        w = will_client(b, "mallory", "mallory-2", "$CONTROL/im/v1/sync/response", fake, True, retain=retain)
    except AssertionError:
        w = None                # 2.1 refuses a CONNECT whose will is on $CONTROL/ by itself
    if w and how == "drop":
        drop(w)
    elif w:
        w.c.loop_stop()
        Client(b, "mallory", client_id="mallory-2", v5=True).connect().close()
    if w:
        assert wait_log(b, 'denied publish on "$CONTROL/im/v1/sync/response"')
    # The first thing on that topic is the genuine (empty) answer.
    r = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
    assert r.status == pb.OK and len(r.frames) == 0 and r.head_seq == 0
    # A later subscriber gets no retained forgery either.
    late = Client(b, "bob", v5=True).connect()
    late.subscribe("$CONTROL/im/v1/+/response")
    r = late.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
    assert r.status == pb.OK and len(r.frames) == 0
    assert late.stash == [] and bob.stash == []
    bob.close()
    late.close()


@pytest.mark.parametrize("topic", ["$CONTROL/im/v1/sync/response", "$CONTROL/im/v1/ack/x", "$CONTROL/im/v1/group/response"])
def test_nobody_publishes_below_an_op(make_broker, topic):
    b = make_broker()
    mallory = Client(b, "mallory", v5=True).connect()
    for retain in (False, True):
        info = mallory.c.publish(topic, b"forged", qos=1, retain=retain)
        info.wait_for_publish(timeout=30)
    assert wait_log(b, 'denied publish on "%s"' % topic)
    listener = Client(b, "bob", v5=True).connect()
    listener.subscribe("$CONTROL/im/v1/+/response")
    r = listener.request("ack", pb.Ack(timeline="u/bob", seq=0), response_type=pb.AckResponse)
    assert r.status == pb.OK and listener.stash == []      # no retained forgery came first
    mallory.close()
    listener.close()


def test_presence_will_is_refused(make_broker):
    b = make_broker({"presence": "all"})
    w = will_client(b, "mallory", "mallory-3", "im/p/bob", b'{"state":"online","devices":9}', True, retain=True)
    drop(w)
    assert wait_log(b, 'denied publish on "im/p/bob"')
    carol = Client(b, "carol").connect()
    carol.subscribe("im/p/bob")
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob")                      # bob comes online: the genuine notice
    import json
    first = json.loads(carol.get(timeout=30).payload)
    assert first["state"] == "online" and first["devices"] == 1
    carol.close()
    bob.close()


@pytest.mark.parametrize("payload", ["frame", "raw"])
def test_persistent_session_queue_still_delivered(make_broker, payload):
    """The broker checks queued messages again when a session resumes; the
    plugin's own frames (and raw deliveries) still pass."""
    b = make_broker({"payload": payload})
    bob = Client(b, "bob", client_id="bob-persist", clean=False).connect()
    bob.subscribe("im/u/bob", qos=1)
    bob.close()
    alice = Client(b, "alice").connect()
    for i in range(3):
        alice.publish("im/u/bob", b"queued %d" % i, qos=1)
    # The third is stored and published before bob returns: a sync of alice's
    # own copy says so (same worker, same order).
    frames, _ = sync_all(alice, "u/alice")
    assert len(frames) == 3
    bob = Client(b, "bob", client_id="bob-persist", clean=False).connect()
    got = [m.payload for m in bob.get_n(3, timeout=60)]
    if payload == "frame":
        got = [decode_frame(p)[1] for p in got]
    assert got == [b"queued 0", b"queued 1", b"queued 2"]
    alice.close()
    bob.close()


def test_client_id_guard_keeps_a_client_id_with_its_user(make_broker):
    """With token login, mallory cannot connect with bob's client id: she
    would kick bob and destroy his queued messages (finding 4)."""
    from test_auth import SECRET, token
    b = make_broker(start=False)
    b.opts["auth_jwt_secret_file"] = b.put_file("jwt.key", SECRET)
    b.start()
    bob = Client(b, "bob", client_id="bob-phone", clean=False, password=token("bob")).connect()
    bob.subscribe("im/u/bob")
    mallory = Client(b, "mallory", client_id="bob-phone", clean=False, password=token("mallory"))
    mallory.c.connect("127.0.0.1", b.port)
    mallory.c.loop_start()
    assert mallory.connected.wait(30)
    assert mallory.rc != 0, "mallory took bob's client id"
    assert wait_log(b, "belongs to another user")
    alice = Client(b, "alice", password=token("alice")).connect()
    alice.publish("im/u/bob", b"still yours", qos=1)
    assert decode_frame(bob.get(timeout=30).payload)[1] == b"still yours"
    assert not bob.disconnected.is_set()
    # bob himself may come back on it.
    bob.close()
    bob = Client(b, "bob", client_id="bob-phone", clean=False, password=token("bob")).connect()
    assert bob.rc == 0
    for c in (bob, mallory, alice):
        c.close()


def test_client_id_guard_off_allows_takeover(make_broker):
    from test_auth import SECRET, token
    b = make_broker({"client_id_guard": "off"}, start=False)
    b.opts["auth_jwt_secret_file"] = b.put_file("jwt.key", SECRET)
    b.start()
    bob = Client(b, "bob", client_id="bob-phone", password=token("bob")).connect()
    bob.subscribe("im/u/bob")
    mallory = Client(b, "mallory", client_id="bob-phone", password=token("mallory")).connect()
    assert mallory.rc == 0
    assert bob.disconnected.wait(30)
    bob.c.loop_stop()
    mallory.close()


def test_another_plugin_allowing_first_does_not_bypass_names(make_broker):
    """A plugin before ours that allows everything: the publish path still
    refuses a username that is not a valid name, which would otherwise cut
    "u/<name>" short and put the sender's copy in another inbox (finding 11)."""
    long_name = "a" * 64 + "x"
    b = make_broker(pre_conf="plugin %s" % imtest.os.environ["IM_ALLOW_ALL"])
    victim = Client(b, "a" * 64).connect()
    victim.subscribe("im/u/" + "a" * 64)
    m = Client(b, long_name, v5=True).connect()
    info = m.c.publish("im/u/bob", b"from a long name", qos=1)
    info.wait_for_publish(timeout=30)
    alice = Client(b, "alice").connect()
    alice.publish("im/u/" + "a" * 64, b"marker", qos=1)
    h, body = decode_frame(victim.get(timeout=30).payload)
    assert body == b"marker" and h.sender == "alice"       # not the long name's copy
    frames, _ = sync_all(victim, "u/" + "a" * 64)
    assert [b for _, b in frames] == [b"marker"]
    for c in (victim, m, alice):
        c.close()


def test_a_cmid_names_one_message_wherever_it_is_resent(make_broker):
    """Dedup is by (sender, cmid): the same cmid to another recipient is a
    repeat of the first message, and the Receipt names the timeline that
    holds it (finding 12)."""
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    carol = Client(b, "carol").connect()
    carol.subscribe("im/u/carol")

    def send(to, body):
        p = Properties(PacketTypes.PUBLISH)
        p.UserProperty = [("im-cmid", "c-1")]
        p.ResponseTopic = "receipts/alice"
        alice.c.publish("im/u/" + to, body, qos=1, properties=p).wait_for_publish(timeout=30)
        while True:
            m = alice.get(timeout=60)
            if m.topic == "receipts/alice":
                r = pb.Receipt()
                r.ParseFromString(m.payload)
                return r

    r1 = send("bob", b"to bob")
    assert (r1.status, r1.timeline, r1.seq, r1.duplicate) == (pb.OK, "u/bob", 1, False)
    r2 = send("carol", b"to carol, same cmid")
    assert (r2.status, r2.timeline, r2.seq, r2.duplicate) == (pb.OK, "u/bob", 1, True)
    assert r2.store_id == r1.store_id != 0
    alice.publish("im/u/carol", b"marker", qos=1)
    assert decode_frame(carol.get(timeout=30).payload)[1] == b"marker"
    alice.close()
    carol.close()
