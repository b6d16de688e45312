"""The reference client (clients/c, through imrecv): resume, dedup, gaps,
on a network that drops, a store that was replaced, TOO_MANY."""
import os
import re
import signal
import subprocess
import threading
import time

from imtest import BUILD, WAIT, Client, Lines, log_offset, pb, replace_store, store_id, wait_log, wait_until

IMRECV = os.path.join(BUILD, "examples", "imrecv")


def recv(broker, state, *args):
    return subprocess.Popen([IMRECV, "-p", str(broker.port), "-u", "bob", "-i", "bob-phone",
                             "-s", state] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines_of(out):
    return [l.split(" ", 3) for l in out.decode().splitlines()]


def send_reliably(broker, bodies, acked=None):
    """Sends each body (its own cmid) until acknowledged, reconnecting
    as needed: the sender side of PROTOCOL.md section 7. A connection is
    given up when it drops, never for being slow. Appends each
    acknowledged body to acked."""
    i = 0
    deadline = time.monotonic() + WAIT
    while i < len(bodies):
        assert time.monotonic() < deadline, "could not send %d of %d within %s s" % (len(bodies) - i, len(bodies), WAIT)
        try:
            c = Client(broker, "alice", v5=True)
            c.connect()
            try:
                while i < len(bodies):
                    info = c.publish("im/u/bob", bodies[i], qos=1, cmid=bodies[i].decode(), wait=False)
                    if not c.wait_published(info):
                        raise RuntimeError("connection lost before the acknowledgement")
                    if acked is not None:
                        acked.append(bodies[i])
                    i += 1
            finally:
                c.close()
        except (AssertionError, OSError, RuntimeError):
            time.sleep(0.2)                     # the broker is down: try again shortly


def test_imrecv_resumes_without_loss_or_duplicate(make_broker, tmp_path):
    b = make_broker()
    state = str(tmp_path / "bob.state")
    send_reliably(b, [b"m%d" % i for i in range(50)])
    p = recv(b, state, "-n", "30")
    out1, err = p.communicate(timeout=WAIT)
    assert p.returncode == 0, err
    send_reliably(b, [b"m%d" % i for i in range(50, 80)])
    p = recv(b, state, "-t", "2")                     # stops 2 s after it caught up (by sync)
    out2, err = p.communicate(timeout=WAIT)
    got = lines_of(out1) + lines_of(out2)
    assert [int(l[1]) for l in got] == list(range(1, 81))
    assert [l[3] for l in got] == ["m%d" % i for i in range(80)]
    assert all(l[0] == "u/bob" and l[2] == "alice" for l in got)
    # The reference client acked what it showed: the device's cursor is 80.
    bob = Client(b, "bob", client_id="bob-phone2").connect()
    r = bob.request("sync", pb.SyncRequest(timeline="u/bob"), response_type=pb.SyncBatch)
    assert r.head_seq == 80
    bob.close()


def test_weak_network_every_message_once_in_order(make_broker, tmp_path):
    """The broker is killed and restarted four times while messages flow
    (each time after the sender got some more acknowledged): every message
    arrives once, in order, at a receiver that keeps running."""
    b = make_broker()
    state = str(tmp_path / "bob.state")
    n = 200
    p = recv(b, state, "-n", str(n))
    bodies = [b"w%d" % i for i in range(n)]
    acked = []
    sender = threading.Thread(target=send_reliably, args=(b, bodies, acked))
    sender.start()
    for _ in range(4):
        seen = len(acked)
        wait_until(lambda: len(acked) >= seen + 10 or not sender.is_alive())
        b.kill9()
        b.start()       # same port, same store
    sender.join(timeout=WAIT)
    assert not sender.is_alive()
    assert acked == bodies
    try:
        out, err = p.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=WAIT)
    got = lines_of(out)
    assert [int(l[1]) for l in got] == list(range(1, n + 1)), err.decode()[-2000:]
    assert [l[3].encode() for l in got] == bodies


def test_imrecv_clear_errors(make_broker, tmp_path):
    b = make_broker()
    port = b.port
    b.stop()
    r = subprocess.run([IMRECV, "-p", str(port), "-u", "bob", "-t", "1"], capture_output=True, timeout=WAIT)
    assert r.returncode != 0 and b"cannot connect" in r.stderr


def test_imrecv_pulls_bodies_in_notify_mode(make_broker, tmp_path):
    b = make_broker({"delivery": "notify"})
    state = str(tmp_path / "bob.state")
    since = log_offset(b)
    p = recv(b, state, "-n", "5")
    wait_log(b, "Sending SUBACK to bob-phone", since)  # listening, live: bodies come as notices
    send_reliably(b, [b"n%d" % i for i in range(5)])
    out, err = p.communicate(timeout=WAIT)
    got = lines_of(out)
    assert [l[3] for l in got] == ["n%d" % i for i in range(5)], err   # bodies, not headers


def test_state_of_timelines_not_followed_is_kept(make_broker, tmp_path):
    b = make_broker()
    state = tmp_path / "bob.state"
    state.write_text("g/elsewhere 42\n")
    send_reliably(b, [b"s0"])
    p = recv(b, str(state), "-n", "1")
    p.communicate(timeout=WAIT)
    lines = state.read_text().splitlines()
    assert "u/bob 1" in lines and "g/elsewhere 42" in lines


def finish(p, timeout):
    """communicate(), but a process still running at the deadline is killed
    (and the test fails) instead of outliving the test."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError("still running after %d s; printed %r; stderr %r" % (timeout, out[-500:], err[-2000:]))


def state_store(state):
    """The store id in a state file, or None."""
    m = re.search(r"^store ([0-9a-f]{16})$", state.read_text(), re.M)
    return int(m.group(1), 16) if m else None


def test_imrecv_starts_over_when_the_store_is_replaced(make_broker, tmp_path):
    """The database is replaced while bob is away: the new store hands out
    seqs 1, 2 again; bob's `last` of 5 must not drop them as duplicates."""
    b = make_broker()
    state = tmp_path / "bob.state"
    send_reliably(b, [b"old%d" % i for i in range(5)])
    p = recv(b, str(state), "-n", "5")
    out, err = finish(p, 30)
    assert [(int(l[1]), l[3]) for l in lines_of(out)] == [(i + 1, "old%d" % i) for i in range(5)], err
    old_id = store_id(b)
    assert old_id and state_store(state) == old_id
    assert b"replaced" not in err

    replace_store(b)
    new_id = store_id(b)
    assert new_id and new_id != old_id
    send_reliably(b, [b"new0", b"new1"])
    p = recv(b, str(state), "-n", "2")
    out, err = finish(p, 30)
    assert p.returncode == 0, err
    assert [(int(l[1]), l[2], l[3]) for l in lines_of(out)] == [(1, "alice", "new0"), (2, "alice", "new1")], err
    assert b"the server's message store was replaced" in err
    assert state_store(state) == new_id
    assert "u/bob 2" in state.read_text().splitlines()
    # and it acked them on the new store
    bob = Client(b, "bob", client_id="bob-phone2").connect()
    r = bob.request("ack", pb.Ack(timeline="u/bob", seq=2), response_type=pb.AckResponse)
    bob.close()
    assert r.status == pb.OK and r.head_seq == 2 and r.store_id == new_id


def test_running_imrecv_starts_over_when_the_store_is_replaced(make_broker, tmp_path):
    """The same while bob's client runs: it reconnects to the broker on the
    new store, notices the new store id and delivers the new messages."""
    b = make_broker()
    state = tmp_path / "bob.state"
    p = recv(b, str(state))
    out = Lines(p)
    try:
        send_reliably(b, [b"old%d" % i for i in range(3)])
        assert out.wait(3) == ["u/bob %d alice old%d" % (i + 1, i) for i in range(3)]
        old_id = store_id(b)
        replace_store(b)
        send_reliably(b, [b"new0", b"new1"])
        got = out.wait(5)
        assert got[3:] == ["u/bob 1 alice new0", "u/bob 2 alice new1"], got
        new_id = store_id(b)
        # state_save runs before the next delivery: wait for the file, not a time
        deadline = time.time() + 10
        while state_store(state) != new_id and time.time() < deadline:
            time.sleep(0.05)
        assert state_store(state) == new_id != old_id
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = finish(p, 20)
    assert p.returncode == 0, err
    assert err.count(b"the server's message store was replaced") == 1, err
    assert "u/bob 2" in state.read_text().splitlines()


def test_state_file_without_store_id_is_read(make_broker, tmp_path):
    """A state file from before store ids: its `last` holds, the store id
    the broker reports is taken in without starting over."""
    b = make_broker()
    state = tmp_path / "bob.state"
    state.write_text("u/bob 2\n")
    send_reliably(b, [b"m%d" % i for i in range(4)])
    p = recv(b, str(state), "-n", "2")
    out, err = finish(p, 30)
    assert [(int(l[1]), l[3]) for l in lines_of(out)] == [(3, "m2"), (4, "m3")], err
    assert b"replaced" not in err
    assert state.read_text().splitlines() == ["u/bob 4", "store %016x" % store_id(b)]


def sync_limited(b, timeout=10):
    """The plugin's count of sync requests refused by a limit, once it is
    above 0 ($SYS/broker/im/sync/limited, every metrics_interval)."""
    c = Client(b, "ops").connect()
    c.subscribe("$SYS/broker/im/sync/limited")
    v = 0
    deadline = time.time() + timeout
    try:
        while v == 0 and time.time() < deadline:
            try:
                v = int(c.get(timeout=max(0.01, deadline - time.time())).payload)
            except Exception:
                break
    finally:
        c.close()
    return v


def test_too_many_is_retried_after_retry_after_ms(make_broker, tmp_path):
    """sync_rate 2/s and 5 frames a batch: catching up 40 messages takes
    batches the plugin refuses with TOO_MANY and retry_after_ms; the client
    asks again then and gets every message."""
    b = make_broker({"sync_max_frames": "5", "sync_rate": "2", "metrics_interval": "1", "nonim_acl": "allow"})
    send_reliably(b, [b"r%d" % i for i in range(40)])
    p = recv(b, str(tmp_path / "bob.state"), "-n", "40")
    out, err = finish(p, 60)
    assert p.returncode == 0, err
    assert [(int(l[1]), l[3]) for l in lines_of(out)] == [(i + 1, "r%d" % i) for i in range(40)], err
    assert b"refused" not in err
    assert sync_limited(b) > 0                           # the limit was hit


def test_too_many_without_timeline_with_several_timelines(make_broker, tmp_path):
    """The plugin's per-client limits answer TOO_MANY naming no timeline.
    One frame a batch and reply_bytes_rate 2000 (a bucket of 8000 bytes)
    while 4 timelines hold about 15000 bytes: some of the client's requests
    are refused, whatever the timing (sync_inflight 1 may refuse more).
    Every timeline still catches up, in order."""
    b = make_broker({"sync_max_frames": "1", "reply_bytes_rate": "2000", "sync_inflight": "1",
                     "metrics_interval": "1", "nonim_acl": "allow"})
    body = lambda g, i: b"%s-%d " % (g.encode(), i) + b"x" * 2500
    alice = Client(b, "alice").connect()
    for g in ("g1", "g2", "g3"):
        r = alice.request("group", pb.GroupRequest(op="create", group=g, members=["bob"]),
                          response_type=pb.GroupResponse)
        assert r.status == pb.OK
        for i in range(2):
            alice.publish("im/g/" + g, body(g, i))
    alice.close()
    send_reliably(b, [b"dm"])
    p = subprocess.Popen([IMRECV, "-p", str(b.port), "-u", "bob", "-i", "bob-phone", "-s", str(tmp_path / "s"),
                          "-g", "g1", "-g", "g2", "-g", "g3", "-n", "10"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out, err = finish(p, 60)
    assert p.returncode == 0, err
    got = lines_of(out)
    for g in ("g1", "g2", "g3"):
        assert [(int(l[1]), l[3].encode()) for l in got if l[0] == "g/" + g][1:] == [(i + 2, body(g, i))
                                                                                     for i in range(2)]
    assert [l[3] for l in got if l[0] == "u/bob"] == ["dm"]
    assert b"refused" not in err
    assert sync_limited(b) > 0                           # the limit was hit


def test_events_live_and_the_read_marks_missed_while_away(make_broker, tmp_path):
    """imrecv -e: read marks and typing of bob's inbox and group as they
    happen, and on connect the marks that moved while bob was away (from
    the conversation list and the group's `reads`), each move once. An
    edit made while away comes in order, its original already changed."""
    b = make_broker()
    bob = Client(b, "bob", v5=True).connect()
    alice = Client(b, "alice", v5=True).connect()
    carol = Client(b, "carol", v5=True).connect()
    assert alice.request("group", pb.GroupRequest(op="create", group="team", members=["bob", "carol"]),
                         response_type=pb.GroupResponse).status == pb.OK
    for i in range(3):
        bob.publish("im/u/alice", b"to alice %d" % i)                    # u/alice 1..3
        alice.publish("im/g/team", b"team %d" % i)                       # g/team 2..4
    alice.publish("im/u/bob", b"v1")                                     # u/bob 4 (1..3: bob's copies)
    alice.publish("im/u/bob", b"v2", props={"UserProperty": [("im-edit", "4")]})   # u/bob 5
    ack = lambda c, tl, seq: c.request("ack", pb.Ack(timeline=tl, seq=seq), response_type=pb.AckResponse)
    assert ack(alice, "u/alice", 1).status == pb.OK and ack(carol, "g/team", 2).status == pb.OK

    p = recv(b, str(tmp_path / "bob.state"), "-e", "-g", "team")
    out = Lines(p)
    try:
        got = out.wait(11)
        # messages in order per timeline; the marks moved while away, once each
        assert [l for l in got if l.startswith("u/bob ")][3:] == ["u/bob 4 alice v2", "u/bob 5 alice v2"], got
        assert len([l for l in got if l.startswith("g/team ")]) == 4, got
        assert sorted(l for l in got if l.startswith("event ")) == ["event read g/team carol 2",
                                                                      "event read u/alice alice 1"], got
        # live: a mark that moves, one that does not (another device behind it), typing
        assert ack(alice, "u/alice", 3).status == pb.OK
        alice2 = Client(b, "alice", client_id="alice-tablet", v5=True).connect()
        assert ack(alice2, "u/alice", 2).status == pb.OK
        assert ack(carol, "g/team", 4).status == pb.OK
        for who, tl, on in ((alice, "u/bob", True), (alice, "u/bob", False), (carol, "g/team", True)):
            r = who.request("typing", pb.TypingRequest(timeline=tl, typing=on), response_type=pb.Response)
            assert r.status == pb.OK
        # bob's own mark in the group comes too, once his client acked, at a time of its own
        own = "event read g/team bob 4"
        got = out.wait_for(lambda got: len(got) >= 17 and own in got)
        assert got.count(own) == 1, got
        got.remove(own)
        assert got[11:] == ["event read u/alice alice 3", "event read g/team carol 4", "event typing u/alice alice on",
                           "event typing u/alice alice off", "event typing g/team carol on"], got
        alice2.close()
        # Away again (stopped, the broker restarted): on the next connection
        # only the mark that moved is reported, not the ones reported before.
        # The group's `reads` is answered after the conversation list.
        for c in (alice, bob, carol):
            c.close()
        p.send_signal(signal.SIGSTOP)
        b.kill9()
        b.start()
        alice = Client(b, "alice", v5=True).connect()
        carol = Client(b, "carol", v5=True).connect()
        alice.publish("im/g/team", b"team 3")                                 # g/team 5
        assert ack(carol, "g/team", 5).status == pb.OK
        p.send_signal(signal.SIGCONT)
        got = out.wait_for(lambda got: "event read g/team carol 5" in got and "g/team 5 alice team 3" in got)
        assert [l for l in got[17:] if l.startswith("event ") and " bob " not in l] == [
            "event read g/team carol 5"], got
    finally:
        p.send_signal(signal.SIGCONT)
        p.send_signal(signal.SIGTERM)
        _, err = finish(p, 20)
    assert p.returncode == 0, err
    for c in (alice, carol):
        c.close()
