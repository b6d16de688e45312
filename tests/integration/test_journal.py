"""The journal is the acknowledgement point (issue #12), and a store that
was lost or rolled back is one clients can see (issue #11, finding 15).

- kill -9 with acknowledged messages journaled but not stored, and during a
  burst of five concurrent QoS 2 publishers: nothing acknowledged lost,
  nothing twice, no gap, each publisher's order kept;
- a deleted or damaged write-ahead log, a truncated database: the journal
  rolls forward what it holds and the store id changes, with a warning;
- a torn record at the end of the journal is dropped at start; an
  unwritable journal stops the broker with a line naming it.
"""
import os
import sqlite3
import subprocess
import threading
import time

import pytest

from imtest import Client, decode_frame, pb, sync_all


def wait(cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def stored(b, user="bob"):
    c = Client(b, user, v5=True).connect()
    try:
        frames, batch = sync_all(c, "u/" + user)
        return [(h.seq, body) for h, body in frames], batch
    finally:
        c.close()


def test_acknowledged_but_unstored_survive_kill9(make_broker):
    """The store is locked: messages are acknowledged from the journal and
    wait. kill -9 now; at the next start they are applied exactly once."""
    b = make_broker()
    lock = sqlite3.connect(b.db_path, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    pub = Client(b, "alice").connect()
    for i in range(20):
        pub.publish("im/u/bob", b"j%d" % i, qos=1)          # each waits for its PUBACK
    assert wait(lambda: "database is locked" in b.read_log())
    b.kill9()
    lock.execute("ROLLBACK")
    lock.close()
    pub.c.loop_stop()
    b.start()
    got, batch = stored(b)
    assert [body for _, body in got] == [b"j%d" % i for i in range(20)]
    assert [s for s, _ in got] == list(range(1, 21))
    assert "20 acknowledged message(s) not yet stored" in b.read_log()
    # And the broker takes new messages (the replay left no false backlog).
    pub = Client(b, "alice").connect()
    pub.publish("im/u/bob", b"after", qos=1)
    got, _ = stored(b)
    assert got[-1] == (21, b"after")
    pub.close()
    # Applied once: a second restart replays nothing more.
    b.restart()
    got2, _ = stored(b)
    assert got2 == got


def burst(b, rnd, n_pub, per_pub, cut_after):
    """n_pub publishers send QoS 2 concurrently; kill -9 once cut_after
    PUBCOMPs arrived in all. Returns {publisher: [acknowledged bodies]}."""
    pubs = [Client(b, "p%d" % k, client_id="pub-%d-%d" % (k, time.time_ns())).connect() for k in range(n_pub)]
    sent = [dict() for _ in pubs]

    def run(k):
        for n in range(per_pub):
            body = b"r%d-p%d:%05d" % (rnd, k, n)
            info = pubs[k].c.publish("im/u/bob", body, qos=2)
            sent[k][info.mid] = body

    ts = [threading.Thread(target=run, args=(k,)) for k in range(n_pub)]
    for t in ts:
        t.start()
    ok = wait(lambda: sum(len(p.acks) for p in pubs) >= cut_after, 120)
    assert ok, ("acks", [len(p.acks) for p in pubs], [p.rc for p in pubs])
    b.kill9()
    for t in ts:
        t.join()
    for p in pubs:
        p.c.loop_stop()
    return {k: {sent[k][mid] for mid in list(pubs[k].acks) if mid in sent[k]} for k in range(n_pub)}


def test_kill9_during_concurrent_qos2_bursts_three_rounds(make_broker):
    b = make_broker({"batch_max": 64})
    acked_all = set()
    for rnd in range(3):
        acked = burst(b, rnd, 5, 400, 300)
        acked_all |= set().union(*acked.values())
        b.start()
        got, _ = stored(b)
        bodies = [body for _, body in got]
        assert [s for s, _ in got] == list(range(1, len(got) + 1)), "a gap"
        assert len(set(bodies)) == len(bodies), "stored twice"
        assert acked_all <= set(bodies), "acknowledged but lost: %r" % sorted(acked_all - set(bodies))[:5]
        for k in range(5):
            # Within a round, each publisher's messages keep their order.
            mine = [x for x in bodies if x.split(b"-")[1].startswith(b"p%d:" % k)]
            assert mine == sorted(mine), "publisher %d out of order" % k
    b.stop()


def rows_in_main_file(b):
    """Messages in im.db itself, without its WAL: what checkpoints wrote."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp()
    copy = os.path.join(d, "copy.db")
    shutil.copyfile(b.db_path, copy)
    con = None
    try:
        con = sqlite3.connect(copy)
        return con.execute("SELECT count(*) FROM messages").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        # Closed before the folder goes: a connection left to the garbage
        # collector removed copy.db-wal while rmtree was listing it (CI).
        if con is not None:
            con.close()
        shutil.rmtree(d, ignore_errors=True)


def test_checkpoints_reach_the_database_file(make_broker):
    """The checkpoint thread copies the WAL into im.db while the broker runs
    (it did nothing before 2026-11: its connection had never opened the WAL)."""
    b = make_broker()
    pub = Client(b, "alice").connect()
    for i in range(30):
        pub.publish("im/u/bob", b"c%d" % i, qos=1)
    assert wait(lambda: rows_in_main_file(b) == 60)      # bob's rows and alice's copies
    pub.close()


def test_deleted_wal_rolls_forward_with_a_new_store_id(make_broker):
    b = make_broker()
    pub = Client(b, "alice").connect()
    for i in range(30):
        pub.publish("im/u/bob", b"w%d" % i, qos=1)
    assert wait(lambda: rows_in_main_file(b) == 60)
    reader = hold_wal(b)
    for i in range(30, 40):
        pub.publish("im/u/bob", b"w%d" % i, qos=1)
    before, batch = stored(b)
    assert len(before) == 40
    old_id = batch.store_id
    b.kill9()
    reader.kill()
    reader.wait()
    pub.c.loop_stop()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(b.db_path + suffix):
            os.remove(b.db_path + suffix)
    b.start()
    got, batch = stored(b)
    assert got == before                       # the journal still held the last ten
    assert batch.store_id != old_id            # but the history changed under clients: start over
    assert "lost stored messages" in b.read_log()
    # New messages continue the store.
    a = Client(b, "alice").connect()
    a.publish("im/u/bob", b"after", qos=1)
    got, _ = stored(b)
    assert got[-1] == (41, b"after")
    a.close()


def hold_wal(b):
    """A reader's snapshot, in a process that will be killed (not closed,
    which would checkpoint): commits after it stay in the WAL only."""
    reader = subprocess.Popen(["/usr/bin/python3", "-c",
                               "import sqlite3, sys, time\n"
                               "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "c.execute('BEGIN'); c.execute('SELECT count(*) FROM messages').fetchone()\n"
                               "print('reading', flush=True); time.sleep(600)\n", b.db_path],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "reading"
    return reader


@pytest.mark.parametrize("damage", ["truncate", "garble-wal"])
def test_a_lost_database_is_a_new_store(make_broker, damage):
    b = make_broker()
    pub = Client(b, "alice").connect()
    for i in range(10):
        pub.publish("im/u/bob", b"t%d" % i, qos=1)
    assert wait(lambda: rows_in_main_file(b) == 20)
    reader = hold_wal(b)
    for i in range(10, 15):
        pub.publish("im/u/bob", b"t%d" % i, qos=1)
    _, batch = stored(b)
    old_id = batch.store_id
    b.kill9()
    reader.kill()
    reader.wait()
    pub.c.loop_stop()
    if damage == "truncate":
        open(b.db_path, "wb").close()
        for suffix in ("-wal", "-shm"):
            if os.path.exists(b.db_path + suffix):
                os.remove(b.db_path + suffix)
    else:
        with open(b.db_path + "-wal", "r+b") as f:
            f.seek(32)
            f.write(b"\xff" * 64)          # the WAL header's salts and checksum: every frame is void
    b.start()
    got, batch = stored(b)
    assert batch.store_id != old_id
    log = b.read_log()
    assert "new store id" in log
    # Whatever history the store has now is gap-free and holds no stranger;
    # here the journal held all of it.
    assert [s for s, _ in got] == list(range(1, len(got) + 1))
    assert [body for _, body in got] == [b"t%d" % i for i in range(15)]


def test_torn_tail_is_dropped_at_start(make_broker):
    b = make_broker()
    pub = Client(b, "alice").connect()
    pub.publish("im/u/bob", b"whole", qos=1)
    b.kill9()
    pub.c.loop_stop()
    jdir = b.db_path + ".journal"
    last = sorted(f for f in os.listdir(jdir) if f.endswith(".log"))[-1]
    with open(os.path.join(jdir, last), "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02\x03")       # half a record
    b.start()
    assert "dropping an incomplete record" in b.read_log()
    got, _ = stored(b)
    assert got == [(1, b"whole")]


def test_unwritable_journal_stops_the_broker(make_broker):
    b = make_broker(start=False)
    jdir = os.path.join(b.data, "elsewhere")
    os.makedirs(jdir)
    os.chmod(jdir, 0o500)
    b.opts["journal_dir"] = os.path.join(jdir, "j")
    assert b.start(expect_fail=True) != 0
    assert "im: journal: cannot create" in b.read_log() and jdir in b.read_log()


def test_journal_holds_no_readable_body_with_encryption_at_rest(make_broker):
    b = make_broker(start=False)
    b.opts["store_key_file"] = b.put_file("keys", "1 " + "ab" * 32 + "\n")
    b.start()
    lock = sqlite3.connect(b.db_path, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")              # keep it in the journal for the look
    pub = Client(b, "alice").connect()
    pub.publish("im/u/bob", b"TOP-SECRET-JOURNAL", qos=1)
    jdir = b.db_path + ".journal"
    raw = b"".join(open(os.path.join(jdir, f), "rb").read() for f in os.listdir(jdir) if f.endswith(".log"))
    assert len(raw) > 0 and b"TOP-SECRET" not in raw
    lock.execute("ROLLBACK")
    lock.close()
    got, _ = stored(b)
    assert got == [(1, b"TOP-SECRET-JOURNAL")]
    pub.close()
