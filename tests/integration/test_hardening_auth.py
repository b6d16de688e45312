"""Issue #20, second hardening round: logins and ACL sources.

Finding 6: with token login, plugin_opt_client_id_guard keeps a client id
with the first user who used it, whether or not he is connected; another
user's login with it is refused at authentication, before Mosquitto's
takeover of the session could disconnect the owner.

Finding 8: under per_listener_settings true the plugin (and the broker's
ACL sources) belong to one listener: plugin_opt_nonim_acl allow is decided
by what the plugin's own listener block holds, not by another listener's
acl_file."""
import types

import pytest

from imtest import PLUGIN, Broker, Client, decode_frame, wait_log, wait_until
from test_auth import SECRET, token

DENIED = 0x80
NOT_APPLIED = "plugin_opt_nonim_acl allow is NOT applied"
ALLOWED = "non-IM topics are ALLOWED"


# ---------------------------------------------------------------- finding 6

def guarded(make_broker):
    b = make_broker(start=False)
    b.opts["auth_jwt_secret_file"] = b.put_file("jwt.key", SECRET)
    b.start()
    return b


def mallory_tries(b, v5, client_id="bob-phone"):
    """mallory, with her own valid token, connects with client_id: her CONNACK code."""
    m = Client(b, "mallory", client_id=client_id, v5=v5, clean=False, password=token("mallory"))
    m.c.reconnect_delay_set(60, 60)             # one attempt: no retry
    if v5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        m.c.connect("127.0.0.1", b.port, clean_start=False, properties=props)
    else:
        m.c.connect("127.0.0.1", b.port)
    m.c.loop_start()
    assert wait_until(lambda: m.connected.is_set() or m.disconnected.is_set()), "no answer to mallory's CONNECT"
    m.c.loop_stop()
    m.c.disconnect()
    return m.rc if m.connected.is_set() else "dropped"


def still_bobs(b, bob, text):
    """bob's connection is the one it was, and a DM reaches it."""
    assert bob.barrier(), "bob's connection dropped"
    assert bob.disconnects == 0, "bob was disconnected"
    alice = Client(b, "alice", password=token("alice")).connect()
    alice.publish("im/u/bob", text, qos=1)
    assert decode_frame(bob.get().payload)[1] == text
    alice.close()


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
def test_client_id_stays_with_its_owner_offline_and_online(make_broker, v5):
    """bob keeps a persistent session on "bob-phone". mallory is refused it
    while bob is offline, and again once bob came back (resuming his
    session: Mosquitto then ends the old one as a clean session, which
    used to make the plugin forget the id's owner) and is online."""
    b = guarded(make_broker)
    bob = Client(b, "bob", client_id="bob-phone", v5=v5, clean=False, password=token("bob")).connect()
    assert bob.subscribe("im/u/bob") == [1]
    bob.close()
    # offline, with his session kept
    assert mallory_tries(b, v5) not in (0, "dropped"), "mallory took bob's client id while he was offline"
    wait_log(b, 'client id "bob-phone" belongs to another user')
    # back on his session, online
    bob = Client(b, "bob", client_id="bob-phone", v5=v5, clean=False, password=token("bob")).connect()
    assert bob.rc == 0
    still_bobs(b, bob, b"welcome back")
    assert mallory_tries(b, v5) not in (0, "dropped"), "mallory took bob's client id while he was online"
    still_bobs(b, bob, b"still yours")
    # and again, after bob resumed a second time (clean this time)
    bob.close()
    bob = Client(b, "bob", client_id="bob-phone", v5=v5, clean=True, password=token("bob")).connect()
    assert bob.subscribe("im/u/bob") == [1]
    assert mallory_tries(b, v5) not in (0, "dropped"), "mallory took bob's client id from his clean session"
    still_bobs(b, bob, b"clean too")
    bob.close()


# ---------------------------------------------------------------- finding 8

class TwoListeners(Broker):
    """per_listener_settings true and two listeners: A (self.port) and B
    (self.port_b). `plugin_in` says whose block holds the plugin's lines;
    A's block has an acl_file allowing chat/ok only."""

    def __init__(self, plugin_in, opts=None):
        super().__init__(opts=opts)
        self.plugin_in = plugin_in
        self.port_b = None
        self.acl = self.put_file("acl", "pattern readwrite chat/ok\npattern readwrite test/topic\n", mode=0o644)

    def write_conf(self):
        from imtest import free_port
        if self.port_b is None:
            self.port_b = free_port()
        ours = ["plugin %s" % PLUGIN] + ["plugin_opt_%s %s" % kv for kv in self.opts.items()]
        a = ["listener %d 127.0.0.1" % self.port, "allow_anonymous true", "acl_file %s" % self.acl]
        b = ["listener %d 127.0.0.1" % self.port_b, "allow_anonymous true"]
        (a if self.plugin_in == "A" else b).extend(ours)
        lines = ["per_listener_settings true", "check_retain_source true", "log_dest stderr", "log_type all",
                 "max_queued_messages 1000000", "persistence false"] + a + b
        self.conf = self.dir + "/mosquitto.conf"
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._chown(self.dir)

    def listener(self, name):
        return self if name == "A" else types.SimpleNamespace(port=self.port_b)


def plain(at, sub_topic, pub_topic, plugin=True):
    """On one listener: bob subscribes, alice publishes; (SUBACK codes,
    payloads bob got). Without the plugin there is no marker to wait on:
    the message itself is waited for."""
    bob = Client(at, "bob").connect()
    granted = bob.subscribe(sub_topic)
    alice = Client(at, "alice").connect()
    alice.publish(pub_topic, b"plain", qos=1)
    alice.close()
    got = [m.payload for m in (bob.drain() if plugin else bob.get_n(1))]
    bob.close()
    return granted, got


@pytest.fixture
def two_listeners():
    made = []

    def make(plugin_in):
        b = TwoListeners(plugin_in, opts={"nonim_acl": "allow"})
        made.append(b)
        b.start()
        assert wait_until(lambda: _listens(b.port_b)), "listener B never listened"
        return b

    yield make
    for b in made:
        b.cleanup()


def _listens(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_allow_in_a_listener_without_acl_of_its_own(two_listeners):
    """The plugin's lines in B's block, an acl_file in A's: B has nothing
    else deciding ACLs, so "allow" applies there; A's acl_file, which the
    plugin never sees (its callbacks are B's), keeps deciding on A."""
    b = two_listeners("B")
    log = b.read_log()
    assert ALLOWED in log and NOT_APPLIED not in log, log[-3000:]
    assert "The other listeners' own settings decide there (acl_file %s)" % b.acl in log
    # A does not load the plugin: the log says what that means for IM topics there.
    assert "1 other listener(s) do not load it" in log
    B = b.listener("B")
    assert plain(B, "chat/room", "chat/room") == ([1], [b"plain"])
    bob = Client(B, "bob").connect()
    assert bob.subscribe("im/u/bob") == [1]
    alice = Client(B, "alice").connect()
    alice.publish("im/u/bob", b"im on B", qos=1)
    assert decode_frame(bob.get().payload)[1] == b"im on B"
    # A: its acl_file, as if the plugin were not there
    A = b.listener("A")
    assert plain(A, "chat/ok", "chat/ok", plugin=False) == ([1], [b"plain"])
    # Mosquitto's 04-retain-check-source-persist-diff-port: retained on A
    # (the acl_file allows it), read on B.
    pub = Client(A, "alice").connect()
    pub.publish("test/topic", b"retained message", qos=1, retain=True)
    pub.close()
    sub = Client(B, "carol").connect()
    assert sub.subscribe("test/topic") == [1]
    assert sub.get().payload == b"retained message"
    for c in (bob, alice, sub):
        c.close()


def test_allow_beside_an_acl_file_in_its_own_block(two_listeners):
    """The plugin's lines and the acl_file in A's block: "allow" is not
    applied there (the acl_file's denials stand); B has no ACL source and
    no plugin, so Mosquitto allows everything there anyway."""
    b = two_listeners("A")
    log = b.read_log()
    assert NOT_APPLIED in log and ALLOWED not in log, log[-3000:]
    assert "acl_file %s" % b.acl in log
    A = b.listener("A")
    assert plain(A, "chat/room", "chat/room") == ([1], [])
    assert plain(A, "chat/ok", "chat/ok") == ([1], [b"plain"])
    assert plain(b.listener("B"), "chat/room", "chat/room", plugin=False) == ([1], [b"plain"])
