"""Encryption at rest (plugin_opt_store_key_file) with a real broker."""
import glob
import os
import subprocess

from imtest import Client, sync_all

KEY1 = "1 " + "11" * 32 + "\n"
KEY2 = "2 " + "22" * 32 + "\n"


def strings_of_store(b):
    out = b""
    for f in glob.glob(b.db_path + "*"):
        out += subprocess.run(["strings", "-n", "8", f], capture_output=True).stdout
    return out


def start(make_broker, keys):
    b = make_broker(start=False)
    b.opts["store_key_file"] = b.put_file("store.keys", keys)
    b.start()
    return b


def test_no_body_on_disk_and_sync_after_restart(make_broker):
    b = start(make_broker, KEY1)
    alice = Client(b, "alice").connect()
    bodies = [b"CONFIDENTIAL-PAYLOAD-%03d" % i for i in range(20)]
    for body in bodies:
        alice.publish("im/u/bob", body, qos=1)
    alice.close()
    assert b"CONFIDENTIAL-PAYLOAD" not in strings_of_store(b)     # WAL included
    b.restart()
    assert b"CONFIDENTIAL-PAYLOAD" not in strings_of_store(b)
    bob = Client(b, "bob").connect()
    frames, _ = sync_all(bob, "u/bob")
    assert [body for _, body in frames] == bodies
    bob.close()
    assert "encrypted at rest" in b.read_log()


def test_key_rotation_keeps_old_messages_readable(make_broker):
    b = start(make_broker, KEY1)
    alice = Client(b, "alice").connect()
    alice.publish("im/u/bob", b"sealed with key one", qos=1)
    alice.close()
    b.stop()
    b.put_file("store.keys", KEY1 + KEY2)          # the last key seals from now on
    b.start()
    alice = Client(b, "alice").connect()
    alice.publish("im/u/bob", b"sealed with key two", qos=1)
    alice.close()
    bob = Client(b, "bob").connect()
    frames, _ = sync_all(bob, "u/bob")
    assert [body for _, body in frames] == [b"sealed with key one", b"sealed with key two"]
    bob.close()
    # Without the old key, its rows cannot be read: sync says so, it does not lie.
    b.stop()
    b.put_file("store.keys", KEY2)
    b.start()
    bob = Client(b, "bob").connect()
    import imtest
    r = bob.request("sync", imtest.pb.SyncRequest(timeline="u/bob", after_seq=0), response_type=imtest.pb.SyncBatch)
    assert r.status == imtest.pb.INTERNAL
    r = bob.request("sync", imtest.pb.SyncRequest(timeline="u/bob", after_seq=1), response_type=imtest.pb.SyncBatch)
    assert r.status == imtest.pb.OK and len(r.frames) == 1
    bob.close()
    assert "cannot decrypt u/bob seq 1" in b.read_log()


def test_bad_key_file_stops_the_broker(make_broker):
    b = make_broker(start=False)
    b.opts["store_key_file"] = b.put_file("store.keys", "1 tooshort\n")
    assert b.start(expect_fail=True) != 0
    assert "plugin_opt_store_key_file" in b.read_log()
