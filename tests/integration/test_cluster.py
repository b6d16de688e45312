"""Cluster mode (issue #13): three brokers on one PostgreSQL (a primary and a
synchronous standby) and a three-node NATS cluster, all started here.

Receivers in these tests are plain subscribers that never sync: what they
get live is exactly what the brokers delivered, so "in order, once" is
checked on live delivery itself, repairs included."""
import os
import queue
import signal
import threading
import uuid

import pytest

from cluster_env import NatsCluster, NatsTap, PgPair, missing
from imtest import WAIT, Client, decode_frame, pb, sync_all, wait_log, wait_until

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


@pytest.fixture(scope="module")
def env():
    pg = PgPair(standby=True).start()
    nats = NatsCluster(3).start()
    yield pg, nats
    nats.stop()
    pg.stop()


def opts(env, node, **extra):
    pg, nats = env
    o = {"store": "postgresql", "pg_conninfo": pg.uri, "node_id": node, "nats_servers": nats.servers,
         "sync_max_frames": 100}
    o.update(extra)
    return o


def three(make_broker, env, tag):
    return [make_broker(opts(env, "%s-%s" % (tag, n))) for n in "abc"]


def names(*base):
    """User and group names of their own for each test (the database is shared)."""
    s = uuid.uuid4().hex[:6]
    return [b + s for b in base]


def frames(client, topic, n):
    """The next n frames on topic (others stay), decoded."""
    out, others = [], []
    while len(out) < n:
        try:
            m = client.get()
        except queue.Empty:
            seqs = [decode_frame(m.payload)[0].seq for m in out]
            raise AssertionError("%s: %d of %d frames on %s; seqs %s" % (client.c._client_id.decode(), len(out), n, topic,
                                                                   seqs[:5] + ["..."] + seqs[-5:]))
        (out if m.topic == topic else others).append(m)
    client.back.extend(others)
    return [decode_frame(m.payload) for m in out]


def subscribe_member(client, topic):
    """Subscribes once this broker learnt the membership (it travels over NATS)."""
    granted = []
    assert wait_until(lambda: granted.append(client.subscribe(topic)[0]) or granted[-1] < 128), \
        "never allowed to subscribe to %s" % topic


def publish_all(client, topic, bodies, tag):
    """Publishes every body with its own cmid at QoS 1; returns after all are acknowledged."""
    infos = [client.publish(topic, b, cmid="%s-%d" % (tag, i), wait=False) for i, b in enumerate(bodies)]
    for info in infos:
        assert client.wait_published(info), "not acknowledged"


def test_dm_reaches_every_device_on_other_brokers_in_order_once(make_broker, env):
    a, b, c = three(make_broker, env, "dm")
    alice, bob = names("alice", "bob")
    phone = Client(b, bob, client_id=bob + "-phone", v5=True).connect()
    laptop = Client(c, bob, client_id=bob + "-laptop", v5=True).connect()
    mirror = Client(c, alice, client_id=alice + "-tablet", v5=True).connect()
    for dev, me in ((phone, bob), (laptop, bob), (mirror, alice)):
        dev.subscribe("im/u/" + me)
    sender = Client(a, alice, client_id=alice + "-pc", v5=True).connect()
    sender.c.max_inflight_messages_set(50)
    bodies = [b"m%d" % i for i in range(300)]
    publish_all(sender, "im/u/" + bob, bodies, alice)
    for dev in (phone, laptop):
        got = frames(dev, "im/u/" + bob, len(bodies))
        assert [h.seq for h, _ in got] == list(range(1, len(bodies) + 1))
        assert [body for _, body in got] == bodies
        assert all(h.sender == alice for h, _ in got)
        assert dev.none(), "a frame came twice"
    # Her copies reach her other device on a third broker too.
    copies = frames(mirror, "im/u/" + alice, len(bodies))
    assert [body for _, body in copies] == bodies and [h.to for h, _ in copies] == ["u/" + bob] * len(bodies)
    for cl in (phone, laptop, mirror, sender):
        cl.close()


def test_group_members_on_three_brokers_see_one_order(make_broker, env):
    brokers = three(make_broker, env, "grp")
    users = names("carol", "dave", "erin")
    group = names("team")[0]
    clients = [Client(br, u, client_id=u, v5=True).connect() for br, u in zip(brokers, users)]
    r = clients[0].request("group", pb.GroupRequest(op="create", group=group, members=users[1:]),
                           response_type=pb.GroupResponse)
    assert r.status == pb.OK, r.reason
    for cl in clients:
        subscribe_member(cl, "im/g/" + group)
    per = 60
    threads = [threading.Thread(target=publish_all, args=(cl, "im/g/" + group, [b"%s:%d" % (u.encode(), i) for i in range(per)], u))
               for cl, u in zip(clients, users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = [frames(cl, "im/g/" + group, 3 * per) for cl in clients]
    order = [body for _, body in seen[0]]
    assert sorted(order) == sorted(b"%s:%d" % (u.encode(), i) for u in users for i in range(per))
    for got in seen:
        assert [body for _, body in got] == order, "members saw different orders"
        seqs = [h.seq for h, _ in got]
        assert seqs == list(range(seqs[0], seqs[0] + 3 * per)), "gaps or repeats"
    # Each sender's own messages keep the order they were sent in.
    for u in users:
        mine = [b for b in order if b.startswith(u.encode() + b":")]
        assert mine == [b"%s:%d" % (u.encode(), i) for i in range(per)]
    # And sync from each broker returns the same history.
    histories = [sync_all(cl, "g/" + group)[0] for cl in clients]
    for h in histories:
        assert [(x.seq, x.sender, body) for x, body in h] == [(x.seq, x.sender, body) for x, body in histories[0]]
    assert [body for x, body in histories[0] if not x.flags & 1] == order
    for cl in clients:
        cl.close()


def receipt(client, topic, body, cmid):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "receipts/" + client.c._client_id.decode()
    p.UserProperty = [("im-cmid", cmid)]
    client.c.subscribe("receipts/#", 1)
    client.c.publish(topic, body, qos=1, properties=p).wait_for_publish(timeout=WAIT)
    while True:
        m = client.get()
        if m.topic.startswith("receipts/"):
            r = pb.Receipt()
            r.ParseFromString(m.payload)
            return r


def test_same_cmid_through_another_broker_is_stored_once(make_broker, env):
    a, b, _ = three(make_broker, env, "cmid")
    alice, bob = names("alice", "bob")
    first = Client(a, alice, client_id=alice + "-1", v5=True).connect()
    again = Client(b, alice, client_id=alice + "-2", v5=True).connect()
    r1 = receipt(first, "im/u/" + bob, b"once", "the-cmid")
    r2 = receipt(again, "im/u/" + bob, b"once", "the-cmid")
    assert r1.status == pb.OK and not r1.duplicate
    assert (r2.status, r2.duplicate, r2.seq, r2.timeline) == (pb.OK, True, r1.seq, r1.timeline)
    reader = Client(b, bob, client_id=bob, v5=True).connect()
    got, _ = sync_all(reader, "u/" + bob)
    assert [body for _, body in got] == [b"once"]
    for cl in (first, again, reader):
        cl.close()


def test_kill9_a_broker_mid_burst_every_acknowledged_message_arrives_once(make_broker, env):
    a, b, _ = three(make_broker, env, "kill")
    alice, bob = names("alice", "bob")
    reader = Client(b, bob, client_id=bob, v5=True).connect()
    reader.subscribe("im/u/" + bob)
    pub = Client(a, alice, client_id=alice, v5=True).connect()
    pub.c.max_inflight_messages_set(100)
    total = 1000
    infos = [(i, pub.publish("im/u/" + bob, b"n:%d" % i, cmid="k%d" % i, wait=False)) for i in range(total)]
    wait_until(lambda: sum(info.is_published() for _, info in infos) >= total // 4, interval=0.001)
    os.kill(a.proc.pid, signal.SIGSTOP)       # acknowledges nothing more from here
    a.kill9()
    pub.c.loop_stop()
    acked = {i for i, info in infos if info.is_published()}
    assert total // 4 <= len(acked) < total, "the burst was not cut"
    a.start()                                  # replays its journal, ships what it stores
    # The publisher comes back and re-sends what was not acknowledged, with the same cmids.
    pub2 = Client(a, alice, client_id=alice + "-again", v5=True).connect()
    publish_all_ids = [i for i in range(total) if i not in acked]
    for i in publish_all_ids:
        assert pub2.wait_published(pub2.publish("im/u/" + bob, b"n:%d" % i, cmid="k%d" % i, wait=False))
    got = frames(reader, "im/u/" + bob, total)
    assert [h.seq for h, _ in got] == list(range(1, total + 1)), "gaps or repeats in live delivery"
    bodies = [body for _, body in got]
    assert sorted(bodies) == sorted(b"n:%d" % i for i in range(total)), "lost or doubled"
    assert reader.none()
    for cl in (reader, pub2):
        cl.close()


def test_stopping_a_nats_node_delivery_goes_on_with_gaps_repaired(make_broker, env):
    pg, _ = env
    nats = NatsCluster(3).start()             # its own: one node goes down
    try:
        brokers = [make_broker({"store": "postgresql", "pg_conninfo": pg.uri, "node_id": "nats-%s" % n,
                                "nats_servers": nats.servers}) for n in "abc"]
        alice, bob = names("alice", "bob")
        readers = [Client(br, bob, client_id="%s-%d" % (bob, i), v5=True).connect() for i, br in enumerate(brokers[1:])]
        for r in readers:
            r.subscribe("im/u/" + bob)
        pub = Client(brokers[0], alice, client_id=alice, v5=True).connect()
        first = [b"before:%d" % i for i in range(100)]
        publish_all(pub, "im/u/" + bob, first, "x")
        for r in readers:
            assert [body for _, body in frames(r, "im/u/" + bob, 100)] == first
        # Stop each broker's server in turn, while messages flow.
        later = [b"after:%d" % i for i in range(200)]
        t = threading.Thread(target=publish_all, args=(pub, "im/u/" + bob, later, "y"))
        t.start()
        nats.stop_node(0)
        t.join()
        for r in readers:
            got = frames(r, "im/u/" + bob, len(later))
            assert [h.seq for h, _ in got] == list(range(101, 101 + len(later)))
            assert [body for _, body in got] == later
            assert r.none()
        for cl in readers + [pub]:
            cl.close()
    finally:
        nats.stop()


def test_kill9_postgres_primary_and_promote_loses_nothing(make_broker):
    pg = PgPair(standby=True).start()         # its own: the primary dies
    nats = NatsCluster(1).start()
    try:
        a, b = [make_broker({"store": "postgresql", "pg_conninfo": pg.uri, "node_id": "pg-%s" % n,
                             "nats_servers": nats.servers}) for n in "ab"]
        alice, bob = names("alice", "bob")
        reader = Client(b, bob, client_id=bob, v5=True).connect()
        reader.subscribe("im/u/" + bob)
        pub = Client(a, alice, client_id=alice, v5=True).connect()
        pub.c.max_inflight_messages_set(50)
        total = 600
        infos = [pub.publish("im/u/" + bob, b"p:%d" % i, cmid="p%d" % i, wait=False) for i in range(total)]
        assert wait_until(lambda: reader.msgs.qsize() >= 100, interval=0.005)
        pg.kill_primary()
        pg.promote()
        for info in infos:
            assert pub.wait_published(info), "the journal stopped acknowledging"
        got = frames(reader, "im/u/" + bob, total)
        assert [h.seq for h, _ in got] == list(range(1, total + 1)), "a seq skipped or reused"
        assert [body for _, body in got] == [b"p:%d" % i for i in range(total)]
        hist, _ = sync_all(reader, "u/" + bob)
        assert [body for _, body in hist] == [b"p:%d" % i for i in range(total)]
        for cl in (reader, pub):
            cl.close()
    finally:
        nats.stop()
        pg.stop()



def test_a_replayed_membership_message_does_not_readmit_a_removed_member(make_broker, env):
    """NATS messages carry a MAC, which proves who wrote them, not when: a
    membership change heard on NATS is only a sign to read the group from
    the store, so replaying an old "add" changes nothing."""
    a, _, c = three(make_broker, env, "replay")
    carol, dave, erin = names("carol", "dave", "erin")
    grp = names("club")[0]
    tap = NatsTap(env[1].nodes[0]["port"])
    owner = Client(a, carol, client_id=carol, v5=True).connect()
    member = Client(c, erin, client_id=erin, v5=True).connect()

    def change(op, users):
        r = owner.request("group", pb.GroupRequest(op=op, group=grp, members=users), response_type=pb.GroupResponse)
        assert r.status == pb.OK, r.reason

    change("create", [dave])
    change("add", [erin])
    assert wait_until(lambda: any(erin.encode() in p for _, p in tap.messages(".ctl"))), "no membership change on NATS"
    subject, added = [(s, p) for s, p in tap.messages(".ctl") if erin.encode() in p][0]
    subscribe_member(member, "im/g/" + grp)
    change("remove", [erin])
    assert wait_until(lambda: member.subscribe("im/g/" + grp)[0] >= 128), "the removal never reached broker C"
    heard = c.read_log().count("changed on another broker")
    tap.publish(subject, added)
    assert wait_until(lambda: c.read_log().count("changed on another broker") > heard), "the replay was not heard"
    sync_all(member, "u/" + erin)             # answered after the worker's reload of the group
    assert member.subscribe("im/g/" + grp)[0] >= 128, "a replayed NATS message readmitted a removed member"
    tap.close()
    for cl in (owner, member):
        cl.close()


@pytest.mark.parametrize("servers", ["127.0.0.1:4222", "http://127.0.0.1:4222", "nats://", "nats://h:99999",
                                     "nats://h:4222/x", "nats://a:1,bogus"])
def test_bad_nats_servers_stop_the_broker(make_broker, env, servers):
    b = make_broker(opts(env, "badurl", nats_servers=servers), start=False)
    assert b.start(expect_fail=True) != 0
    assert "plugin_opt_nats_servers" in b.read_log()


def test_nats_credentials_are_not_logged(make_broker, env):
    url = env[1].servers.replace("nats://", "nats://im:s3cret-pw@")
    b = make_broker(opts(env, "creds", nats_servers=url))
    wait_log(b, "sharing timelines over NATS")
    assert "nats://***@127.0.0.1" in b.read_log() and "s3cret-pw" not in b.read_log()
