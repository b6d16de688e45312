"""plugin_opt_nonim_acl allow never overrides another ACL source.

"allow" answers SUCCESS for every topic all other checks deferred. It is
applied only where nothing else in the configuration decides ACLs; with
acl_file, an auth_plugin or any other plugin (dynamic security) it is not,
the log says so, and their denials stand. Alone, it allows non-IM topics,
also with per_listener_settings true (where Mosquitto 2.0.11 sends plugins
no tick)."""
import json
import os
import signal
import subprocess

import pytest

from imtest import PLUGIN, WAIT, Broker, Client, decode_frame, log_offset, wait_log

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
DENIED = 0x80
NOT_APPLIED = "plugin_opt_nonim_acl allow is NOT applied"
ALLOWED = "non-IM topics are ALLOWED"


def try_publish(broker, user, topic, body, password=None):
    """One QoS 1 publish from a fresh connection, acknowledged (a v3.1.1
    publish is acknowledged also when denied)."""
    c = Client(broker, user, password=password).connect()
    c.publish(topic, body, qos=1)
    c.close()


def plain(broker, sub_topic, pub_topic, password=None):
    """bob subscribes to sub_topic, alice publishes to pub_topic: (bob's
    SUBACK codes, the payloads bob got)."""
    bob = Client(broker, "bob", password=password).connect()
    granted = bob.subscribe(sub_topic)
    try_publish(broker, "alice", pub_topic, b"plain", password=password)
    got = [m.payload for m in bob.drain()]
    bob.close()
    return granted, got


def im_works(broker, password=None):
    bob = Client(broker, "bob", password=password).connect()
    assert bob.subscribe("im/u/bob") == [1]
    alice = Client(broker, "alice", password=password).connect()
    alice.publish("im/u/bob", b"im works", qos=1)
    h, body = decode_frame(bob.get().payload)
    bob.close()
    alice.close()
    return (h.sender, body) == ("alice", b"im works")


# ---------------------------------------------------------------- dynamic security

PW = "s3cret-pw"


def dynsec_file(path):
    """A dynamic-security file as `mosquitto_ctrl dynsec init` writes it
    (default ACL access: publishClientSend and subscribe denied), with
    clients alice, bob, carol (password PW) in a role that may use chat/ok
    and nothing else."""
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", path, "admin", PW], check=True, capture_output=True,
                   timeout=WAIT)
    with open(path) as f:
        d = json.load(f)
    assert d["defaultACLAccess"]["publishClientSend"] is False and d["defaultACLAccess"]["subscribe"] is False
    admin = d["clients"][0]
    for user in ("alice", "bob", "carol"):
        c = {k: admin[k] for k in ("password", "salt", "iterations")}
        c.update(username=user, roles=[{"rolename": "chat"}])
        d["clients"].append(c)
    d["roles"].append({"rolename": "chat", "acls": [
        {"acltype": "publishClientSend", "topic": "chat/ok", "allow": True},
        {"acltype": "subscribePattern", "topic": "chat/ok", "allow": True}]})
    with open(path, "w") as f:
        json.dump(d, f)


@pytest.mark.skipif(not os.path.exists(DYNSEC), reason="Debian's mosquitto dynamic security plugin is not installed")
@pytest.mark.parametrize("ours_first", [True, False], ids=["im-first", "dynsec-first"])
def test_dynsec_denials_stand_with_allow(make_broker, ours_first):
    b = make_broker(plugin=False, start=False)
    path = os.path.join(b.dir, "dynsec.json")
    dynsec_file(path)
    ours = "plugin %s\nplugin_opt_db_path %s\nplugin_opt_nonim_acl allow" % (PLUGIN, b.db_path)
    theirs = "plugin %s\nplugin_opt_config_file %s" % (DYNSEC, path)
    b.extra_conf = "\n".join([ours, theirs] if ours_first else [theirs, ours])
    b._chown(b.dir)
    b.start()
    log = b.read_log()
    assert NOT_APPLIED in log and DYNSEC in log and ALLOWED not in log, log[-3000:]
    # dynsec's default deny: a defer, which "allow" used to turn into a yes
    granted, got = plain(b, "chat/room", "chat/room", password=PW)
    assert granted == [DENIED] and got == [], (granted, got)
    granted, got = plain(b, "chat/ok", "chat/room", password=PW)       # publish denied
    assert granted == [1] and got == [], got
    # what dynsec allows still works
    granted, got = plain(b, "chat/ok", "chat/ok", password=PW)
    assert granted == [1] and got == [b"plain"], got
    # and the IM namespace is the plugin's, whatever dynsec's defaults
    assert im_works(b, password=PW)


# ---------------------------------------------------------------- acl_file

def test_acl_file_denials_stand_with_allow(make_broker):
    b = make_broker({"nonim_acl": "allow"}, start=False)
    acl = b.put_file("acl", "user alice\ntopic readwrite chat/ok\nuser bob\ntopic readwrite chat/ok\n", mode=0o644)
    b.extra_conf = "acl_file %s" % acl
    b.start()
    log = b.read_log()
    assert NOT_APPLIED in log and "acl_file %s" % acl in log, log[-3000:]
    # acl_file grants every SUBSCRIBE in 2.0 and decides each message it would carry
    assert plain(b, "chat/ok", "chat/ok") == ([1], [b"plain"])
    assert plain(b, "chat/denied", "chat/denied") == ([1], [])
    assert im_works(b)


# ---------------------------------------------------------------- auth_plugin (v4)

V4_PLUGIN = r"""
#include <stdbool.h>
#include <string.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

int mosquitto_auth_plugin_version(void) { return 4; }
int mosquitto_auth_plugin_init(void **ud, struct mosquitto_opt *o, int n) { (void)ud; (void)o; (void)n; return 0; }
int mosquitto_auth_plugin_cleanup(void *ud, struct mosquitto_opt *o, int n) { (void)ud; (void)o; (void)n; return 0; }
int mosquitto_auth_security_init(void *ud, struct mosquitto_opt *o, int n, bool r) { (void)ud; (void)o; (void)n; (void)r; return 0; }
int mosquitto_auth_security_cleanup(void *ud, struct mosquitto_opt *o, int n, bool r) { (void)ud; (void)o; (void)n; (void)r; return 0; }
/* Denies chat/secret, allows every other topic it is asked about. */
int mosquitto_auth_acl_check(void *ud, int access, struct mosquitto *client, const struct mosquitto_acl_msg *msg)
{
	(void)ud; (void)access; (void)client;
	return strcmp(msg->topic, "chat/secret") ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}
"""


def test_v4_auth_plugin_is_asked_with_allow(make_broker, tmp_path):
    """A v2-v4 auth_plugin is asked after every v5 callback: an "allow"
    answer would mean it is never asked."""
    src = tmp_path / "v4acl.c"
    src.write_text(V4_PLUGIN)
    b = make_broker({"nonim_acl": "allow"}, start=False)
    so = os.path.join(b.dir, "v4acl.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", so, str(src)], check=True, capture_output=True, timeout=WAIT)
    b._chown(b.dir)
    b.extra_conf = "auth_plugin %s" % so
    b.start()
    assert NOT_APPLIED in b.read_log()
    granted, got = plain(b, "chat/secret", "chat/secret")
    assert granted == [DENIED] and got == [], (granted, got)
    granted, got = plain(b, "chat/open", "chat/open")
    assert granted == [1] and got == [b"plain"]
    assert im_works(b)


# ---------------------------------------------------------------- allow alone

class PerListenerBroker(Broker):
    """per_listener_settings must come before every other security
    setting: this broker's configuration starts with it."""

    def write_conf(self):
        super().write_conf()
        with open(self.conf) as f:
            text = f.read()
        with open(self.conf, "w") as f:
            f.write("per_listener_settings true\n" + text)
        self._chown(self.dir)


@pytest.mark.parametrize("per_listener", [False, True], ids=["global", "per-listener"])
def test_allow_alone_allows_non_im_topics(make_broker, per_listener):
    if per_listener:
        b = PerListenerBroker(opts={"nonim_acl": "allow"})
    else:
        b = make_broker({"nonim_acl": "allow"}, start=False)
    try:
        b.start()
        log = b.read_log()
        assert ALLOWED in log and NOT_APPLIED not in log, log[-3000:]
        assert ("per_listener_settings true" in log) == per_listener
        granted, got = plain(b, "chat/room", "chat/room")
        assert granted == [1] and got == [b"plain"], (granted, got)
        assert im_works(b)
    finally:
        if per_listener:
            b.cleanup()


def test_acl_file_added_at_reload_takes_over_from_allow(make_broker):
    """SIGHUP re-reads the configuration: an acl_file that appears turns
    "allow" off (and it comes back when the acl_file goes)."""
    b = make_broker({"nonim_acl": "allow"})
    assert plain(b, "chat/room", "chat/room") == ([1], [b"plain"])
    acl = b.put_file("acl", "user alice\ntopic readwrite chat/ok\nuser bob\ntopic readwrite chat/ok\n", mode=0o644)
    b.extra_conf = "acl_file %s" % acl
    b.write_conf()
    since = log_offset(b)
    b.proc.send_signal(signal.SIGHUP)
    wait_log(b, NOT_APPLIED, since)
    assert plain(b, "chat/room", "chat/room") == ([1], [])              # acl_file decides each message
    assert plain(b, "chat/ok", "chat/ok") == ([1], [b"plain"])
    b.extra_conf = ""
    b.write_conf()
    since = log_offset(b)
    b.proc.send_signal(signal.SIGHUP)
    wait_log(b, ALLOWED, since)
    assert plain(b, "chat/room", "chat/room") == ([1], [b"plain"])
    assert im_works(b)
