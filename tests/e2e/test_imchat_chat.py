"""imchat's interactive mode, driven through a pipe against a real broker
with the plugin: alice's imchat shows her conversation list, `/open bob`
shows what bob wrote and marks it read, a typed line reaches bob, and
bob's next message, his read mark and his typing appear in alice's output
as they come. bob is a plain MQTT v5 client (paho) reading frames and
events; carol writes from the one-shot `imchat send`. On a terminal (a
pty), keys say alice is typing and the line being typed survives output.

Runs in the plain pass only (tests/CMakeLists.txt: e2e_imchat_chat)."""
import os
import pty
import re
import select
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import pytest  # noqa: E402

from imtest import BUILD, WAIT, Broker, Client, Lines, decode_frame, pb, wait_until  # noqa: E402

IMCHAT = os.path.join(BUILD, "examples", "imchat")
TIME = r"\d\d:\d\d:\d\d"


@pytest.fixture
def broker():
    b = Broker()
    b.start()
    yield b
    b.cleanup()


def imchat(b, user, *args):
    r = subprocess.run([IMCHAT, "-p", str(b.port), "-u", user, "--timeout", str(int(WAIT * 1000))] + list(args),
                       capture_output=True, timeout=WAIT + 30)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def events(client, kind):
    """The events of `kind` among what client received so far, taken out
    (also from what its requests put aside meanwhile)."""
    out, rest = [], []
    got, client.stash = client.stash + client.drain(), []
    for m in got:
        h, _ = decode_frame(m.payload)
        if m.topic.startswith("im/e/") and h.event.kind == kind:
            out.append(h.event)
        else:
            rest.append(m)
    client.stash = rest
    return out


def test_chat_through_a_pipe(broker, tmp_path):
    b = broker
    bob = Client(b, "bob", client_id="bob-phone", v5=True).connect()
    bob.subscribe("im/u/bob")
    bob.subscribe("im/e/u/bob")
    # before alice starts: bob wrote to her, and a group with both
    assert imchat(b, "bob", "send", "alice", "hello alice").startswith("u/alice seq 1 ")
    assert imchat(b, "alice", "group", "create", "team", "bob").startswith("create team: ok")

    p = subprocess.Popen([IMCHAT, "-p", str(b.port), "-u", "alice", "-i", "alice-chat", "-s", str(tmp_path / "a.state"),
                          "--timeout", str(int(WAIT * 1000))],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = Lines(p)
    seen = 0

    def expect(pattern, what):
        """Waits for a line matching pattern after those matched before."""
        nonlocal seen
        rx = re.compile(pattern)
        got = out.wait_for(lambda lines: any(rx.search(l) for l in lines[seen:]), WAIT)
        hits = [i for i in range(seen, len(got)) if rx.search(got[i])]
        assert hits, "%s: no line like %r in\n%s" % (what, pattern, "\n".join(got))
        seen = hits[0] + 1
        return got[hits[0]]

    def type_line(text):
        p.stdin.write(text.encode() + b"\n")
        p.stdin.flush()

    try:
        # the conversation list at start: the group (created last) and bob, with unread counts
        expect(r"^conversations:$", "the list")
        expect(r"^  g/team unread 1 last #1 .* alice \(system\): ", "the group in the list")
        expect(r"^  u/bob unread 1 last #1 .* bob: hello alice$", "bob in the list")
        # nothing of bob's is read before it is shown
        assert events(bob, pb.Event.READ) == []

        # /open bob: what he wrote while she was away, then marked read (bob learns it)
        type_line("/open bob")
        expect(r"^-- u/bob --$", "the open conversation")
        expect(r"^%s #1 bob: hello alice$" % TIME, "bob's message, shown on /open")
        assert wait_until(lambda: [(e.user, e.timeline, e.seq) for e in events(bob, pb.Event.READ)]
                          == [("alice", "u/alice", 1)]), "alice's read mark did not reach bob"

        # a typed line goes to the open conversation: bob gets it, alice sees her copy
        type_line("hi bob, how are you?")
        m = bob.get()
        while m.topic != "im/u/bob":
            m = bob.get()
        h, body = decode_frame(m.payload)
        assert (h.sender, body, h.seq) == ("alice", b"hi bob, how are you?", 2)
        expect(r"^%s #2 alice: hi bob, how are you\?$" % TIME, "alice's own copy")

        # bob answers, reads her message and types: each appears as it comes
        assert imchat(b, "bob", "send", "alice", "fine, thanks").startswith("u/alice seq 3 ")
        expect(r"^%s #3 bob: fine, thanks$" % TIME, "bob's answer")
        assert bob.request("ack", pb.Ack(timeline="u/bob", seq=2), response_type=pb.AckResponse).status == pb.OK
        expect(r"^%s bob read up to #2$" % TIME, "bob's read mark, as the seq of her copy")
        r = bob.request("typing", pb.TypingRequest(timeline="u/alice", typing=True), response_type=pb.Response)
        assert r.status == pb.OK
        expect(r"^%s bob is typing$" % TIME, "bob typing")

        # carol writes meanwhile: shown beside the open conversation, not read until opened
        assert imchat(b, "carol", "send", "alice", "psst").startswith("u/alice seq 4 ")
        expect(r"^\[u/carol\] %s #4 carol: psst$" % TIME, "carol's message, beside")
        assert imchat(b, "bob", "send", "alice", "still there?").startswith("u/alice seq 5 ")
        expect(r"^%s #5 bob: still there\?$" % TIME, "bob again")
        # alice's mark stops below carol's message, at #3: bob hears of #3,
        # and the list (asked on alice's connection after the ack of #5
        # would have gone) still counts carol's #4 and bob's #5 above it
        assert wait_until(lambda: 3 in [e.seq for e in events(bob, pb.Event.READ)]), "mark of #3"
        type_line("/convs")
        expect(r"^conversations:$", "the list again")
        expect(r"^  u/bob unread 1 read #2 last #5 .* bob: still there\?$", "bob's, above the mark")
        expect(r"^  u/carol unread 1 last #4 .* carol: psst$", "carol's, not read")
        type_line("/open u/carol")
        expect(r"^-- u/carol --$", "carol's conversation")
        expect(r"^%s #4 carol: psst$" % TIME, "carol's message, shown on /open")
        marks = []
        assert wait_until(lambda: marks.extend(e.seq for e in events(bob, pb.Event.READ)) or 5 in marks), \
            "the mark did not pass carol's message once it was shown"
        assert marks == [5], marks

        # bob's edit and recall, in the conversation now in the background
        assert "(edit of #5)" in imchat(b, "bob", "edit", "alice", "5", "still there?!")
        expect(r"^\[u/bob\] %s #6 bob \(edit of #5\): still there\?!$" % TIME, "bob's edit")
        assert "(recall of #3)" in imchat(b, "bob", "recall", "alice", "3")
        expect(r"^\[u/bob\] %s #7 bob \(recall of #3\): $" % TIME, "bob's recall")

        # a group by its timeline; /quit leaves with exit 0
        type_line("/open g/team")
        expect(r"^-- g/team --$", "the group")
        type_line("hello team")
        expect(r"^%s #2 alice: hello team$" % TIME, "alice's group message")
        type_line("/quit")
        assert p.wait(timeout=WAIT) == 0, p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        bob.close()


def test_what_was_never_shown_comes_again_after_a_restart(broker, tmp_path):
    """A message kept for a conversation that was not opened is not taken
    as read when the chat ends: the next start delivers it again, and
    /open shows it and marks it read then."""
    b = broker
    args = [IMCHAT, "-p", str(b.port), "-u", "alice", "-i", "alice-chat", "-s", str(tmp_path / "a.state"),
            "--timeout", str(int(WAIT * 1000))]
    assert imchat(b, "carol", "send", "alice", "psst").startswith("u/alice seq 1 ")

    def run(lines, want):
        p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = Lines(p)
        got = out.wait_for(lambda got: "conversations:" in got, WAIT)
        p.stdin.write("".join(l + "\n" for l in lines).encode())
        p.stdin.flush()
        got = out.wait_for(lambda got: want(got), WAIT)
        assert want(got), got
        p.stdin.write(b"/quit\n")
        p.stdin.close()
        assert p.wait(timeout=WAIT) == 0, p.stderr.read().decode()
        return got

    # alice talks to bob only, and leaves: carol's message stays unread
    got = run(["/open bob", "hi bob"], lambda got: any(l.endswith("#2 alice: hi bob") for l in got))
    assert not any(re.search(r"%s #1 carol: psst$" % TIME, l) for l in got), got   # kept, not shown
    assert "u/carol unread 1 " in imchat(b, "alice", "conversations")
    # the next start has it again: shown in carol's conversation, then read
    got = run(["/open carol"], lambda got: any(re.match(r"^%s #1 carol: psst$" % TIME, l) for l in got))
    assert wait_until(lambda: "u/carol unread 0 " in imchat(b, "alice", "conversations")), "not read"


def test_chat_on_a_terminal(broker, tmp_path):
    """On a terminal (a pty here) the line is edited with libedit: keys in
    the open conversation tell bob alice is typing, a message that arrives
    meanwhile is printed above the line being typed, which stays as it was,
    and Enter sends the whole line and says she stopped."""
    b = broker
    bob = Client(b, "bob", client_id="bob-phone", v5=True).connect()
    bob.subscribe("im/u/bob")
    bob.subscribe("im/e/u/bob")
    assert imchat(b, "bob", "send", "alice", "yo").startswith("u/alice seq 1 ")
    master, slave = pty.openpty()
    p = subprocess.Popen([IMCHAT, "-p", str(b.port), "-u", "alice", "-i", "alice-tty", "-s", str(tmp_path / "a.state"),
                          "--timeout", str(int(WAIT * 1000))],
                         stdin=slave, stdout=slave, stderr=slave, env=dict(os.environ, TERM="xterm"))
    os.close(slave)
    screen = [b""]

    def until(what, pattern):
        """Reads the terminal until pattern is in what came since the last match."""
        rx = re.compile(pattern.encode())
        deadline = time.monotonic() + WAIT
        while not rx.search(screen[0]):
            assert time.monotonic() < deadline, "%s: %r not in %r" % (what, pattern, screen[0])
            if select.select([master], [], [], 0.1)[0]:
                screen[0] += os.read(master, 4096)
        screen[0] = screen[0][rx.search(screen[0]).end():]

    def typing_events():
        return [(e.user, e.timeline, e.typing) for e in events(bob, pb.Event.TYPING)]

    try:
        until("the list", r"u/bob unread 1 last #1 .* bob: yo")
        os.write(master, b"/open bob\r")
        until("the prompt of the open conversation", r"#1 bob: yo\r\nu/bob> ")
        # the keys of a command are not typing: nothing reached bob by the time its answer shows
        os.write(master, b"/convs\r")
        until("the list again", r"conversations:\r\n  u/bob unread ")
        assert events(bob, pb.Event.TYPING) == []
        os.write(master, b"hel")
        typing = []
        assert wait_until(lambda: typing.extend(typing_events()) or typing), "no typing signal"
        assert typing == [("alice", "u/alice", True)]
        assert imchat(b, "bob", "send", "alice", "while you type").startswith("u/alice seq 2 ")
        # printed over the line being typed, which is drawn again below it
        until("bob's message above the line", r"\r\x1b\[K\d\d:\d\d:\d\d #2 bob: while you type\r\nu/bob> hel")
        os.write(master, b"lo\r")
        got = []        # (what, ...) in the order bob got them

        def more():
            for m in bob.drain():
                h, body = decode_frame(m.payload)
                if m.topic == "im/u/bob" and h.sender == "alice":
                    got.append(("message", body))
                elif m.topic == "im/e/u/bob" and h.event.kind == pb.Event.TYPING:
                    got.append(("typing", h.event.typing))
            return ("message", b"hello") in got and ("typing", False) in got
        assert wait_until(more), got
        assert got == [("typing", False), ("message", b"hello")], got   # the whole line, once
        until("her copy", r"#3 alice: hello")
        os.write(master, b"/quit\r")
        assert p.wait(timeout=WAIT) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        bob.close()
