"""Direct messages: frame, properties, order, QoS, protocols, dedup, receipts."""
import subprocess
import threading
import time

from imtest import Client, decode_frame, pb, IMCAT, WAIT, log_offset, sync_all, wait_log


def props_dict(m):
    return dict(getattr(m.properties, "UserProperty", []) or [])


def test_frame_properties_and_senders_copy(broker):
    bob = Client(broker, "bob", v5=True).connect()
    alice_dev = Client(broker, "alice", v5=True).connect()
    assert bob.subscribe("im/u/bob") == [1]
    assert alice_dev.subscribe("im/u/alice") == [1]
    alice = Client(broker, "alice", v5=True).connect()
    t0 = int(time.time() * 1000)
    alice.publish("im/u/bob", b"hello \x00 binary", qos=1, cmid="m1",
                  props={"ContentType": "application/octet-stream"})

    m = bob.get()
    t1 = int(time.time() * 1000)
    h, body = decode_frame(m.payload)
    assert body == b"hello \x00 binary"          # body untouched
    assert (h.timeline, h.seq, h.sender, h.to, h.cmid) == ("u/bob", 1, "alice", "u/bob", "m1")
    assert h.content_type == "application/octet-stream"
    assert t0 <= h.ts_ms <= t1, (t0, h.ts_ms, t1)   # the server's time, between publish and delivery
    p = props_dict(m)
    assert p["im-seq"] == "1" and p["im-timeline"] == "u/bob" and p["im-from"] == "alice"
    assert m.properties.ContentType == "application/octet-stream"

    c = alice_dev.get()
    assert c.topic == "im/u/alice"
    h2, body2 = decode_frame(c.payload)
    assert (h2.timeline, h2.seq, h2.to, h2.sender) == ("u/alice", 1, "u/bob", "alice")
    assert body2 == body
    for cl in (bob, alice_dev, alice):
        cl.close()


def test_concurrent_senders_gap_free_in_order(broker):
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob", qos=2)
    senders, per = 5, 200
    errors = []

    def send(i):
        try:
            c = Client(broker, "user%d" % i).connect()
            for n in range(per):
                c.publish("im/u/bob", b"%d:%d" % (i, n), qos=(n % 3), wait=(n % 3 > 0))
            c.close()                  # paho writes the QoS 0 ones first, then DISCONNECT
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = bob.get_n(senders * per)
    seqs = [decode_frame(m.payload)[0].seq for m in got]
    assert seqs == list(range(1, senders * per + 1))   # gap-free, in order, once
    bodies = sorted(decode_frame(m.payload)[1] for m in got)
    assert bodies == sorted(b"%d:%d" % (i, n) for i in range(senders) for n in range(per))
    # Per sender, the order it sent in is kept.
    for i in range(senders):
        mine = [int(b.split(b":")[1]) for b in (decode_frame(m.payload)[1] for m in got)
                if b.startswith(b"%d:" % i)]
        assert mine == list(range(per))
    bob.close()


def test_qos_levels_and_protocol_versions(broker):
    subs = {
        "v311": Client(broker, "bob", client_id="bob-v311").connect(),
        "v5": Client(broker, "bob", client_id="bob-v5", v5=True).connect(),
    }
    for s in subs.values():
        s.subscribe("im/u/bob", qos=2)
    for proto_v5 in (False, True):
        alice = Client(broker, "alice", v5=proto_v5).connect()
        for qos in (0, 1, 2):
            alice.publish("im/u/bob", b"q%d" % qos, qos=qos)
        alice.close()
    for name, s in subs.items():
        got = s.get_n(6)
        assert [decode_frame(m.payload)[0].seq for m in got] == [1, 2, 3, 4, 5, 6], name
        assert [decode_frame(m.payload)[1] for m in got] == [b"q0", b"q1", b"q2"] * 2
        s.close()


def test_dedup_across_connections_and_receipts(broker):
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob")
    receipts = []
    for attempt in range(3):
        alice = Client(broker, "alice", v5=True).connect()
        alice.subscribe("replies/alice")
        alice.publish("im/u/bob", b"once", qos=1, cmid="c-42",
                      props={"ResponseTopic": "replies/alice", "CorrelationData": b"corr%d" % attempt})
        m = alice.get()
        assert m.topic == "replies/alice"
        assert m.properties.CorrelationData == b"corr%d" % attempt
        r = pb.Receipt()
        r.ParseFromString(m.payload)
        receipts.append(r)
        alice.close()
    assert [r.seq for r in receipts] == [1, 1, 1]
    assert [r.duplicate for r in receipts] == [False, True, True]
    assert all(r.timeline == "u/bob" and r.cmid == "c-42" and r.status == pb.OK for r in receipts)
    assert receipts[0].own_seq == 1
    got = bob.get_n(1) + bob.drain()
    assert len(got) == 1                                   # delivered once
    # And stored once: sync sees one message.
    bob_rq = Client(broker, "bob", v5=True).connect()
    frames, batch = sync_all(bob_rq, "u/bob")
    assert [h.seq for h, _ in frames] == [1] and batch.head_seq == 1
    bob.close()
    bob_rq.close()


def test_duplicate_ack_is_clean_for_v311_and_v5(broker):
    """A repeat is acknowledged as a success (no 0x87) and reaches no one."""
    bob = Client(broker, "bob").connect()
    bob.subscribe("im/u/bob", qos=2)
    snoop = Client(broker, "eve", v5=True).connect()
    snoop.subscribe("#")
    results = []
    v5 = Client(broker, "alice", v5=True).connect()
    v5.c.on_publish = lambda c, u, mid: results.append(mid)
    for qos in (1, 2):
        for _ in range(2):
            info = v5.publish("im/u/bob", b"dup-q%d" % qos, qos=qos, cmid="d%d" % qos)
            assert info.rc == 0 and info.is_published()
    v5.close()
    got = bob.get_n(2) + bob.drain()
    assert [decode_frame(m.payload)[1] for m in got] == [b"dup-q1", b"dup-q2"]
    assert snoop.none(), "the retargeted original leaked to a '#' subscriber"
    bob.close()
    snoop.close()


def test_cli_tools_and_imcat(broker):
    since = log_offset(broker)
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-u", "bob", "-t", "im/u/bob", "-i", "cli-sub",
                            "-C", "2", "-W", str(int(WAIT)), "-F", "%x"], stdout=subprocess.PIPE)
    wait_log(broker, "Sending SUBACK to cli-sub", since)        # subscribed
    for args in (["-m", "hi"], ["-m", "again", "-V", "5", "-D", "publish", "user-property", "im-cmid", "m1"]):
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-u", "alice", "-t", "im/u/bob",
                        "-q", "2"] + args, check=True, timeout=WAIT)
    out, _ = sub.communicate(timeout=WAIT + 10)
    text = subprocess.run([IMCAT], input=out, capture_output=True, check=True).stdout.decode()
    lines = text.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("u/bob #1 ") and lines[0].endswith("alice: hi")
    assert lines[1].startswith("u/bob #2 ") and "[m1]" in lines[1] and lines[1].endswith("again")
    js = subprocess.run([IMCAT, "--json"], input=out, capture_output=True, check=True).stdout.decode()
    assert '"seq":2' in js and '"body":"again"' in js


def test_raw_payload_mode(make_broker):
    b = make_broker({"payload": "raw"})
    bob = Client(b, "bob", v5=True).connect()
    bob.subscribe("im/u/bob")
    alice = Client(b, "alice").connect()
    alice.publish("im/u/bob", b"plain body", qos=1)
    m = bob.get()
    assert m.payload == b"plain body"
    assert props_dict(m)["im-seq"] == "1"
    # Sync still returns frames.
    frames, _ = sync_all(Client(b, "bob", v5=True).connect(), "u/bob")
    assert frames[0][1] == b"plain body"
