"""Token login (plugin_opt_auth_jwt_secret_file) against a real broker."""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time

import paho.mqtt.client as mqtt

from imtest import Client, decode_frame, sync_all, wait_until

SECRET = b"k7Hq2v9Lr4Tz8Wm1Pn6Xc3Bf5Gd0Sa2J-integration"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(sub, exp_in=3600, nbf_in=None, secret=SECRET, alg="HS256", claims=None):
    now = int(time.time())
    body = {"sub": sub, "iat": now}
    if exp_in is not None:
        body["exp"] = now + exp_in
    if nbf_in is not None:
        body["nbf"] = now + nbf_in
    body.update(claims or {})
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    pay = b64(json.dumps(body).encode())
    if alg == "none":
        return (head + b"." + pay + b".").decode()
    sig = b64(hmac.new(secret, head + b"." + pay, hashlib.sha256).digest())
    return (head + b"." + pay + b"." + sig).decode()


def jwt_broker(make_broker, extra_conf=""):
    b = make_broker(start=False, extra_conf=extra_conf)
    # A trailing newline is not part of the secret.
    b.opts["auth_jwt_secret_file"] = b.put_file("jwt.key", SECRET + b"\n")
    b.start()
    return b


def connack(broker, user, password):
    c = mqtt.Client(client_id="probe-%s-%d" % (user, time.time_ns()))
    c.username_pw_set(user, password)
    result = []
    c.on_connect = lambda cl, u, f, rc: result.append(rc)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    wait_until(lambda: result, interval=0.02)
    c.loop_stop()
    c.disconnect()
    return result[0] if result else None


def test_valid_token_chats(make_broker, tmp_path):
    b = jwt_broker(make_broker)
    bob = Client(b, "bob", password=token("bob")).connect()
    assert bob.rc == 0
    bob.subscribe("im/u/bob")
    alice = Client(b, "alice", password=token("alice")).connect()
    alice.publish("im/u/bob", b"signed in", qos=1)
    h, body = decode_frame(bob.get().payload)
    assert (h.sender, body) == ("alice", b"signed in")
    bob.close()
    alice.close()
    assert "token login on" in b.read_log()


def test_bad_tokens_refused(make_broker, tmp_path):
    b = jwt_broker(make_broker)
    bad = {
        "wrong secret": token("alice", secret=b"x" * 40),
        "expired": token("alice", exp_in=-120),
        "not yet valid": token("alice", nbf_in=600),
        "other user": token("bob"),
        "no exp": token("alice", exp_in=None),
        "alg none": token("alice", alg="none"),
        "tampered": token("alice")[:-3] + "AAA",
    }
    for name, t in bad.items():
        assert connack(b, "alice", t) == 5, name            # not authorised
    assert connack(b, "alice", token("alice")) == 0
    log = b.read_log()
    for why in ("expired", "not valid yet", "sub does not match", "no exp claim", "bad signature"):
        assert why in log, why


def test_time_claims_must_be_integers(make_broker, tmp_path):
    """exp and nbf are JSON integers or the token is refused, whatever time
    they name: a string nbf was read as 0 and let a token in before its
    time (a string exp was refused only by luck, as "expired")."""
    b = jwt_broker(make_broker)
    now = int(time.time())
    bad = {
        "nbf a string, in the future": {"nbf": str(now + 600)},
        "nbf a string, in the past": {"nbf": str(now - 600)},
        "nbf a fraction": {"nbf": now - 600.5},
        "nbf null": {"nbf": None},
        "exp a string": {"exp": str(now + 3600)},
        "exp a fraction": {"exp": now + 3600.5},
        "exp true": {"exp": True},
    }
    for name, claims in bad.items():
        assert connack(b, "alice", token("alice", claims=claims)) == 5, name
    assert connack(b, "alice", token("alice", claims={"nbf": now - 600})) == 0    # integers: fine
    log = b.read_log()
    assert log.count("nbf is not an integer") == 4 and log.count("exp is not an integer") == 3, log[-3000:]


def test_non_jwt_passwords_left_to_password_file(make_broker, tmp_path):
    pw = tmp_path / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "carol", "plain-secret"], check=True)
    b = make_broker(start=False)
    path = b.put_file("passwd", pw.read_bytes())
    b.extra_conf = "password_file %s" % path
    b.opts["auth_jwt_secret_file"] = b.put_file("jwt.key", SECRET)
    b.start()
    assert connack(b, "carol", "plain-secret") == 0        # password_file decides
    assert connack(b, "carol", "wrong") == 5
    assert connack(b, "alice", token("alice")) == 0         # token login too
    assert connack(b, "alice", "not-a-token") == 5


def test_sender_is_always_the_authenticated_user(make_broker, tmp_path):
    """alice can never publish as bob: the header's sender is her login."""
    b = jwt_broker(make_broker)
    carol = Client(b, "carol", v5=True, password=token("carol")).connect()
    carol.subscribe("im/u/carol")
    alice = Client(b, "alice", v5=True, password=token("alice")).connect()
    alice.publish("im/u/carol", b"from alice", qos=1,
                  props={"UserProperty": [("im-from", "bob"), ("sender", "bob")]})
    m = carol.get()
    h, _ = decode_frame(m.payload)
    assert h.sender == "alice"
    assert dict(m.properties.UserProperty)["im-from"] == "alice"
    frames, _ = sync_all(carol, "u/carol")
    assert [hh.sender for hh, _ in frames] == ["alice"]
    carol.close()
    alice.close()


def test_imtoken_mints_accepted_tokens(make_broker, tmp_path):
    b = jwt_broker(make_broker)
    tool = os.environ.get("IM_IMTOKEN")
    t = subprocess.run([tool, "-s", b.opts["auth_jwt_secret_file"], "-u", "dave", "-t", "60"],
                       capture_output=True, check=True, text=True).stdout.strip()
    assert connack(b, "dave", t) == 0
    assert connack(b, "erin", t) == 5


def test_secret_file_problems_stop_the_broker(make_broker, tmp_path):
    for short in (True, False):
        b = make_broker(start=False)
        path = b.put_file("short.key", "too-short") if short else os.path.join(b.dir, "missing.key")
        b.opts["auth_jwt_secret_file"] = path
        assert b.start(expect_fail=True) != 0
        assert "plugin_opt_auth_jwt_secret_file" in b.read_log()
