"""Operations: metrics under $SYS, reload on SIGHUP."""
import signal
import time

from imtest import Client, decode_frame, pb, sync_all


def read_metrics(b, names, timeout=5):
    c = Client(b, "ops").connect()
    c.subscribe("$SYS/broker/im/#")
    got = {}
    deadline = time.time() + timeout
    while time.time() < deadline and not all(n in got for n in names):
        try:
            m = c.get(timeout=0.5)
        except Exception:
            continue
        got[m.topic[len("$SYS/broker/im/"):]] = int(m.payload)
    c.close()
    return got


def test_metrics_follow_traffic(make_broker):
    b = make_broker({"metrics_interval": 1, "nonim_acl": "allow"})
    names = ["messages/sequenced", "messages/duplicates", "sync/requests", "sync/frames", "acks",
             "store/commit_us_p50", "store/commit_us_p99", "store/bytes", "timelines/cached", "store/errors"]
    before = read_metrics(b, names)
    assert before["messages/sequenced"] == 0 and before["store/bytes"] > 0
    a = Client(b, "alice", v5=True).connect()
    for i in range(10):
        a.publish("im/u/bob", b"m%d" % i, qos=1, cmid="c%d" % i)
    a.publish("im/u/bob", b"again", qos=1, cmid="c0")       # a duplicate
    a.close()
    bob = Client(b, "bob").connect()
    sync_all(bob, "u/bob")
    bob.request("ack", pb.Ack(timeline="u/bob", seq=10), response_type=pb.AckResponse)
    bob.close()
    time.sleep(1.2)
    after = read_metrics(b, names)
    assert after["messages/sequenced"] == 10
    assert after["messages/duplicates"] == 1
    assert after["sync/requests"] >= 1 and after["sync/frames"] >= 10
    assert after["acks"] == 1
    assert after["timelines/cached"] >= 2
    assert after["store/errors"] == 0


def test_sighup_changes_retention_without_dropping_a_connection(make_broker):
    b = make_broker()
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob")
    a = Client(b, "alice").connect()
    for i in range(20):
        a.publish("im/u/bob", b"r%d" % i, qos=1)
    assert len(bob.get_n(20)) == 20
    b.opts["retention_messages"] = 5
    b.opts["db_path"] = b.db_path + ".elsewhere"          # needs a restart: kept
    b.write_conf()
    b.opts["db_path"] = b.db_path[:-len(".elsewhere")]
    b.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while time.time() < deadline:
        r = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
        if r.first_seq == 16:
            break
        time.sleep(0.2)
    assert r.first_seq == 16 and len(r.frames) == 5
    assert not bob.disconnected.is_set() and not a.disconnected.is_set()
    a.publish("im/u/bob", b"after reload", qos=1)
    assert decode_frame(bob.get().payload)[0].seq == 21     # nothing lost, nothing reused
    log = b.read_log()
    assert "im: reload:" in log and "db_path changed" in log
    # A bad value on reload keeps the running options.
    b.opts["retention_messages"] = "many"
    b.write_conf()
    b.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "running options are kept" in b.read_log()
    a.publish("im/u/bob", b"still fine", qos=1)
    assert decode_frame(bob.get().payload)[0].seq == 22
    a.close()
    bob.close()
