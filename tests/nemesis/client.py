#!/usr/bin/python3
"""One client process of a nemesis run (issue #21): a real MQTT v5 client
(python3-paho-mqtt) with a persistent session and a fixed client id that
sends, receives, syncs and acks as PROTOCOL.md section 7 says, and records
everything it does and sees through history.Recorder into
<history dir>/<proc>.jsonl.

Started by run.py, one process per client, and steered by it:

- SIGUSR1: close the socket at once (no DISCONNECT): a client-side fault.
  paho reconnects by itself; the client then re-subscribes, re-sends every
  message without a Receipt (same cmid) and syncs every timeline.
- the file <ctl>/heal: stop sending new messages; keep re-sending those
  without a Receipt until all have one and every timeline is synced to its
  head, then write <ctl>/<proc>.quiet.
- the file <ctl>/final: sync every timeline it may read from 0 to its head,
  write a `final` record for each, disconnect and exit 0.

Brokers: `--ports P1,P2,...` (or one `--port`). The client starts on
`--first` (an index) and, when two connection attempts in a row fail or
it has been without a connection for `--switch-after` seconds, moves to
the next port in the list: a device reconnecting to another broker of the
cluster (PROTOCOL.md 12, "Changing broker"). Its `connect` records name the
port it is connected to.

Every request it publishes (a sync page, an ack) is recorded as `request`
(rid = its correlation data, op) and its answer as `reply` (rid, status):
the checker measures from them how long the plugin took to answer, and
where it was silent.

Threads: paho's network thread records what arrives (connect, live,
synced, head, receipt: in the order it arrives, which is what the checker
relies on) and queues events; the main thread owns every piece of state
(pending messages, per-timeline `last`, syncs) and publishes.
"""

import signal
import sys

# Install the fault handler before anything slow: the runner may signal us
# as soon as we exist (it waits for <proc>.ready, but be safe).
_drop_requested = [0]


def _on_usr1(signum, frame):
    _drop_requested[0] += 1


signal.signal(signal.SIGUSR1, _on_usr1)

import argparse  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import zlib  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import history as H  # noqa: E402

pb = None   # im_pb2, imported in main() from --pb-dir


def decode_frame(payload):
    """Splits a frame into (Header, body), as imtest.decode_frame does
    (PROTOCOL.md 4): 'I' 'M' 0x01, a 16-bit big-endian header length, the
    protobuf im.v1.Header, the body.  Raises ValueError if it is not one."""
    if len(payload) < 5 or payload[:3] != b"IM\x01":
        raise ValueError("not a frame: %r" % payload[:16])
    hlen = int.from_bytes(payload[3:5], "big")
    if 5 + hlen > len(payload):
        raise ValueError("truncated frame")
    h = pb.Header()
    h.ParseFromString(payload[5:5 + hlen])
    return h, payload[5 + hlen:]


def _opt(msg, field):
    return getattr(msg, field) if msg.HasField(field) else None


class NemClient(mqtt.Client):
    """paho's client, telling us the reason code of PUBACK and PUBREC:
    paho 1.6 calls on_publish whatever the code, and a refusal (0x87) is
    no promise.  The code goes to `rc_hook(packet, mid, code)`, called in
    the network thread before paho handles the packet."""

    rc_hook = None

    def _nem_rc(self, name):
        try:
            pkt = self._in_packet["packet"]
            mid, = struct.unpack("!H", pkt[:2])
            code = pkt[2] if self._in_packet["remaining_length"] > 2 else 0
        except Exception:
            return
        if self.rc_hook is not None:
            self.rc_hook(name, mid, code)

    def _handle_pubrec(self):
        self._nem_rc("PUBREC")
        return super()._handle_pubrec()

    def _handle_pubackcomp(self, cmd):
        self._nem_rc(cmd)
        return super()._handle_pubackcomp(cmd)


class Pending:
    """A message (send, edit or recall) this client published and has no
    Receipt of yet, or has one (kept for edits)."""
    __slots__ = ("cmid", "kind", "to", "body", "qos", "ref_seq", "acked",
                 "receipt", "sends", "last_send")

    def __init__(self, cmid, kind, to, body, qos, ref_seq=None):
        self.cmid = cmid
        self.kind = kind          # H.SEND / H.EDIT / H.RECALL
        self.to = to              # "u/bob", "g/g1"
        self.body = body
        self.qos = qos
        self.ref_seq = ref_seq
        self.acked = False
        self.receipt = None       # (status, timeline, seq, own_seq)
        self.sends = 0
        self.last_send = 0.0


class TL:
    """The client algorithm's state of one timeline (PROTOCOL.md 7)."""
    __slots__ = ("name", "last", "held", "sync_gen", "sync_after",
                 "sync_sent", "sync_retry_at", "acked", "final_done",
                 "final_mode")

    def __init__(self, name):
        self.name = name
        self.last = 0
        self.held = set()
        self.sync_gen = None      # the request in flight: its generation
        self.sync_after = 0
        self.sync_sent = 0.0
        self.sync_retry_at = None  # TOO_MANY / error: ask again then
        self.acked = 0
        self.final_done = False
        self.final_mode = False


class Client:
    def __init__(self, a):
        self.a = a
        self.proc = a.proc
        self.user = a.user
        self.cid = a.client_id
        self.rnd = random.Random(a.seed)
        self.rec = H.Recorder(os.path.join(a.history, self.proc + ".jsonl"),
                              self.proc, self.user, self.cid)
        self.users = [u for u in a.users.split(",") if u]
        self.groups = [g for g in a.groups.split(",") if g]
        self.peers = [u for u in self.users if u != self.user]
        self.tls = {}
        for tl in ["u/" + self.user] + ["g/" + g for g in self.groups]:
            self.tls[tl] = TL(tl)
        self.ev = queue.Queue()
        self.connected = False
        self.conn_no = 0
        self.gen = 0               # sync generation: one per (re)connect
        self.store_id = None       # the store id this client keeps (7.6)
        self.pending = {}          # cmid -> Pending
        self.mids = {}             # mid -> cmid (publishes in flight)
        self.mine = []             # (to, seq, cmid): own messages, for edits
        self.changed = set()       # (to, seq) recalled by us: edit no more
        self.n = 0
        self.phase = "run"
        self.quiet_written = False
        self.rtopic = "nem/%s/r" % self.cid
        self.stopic = "nem/%s/s" % self.cid
        self.atopic = "nem/%s/a" % self.cid
        self.nreq = 0              # makes every request's rid unique
        self.ports = a.ports
        self.port_idx = a.first % len(a.ports)
        self.down_since = time.monotonic()
        self.fails = 0             # attempts failed on this port in a row
        self.switches = 0
        self.last_ack_round = 0.0
        self.last_resend = 0.0
        self.next_action = time.monotonic() + 0.5
        self.final_started = None
        self.drops_done = 0
        self.stats = {"sent": 0, "resent": 0, "live": 0, "synced": 0,
                      "receipts": 0, "bad_frames": 0, "edits": 0,
                      "recalls": 0, "drops": 0, "syncs": 0, "too_many": 0,
                      "acks": 0, "replies": 0}

        c = NemClient(client_id=self.cid, protocol=mqtt.MQTTv5)
        c.rc_hook = self._rc_hook
        c.username_pw_set(self.user)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_connect_fail = self._on_connect_fail
        # Below the broker's Receive Maximum (Mosquitto's
        # max_inflight_messages, 20): paho 1.6 ignores the one CONNACK
        # gives, and a publish beyond it is refused with 0x97 (quota
        # exceeded). Requests (sync, ack) count too.
        c.max_inflight_messages_set(16)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(0.2, 2)
        self.c = c

    # -- the network thread ----------------------------------------------

    def _rc_hook(self, name, mid, code):
        self.ev.put(("rc", name, mid, code))

    def _on_connect(self, c, u, flags, rc, props=None):
        try:
            self._connected(c, flags, rc)
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()

    def _connected(self, c, flags, rc):
        code = getattr(rc, "value", rc)
        if code != 0:
            self.ev.put(("connect_fail",))
            return
        sp = bool(flags.get("session present"))
        # The port this connection went to (paho's may already name the
        # next one: the main thread moves it).
        try:
            port = c.socket().getpeername()[1]
        except (OSError, AttributeError):
            port = c._port
        # Written here, before paho reads the next packet: every frame after
        # this line came on the new connection.
        self.rec.connect(broker="127.0.0.1:%d" % port, session_present=sp)
        subs = [("im/u/" + self.user, 1)]
        subs += [("im/g/" + g, 1) for g in self.groups]
        c.subscribe(subs)
        self.ev.put(("connected", sp))

    def _on_disconnect(self, c, u, rc, props=None):
        self.ev.put(("disconnected", getattr(rc, "value", rc)))

    def _on_connect_fail(self, c, u):
        self.ev.put(("connect_fail",))

    def _request(self, rid, op):
        """Records a request about to be published (history's `request`
        record; the generic writer if this history.py has no method)."""
        fn = getattr(self.rec, "request", None)
        if fn is not None:
            fn(rid, op)
        else:
            self.rec._write("request", {"rid": rid, "op": op})

    def _reply(self, rid, status):
        fn = getattr(self.rec, "reply", None)
        if fn is not None:
            fn(rid, status=status)
        else:
            self.rec._write("reply", {"rid": rid, "status": status})
        self.stats["replies"] += 1

    def _on_message(self, c, u, m):
        try:
            self._message(m)
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()

    def _frame_fields(self, payload):
        h, body = decode_frame(payload)
        flags = _opt(h, "flags") or 0
        if flags & H.FLAG_COMPRESSED and body:
            body = zlib.decompress(body)
        return h, body, flags

    def _record_frame(self, kind, payload):
        h, body, flags = self._frame_fields(payload)
        seq = _opt(h, "seq") or 0
        if not seq:
            return None            # an event: never recorded
        sid = _opt(h, "store_id")
        bh = None if h.body_omitted else H.body_hash(body)
        fn = self.rec.live if kind == H.LIVE else self.rec.synced
        fn(h.timeline, seq, _opt(h, "sender"), cmid=_opt(h, "cmid"),
           body_hash=bh, flags=flags, ref_seq=_opt(h, "ref_seq"),
           peer_seq=_opt(h, "peer_seq"), store_id=sid)
        return h.timeline, seq, sid

    def _message(self, m):
        t = m.topic
        if t.startswith("im/u/") or t.startswith("im/g/"):
            try:
                got = self._record_frame(H.LIVE, m.payload)
            except ValueError as e:
                self.stats["bad_frames"] += 1
                print("%s: not a frame on %s: %s" % (self.proc, t, e),
                      file=sys.stderr)
                return
            if got:
                self.stats["live"] += 1
                self.ev.put(("frame",) + got)
        elif t == self.rtopic:
            r = pb.Receipt()
            r.ParseFromString(m.payload)
            cmid = _opt(r, "cmid")
            if cmid is None:
                cd = getattr(m.properties, "CorrelationData", None)
                cmid = cd.decode() if cd else None
            status = _opt(r, "status") or 0
            sid = _opt(r, "store_id")
            self.rec.receipt(cmid, _opt(r, "timeline"), _opt(r, "seq"),
                             duplicate=bool(r.duplicate), status=status,
                             store_id=sid, own_seq=_opt(r, "own_seq"))
            self.stats["receipts"] += 1
            self.ev.put(("receipt", cmid, status, _opt(r, "timeline"),
                         _opt(r, "seq"), _opt(r, "own_seq"), sid))
        elif t == self.stopic:
            b = pb.SyncBatch()
            b.ParseFromString(m.payload)
            cd = getattr(m.properties, "CorrelationData", None)
            corr = cd.decode() if cd else ""
            status = _opt(b, "status") or 0
            self._reply(corr, status)
            seqs = []
            sid = _opt(b, "store_id")
            if status == 0:
                for f in b.frames:
                    try:
                        got = self._record_frame(H.SYNCED, f)
                    except ValueError as e:
                        self.stats["bad_frames"] += 1
                        print("%s: not a frame in a batch: %s" % (
                            self.proc, e), file=sys.stderr)
                        continue
                    if got:
                        seqs.append(got[1])
                        self.stats["synced"] += 1
                if not b.has_more:
                    self.rec.head(_opt(b, "timeline"), _opt(b, "head_seq") or 0,
                                  _opt(b, "first_seq"), store_id=sid)
            self.ev.put(("batch", corr, status, _opt(b, "retry_after_ms"),
                         bool(b.has_more), _opt(b, "head_seq") or 0,
                         _opt(b, "first_seq"), sid, seqs))
        elif t == self.atopic:
            r = pb.AckResponse()
            try:
                r.ParseFromString(m.payload)
                status = _opt(r, "status") or 0
            except Exception:
                status = -1
            cd = getattr(m.properties, "CorrelationData", None)
            self._reply(cd.decode() if cd else "", status)
        # Anything else ($CONTROL/.../response): not recorded.

    # -- the main thread ---------------------------------------------------

    def props(self, cmid, extra=()):
        p = Properties(PacketTypes.PUBLISH)
        p.UserProperty = [("im-cmid", cmid)] + list(extra)
        p.ResponseTopic = self.rtopic
        p.CorrelationData = cmid.encode()
        return p

    def publish_msg(self, pm, resend=False):
        """Records a send/edit/recall attempt and publishes it."""
        if pm.kind == H.SEND:
            self.rec.send(pm.cmid, pm.to, body=pm.body, qos=pm.qos)
            extra = ()
        elif pm.kind == H.EDIT:
            self.rec.edit(pm.cmid, pm.to, pm.ref_seq, body=pm.body,
                          qos=pm.qos)
            extra = (("im-edit", str(pm.ref_seq)),)
        else:
            self.rec.recall(pm.cmid, pm.to, pm.ref_seq, qos=pm.qos)
            extra = (("im-recall", str(pm.ref_seq)),)
        info = self.c.publish("im/" + pm.to, pm.body, qos=pm.qos,
                              properties=self.props(pm.cmid, extra))
        if info.mid:
            self.mids[info.mid] = pm.cmid
        pm.sends += 1
        pm.last_send = time.monotonic()
        self.stats["resent" if resend else "sent"] += 1

    def new_cmid(self):
        self.n += 1
        return "%s-%d" % (self.proc, self.n)

    def body_for(self, cmid):
        r = self.rnd.random()
        if r < 0.1:
            # Compressible and above compress_min_bytes: the inflate path.
            return ("%s " % cmid + "lorem ipsum dolor sit amet " *
                    self.rnd.randint(12, 80)).encode()
        return ("%s %08x" % (cmid, self.rnd.getrandbits(32))).encode()

    def action(self):
        r = self.rnd.random()
        qos = 1 if self.rnd.random() < 0.6 else 2
        cand = [x for x in self.mine if (x[0], x[1]) not in self.changed]
        if cand and r < 0.06:
            to, seq, _ = self.rnd.choice(cand)
            cmid = self.new_cmid()
            pm = Pending(cmid, H.EDIT, to, b"edit " + self.body_for(cmid),
                         qos, seq)
            self.stats["edits"] += 1
        elif cand and r < 0.09:
            to, seq, _ = self.rnd.choice(cand)
            self.changed.add((to, seq))
            cmid = self.new_cmid()
            pm = Pending(cmid, H.RECALL, to, b"", qos, seq)
            self.stats["recalls"] += 1
        else:
            if self.groups and (not self.peers or self.rnd.random() < 0.4):
                to = "g/" + self.rnd.choice(self.groups)
            else:
                to = "u/" + self.rnd.choice(self.peers)
            cmid = self.new_cmid()
            pm = Pending(cmid, H.SEND, to, self.body_for(cmid), qos)
        self.pending[cmid] = pm
        self.publish_msg(pm)

    def resend_unreceipted(self):
        """PROTOCOL.md 7 step 4: re-send, with the same cmid, every message
        without a Receipt yet (acknowledged or not: a Receipt queued for a
        connection that died is lost, and a refusal says so only there)."""
        for pm in list(self.pending.values()):
            if pm.receipt is None:
                self.publish_msg(pm, resend=True)

    def learn_store(self, sid):
        if not sid:
            return
        if self.store_id is None:
            self.store_id = sid
        elif sid != self.store_id:
            # 7.6: a new history; drop every seq we keep and sync from 0.
            print("%s: store id changed %x -> %x" % (self.proc,
                                                     self.store_id, sid),
                  file=sys.stderr)
            self.store_id = sid
            for tl in self.tls.values():
                tl.last = 0
                tl.held.clear()
                tl.acked = 0
            self.mine = []
            self.changed = set()
            self.gen += 1
            for tl in self.tls.values():
                tl.sync_gen = None
                if self.connected:
                    self.start_sync(tl, 0 if tl.final_mode else tl.last)

    def start_sync(self, tl, after):
        tl.sync_gen = self.gen
        tl.sync_after = after
        tl.sync_sent = time.monotonic()
        tl.sync_retry_at = None
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = self.stopic
        # gen|timeline|after|n: n makes a retried request's rid a new one.
        self.nreq += 1
        rid = "%d|%s|%d|%d" % (self.gen, tl.name, after, self.nreq)
        p.CorrelationData = rid.encode()
        self._request(rid, "sync")
        req = pb.SyncRequest(timeline=tl.name, after_seq=after)
        self.c.publish("$CONTROL/im/v1/sync", req.SerializeToString(), qos=1,
                       properties=p)
        self.stats["syncs"] += 1

    def deliver(self, tl, seq):
        """7 step 2: in order, holding what is ahead; True on a gap."""
        if seq <= tl.last:
            return False
        if seq == tl.last + 1:
            tl.last = seq
            while tl.last + 1 in tl.held:
                tl.held.discard(tl.last + 1)
                tl.last += 1
            tl.held = {s for s in tl.held if s > tl.last}
            return False
        tl.held.add(seq)
        return True

    def advance(self, tl, upto):
        if upto > tl.last:
            tl.last = upto
        while tl.last + 1 in tl.held:
            tl.last += 1
        tl.held = {s for s in tl.held if s > tl.last}

    def on_event(self, e):
        k = e[0]
        if k == "connected":
            self.connected = True
            self.fails = 0
            self.conn_no += 1
            self.gen += 1
            # 7 step 1 and 4: sync every timeline from `last` (from 0 once
            # the final phase began), re-send what has no Receipt.
            for tl in self.tls.values():
                if self.phase == "final" and not tl.final_done:
                    tl.final_mode = True
                    self.start_sync(tl, 0)
                elif self.phase != "final":
                    self.start_sync(tl, tl.last)
                else:
                    tl.sync_gen = None
            if self.phase != "final":
                # Not once the final syncs began: a message stored after
                # the others' final syncs would be in no final view.
                self.resend_unreceipted()
        elif k == "disconnected":
            if self.connected:
                self.down_since = time.monotonic()
            else:
                self.fails += 1     # an attempt that never got a CONNACK
            self.connected = False
        elif k == "connect_fail":
            self.fails += 1
        elif k == "rc":
            _, name, mid, code = e
            cmid = self.mids.get(mid)
            if name in ("PUBACK", "PUBCOMP"):
                self.mids.pop(mid, None)
            if cmid is None:
                return
            pm = self.pending.get(cmid)
            # The promise: PUBACK (QoS 1) or PUBREC (QoS 2) with a success
            # code (PROTOCOL.md 3: journaled before either is sent).
            promise = (name == "PUBACK" and pm is not None and pm.qos == 1) or \
                      (name == "PUBREC")
            if pm is not None and promise and code < 0x80:
                if not pm.acked:
                    pm.acked = True
                    self.rec.ack(cmid)
            elif promise and code >= 0x80:
                print("%s: %s of %s refused: 0x%02x" % (self.proc, name,
                                                        cmid, code),
                      file=sys.stderr)
        elif k == "receipt":
            _, cmid, status, tl, seq, own_seq, sid = e
            self.learn_store(sid)
            pm = self.pending.get(cmid)
            if pm is None:
                return
            first = pm.receipt is None
            pm.receipt = (status, tl, seq, own_seq)
            if first and status == 0 and pm.kind == H.SEND and seq:
                self.mine.append((pm.to, seq, cmid))
            if first and status != 0 and pm.kind != H.SEND:
                print("%s: %s %s refused: %d" % (self.proc, pm.kind, cmid,
                                                 status), file=sys.stderr)
        elif k == "frame":
            _, name, seq, sid = e
            self.learn_store(sid)
            tl = self.tls.get(name)
            if tl is None:
                return
            if self.deliver(tl, seq) and tl.sync_gen is None \
                    and self.connected and self.phase != "final":
                self.start_sync(tl, tl.last)      # a gap: sync from last
        elif k == "batch":
            self.on_batch(*e[1:])

    def on_batch(self, corr, status, retry_ms, has_more, head, first_seq,
                 sid, seqs):
        try:
            gen, name, after, _n = corr.split("|")
            gen = int(gen)
            after = int(after)
        except ValueError:
            return
        self.learn_store(sid)
        tl = self.tls.get(name)
        if tl is None or tl.sync_gen != gen or gen != self.gen \
                or tl.sync_after != after:
            return             # an answer to a request given up on
        if status != 0:
            if status == 429:
                self.stats["too_many"] += 1
            delay = (retry_ms or 500) / 1000.0
            tl.sync_retry_at = time.monotonic() + delay
            return
        for s in seqs:
            self.deliver(tl, s)
        if has_more and seqs:
            self.start_sync(tl, seqs[-1])
            return
        # Synced to the head: every seq up to it that the batches did not
        # hold is gone (6.1: expired; below first_seq: trimmed), so move
        # `last` there and deliver what was held beyond it.
        self.advance(tl, head)
        tl.sync_gen = None
        if tl.final_mode:
            tl.final_done = True
            tl.final_mode = False
            self.rec.final(name, head, store_id=sid, first_seq=first_seq)
        elif tl.held:
            # Frames ahead of what the batch covered: they came live after
            # the read; sync again from last.
            self.start_sync(tl, tl.last)
        self.send_ack(tl)

    def send_ack(self, tl):
        """7 step 3: ack the highest seq delivered."""
        if tl.last > tl.acked and self.connected:
            tl.acked = tl.last
            req = pb.Ack(timeline=tl.name, seq=tl.last)
            self.nreq += 1
            rid = "ack|%s|%d|%d" % (tl.name, tl.last, self.nreq)
            p = Properties(PacketTypes.PUBLISH)
            p.ResponseTopic = self.atopic
            p.CorrelationData = rid.encode()
            self._request(rid, "ack")
            self.c.publish("$CONTROL/im/v1/ack", req.SerializeToString(),
                           qos=1, properties=p)
            self.stats["acks"] += 1

    def drop(self):
        """SIGUSR1: close the socket without DISCONNECT."""
        s = self.c.socket()
        self.stats["drops"] += 1
        if s is None:
            return
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def maybe_switch(self, now):
        """Another broker when this one failed two attempts in a row or
        has been unreachable for --switch-after seconds: paho's own
        reconnect loop takes the new port at its next attempt."""
        if self.connected or len(self.ports) < 2:
            return
        if self.fails < 2 and now - self.down_since < self.a.switch_after:
            return
        self.port_idx = (self.port_idx + 1) % len(self.ports)
        self.c._port = self.ports[self.port_idx]
        self.fails = 0
        self.down_since = now
        self.switches += 1

    def ctl(self, name):
        return os.path.exists(os.path.join(self.a.ctl, name))

    def write_ctl(self, name):
        p = os.path.join(self.a.ctl, name)
        with open(p + ".tmp", "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(p + ".tmp", p)

    def idle(self):
        """Nothing in flight: every message has a Receipt, no sync runs."""
        if any(pm.receipt is None for pm in self.pending.values()):
            return False
        return all(tl.sync_gen is None and tl.sync_retry_at is None
                   and not tl.held for tl in self.tls.values())

    def run(self):
        self.c.connect_async("127.0.0.1", self.ports[self.port_idx],
                             keepalive=self.a.keepalive,
                             clean_start=False,
                             properties=self._connect_props())
        self.c.loop_start()
        ready = False
        last_ctl = 0.0
        while True:
            try:
                e = self.ev.get(timeout=0.05)
                self.on_event(e)
                # Drain what is there before acting.
                while True:
                    try:
                        self.on_event(self.ev.get_nowait())
                    except queue.Empty:
                        break
            except queue.Empty:
                pass
            now = time.monotonic()
            self.maybe_switch(now)
            while self.drops_done < _drop_requested[0]:
                self.drops_done += 1
                self.drop()
            if not ready and self.connected and all(
                    tl.sync_gen is None for tl in self.tls.values()):
                ready = True
                self.write_ctl(self.proc + ".ready")
            if now - last_ctl > 0.2:
                last_ctl = now
                if self.phase == "run" and self.ctl("heal"):
                    self.phase = "heal"
                    self.last_resend = now
                if self.phase in ("run", "heal") and self.ctl("final"):
                    self.phase = "final"
                    self.final_started = now
                    self.gen += 1
                    for tl in self.tls.values():
                        tl.final_mode = True
                        tl.held.clear()
                        if self.connected:
                            self.start_sync(tl, 0)
                        else:
                            tl.sync_gen = None
            # Syncs: retries after TOO_MANY/errors, and requests whose
            # answer never came (lost with a connection, or very late).
            for tl in self.tls.values():
                if not self.connected:
                    continue
                if tl.sync_retry_at is not None and now >= tl.sync_retry_at:
                    self.start_sync(tl, tl.sync_after)
                elif tl.sync_gen is not None and tl.sync_retry_at is None \
                        and now - tl.sync_sent > 20:
                    self.start_sync(tl, tl.sync_after)
            if self.phase == "run":
                if self.connected and now >= self.next_action:
                    self.action()
                    self.next_action = now + self.rnd.expovariate(self.a.rate)
            elif self.phase == "heal":
                if self.connected and now - self.last_resend > 3:
                    self.last_resend = now
                    self.resend_unreceipted()
                if self.connected and not self.quiet_written and self.idle():
                    self.quiet_written = True
                    self.write_ctl(self.proc + ".quiet")
            else:
                if all(tl.final_done for tl in self.tls.values()):
                    break
                if now - self.final_started > self.a.final_timeout:
                    print("%s: final sync not done in %d s" % (
                        self.proc, self.a.final_timeout), file=sys.stderr)
                    self.finish()
                    return 3
            if now - self.last_ack_round > 2:
                self.last_ack_round = now
                for tl in self.tls.values():
                    self.send_ack(tl)
        self.finish()
        return 0

    def _connect_props(self):
        p = Properties(PacketTypes.CONNECT)
        p.SessionExpiryInterval = 3600
        return p

    def finish(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()
        self.rec.close()
        no_receipt = sum(1 for pm in self.pending.values()
                         if pm.receipt is None)
        print("%s: %s, without receipt %d, connections %d, broker "
              "switches %d" % (
                  self.proc, " ".join("%s=%d" % kv for kv in
                                      sorted(self.stats.items())),
                  no_receipt, self.conn_no, self.switches))
        sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proc", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--users", required=True, help="all users, comma-separated")
    ap.add_argument("--groups", default="", help="this user's groups")
    ap.add_argument("--port", type=int, help="one broker's port")
    ap.add_argument("--ports", help="brokers' ports, comma-separated "
                    "(the cluster): moves to the next when one fails")
    ap.add_argument("--first", type=int, default=0,
                    help="index in --ports of the broker to start on")
    ap.add_argument("--switch-after", type=float, default=3.0,
                    help="seconds without a connection before moving on")
    ap.add_argument("--history", required=True, help="folder of the .jsonl")
    ap.add_argument("--ctl", required=True, help="folder of control files")
    ap.add_argument("--pb-dir", required=True, help="folder of im_pb2.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=8.0,
                    help="messages a second while running")
    ap.add_argument("--keepalive", type=int, default=4)
    ap.add_argument("--final-timeout", type=int, default=90)
    a = ap.parse_args(argv)
    if a.ports:
        a.ports = [int(x) for x in a.ports.split(",") if x]
    elif a.port:
        a.ports = [a.port]
    else:
        ap.error("--port or --ports is required")
    global pb
    sys.path.insert(0, a.pb_dir)
    import im_pb2
    pb = im_pb2
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    return Client(a).run()


if __name__ == "__main__":
    sys.exit(main())
