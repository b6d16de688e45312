"""Operations: metrics under $SYS, reload on SIGHUP."""
import json
import os
import signal
import time

from imtest import WAIT, Client, decode_frame, log_offset, pb, sync_all, wait_log, wait_until


def read_metrics(b, names, at_least=None):
    """The latest value of each metric in names, read as the plugin
    publishes them (retained, then every interval), once every name has
    come and each in at_least has reached its value: the counters only
    grow, so this waits for the interval that counted the test's traffic."""
    at_least = at_least or {}
    c = Client(b, "ops").connect()
    c.subscribe("$SYS/broker/im/#")
    got = {}
    deadline = time.monotonic() + WAIT
    while not (all(n in got for n in names) and all(got.get(n, -1) >= v for n, v in at_least.items())):
        m = c.get(max(0.01, deadline - time.monotonic()))
        if m.payload.isdigit():                  # not .../stats, all of them in one JSON object
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
    after = read_metrics(b, names, {"messages/sequenced": 10, "messages/duplicates": 1, "sync/requests": 1,
                                    "sync/frames": 10, "acks": 1, "timelines/cached": 2})
    assert after["messages/sequenced"] == 10
    assert after["messages/duplicates"] == 1
    assert after["sync/requests"] >= 1 and after["sync/frames"] >= 10
    assert after["acks"] == 1
    assert after["timelines/cached"] >= 2
    assert after["store/errors"] == 0


def test_a_steady_stream_is_committed_in_batches(make_broker):
    """Group commit (batch_gather_us): while messages keep coming, a batch
    waits for company instead of committing each one alone; a request that
    comes meanwhile is answered, and every message arrives once, in order."""
    b = make_broker({"metrics_interval": 1, "nonim_acl": "allow", "batch_gather_us": 100000})
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob")
    a = Client(b, "alice").connect()
    infos = [a.publish("im/u/bob", b"s%04d" % i, qos=1, wait=False) for i in range(1000)]
    # A request in the middle of the stream ends a gathering wait.
    carol = Client(b, "carol").connect()
    assert sync_all(carol, "u/carol")[0] == []
    assert all(a.wait_published(i) for i in infos)
    got = [decode_frame(m.payload) for m in bob.get_n(1000)]
    assert [(h.seq, body) for h, body in got] == [(i + 1, b"s%04d" % i) for i in range(1000)]
    # The JSON object has every counter of one interval (the topics one
    # by one could pair this interval's count with the last one's).
    ops = Client(b, "ops").connect()
    ops.subscribe("$SYS/broker/im/stats")
    deadline = time.monotonic() + WAIT
    while True:
        st = json.loads(ops.get(max(0.01, deadline - time.monotonic())).payload)
        if st["sequenced"] >= 1000:
            break
    ops.close()
    # One commit per message (or per two, as a fast worker took them
    # before) would be 500-1000 batches, and pipelined as here about 125;
    # gathered (64 jobs or 100 ms at most per batch), 16 and the first
    # ten or so, which come before the stream is recognised.
    assert st["batches"] <= 60, st
    a.close()
    bob.close()
    carol.close()


def test_checkpoints_follow_commits(make_broker):
    """The checkpoint thread copies the WAL into the database while the
    broker runs, after commits (the writer's WAL hook counts them), and
    passes while nothing is committed."""
    b = make_broker()
    a = Client(b, "alice").connect()
    a.publish("im/u/bob", b"first", qos=1)
    size = lambda: os.path.getsize(b.db_path)            # noqa: E731
    # Settled: the first message's pages are in the database file.
    assert wait_until(lambda: sync_all(a, "u/alice")[0] and size() > 0)
    before = size()
    body = os.urandom(800)
    for i in range(1500):                                # ~2.4 MB of message rows
        a.publish("im/u/bob", body + b"%d" % i, qos=1, wait=(i % 100 == 99))
    assert len(sync_all(a, "u/alice", after=1)[0]) == 1500
    # Copied while the broker runs: the database file grows by the rows.
    assert wait_until(lambda: size() >= before + 1_000_000), (before, size())
    a.close()


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

    def trimmed():
        r = bob.request("sync", pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=pb.SyncBatch)
        return r if r.first_seq == 16 else None
    r = wait_until(trimmed, interval=0.2) or trimmed()
    assert r and r.first_seq == 16 and len(r.frames) == 5
    assert not bob.disconnected.is_set() and not a.disconnected.is_set()
    a.publish("im/u/bob", b"after reload", qos=1)
    assert decode_frame(bob.get().payload)[0].seq == 21     # nothing lost, nothing reused
    log = b.read_log()
    assert "im: reload:" in log and "db_path changed" in log
    # A bad value on reload keeps the running options.
    b.opts["retention_messages"] = "many"
    b.write_conf()
    since = log_offset(b)
    b.proc.send_signal(signal.SIGHUP)
    wait_log(b, "running options are kept", since)
    a.publish("im/u/bob", b"still fine", qos=1)
    assert decode_frame(bob.get().payload)[0].seq == 22
    a.close()
    bob.close()


def test_online_backup_under_load_restores_and_syncs(make_broker, tmp_path):
    """docs/OPERATIONS.md, "Backup and restore", step by step."""
    import os
    import shutil
    import subprocess
    import threading

    tool = os.environ["IM_IMSTORE"]
    b = make_broker()
    stop = threading.Event()
    sent = []

    def load():
        a = Client(b, "alice").connect()
        i = 0
        while not stop.is_set() and i < 50000:               # bounded, stops when told
            a.publish("im/u/bob", b"L%d" % i, qos=1)
            sent.append(i)
            i += 1
        a.close()

    t = threading.Thread(target=load)
    t.start()
    wait_until(lambda: len(sent) >= 200, interval=0.05)      # under load
    backup = str(tmp_path / "backup.db")
    r = subprocess.run([tool, "backup", b.db_path, backup], capture_output=True, text=True, timeout=WAIT)
    after_backup = len(sent)
    wait_until(lambda: len(sent) >= after_backup + 100, interval=0.05)   # and the load goes on
    stop.set()
    t.join()
    assert r.returncode == 0, r.stderr
    assert subprocess.run([tool, "backup", b.db_path, backup], capture_output=True).returncode != 0  # no overwrite
    out = subprocess.run([tool, "inspect", backup, "u/bob"], capture_output=True, text=True, check=True).stdout
    head = int([l for l in out.splitlines() if l.startswith("head ")][0].split()[1])
    assert 0 < head < len(sent)                              # a snapshot taken mid-stream
    alice = Client(b, "alice", v5=True).connect()
    old_id = alice.request("sync", pb.SyncRequest(timeline="u/alice"), response_type=pb.SyncBatch).store_id
    alice.close()

    def restore(keep_journal):
        """Stop, replace the file, drop the old WAL, fix the owner, start."""
        b.stop()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(b.db_path + suffix):
                os.remove(b.db_path + suffix)
        if not keep_journal:
            shutil.rmtree(b.db_path + ".journal")
        shutil.copyfile(backup, b.db_path)
        b._chown(b.dir)
        b.start()
        bob = Client(b, "bob").connect()
        frames, batch = sync_all(bob, "u/bob")
        return bob, frames, batch

    # The journal still holds what came after the backup: it is rolled
    # forward, and nothing acknowledged is lost.
    snapshot = backup + ".copy"
    shutil.copyfile(backup, snapshot)
    bob, frames, batch = restore(keep_journal=True)
    assert [body for _, body in frames] == [b"L%d" % i for i in range(len(sent))]
    assert [h.seq for h, _ in frames] == list(range(1, len(sent) + 1))
    assert batch.store_id != old_id                          # a restored store is a new store
    assert "acknowledged message(s) not yet stored" in b.read_log()
    bob.close()
    # Without the journal the store is the backup, exactly.
    os.remove(backup)
    shutil.copyfile(snapshot, backup)
    bob, frames, batch = restore(keep_journal=False)
    assert [h.seq for h, _ in frames] == list(range(1, head + 1))
    assert [body for _, body in frames] == [b"L%d" % i for i in range(head)]
    assert batch.store_id != old_id
    # The restored store keeps counting from its head.
    a = Client(b, "alice").connect()
    a.publish("im/u/bob", b"after restore", qos=1)
    frames, batch = sync_all(bob, "u/bob", after=head)
    assert [h.seq for h, _ in frames] == [head + 1]
    a.close()
    bob.close()
    listing = subprocess.run([tool, "inspect", b.db_path], capture_output=True, text=True, check=True).stdout
    assert "u/bob" in listing and "u/alice" in listing


def test_prometheus_exporter_reads_the_metrics(make_broker, tmp_path):
    """examples/prometheus/mqtt-exporter.yaml with Debian's exporter."""
    import os
    import subprocess
    import urllib.request

    from imtest import ROOT, free_port

    b = make_broker({"metrics_interval": 1, "nonim_acl": "allow"})
    a = Client(b, "alice").connect()
    for i in range(7):
        a.publish("im/u/bob", b"x%d" % i, qos=1)
    a.close()
    conf = open(os.path.join(ROOT, "examples", "prometheus", "mqtt-exporter.yaml")).read()
    conf = conf.replace("tcp://127.0.0.1:1883", "tcp://127.0.0.1:%d" % b.port)
    path = tmp_path / "exporter.yaml"
    path.write_text(conf)
    port = free_port()
    p = subprocess.Popen(["prometheus-mqtt-exporter", "-config", str(path), "-listen-address", "127.0.0.1",
                          "-listen-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text, value = "", None
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and value != 7.0:
            time.sleep(0.5)                                  # a poll of the exporter
            try:
                text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=WAIT).read().decode()
            except OSError:
                continue
            # mosquitto_im_sequenced{sensor="stats",topic="$SYS/broker/im/stats"} 7 <timestamp>
            line = [l for l in text.splitlines() if l.startswith("mosquitto_im_sequenced{")]
            value = float(line[0].split("}")[1].split()[0]) if line else None
        assert value == 7.0, text[-2000:]
    finally:
        p.terminate()
        p.wait(timeout=WAIT)
