"""The reference client (examples/client, imrecv): resume, dedup, gaps,
on a network that drops."""
import os
import signal
import subprocess
import threading
import time

from imtest import BUILD, WAIT, Client, log_offset, pb, wait_log, wait_until

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
