"""imchat, the chat command line: send + listen against a real broker,
resume after SIGKILL, a broker that restarts while messages flow, a store
that was replaced, groups, history, and the clear errors (broker down,
plugin missing, login refused)."""
import os
import re
import signal
import subprocess
import threading
import time

from imtest import (BUILD, WAIT, Client, Lines, decode_frame, log_offset, pb, replace_store, store_id, sync_all,
                    wait_log, wait_until)

IMCHAT = os.path.join(BUILD, "examples", "imchat")
LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+) #(\d+) (\S+)(?: \(system\)| -> \S+)?: (.*)$")
RESET = "-- the server's message store was replaced: starting over --"


# How long imchat waits for a reply of the plugin in these tests (its
# default, 3 s, is for people; a loaded ASan broker may take longer).
REPLY_MS = ["--timeout", str(int(WAIT * 1000))]


def imchat(broker_or_port, user, *args, timeout=None, password=None):
    port = broker_or_port if isinstance(broker_or_port, int) else broker_or_port.port
    cmd = [IMCHAT, "-p", str(port), "-u", user]
    if password is not None:
        cmd += ["-P", password]
    if "--timeout" not in args:
        cmd += REPLY_MS
    return subprocess.run(cmd + list(args), capture_output=True, timeout=timeout or WAIT + 30)


def listen(broker, user, state, *args):
    return subprocess.Popen([IMCHAT, "-p", str(broker.port), "-u", user, "-i", user + "-laptop", "-s", state]
                            + REPLY_MS + ["listen"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def parse(out):
    """[(timeline, seq, sender, body)] from listen/history output."""
    got = []
    for line in out.decode().splitlines():
        m = LINE.match(line)
        assert m, "unexpected line: %r" % line
        got.append((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
    return got


def send(broker, user, to, text, *extra):
    r = imchat(broker, user, "send", to, text, *extra)
    assert r.returncode == 0, r.stderr.decode()
    m = re.match(r"^u/%s seq (\d+) \(own copy u/%s seq (\d+)\)( duplicate)?$" % (to, user), r.stdout.decode().strip())
    assert m, r.stdout
    return int(m.group(1)), bool(m.group(3))


def test_send_prints_seq_and_repeat_is_a_duplicate(make_broker):
    b = make_broker()
    assert send(b, "alice", "bob", "hi") == (1, False)
    assert send(b, "alice", "bob", "two", "--cmid", "c-2") == (2, False)
    assert send(b, "alice", "bob", "two", "--cmid", "c-2") == (2, True)   # stored once
    assert send(b, "carol", "bob", "from carol") == (3, False)
    r = imchat(b, "bob", "history", "u/bob")
    assert [(s, f, body) for _, s, f, body in parse(r.stdout)] == [
        (1, "alice", "hi"), (2, "alice", "two"), (3, "carol", "from carol")]
    r = imchat(b, "bob", "history", "u/bob", "--last", "2")
    assert [s for _, s, _, _ in parse(r.stdout)] == [2, 3]
    # alice's own copies name the peer
    r = imchat(b, "alice", "history", "u/alice")
    assert "alice -> bob: hi" in r.stdout.decode()


def test_two_users_chat_with_send_and_listen(make_broker, tmp_path):
    b = make_broker()
    state = str(tmp_path / "bob.state")
    p = listen(b, "bob", state, "-n", "10")         # live or by sync: the same 10 lines
    for i in range(10):
        send(b, "alice", "bob", "m%d" % i)
    out, err = p.communicate(timeout=WAIT)
    assert p.returncode == 0, err.decode()
    got = parse(out)
    assert [(t, s, f, body) for t, s, f, body in got] == [("u/bob", i + 1, "alice", "m%d" % i) for i in range(10)]
    # the state file holds `last` and the store it counts in; a second listen shows nothing again
    assert open(state).read().splitlines() == ["u/bob 10", "store %016x" % store_id(b)]
    p = listen(b, "bob", state, "-t", "1")
    out, err = p.communicate(timeout=WAIT)
    assert p.returncode == 0 and out == b"", err.decode()


def test_groups_and_group_messages(make_broker, tmp_path):
    b = make_broker()
    r = imchat(b, "alice", "group", "create", "team", "bob", "carol")
    assert r.returncode == 0 and r.stdout.decode().startswith("create team: ok"), r.stderr
    r = imchat(b, "alice", "group", "create", "team")
    assert r.returncode == 1 and b"409" in r.stderr and b"conflict" in r.stderr
    for who, text in (("carol", "hello team"), ("bob", "hi carol")):
        r = imchat(b, who, "send", "-g", "team", text)
        assert r.returncode == 0 and r.stdout.decode().startswith("g/team seq"), r.stderr
    r = imchat(b, "dave", "send", "-g", "team", "intruder")
    assert r.returncode == 1 and b"not authorised" in r.stderr
    r = imchat(b, "bob", "group", "info", "team")
    assert r.stdout.decode().splitlines() == ["team owner alice head 3", "members: alice bob carol"]
    assert imchat(b, "alice", "group", "add", "team", "dave").returncode == 0
    assert imchat(b, "dave", "group", "leave", "team").returncode == 0
    assert imchat(b, "alice", "group", "remove", "team", "carol").returncode == 0
    r = imchat(b, "bob", "group", "list")
    assert r.stdout.decode().splitlines() == ["team head 6 unread 6"]
    # bob's listen follows his groups; the system messages show who changed what
    state = str(tmp_path / "bob.state")
    p = listen(b, "bob", state, "-t", "1")
    out, err = p.communicate(timeout=WAIT)
    got = [(t, s, f) for t, s, f, _ in parse(out)]
    assert got == [("g/team", 1, "alice"), ("g/team", 2, "carol"), ("g/team", 3, "bob"), ("g/team", 4, "alice"),
                   ("g/team", 5, "dave"), ("g/team", 6, "alice")], err.decode()
    assert "g/team #2 carol: hello team" in out.decode()
    assert "(system)" in out.decode().splitlines()[0]
    # unread from the state file of this machine's listen
    r = subprocess.run([IMCHAT, "-p", str(b.port), "-u", "bob", "-s", state] + REPLY_MS + ["group", "list"],
                       capture_output=True, timeout=WAIT)
    assert r.stdout.decode().splitlines() == ["team head 6 unread 0"]
    r = imchat(b, "carol", "history", "team")
    assert r.returncode == 1 and b"403 forbidden" in r.stderr, r.stderr


def test_listener_killed_resumes_without_loss_or_duplicate(make_broker, tmp_path):
    b = make_broker()
    state = str(tmp_path / "bob.state")
    p = listen(b, "bob", state)
    for i in range(15):
        send(b, "alice", "bob", "a%d" % i)
    # wait until the listener printed the burst and saved its state, then kill -9
    lines = [p.stdout.readline() for _ in range(15)]
    assert wait_until(lambda: "u/bob 15" in open(state).read().splitlines(), interval=0.05), \
        "the listener did not save its state"
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = parse(b"".join(lines))
    for i in range(15, 30):                    # sent while the listener is dead
        send(b, "alice", "bob", "a%d" % i)
    since = log_offset(b)
    p = listen(b, "bob", state, "-n", "25")
    wait_log(b, "Sending SUBACK to bob-laptop", since)
    for i in range(30, 40):                    # sent while it runs again
        send(b, "alice", "bob", "a%d" % i)
    out, err = p.communicate(timeout=WAIT)
    got = first + parse(out)
    assert [s for _, s, _, _ in got] == list(range(1, 41)), err.decode()
    assert [body for _, _, _, body in got] == ["a%d" % i for i in range(40)]


def test_weak_network_broker_restarts_while_messages_flow(make_broker, tmp_path):
    """The broker is killed and restarted (same port, same store) four
    times, each after alice got a few more messages through with imchat,
    while bob listens: every message arrives once, in order."""
    b = make_broker()
    state = str(tmp_path / "bob.state")
    n = 40
    p = listen(b, "bob", state, "-n", str(n))
    failures = []
    done = []

    def sender():
        for i in range(n):
            # A failed run is retried with the same cmid: stored once anyway.
            for _attempt in range(3):
                r = imchat(b, "alice", "send", "bob", "w%d" % i, "--cmid", "w-%d" % i, "--retry", "20")
                if r.returncode == 0:
                    done.append(i)
                    break
                failures.append(r.stderr.decode())

    t = threading.Thread(target=sender)
    t.start()
    restarts = 0
    while t.is_alive() and restarts < 4:
        seen = len(done)
        wait_until(lambda: len(done) >= seen + 3 or not t.is_alive(), interval=0.05)
        b.kill9()
        b.start()
        restarts += 1
    t.join(timeout=WAIT * 3)
    assert not t.is_alive()
    try:
        out, err = p.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=WAIT)
    got = parse(out)
    assert restarts >= 3
    assert [s for _, s, _, _ in got] == list(range(1, n + 1)), (err.decode()[-2000:], failures)
    assert [body for _, _, _, body in got] == ["w%d" % i for i in range(n)]


def test_clear_errors(make_broker, tmp_path):
    # broker down
    b = make_broker()
    port = b.port
    b.stop()
    for args in (["send", "bob", "hi"], ["group", "list"], ["listen"], ["history", "u/alice"]):
        r = imchat(port, "alice", *args, "-s", str(tmp_path / "x.state"))
        assert r.returncode == 1, args
        assert ("cannot connect to 127.0.0.1:%d: Connection refused" % port).encode() in r.stderr, r.stderr

    # a broker without the plugin: requests and sends get no reply
    np = make_broker({"nonim_acl": "allow"}, plugin=False)
    for args, where in ((["send", "bob", "hi"], "im/u/bob"), (["group", "list"], "$CONTROL/im/v1/group"),
                        (["history", "u/alice"], "$CONTROL/im/v1/sync"), (["listen"], "$CONTROL/im/v1/group")):
        t0 = time.monotonic()
        r = imchat(np, "alice", *args, "--timeout", "1000", "-s", str(tmp_path / "x.state"))
        assert r.returncode == 1, args
        assert ("no reply from the mosquitto-im plugin on %s within 1000 ms" % where).encode() in r.stderr, r.stderr
        assert b"is the plugin loaded?" in r.stderr
        assert time.monotonic() - t0 >= 1.0           # it did wait as long as asked (and then gave up)

    # refused login on a broker with a password file
    pw = make_broker(start=False)
    pwfile = os.path.join(pw.dir, "passwords")
    subprocess.run(["mosquitto_passwd", "-c", "-b", pwfile, "alice", "s3cret"], check=True, capture_output=True)
    os.chmod(pwfile, 0o644)
    pw.extra_conf = "allow_anonymous false\npassword_file %s" % pwfile
    pw.start()
    r = imchat(pw, "alice", "send", "bob", "hi", password="wrong")
    assert r.returncode == 1 and b"not authorised" in r.stderr, r.stderr
    r = imchat(pw, "mallory", "group", "list")
    assert r.returncode == 1 and b"not authorised" in r.stderr, r.stderr
    r = imchat(pw, "alice", "send", "bob", "hi", password="s3cret")
    assert r.returncode == 0 and r.stdout.startswith(b"u/bob seq 1"), r.stderr

    # usage errors exit 2
    assert subprocess.run([IMCHAT, "send", "bob", "hi"], capture_output=True).returncode == 2


def test_compressed_bodies_are_shown_as_sent(make_broker, tmp_path):
    b = make_broker({"compress_min_bytes": "64"})
    long_text = "the quick brown fox jumps over the lazy dog " * 20
    send(b, "alice", "bob", long_text)
    send(b, "alice", "bob", "short")
    bob = Client(b, "bob").connect()
    frames, _ = sync_all(bob, "u/bob")
    bob.close()
    assert [h.flags & pb.FLAG_COMPRESSED for h, _ in frames] == [pb.FLAG_COMPRESSED, 0]   # really deflated
    r = imchat(b, "bob", "history", "u/bob")
    assert [body for _, _, _, body in parse(r.stdout)] == [long_text, "short"], r.stderr
    p = listen(b, "bob", str(tmp_path / "bob.state"), "-n", "2")
    out, err = p.communicate(timeout=WAIT)
    assert [body for _, _, _, body in parse(out)] == [long_text, "short"], err


def test_listen_starts_over_when_the_store_is_replaced(make_broker, tmp_path):
    """bob listens while the broker's database is replaced: the new store
    hands out seqs 1, 2 again; listen says so and prints them."""
    b = make_broker()
    state = str(tmp_path / "bob.state")
    p = listen(b, "bob", state)
    out = Lines(p)
    try:
        for i in range(3):
            send(b, "alice", "bob", "old%d" % i)
        assert [(s, body) for _, s, _, body in parse("\n".join(out.wait(3)).encode())] == [
            (1, "old0"), (2, "old1"), (3, "old2")]
        old_id = store_id(b)
        replace_store(b)
        assert send(b, "alice", "bob", "new0") == (1, False)
        assert send(b, "alice", "bob", "new1") == (2, False)
        got = out.wait(6)
        assert got[3] == RESET, got
        assert parse("\n".join(got[4:]).encode()) == [("u/bob", 1, "alice", "new0"), ("u/bob", 2, "alice", "new1")]
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err.decode()
    new_id = store_id(b)
    assert new_id != old_id
    assert open(state).read().splitlines() == ["u/bob 2", "store %016x" % new_id]


def test_group_list_and_listen_after_the_store_was_replaced(make_broker, tmp_path):
    """`group list` counts unread from listen's state file only while that
    file counts in the server's store; the next listen starts over."""
    b = make_broker()
    state = str(tmp_path / "bob.state")
    assert imchat(b, "alice", "group", "create", "team", "bob").returncode == 0
    for text in ("g1", "g2"):
        assert imchat(b, "alice", "send", "-g", "team", text).returncode == 0
    p = listen(b, "bob", state, "-t", "1")
    out, err = p.communicate(timeout=30)
    assert [(t, s) for t, s, _, _ in parse(out)] == [("g/team", 1), ("g/team", 2), ("g/team", 3)], err
    group_list = [IMCHAT, "-p", str(b.port), "-u", "bob", "-s", state, "group", "list"]
    assert subprocess.run(group_list, capture_output=True).stdout.decode().splitlines() == ["team head 3 unread 0"]

    replace_store(b)
    assert imchat(b, "alice", "group", "create", "team", "bob").returncode == 0
    assert imchat(b, "alice", "send", "-g", "team", "fresh").returncode == 0
    # state says g/team 3, but of the old store: the server's count holds
    assert subprocess.run(group_list, capture_output=True).stdout.decode().splitlines() == ["team head 2 unread 2"]
    p = listen(b, "bob", state, "-t", "1")
    out, err = p.communicate(timeout=30)
    lines = out.decode().splitlines()
    assert lines[0] == RESET, (lines, err)
    got = parse("\n".join(lines[1:]).encode())
    assert [(t, s) for t, s, _, _ in got] == [("g/team", 1), ("g/team", 2)], err
    assert got[1][3] == "fresh"
    assert subprocess.run(group_list, capture_output=True).stdout.decode().splitlines() == ["team head 2 unread 0"]


# Conversations (issue #15): edit, recall, typing, conversations; listen
# and history show changes and the others' read marks and typing.
CHANGE = r"((?: \((?:edit|recall) of #\d+\)| \(edited\)| \(recalled\))*)"
CLINE = re.compile(r"^\d\d:\d\d:\d\d (\S+) #(\d+) (\S+)(?: \(system\)| -> \S+)?%s: (.*)$" % CHANGE)
EVENT = re.compile(r"^\d\d:\d\d:\d\d (\S+) (\S+) (read up to #\d+|is typing|stopped typing)$")


def parse_changes(lines):
    """[(timeline, seq, sender, changes, body)] of message lines, [(timeline, user, what)] of event lines."""
    msgs, events = [], []
    for line in lines:
        m = CLINE.match(line)
        if m:
            msgs.append((m.group(1), int(m.group(2)), m.group(3), m.group(4).strip(), m.group(5)))
            continue
        e = EVENT.match(line)
        assert e, "unexpected line: %r" % line
        events.append(e.groups())
    return msgs, events


def ok(r):
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout.decode()


def test_edit_recall_and_typing_commands(make_broker):
    b = make_broker()
    assert send(b, "alice", "bob", "hello") == (1, False)
    assert send(b, "alice", "bob", "second") == (2, False)
    assert ok(imchat(b, "alice", "edit", "bob", "1", "hello!")) == "u/bob seq 3 (own copy u/alice seq 3) (edit of #1)\n"
    # by the seq of my own copy, as listen shows it: changed through the original
    assert ok(imchat(b, "alice", "edit", "u/alice", "2", "second!")).endswith("(edit of #2)\n")
    assert ok(imchat(b, "alice", "recall", "u/bob", "2")) == "u/bob seq 5 (own copy u/alice seq 5) (recall of #2)\n"
    for who, args, err in (("alice", ["recall", "bob", "9"], b"404 not found"),
                           ("carol", ["edit", "bob", "1", "mine now"], b"403 forbidden: only its sender may edit"),
                           ("alice", ["edit", "bob", "2", "again"], b"409 conflict"),
                           ("alice", ["edit", "bob", "0", "x"], b"invalid seq '0'"),
                           ("alice", ["edit", "u/alice", "7", "x"], b"no message #7 in u/alice")):
        r = imchat(b, who, *args)
        assert r.returncode == 1 and err in r.stderr, (args, r.stderr)
    r = imchat(b, "alice", "edit", "bob", "1")
    assert r.returncode == 1 and b"usage: edit USER SEQ TEXT" in r.stderr
    msgs, _ = parse_changes(ok(imchat(b, "bob", "history", "u/bob")).splitlines())
    assert [(s, c, body) for _, s, _, c, body in msgs] == [
        (1, "(edited)", "hello!"), (2, "(edited) (recalled)", ""), (3, "(edit of #1)", "hello!"),
        (4, "(edit of #2) (recalled)", ""), (5, "(recall of #2)", "")]
    msgs, _ = parse_changes(ok(imchat(b, "alice", "history", "u/alice")).splitlines())
    assert [(s, c) for _, s, _, c, _ in msgs][2:] == [(3, "(edit of #1)"), (4, "(edit of #2) (recalled)"),
                                                      (5, "(recall of #2)")]

    # a group: its owner may recall anyone's message
    assert imchat(b, "alice", "group", "create", "team", "bob").returncode == 0
    assert ok(imchat(b, "bob", "send", "-g", "team", "oops")) == "g/team seq 2\n"
    assert ok(imchat(b, "bob", "edit", "-g", "team", "2", "fine")) == "g/team seq 3 (edit of #2)\n"
    assert ok(imchat(b, "alice", "recall", "g/team", "2")) == "g/team seq 4 (recall of #2)\n"

    # typing reaches who is online, and only them
    bob = Client(b, "bob", v5=True).connect()
    bob.subscribe("im/e/u/bob")
    bob.subscribe("im/e/g/team")
    assert ok(imchat(b, "alice", "typing", "bob")) == "u/bob: typing\n"
    assert ok(imchat(b, "alice", "typing", "bob", "off")) == "u/bob: stopped typing\n"
    assert ok(imchat(b, "alice", "typing", "-g", "team", "on")) == "g/team: typing\n"
    got = [decode_frame(m.payload)[0].event for m in bob.get_n(3)]
    assert [(e.kind, e.user, e.timeline, e.typing) for e in got] == [
        (pb.Event.TYPING, "alice", "u/alice", True), (pb.Event.TYPING, "alice", "u/alice", False),
        (pb.Event.TYPING, "alice", "g/team", True)]
    bob.close()
    r = imchat(b, "eve", "typing", "-g", "team")
    assert r.returncode == 1 and b"403 forbidden: not a member of the group" in r.stderr, r.stderr
    r = imchat(b, "alice", "typing", "bob", "maybe")
    assert r.returncode == 1 and b"on or off" in r.stderr


CONV = re.compile(r"^(\S+) unread (\d+)(?: read #(\d+))? last #(\d+) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+)%s: (.*)$"
                  % r"((?: \((?:system|edit|recall)\))*)")


def conversations(b, user, *args):
    out = []
    for line in ok(imchat(b, user, "conversations", *args)).splitlines():
        m = CONV.match(line)
        assert m, "unexpected line: %r" % line
        tl, unread, read, last, sender, flags, preview = m.groups()
        out.append((tl, int(unread), int(read) if read else None, int(last), sender, flags.strip(), preview))
    return out


def test_conversations_command(make_broker):
    b = make_broker({"new_timelines_per_min": 0})
    send(b, "bob", "alice", "from bob 1")
    send(b, "bob", "alice", "from bob 2")
    assert imchat(b, "carol", "group", "create", "team", "alice").returncode == 0
    assert imchat(b, "carol", "send", "-g", "team", "hi team").returncode == 0
    send(b, "carol", "alice", "psst")
    assert imchat(b, "carol", "recall", "alice", "3").returncode == 0            # u/alice #3, #4 the recall
    assert conversations(b, "alice") == [
        ("u/carol", 1, None, 4, "carol", "(recall)", "(no preview)"),   # the recall is not one more to read
        ("g/team", 2, None, 2, "carol", "", "hi team"),
        ("u/bob", 2, None, 2, "bob", "", "from bob 2")]
    # alice's device reads up to her #2 and answers bob: bob sees how far she read
    alice = Client(b, "alice", client_id="alice-phone", v5=True).connect()
    assert alice.request("ack", pb.Ack(timeline="u/alice", seq=2), response_type=pb.AckResponse).status == pb.OK
    alice.close()
    send(b, "alice", "bob", "thanks")
    assert conversations(b, "alice")[0] == ("u/bob", 0, None, 5, "alice", "", "thanks")
    assert conversations(b, "bob") == [("u/alice", 1, 2, 3, "alice", "", "thanks")]
    assert [c[0] for c in conversations(b, "alice", "--limit", "2")] == ["u/bob", "u/carol"]
    # more than one page (200): asked page after page, latest first
    c = Client(b, "zed", v5=True).connect()
    for i in range(203):
        c.publish("im/u/p%03d" % i, b"hi %d" % i)
    c.close()
    every = conversations(b, "zed")
    assert [x[0] for x in every] == ["u/p%03d" % i for i in reversed(range(203))]
    assert [x[0] for x in conversations(b, "zed", "--limit", "201")] == [x[0] for x in every[:201]]
    r = imchat(b, "zed", "conversations", "--limit", "0")
    assert r.returncode == 1 and b"--limit" in r.stderr


def test_listen_shows_read_marks_typing_and_changes(make_broker, tmp_path):
    """alice listens: her copies, the edits and recalls she makes, bob's read
    marks (the one he made while she was away, then live) and his typing;
    not her own read marks (a group tells every member, her too)."""
    b = make_broker()
    assert imchat(b, "alice", "group", "create", "team", "bob").returncode == 0
    send(b, "alice", "bob", "one")
    send(b, "alice", "bob", "two")
    bob = Client(b, "bob", client_id="bob-phone", v5=True).connect()
    ack = lambda tl, seq: bob.request("ack", pb.Ack(timeline=tl, seq=seq), response_type=pb.AckResponse)
    assert ack("u/bob", 1).status == pb.OK
    p = listen(b, "alice", str(tmp_path / "alice.state"))
    out = Lines(p)
    try:
        msgs, events = parse_changes(out.wait(4))
        assert sorted((tl, s, body) for tl, s, _, _, body in msgs)[1:] == [("u/alice", 1, "one"), ("u/alice", 2, "two")]
        assert events == [("u/bob", "bob", "read up to #1")]               # moved while she was away
        n = len(out.got)
        assert ack("u/bob", 2).status == pb.OK
        assert ok(imchat(b, "bob", "typing", "alice")) == "u/alice: typing\n"
        assert ok(imchat(b, "alice", "edit", "bob", "2", "two!")).endswith("(edit of #2)\n")
        assert ok(imchat(b, "alice", "recall", "u/alice", "1")).endswith("(recall of #1)\n")
        assert ok(imchat(b, "bob", "typing", "alice", "off")) == "u/alice: stopped typing\n"
        lines = out.wait(n + 5)[n:]
        msgs, events = parse_changes(lines)
        assert [(tl, s, c, body) for tl, s, _, c, body in msgs] == [
            ("u/alice", 3, "(edit of #2)", "two!"), ("u/alice", 4, "(recall of #1)", "")]
        assert events == [("u/bob", "bob", "read up to #2"), ("u/bob", "bob", "is typing"),
                          ("u/bob", "bob", "stopped typing")]
        # in this order: each line is the answer to the step that caused it
        assert [l.split(" ", 1)[1] for l in lines] == [
            "u/bob bob read up to #2", "u/bob bob is typing", "u/alice #3 alice -> bob (edit of #2): two!",
            "u/alice #4 alice -> bob (recall of #1): ", "u/bob bob stopped typing"]
        # her listen acks what bob writes in the group: that mark is hers, not shown
        n = len(out.got)
        assert ok(imchat(b, "bob", "send", "-g", "team", "hi team")) == "g/team seq 2\n"
        reads = lambda: bob.request("reads", pb.ReadsRequest(timeline="g/team"), response_type=pb.ReadsResponse)
        assert wait_until(lambda: ("alice", 2) in [(m.user, m.seq) for m in reads().marks])
        assert ok(imchat(b, "bob", "typing", "-g", "team")) == "g/team: typing\n"
        msgs, events = parse_changes(out.wait(n + 2)[n:])
        assert [(tl, s, f, body) for tl, s, f, _, body in msgs] == [("g/team", 2, "bob", "hi team")]
        assert events == [("g/team", "bob", "is typing")]
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err.decode()
    bob.close()
