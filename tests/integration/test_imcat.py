"""imcat on the payloads of conversations (issue #15): event frames (read
marks, typing), edits and recalls with the message they change, originals
marked edited or recalled in a sync batch, the reads and conversations
replies; in text and in --json, from what a real broker sent."""
import json
import re
import subprocess

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from imtest import IMCAT, WAIT, Client, pb

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def publish(client, topic, body, **user_props):
    """A QoS 1 publish with user properties (im_edit -> im-edit); waits for the PUBACK."""
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [(k.replace("_", "-"), str(v)) for k, v in user_props.items()] or [("x", "y")]
    client.c.publish(topic, body, qos=1, properties=p).wait_for_publish(timeout=WAIT)


def next_on(client, topic):
    """The payload of the next message on topic (others are dropped)."""
    while True:
        m = client.get()
        if m.topic == topic:
            return m.payload


def imcat(payloads, *args):
    hexed = "".join(p.hex() + "\n" for p in payloads).encode()
    r = subprocess.run([IMCAT, *args], input=hexed, capture_output=True, timeout=WAIT, check=True)
    return r.stdout.decode().splitlines()


def test_events_changes_reads_and_conversations(make_broker):
    b = make_broker()
    alice = Client(b, "alice", v5=True).connect()
    alice.subscribe("im/e/u/alice")
    bob = Client(b, "bob", v5=True).connect()
    bob.subscribe("im/u/bob")
    bob.subscribe("im/e/u/bob")
    publish(alice, "im/u/bob", b"hello")                      # u/bob #1
    publish(alice, "im/u/bob", b"second")                     # #2
    publish(alice, "im/u/bob", b"hello (edited)", im_edit=1)  # #3
    publish(alice, "im/u/bob", b"", im_recall=2)              # #4
    live = [next_on(bob, "im/u/bob") for _ in range(4)][2:]   # the edit and the recall
    assert bob.request("ack", pb.Ack(timeline="u/bob", seq=4), response_type=pb.AckResponse).status == pb.OK
    read = next_on(alice, "im/e/u/alice")
    assert alice.request("typing", pb.TypingRequest(timeline="u/bob"), response_type=pb.Response).status == pb.OK
    typing = next_on(bob, "im/e/u/bob")
    batch = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0)).payload
    reads = alice.request("reads", pb.ReadsRequest(timeline="u/bob")).payload
    convs = alice.request("conversations", pb.ConversationsRequest()).payload
    alice.close()
    bob.close()

    text = imcat([read, typing] + live + [batch, reads, convs])
    want = [
        r"u/alice event %s bob: read u/bob up to #4" % TS,
        r"u/bob event %s alice: typing in u/alice" % TS,
        r"u/bob #3 %s alice \(edit of #1\): hello \(edited\)" % TS,
        r"u/bob #4 %s alice \(recall of #2\): " % TS,
        r"sync u/bob: OK, 4 frames, head 4, .*",
        r"  u/bob #1 %s alice \(edited\): hello \(edited\)" % TS,
        r"  u/bob #2 %s alice \(recalled\): " % TS,
        r"  u/bob #3 %s alice \(edit of #1\): hello \(edited\)" % TS,
        r"  u/bob #4 %s alice \(recall of #2\): " % TS,
        r"reads u/bob: OK, head 4: bob #4",
        r"conversations: OK, 1",
        # alice's side: her copy of the recall is the last message, no preview
        r"  u/bob #4 %s alice \(recall\), unread 0, peer read #4: <no preview>" % TS,
    ]
    assert len(text) == len(want), text
    for line, pattern in zip(text, want):
        assert re.fullmatch(pattern, line), (line, pattern)

    js = [json.loads(line) for line in imcat([read, typing] + live + [reads, convs], "--json")]
    assert js[0]["event"] == {"kind": "read", "user": "bob", "timeline": "u/bob", "seq": 4,
                              "ts_ms": js[0]["event"]["ts_ms"]}
    assert (js[0]["timeline"], js[0]["seq"]) == ("u/alice", 0)
    assert {k: js[1]["event"][k] for k in ("kind", "user", "timeline", "typing")} == {
        "kind": "typing", "user": "alice", "timeline": "u/alice", "typing": True}
    assert (js[2]["seq"], js[2]["edit"], js[2]["ref_seq"], js[2]["body"]) == (3, True, 1, "hello (edited)")
    assert (js[3]["seq"], js[3]["recall"], js[3]["ref_seq"], js[3]["body"]) == (4, True, 2, "")
    assert js[2]["peer_seq"] == 3                  # the edit's seq in alice's own copy
    assert js[4] == {"reads": "u/bob", "status": 0, "head_seq": 4, "marks": [{"user": "bob", "seq": 4}]}
    conv = js[5]["conversations"][0]
    assert js[5]["has_more"] is False and (conv["timeline"], conv["unread"], conv["peer_read_seq"]) == ("u/bob", 0, 4)
    assert conv["last_flags"] & pb.FLAG_RECALL and "last_preview" not in conv
