#!/usr/bin/python3
"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/<target>/.

Small, valid inputs of each kind (frames, requests, topics, names), so the
fuzzers start from the shapes the plugin really sees. Run again after a
change to proto/im.proto; the files are committed.
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def load_pb2():
    out = tempfile.mkdtemp(prefix="im-pb2-")
    subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out", out,
                    os.path.join(ROOT, "proto", "im.proto")], check=True)
    sys.path.insert(0, out)
    import im_pb2
    return im_pb2


pb = load_pb2()


def frame(**kw):
    body = kw.pop("body", b"hi")
    h = pb.Header(**kw).SerializeToString()
    return b"IM\x01" + len(h).to_bytes(2, "big") + h + body


def write(target, items):
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in items.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


frames = {
    "dm": frame(timeline="u/bob", seq=1, sender="alice", ts_ms=1700000000000, to="u/bob", body_len=2),
    "cmid": frame(timeline="u/alice", seq=7, sender="alice", cmid="m1", to="u/bob", content_type="text/plain"),
    "system": frame(timeline="g/team", seq=3, sender="alice", flags=1, content_type="application/json",
                    body=b'{"event":"add","by":"alice","users":["bob"]}'),
    "notify": frame(timeline="u/bob", seq=2, sender="alice", body_omitted=True, body_len=100, body=b""),
    "expiry": frame(timeline="u/bob", seq=9, sender="\u5f20\u4e09", expires_ms=1800000000000),
    "empty_header": b"IM\x01\x00\x00body",
    "short": b"IM\x01\x00",
}
write("fuzz_frame", frames)

names = {
    "user": b"alice", "utf8": "\u00e9mile".encode(), "cjk": "\u5f20\u4e09".encode(),
    "inbox": b"im/u/bob", "group": b"im/g/team", "tl_u": b"u/alice", "tl_g": b"g/team",
    "slash": b"im/u/bob/x", "plus": b"im/u/+", "hash": b"im/#", "dollar": b"$CONTROL/im/v1/sync",
    "long": b"a" * 64, "overlong": b"\xc0\xaf", "surrogate": b"\xed\xa0\x80", "max": b"\xf4\x8f\xbf\xbf",
}
write("fuzz_route", names)

reqs = {
    "sync": pb.SyncRequest(timeline="u/bob", after_seq=0, limit=10).SerializeToString(),
    "sync_cursor": pb.SyncRequest(timeline="g/team").SerializeToString(),
    "ack": pb.Ack(timeline="u/bob", seq=3).SerializeToString(),
    "group_create": pb.GroupRequest(op="create", group="team", members=["bob", "carol"]).SerializeToString(),
    "group_info": pb.GroupRequest(op="info", group="team").SerializeToString(),
    "batch": pb.SyncBatch(status=pb.OK, timeline="u/bob", frames=[frames["dm"], frames["cmid"]],
                          head_seq=2, first_seq=1).SerializeToString(),
    "group_resp": pb.GroupResponse(status=pb.OK, op="list",
                                   groups=[pb.GroupInfo(name="team", head_seq=4, cursor=1, unread=3)]).SerializeToString(),
    "header": pb.Header(timeline="u/bob", seq=1, sender="alice").SerializeToString(),
}
write("fuzz_proto", reqs)

# fuzz_control: byte 0 = op | user << 2 | props << 5 | response topic << 6 | retain << 7
# ops: 0 sync, 1 ack, 2 group, 3 publish; users: 0 alice, 1 bob, 2 root, 3 carol,
# 4 none, 5 émile, 6 "a/b", 7 x.
def ctl(op, user, payload, props=False, resp=False, retain=False):
    return bytes([op | user << 2 | props << 5 | resp << 6 | retain << 7]) + payload


def kv(*pairs):
    return b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)


control = {
    "pub_dm": ctl(3, 0, b"im/u/bob\0hello"),
    "pub_dm_cmid": ctl(3, 0, b"im/u/bob\0" + kv(("im-cmid", "m1")) + b"\0hello", props=True, resp=True),
    "pub_group": ctl(3, 1, b"im/g/team\0hi team"),
    "pub_other": ctl(3, 7, b"other/topic\0x"),
    "pub_retained": ctl(3, 0, b"im/u/bob\0r", retain=True),
    "pub_unknown_op": ctl(3, 0, b"$CONTROL/im/v1/nope\0"),
    "sync_pb": ctl(0, 1, reqs["sync"]),
    "sync_group": ctl(0, 1, reqs["sync_cursor"]),
    "sync_props": ctl(0, 1, kv(("timeline", "u/bob"), ("after", "0"), ("limit", "5")), props=True),
    "sync_resp": ctl(0, 1, reqs["sync"], resp=True),
    "ack_pb": ctl(1, 1, reqs["ack"]),
    "ack_props": ctl(1, 1, kv(("timeline", "u/bob"), ("seq", "1")), props=True),
    "group_create": ctl(2, 0, reqs["group_create"]),
    "group_create_props": ctl(2, 0, kv(("op", "create"), ("group", "team"), ("members", "bob,carol")), props=True),
    "group_add_admin": ctl(2, 2, pb.GroupRequest(op="add", group="team", members=["x"]).SerializeToString()),
    "group_remove": ctl(2, 0, pb.GroupRequest(op="remove", group="team", members=["carol"]).SerializeToString()),
    "group_leave": ctl(2, 1, pb.GroupRequest(op="leave", group="team").SerializeToString()),
    "group_list": ctl(2, 1, kv(("op", "list")), props=True),
    "group_info": ctl(2, 1, reqs["group_info"]),
}
write("fuzz_control", control)


# fuzz_auth: byte 0 = user (as above), then the password. Tokens signed with
# FUZZ_JWT_SECRET of fuzz_control.c.
def jwt(claims, secret=b"fuzz-secret-0123456789abcdef0123456789abcdef", alg="HS256"):
    import base64, hashlib, hmac, json
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = enc(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    body = enc(json.dumps(claims, separators=(",", ":")).encode())
    sig = enc(hmac.new(secret, head + b"." + body, hashlib.sha256).digest()) if alg == "HS256" else b""
    return head + b"." + body + b"." + sig


auth = {
    "valid_alice": bytes([0]) + jwt({"sub": "alice", "exp": 4102444800}),
    "valid_nbf": bytes([1]) + jwt({"sub": "bob", "exp": 4102444800, "nbf": 1}),
    "wrong_sub": bytes([1]) + jwt({"sub": "alice", "exp": 4102444800}),
    "expired": bytes([0]) + jwt({"sub": "alice", "exp": 1}),
    "no_exp": bytes([0]) + jwt({"sub": "alice"}),
    "alg_none": bytes([0]) + jwt({"sub": "alice", "exp": 4102444800}, alg="none"),
    "wrong_secret": bytes([0]) + jwt({"sub": "alice", "exp": 4102444800}, secret=b"other"),
    "plain_password": bytes([0]) + b"hunter2",
}
write("fuzz_auth", auth)
print("corpus written:", sum(len(x) for x in (frames, names, reqs, control, auth)), "files")
