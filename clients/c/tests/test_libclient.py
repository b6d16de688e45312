"""libmosquitto-im-client against a real broker (ctest: client_c). The C
program clients/c/tests/mim_check.c drives the library; this file starts
the broker (tests/integration/imtest.py), the weak link
(clients/python/tests/weaknet.py) and reads what mim_check prints. Every
wait has a deadline; nothing sleeps a fixed time."""
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "clients", "python", "tests"))

import pytest  # noqa: E402
from imtest import BUILD, WAIT, Broker, replace_store, store_id, wait_until  # noqa: E402
from weaknet import WeakLink  # noqa: E402

CHECK = os.environ.get("IM_MIM_CHECK", os.path.join(BUILD, "clients", "c", "mim_check"))
N = 1000


class Proc:
    """mim_check running, its stdout lines collected by a thread."""

    def __init__(self, *args):
        self.p = subprocess.Popen([CHECK] + [str(a) for a in args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.err = []
        threading.Thread(target=self._read, args=(self.p.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True).start()

    @staticmethod
    def _read(f, into):
        for line in f:
            into.append(line.rstrip("\n"))

    def wait(self, timeout):
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError("mim_check still running: %r / %r" % (self.lines[-5:], self.err[-10:]))
        wait_until(lambda: self.lines and self.lines[-1].startswith(("done", "FAIL")), timeout=5)
        return rc

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def msgs(self):
        """[(timeline, seq, body)] since the last reset."""
        out = []
        for line in list(self.lines):
            if line.startswith("reset "):
                out = []
            elif line.startswith("msg "):
                _, tl, seq, body = line.split(" ", 3)
                out.append((tl, int(seq), body))
        return out


@pytest.fixture
def make_broker():
    made = []

    def make(**kw):
        b = Broker(**kw)
        b.start()
        made.append(b)
        return b
    yield make
    for b in made:
        b.cleanup()


def test_thousand_messages_flapping_link_and_restart(make_broker, tmp_path):
    """The issue's done-when: 1,000 messages through a link cut every 0.5 s
    with a broker restart in between, on two devices: each once, in order."""
    b = make_broker()
    link = WeakLink(b.port, period=0.5).start()
    procs = []
    try:
        T = int(WAIT * 2)
        phone = Proc("recv", "-p", link.port, "-u", "bob", "-i", "bob-phone", "-n", N, "-T", T)
        laptop = Proc("recv", "-p", link.port, "-u", "bob", "-i", "bob-laptop", "-n", N, "-T", T,
                      "-s", tmp_path / "laptop.state")
        alice = Proc("send", "-p", link.port, "-u", "alice", "-i", "alice-c", "-t", "u/bob", "-n", N, "-T", T,
                     "-c", 100, "-s", tmp_path / "alice.state")
        procs = [phone, laptop, alice]
        # Sent 100 at a time, each 100 after one more cut of the link. Half
        # answered, some sent without a Receipt: the broker goes down and
        # comes back on its data.
        wait_until(lambda: sum(l.startswith("receipt ") for l in alice.lines) >= N // 2, timeout=WAIT)
        d0 = link.drops
        b.restart()
        wait_until(lambda: link.drops > d0 + 2, timeout=WAIT)
        assert alice.wait(T) == 0, (alice.lines[-3:], alice.err[-20:])
        receipts = [l.split() for l in alice.lines if l.startswith("receipt ")]
        assert len(receipts) == N
        assert all(r[2] == "0" for r in receipts), [r for r in receipts if r[2] != "0"][:5]
        # each stored once (re-sends answered with the original seq), in send order
        assert [int(r[3]) for r in sorted(receipts, key=lambda r: int(r[1]))] == list(range(1, N + 1))
        want = [("u/bob", i + 1, "m%04d" % i) for i in range(N)]
        for name, p in (("phone", phone), ("laptop", laptop)):
            assert p.wait(T) == 0, (name, p.lines[-3:], p.err[-20:])
            assert p.msgs() == want, name + ": every message once, in order"
            assert not any(l.startswith("reset") for l in p.lines)
        assert link.drops >= 10, link.drops
        assert sum(l == "state 4" for l in alice.lines) >= 9, alice.lines.count("state 4")
        # the devices really went offline and came back (state 4: offline)
        assert sum(l == "state 4" for l in phone.lines) >= 3, phone.lines.count("state 4")
        print("link: %d connections, %d cut, %d refused; %d duplicate receipts" % (
            link.accepted, link.drops, link.refused, sum(r[4] == "1" for r in receipts)))
    finally:
        for p in procs:
            p.kill()
        link.stop()


def test_store_id_change_starts_over(make_broker, tmp_path):
    """The database is replaced while bob's device runs: the new store hands
    out seqs 1, 2 again; the library says so and delivers them."""
    b = make_broker()
    state = tmp_path / "bob.state"
    send = lambda n: Proc("send", "-p", b.port, "-u", "alice", "-t", "u/bob", "-n", n).wait(WAIT)
    assert send(3) == 0
    bob = Proc("recv", "-p", b.port, "-u", "bob", "-i", "bob-phone", "-s", state, "-n", 2, "-R", 1,
                "-T", int(WAIT))
    try:
        wait_until(lambda: len(bob.msgs()) == 3, timeout=WAIT)
        old_id = store_id(b)
        replace_store(b)
        assert send(2) == 0
        assert bob.wait(WAIT) == 0, bob.err[-10:]
        new_id = store_id(b)
        assert new_id != old_id
        assert ["reset %016x %016x" % (old_id, new_id)] == [l for l in bob.lines if l.startswith("reset")]
        assert bob.msgs() == [("u/bob", 1, "m0000"), ("u/bob", 2, "m0001")]
        lines = state.read_text().splitlines()
        assert "u/bob 2" in lines and lines[-1] == "store %016x" % new_id
    finally:
        bob.kill()


def test_edit_recall_read_mark_typing_groups(make_broker):
    """A message, its edit (the original changed in place), its recall, a
    read mark, typing on and off, a group with membership news both ways."""
    b = make_broker()
    p = Proc("chat", "-p", b.port, "-T", int(WAIT))
    try:
        assert p.wait(WAIT) == 0, (p.lines, p.err[-20:])
    finally:
        p.kill()
    oks = [l[3:] for l in p.lines if l.startswith("ok ")]
    assert oks == ["online", "message", "edit", "recall", "read mark", "typing", "stopped typing", "membership",
                   "group message", "membership removed"]
    assert "read u/bob bob 3" in p.lines                  # bob read up to the recall, u/bob #3
    assert "typing u/bob bob 1" in p.lines and "typing u/bob bob 0" in p.lines
