"""Devices and presence: online/offline from IM activity and disconnects,
visibility, and the per-user device limit."""
import json
import socket
import struct

from imtest import Client, decode_frame, log_offset, pb, sync_all, wait_log, wait_until

SYSTEM = 1


def states(client, n):
    return [json.loads(m.payload)["state"] for m in client.get_n(n)]


def close_and_wait(broker, client, client_id):
    """Closes client and waits until the broker has processed its DISCONNECT."""
    since = log_offset(broker)
    client.close()
    wait_log(broker, "Client %s disconnected." % client_id, since)


def raw_connect(port, user, cid, keepalive):
    s = socket.create_connection(("127.0.0.1", port))

    def string(x):
        return struct.pack("!H", len(x)) + x.encode()

    var = string("MQTT") + bytes([4, 0x82]) + struct.pack("!H", keepalive)
    body = var + string(cid) + string(user)
    s.sendall(bytes([0x10, len(body)]) + body)
    assert s.recv(4)[:2] == b"\x20\x02"
    sub = struct.pack("!H", 1) + string("im/u/" + user) + b"\x01"
    s.sendall(bytes([0x82, len(sub)]) + sub)
    s.recv(5)
    return s


def test_online_offline_and_keepalive(make_broker):
    b = make_broker({"presence": "all"})
    carol = Client(b, "carol").connect()
    carol.subscribe("im/p/bob")
    bob1 = Client(b, "bob", client_id="bob-1").connect()
    bob1.subscribe("im/u/bob")                      # first IM activity: online
    assert states(carol, 1) == ["online"]
    bob2 = Client(b, "bob", client_id="bob-2").connect()
    bob2.subscribe("im/u/bob")
    assert carol.none()                              # still online: no news
    close_and_wait(b, bob1, "bob-1")
    assert carol.none()
    bob2.close()
    assert states(carol, 1) == ["offline"]
    # A dropped TCP connection goes offline after its keepalive.
    since = log_offset(b)
    s = raw_connect(b.port, "bob", "bob-raw", keepalive=1)
    assert states(carol, 1) == ["online"]
    assert states(carol, 1) == ["offline"]            # no PINGREQ, no close: keepalive expires
    assert "Client bob-raw has exceeded timeout" in b.read_log()[since:]
    s.close()
    # A late subscriber gets the retained state.
    dave = Client(b, "dave").connect()
    dave.subscribe("im/p/bob")
    m = dave.get()
    assert json.loads(m.payload)["state"] == "offline" and m.retain
    # Nobody may publish presence.
    eve = Client(b, "eve").connect()
    eve.publish("im/p/bob", b'{"state":"online"}', qos=0, wait=False)
    assert eve.barrier()                             # her publish has been decided
    assert carol.none()
    for c in (carol, dave, eve):
        c.close()


def test_presence_visible_to_contacts_only(make_broker):
    """A contact is someone bob himself wrote to. Writing to bob, or putting
    him in a group, gives nobody a view of him (issue #11, finding 3)."""
    b = make_broker({"presence": "contacts"})
    eve = Client(b, "eve", v5=True).connect()
    assert eve.subscribe("im/p/bob")[0] >= 0x80       # a stranger
    alice = Client(b, "alice", v5=True).connect()
    alice.subscribe("im/u/alice")
    alice.publish("im/u/bob", b"hi bob", qos=1)        # an unsolicited message to bob...
    assert alice.subscribe("im/p/bob")[0] >= 0x80      # ...is no view of bob
    carol = Client(b, "carol", v5=True).connect()
    assert carol.request("group", pb.GroupRequest(op="create", group="g", members=["bob"]),
                         response_type=pb.GroupResponse).status == pb.OK
    assert carol.subscribe("im/p/bob")[0] >= 0x80      # nor is putting him in a group
    bob = Client(b, "bob").connect()
    bob.publish("im/u/alice", b"hi alice", qos=1)      # bob writes to alice: now she may
    bodies = [decode_frame(alice.get(timeout=30).payload)[1] for _ in range(2)]
    assert bodies == [b"hi bob", b"hi alice"]           # her own copy, then bob's message
    assert alice.subscribe("im/p/bob") == [1]
    eve.subscribe("im/p/+")                             # wildcards do not help
    bob.subscribe("im/u/bob")
    assert states(alice, 1) == ["online"]
    # eve gets her own presence through the wildcard (she subscribed: online)
    # and never bob's, which reached alice: everything for eve came by now.
    got = [m.topic for m in eve.drain()]
    assert got == ["im/p/eve"]
    # A restart keeps who may see whom (the store has it).
    for c in (alice, bob, carol, eve):
        c.close()
    b.restart()
    alice = Client(b, "alice").connect()
    assert alice.subscribe("im/p/bob") == [1]
    carol = Client(b, "carol").connect()
    assert carol.subscribe("im/p/bob")[0] >= 0x80
    alice.close()
    carol.close()


def test_device_limit_kicks_the_oldest_with_a_notice(make_broker):
    b = make_broker({"max_devices_per_user": 2})
    d1 = Client(b, "bob", client_id="bob-phone").connect()
    d1.subscribe("im/u/bob")
    d2 = Client(b, "bob", client_id="bob-laptop").connect()    # devices are ordered as they come
    d2.subscribe("im/u/bob")
    assert d1.barrier() and not d1.disconnected.is_set()      # two devices: nobody kicked
    d3 = Client(b, "bob", client_id="bob-tablet").connect()
    d3.subscribe("im/u/bob")
    assert wait_until(d1.disconnected.is_set), "the oldest device was not disconnected"
    assert d2.barrier() and d3.barrier(), "a device other than the oldest was disconnected"
    assert not d2.disconnected.is_set() and not d3.disconnected.is_set()
    h, body = decode_frame(d2.get().payload)
    assert h.flags & SYSTEM
    notice = json.loads(body)
    assert notice == {"event": "device_limit", "disconnected": "bob-phone", "by": "bob-tablet", "max_devices": 2}
    frames, _ = sync_all(d3, "u/bob")
    assert [json.loads(body)["event"] for _, body in frames] == ["device_limit"]
    assert "disconnecting the oldest" in b.read_log()
    d1.c.loop_stop()
    d2.close()
    d3.close()


def test_senders_and_requests_are_not_devices(make_broker):
    """max_devices_per_user 1: a publish-only client or a request of the
    same user does not disconnect the user's one receiving device."""
    b = make_broker({"max_devices_per_user": 1, "presence": "all"})
    phone = Client(b, "bob", client_id="bob-phone").connect()
    phone.subscribe("im/u/bob")
    sender = Client(b, "bob", client_id="bob-cli").connect()
    sender.publish("im/u/alice", b"from the command line", qos=1)
    r = sender.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
    assert r.status == pb.OK
    sender.close()
    assert phone.barrier() and not phone.disconnected.is_set()    # would have been kicked by now
    phone.close()
