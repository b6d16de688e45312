"""Compression (plugin_opt_compress_min_bytes): stored and sent deflated,
byte-exact after inflating, and the bytes saved on a text corpus."""
import os
import sqlite3
import subprocess
import zlib

from imtest import WAIT, Client, IMCAT, ROOT, decode_frame, sync_all

COMPRESSED = 2


def corpus():
    """Text people write: the project's own docs, cut into chat-sized and
    mail-sized messages."""
    text = b""
    for name in ("README.md", "docs/PROTOCOL.md"):
        with open(os.path.join(ROOT, name), "rb") as f:
            text += f.read()
    sizes = [80, 300, 1200, 4000]
    out, i = [], 0
    while i < len(text) and len(out) < 60:
        n = sizes[len(out) % len(sizes)]
        out.append(text[i:i + n])
        i += n
    return out


def test_round_trip_and_bytes_saved(make_broker):
    b = make_broker({"compress_min_bytes": 256})
    bob = Client(b, "bob").connect()
    bob.subscribe("im/u/bob")
    bodies = corpus() + [os.urandom(2000), b"\x00" * 300]   # incompressible and trivial too
    a = Client(b, "alice").connect()
    for body in bodies:
        a.publish("im/u/bob", body, qos=1)
    a.close()
    live = [decode_frame(m.payload) for m in bob.get_n(len(bodies))]
    frames, _ = sync_all(bob, "u/bob")
    for (h, wire), (sh, swire), body in zip(live, frames, bodies):
        if h.flags & COMPRESSED:
            assert len(body) >= 256 and h.raw_len == len(body) and len(wire) < len(body)
            assert zlib.decompress(wire) == body
        else:
            assert wire == body                       # small or incompressible: as sent
        assert (sh.flags, swire) == (h.flags, wire)   # sync returns the same frame
    assert not live[-2][0].flags & COMPRESSED         # random bytes do not shrink
    raw = sum(len(x) for x in bodies[:-2])
    con = sqlite3.connect(b.db_path)
    stored = con.execute("SELECT sum(length(body)) FROM messages WHERE copy = 0 AND seq <= ?",
                         (len(bodies) - 2,)).fetchone()[0]
    con.close()
    saved = 1 - stored / raw
    print("text corpus: %d bytes, stored %d, saved %.0f%%" % (raw, stored, saved * 100))
    assert saved > 0.2
    bob.close()


def test_imcat_and_reference_client_inflate(make_broker, tmp_path):
    b = make_broker({"compress_min_bytes": 64})
    body = b"hello compression " * 40
    a = Client(b, "alice").connect()
    a.publish("im/u/bob", body, qos=1)
    a.close()
    sub = Client(b, "bob").connect()
    frames, batch = sync_all(sub, "u/bob")
    sub.close()
    frame = bytes(batch.frames[0])
    assert decode_frame(frame)[0].flags & COMPRESSED
    out = subprocess.run([IMCAT], input=frame.hex().encode() + b"\n", capture_output=True, check=True).stdout
    assert out.decode().rstrip().endswith(body.decode().rstrip())
    imrecv = os.path.join(os.path.dirname(IMCAT), "imrecv")
    r = subprocess.run([imrecv, "-p", str(b.port), "-u", "bob", "-s", str(tmp_path / "s"), "-n", "1"],
                       capture_output=True, timeout=WAIT)
    assert r.stdout.rstrip(b"\n").split(b" ", 3)[3] == body
