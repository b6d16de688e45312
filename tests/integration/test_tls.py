"""TLS: the plugin behind a TLS listener, with certificates made at test time
by examples/tls/make-certs.sh. Real clients (paho, mosquitto_pub/sub) chat
over TLS; a client that does not trust the CA is refused."""
import os
import queue
import ssl
import subprocess

import paho.mqtt.client as mqtt
import pytest

from imtest import ROOT, WAIT, decode_frame, free_port, log_offset, run_tool, wait_log

MAKE_CERTS = os.path.join(ROOT, "examples", "tls", "make-certs.sh")


@pytest.fixture
def tls_broker(make_broker):
    """A broker with its plain listener and a TLS listener on 127.0.0.1."""
    b = make_broker({"nonim_acl": "allow"}, start=False)
    certs = os.path.join(b.dir, "certs")
    subprocess.run(["bash", MAKE_CERTS, certs], check=True, capture_output=True, timeout=WAIT)
    b.tls_port = free_port()
    b.ca = os.path.join(certs, "ca.crt")
    b.extra_conf = "\n".join([
        "listener %d 127.0.0.1" % b.tls_port,
        "cafile %s" % b.ca,
        "certfile %s" % os.path.join(certs, "server.crt"),
        "keyfile %s" % os.path.join(certs, "server.key"),
        "tls_version tlsv1.2",
    ])
    b.start()
    return b


class TlsClient:
    def __init__(self, broker, user, ca=None, client_id=""):
        self.msgs = queue.Queue()
        self.connected = queue.Queue()
        self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(user)
        if ca:
            self.c.tls_set(ca_certs=ca)
        else:
            self.c.tls_set()            # the system's CAs only: ours is not among them
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_connect = lambda c, u, f, rc: self.connected.put(rc)
        self.c.on_subscribe = lambda c, u, mid, granted: self.connected.put(("suback", granted))
        self.port = broker.tls_port

    def connect(self):
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.get(timeout=WAIT) == 0
        return self

    def subscribe(self, topic):
        self.c.subscribe(topic, 1)
        assert self.connected.get(timeout=WAIT)[0] == "suback"

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_tls_listener_is_tls_and_bound_to_loopback(tls_broker):
    out = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % tls_broker.tls_port,
                          "-CAfile", tls_broker.ca, "-verify_return_error", "-brief"],
                         input=b"", capture_output=True, timeout=WAIT)
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert "Verification: OK" in text, text
    assert "Opening ipv4 listen socket on port %d." % tls_broker.tls_port in tls_broker.read_log()


def test_two_users_chat_over_tls_in_order(tls_broker):
    bob = TlsClient(tls_broker, "bob", ca=tls_broker.ca).connect()
    bob.subscribe("im/u/bob")
    alice = TlsClient(tls_broker, "alice", ca=tls_broker.ca).connect()
    alice.subscribe("im/u/alice")
    for i in range(20):
        alice.c.publish("im/u/bob", b"hello %d" % i, qos=1 + i % 2).wait_for_publish(WAIT)
    bob.c.publish("im/u/alice", b"hi alice", qos=1).wait_for_publish(WAIT)

    got = [decode_frame(bob.msgs.get(timeout=WAIT).payload) for _ in range(20)]
    assert [h.seq for h, _ in got] == list(range(1, 21))
    assert [b for _, b in got] == [b"hello %d" % i for i in range(20)]
    assert all(h.sender == "alice" and h.timeline == "u/bob" for h, _ in got)

    # alice sees her 20 sent copies, then bob's answer: one ordered inbox
    mine = [decode_frame(alice.msgs.get(timeout=WAIT).payload) for _ in range(21)]
    assert [h.seq for h, _ in mine] == list(range(1, 22))
    assert mine[-1][0].sender == "bob" and mine[-1][1] == b"hi alice"
    bob.close()
    alice.close()


def test_mosquitto_pub_and_sub_over_tls(tls_broker):
    port = str(tls_broker.tls_port)
    since = log_offset(tls_broker)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "--cafile", tls_broker.ca,
                            "-u", "bob", "-t", "im/u/bob", "-i", "tls-sub", "-q", "1", "-C", "3",
                            "-W", str(int(WAIT)), "-F", "%x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_log(tls_broker, "Sending SUBACK to tls-sub", since)     # subscribed
        for i in range(3):
            r = run_tool(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "--cafile", tls_broker.ca,
                          "-u", "alice", "-t", "im/u/bob", "-q", "1", "-m", "tls %d" % i])
            assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=WAIT + 10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    frames = [decode_frame(bytes.fromhex(line)) for line in out.decode().split()]
    assert [(h.seq, b) for h, b in frames] == [(1, b"tls 0"), (2, b"tls 1"), (3, b"tls 2")]


def test_client_without_the_ca_is_refused(tls_broker):
    # paho with the system's CAs: the handshake fails, no CONNACK
    c = TlsClient(tls_broker, "eve")
    with pytest.raises(ssl.SSLError):
        c.c.connect("127.0.0.1", tls_broker.tls_port, keepalive=30)
    # mosquitto_sub trusting only the system's CAs: refused at once (without
    # a -W, a connection that worked would wait for its message until run_tool's timeout)
    r = run_tool(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(tls_broker.tls_port),
                  "--capath", "/etc/ssl/certs", "-u", "eve", "-t", "im/u/eve", "-C", "1"])
    assert r.returncode != 0 and b"TLS error" in r.stderr, r.stderr
    # plain MQTT on the TLS port: no CONNACK either; the broker closes the
    # connection, and a CONNACK would have come before the close
    plain = mqtt.Client(protocol=mqtt.MQTTv311)
    plain.username_pw_set("eve")
    events = queue.Queue()
    plain.on_connect = lambda c, u, f, rc: events.put(("connack", rc))
    plain.on_disconnect = lambda c, u, rc: events.put(("closed", rc))
    plain.connect("127.0.0.1", tls_broker.tls_port, keepalive=30)
    plain.loop_start()
    assert events.get(timeout=WAIT)[0] == "closed"
    plain.loop_stop()
    # and the broker keeps serving TLS clients that trust it
    bob = TlsClient(tls_broker, "bob", ca=tls_broker.ca).connect()
    bob.subscribe("im/u/bob")
    alice = TlsClient(tls_broker, "alice", ca=tls_broker.ca).connect()
    alice.c.publish("im/u/bob", b"still here", qos=1).wait_for_publish(WAIT)
    h, body = decode_frame(bob.msgs.get(timeout=WAIT).payload)
    assert body == b"still here" and h.sender == "alice"
    bob.close()
    alice.close()
