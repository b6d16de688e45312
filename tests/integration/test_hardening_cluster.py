"""Issue #20, finding 5: what an observer on the NATS network can replay.

A MAC proves who wrote a NATS message, not when. Message frames carry their
seq (the ordering drops what was delivered already); events (typing, read
marks) carry the time they were sent under the MAC, and a broker delivers
an event once, and only within a freshness window; membership
messages are only a sign to reload the group, and however many arrive, a
group is reloaded at most once per interval.

Two brokers on test_cluster.py's PostgreSQL and NATS cluster (its `env`),
started here; the observer is a bare NATS client (cluster_env.NatsTap)."""
import time

import pytest

from cluster_env import NatsTap, missing
from imtest import WAIT, Client, decode_frame, pb, wait_until
from test_cluster import env, names  # noqa: F401 (env: the module's PostgreSQL and NATS)
from test_limits import Metrics

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

FRESH_S = 3.0           # cluster/wire.h IM_CWIRE_FRESH_MS


def two(make_broker, env, tag):
    pg, nats = env
    return [make_broker({"store": "postgresql", "pg_conninfo": pg.uri, "node_id": "%s-%s" % (tag, n),
                         "nats_servers": nats.servers, "nonim_acl": "allow", "metrics_interval": 1,
                         "typing_rate": 100}) for n in "ac"]


def group_request(owner, op, grp, users):
    r = owner.request("group", pb.GroupRequest(op=op, group=grp, members=users), response_type=pb.GroupResponse)
    assert r.status == pb.OK, r.reason


def events(client, topic):
    """Frames received on topic so far (kept in the client's queue otherwise)."""
    got, others = [], []
    while True:
        try:
            m = client.msgs.get_nowait()
        except Exception:
            break
        (got if m.topic == topic else others).append(m)
    client.back.extend(others)
    return [decode_frame(m.payload)[0] for m in got]


def replay_refused(tap, subject, payload, metrics, receiver, topic):
    """Publishes payload on subject as the observer; True once the broker
    counted it refused, False if the receiver got the event again."""
    r0 = metrics.get("cluster/rejected")
    tap.publish(subject, payload)
    seen = []
    assert wait_until(lambda: seen.extend(events(receiver, topic)) or seen or metrics.get("cluster/rejected") > r0), \
        "the replay was neither refused nor delivered"
    return not seen


def test_replayed_typing_and_read_events_are_not_delivered_again(make_broker, env):
    a, c = two(make_broker, env, "ev")
    alice, bob = names("alice", "bob")
    tap = NatsTap(env[1].nodes[0]["port"])
    ma, mc = Metrics(a), Metrics(c)
    al = Client(a, alice, client_id=alice, v5=True).connect()
    assert al.subscribe("im/e/u/" + alice) == [1]
    bo = Client(c, bob, client_id=bob, v5=True).connect()
    assert bo.subscribe("im/e/u/" + bob) == [1]

    # TYPING, alice (on A) to bob (on C): sent until C hears u/<bob> on NATS.
    got = []

    def typing_arrives():
        r = al.request("typing", pb.TypingRequest(timeline="u/" + bob, typing=True), response_type=pb.Response)
        assert r.status == pb.OK, r
        return wait_until(lambda: got.extend(events(bo, "im/e/u/" + bob)) or got, timeout=1)
    assert wait_until(typing_arrives), "no typing event reached broker C"
    assert got[0].event.kind == pb.Event.TYPING and got[0].event.user == alice
    assert wait_until(lambda: tap.messages(".u." + bob)), "the observer heard no typing event"
    typing = tap.messages(".u." + bob)[-1]
    events(bo, "im/e/u/" + bob)
    assert replay_refused(tap, *typing, mc, bo, "im/e/u/" + bob), "a replayed TYPING event was delivered again"

    # READ, bob (on C) acks alice's DM: the event goes to alice (on A).
    al.publish("im/u/" + bob, b"hello", qos=1, cmid="m1")
    heard = len(tap.messages(".u." + alice))
    # Acknowledged on A means journaled on A: stored (and so ackable on C)
    # a moment later. Ask until the store has it.
    acked = []

    def ack_taken():
        r = bo.request("ack", pb.Ack(timeline="u/" + bob, seq=1), response_type=pb.AckResponse)
        acked.append(r)
        return r.status == pb.OK
    assert wait_until(ack_taken), acked[-1]
    reads = []
    assert wait_until(lambda: reads.extend(events(al, "im/e/u/" + alice)) or reads), "no READ event reached broker A"
    assert reads[0].event.kind == pb.Event.READ and reads[0].event.user == bob
    assert wait_until(lambda: len(tap.messages(".u." + alice)) > heard), "the observer heard no READ event"
    read = [(s, p) for s, p in tap.messages(".u." + alice) if b"hello" not in p][-1]   # not alice's own copy
    sent = time.time()
    assert replay_refused(tap, *read, ma, al, "im/e/u/" + alice), "a replayed READ event was delivered again"

    # Replayed again once it is older than the freshness window: refused too.
    assert wait_until(lambda: time.time() > sent + FRESH_S + 0.5, timeout=WAIT), "the clock stopped"
    assert replay_refused(tap, *read, ma, al, "im/e/u/" + alice), "a stale READ event was delivered"
    assert replay_refused(tap, *typing, mc, bo, "im/e/u/" + bob), "a stale TYPING event was delivered"
    # And live events still flow.
    got.clear()
    assert wait_until(typing_arrives), "typing stopped working"
    tap.close()
    for x in (al, bo, ma.c, mc.c):
        x.close()


def test_a_flood_of_replayed_membership_messages_reloads_a_group_a_bounded_number_of_times(make_broker, env):
    a, c = two(make_broker, env, "ctl")
    carol, erin = names("carol", "erin")
    grp = names("club")[0]
    tap = NatsTap(env[1].nodes[0]["port"])
    mc = Metrics(c)
    owner = Client(a, carol, client_id=carol, v5=True).connect()
    member = Client(c, erin, client_id=erin, v5=True).connect()
    group_request(owner, "create", grp, [erin])
    assert wait_until(lambda: [p for _, p in tap.messages(".ctl") if grp.encode() in p]), "no membership change on NATS"
    subject, msg = [(s, p) for s, p in tap.messages(".ctl") if grp.encode() in p][-1]
    assert wait_until(lambda: member.subscribe("im/g/" + grp)[0] < 128), "broker C never learnt the group"
    reload_line = "group %s changed on another broker; reading its members from the store" % grp
    assert wait_until(lambda: c.read_log().count(reload_line) >= 1)
    before = c.read_log().count(reload_line)
    r0 = mc.get("cluster/received")
    flood = 500
    t0 = time.monotonic()
    for _ in range(flood):
        tap.publish(subject, msg)
    assert wait_until(lambda: mc.get("cluster/received") >= r0 + flood), "the flood was not heard"
    # The reload that was held back comes; then none.
    assert wait_until(lambda: c.read_log().count(reload_line) > before)
    group_request(owner, "remove", grp, [erin])       # a real change right after: still applied
    assert wait_until(lambda: member.subscribe("im/g/" + grp)[0] >= 128), "the removal never reached broker C"
    elapsed = time.monotonic() - t0
    reloads = c.read_log().count(reload_line) - before
    print("membership flood: %d replays, %d reloads of the group in %.1f s" % (flood, reloads, elapsed))
    assert reloads <= 3 + int(elapsed), "%d replays made %d reloads in %.1f s" % (flood, reloads, elapsed)
    tap.close()
    for x in (owner, member, mc.c):
        x.close()
