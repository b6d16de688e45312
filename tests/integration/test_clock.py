"""A step of the system clock (NTP, an operator, a VM resumed) must not stop
the plugin: what paces and schedules runs on the monotonic clock, and only
what is stored and shown (a message's time, retention's cutoff) on the wall
clock. The broker runs under libfaketime (Debian's faketime package), which
moves the wall clock of that process alone and leaves the monotonic one be.

Before: the rate limiter's buckets refilled nothing until the wall clock
had passed their last refill again, so a step back of an hour refused a
user's messages for an hour; the metrics, the journal's idle rotation and
the worker's retry pause and timed waits stretched by as much."""
import glob
import os
import time

import pytest

from imtest import SANITIZE, TSAN, WAIT, Client, sync_all, wait_until

LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))

pytestmark = [
    pytest.mark.skipif(SANITIZE or TSAN, reason="the sanitizer passes preload their own runtime"),
    pytest.mark.skipif(not LIBS, reason="libfaketime missing (scripts/deps.sh installs faketime)"),
]


def fake_clock(b):
    """Runs b under a wall clock moved by the offset in a file (now +0)."""
    path = b.put_file("faketime", "+0\n", mode=0o644)
    b.extra_env = {"LD_PRELOAD": LIBS[0], "FAKETIME_TIMESTAMP_FILE": path, "FAKETIME_NO_CACHE": "1",
                   "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return path


def stats_count(b, n):
    """n $SYS/broker/im/stats publications arrive (one per metrics_interval)."""
    c = Client(b, "ops").connect()
    c.subscribe("$SYS/broker/im/stats")
    got, deadline = 0, time.monotonic() + WAIT
    while got < n and time.monotonic() < deadline:
        try:
            m = c.get(max(0.01, deadline - time.monotonic()))
        except Exception:
            break
        got += m.topic == "$SYS/broker/im/stats"
    c.close()
    return got


def test_wall_clock_step_back(make_broker):
    b = make_broker({"user_msg_rate": 2, "metrics_interval": 1, "nonim_acl": "allow"}, start=False)
    clock = fake_clock(b)
    b.start()
    alice = Client(b, "alice", v5=True).connect()
    for i in range(8):                                  # more than the bucket holds
        alice.publish("im/u/bob", b"before %d" % i, qos=1)
    frames, _ = sync_all(alice, "u/alice")
    assert 2 <= len(frames) < 8, len(frames)            # limited: the bucket is empty now
    stored = len(frames)

    with open(clock, "w") as f:
        f.write("-3600\n")                              # the wall clock steps back an hour

    # Within seconds the bucket refills: alice's messages are taken again.
    sent = []

    def taken():
        sent.append(b"after %d" % len(sent))
        alice.publish("im/u/bob", sent[-1], qos=1)
        got, _ = sync_all(alice, "u/alice", after=stored)
        return got

    got = []
    assert wait_until(lambda: got.extend(taken()) or got, timeout=WAIT, interval=0.6), \
        "a step back of the wall clock stopped alice's messages"
    # The step took effect (else this test proves nothing): the message
    # carries the broker's wall time, an hour behind.
    h, body = got[0]
    assert body in sent and h.ts_ms < (time.time() - 3000) * 1000, (h.ts_ms, time.time())
    # The metrics keep their interval.
    assert stats_count(b, 2) == 2
    alice.close()
