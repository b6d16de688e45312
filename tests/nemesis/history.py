"""The history format of the nemesis suite (issue #21).

Every client process of a nemesis run appends one JSON object per line
(JSONL) to a file of its own; the nemesis appends its faults to its own
file too.  Nothing is shared while the run goes on, so a client killed with
SIGKILL loses at most the line it was writing, and no lock or clock is
shared between processes.  The checker (checker.py) reads all the files
afterwards and merges them.

Order: within one process, the order of the lines in its file IS the order
of its history (the checker relies on it: connection epochs, the store id a
client knows, live delivery order).  Across processes only the wall clock
`t` relates records, and the checker uses it only where nothing better
exists (time-based `may_read` facts, and sorting excerpts for humans).  A
nemesis that steps clocks therefore cannot make the checker wrong about a
single client's history.

Common fields of every record:

    t      float, time.time() when the record was written
    proc   the client process name ("c3"; "nemesis" for faults)
    user   the MQTT username of that process (None for the nemesis)
    dev    its MQTT client id (None for the nemesis)
    kind   one of the KIND constants below

See README.md in this folder for the fields of each kind and what they mean.
Standard library only: this must run with /usr/bin/python3 anywhere.
"""

import hashlib
import json
import os
import threading
import time

# Record kinds.  The string values are the on-disk format: never rename.
SEND = "send"          # a publish attempt of a new message
EDIT = "edit"          # a publish attempt of an edit (im-edit)
RECALL = "recall"      # a publish attempt of a recall (im-recall)
ACK = "ack"            # the MQTT PUBACK/PUBCOMP of that publish arrived
RECEIPT = "receipt"    # the im.v1.Receipt of that publish arrived
LIVE = "live"          # a frame delivered live on im/u/... or im/g/...
SYNCED = "synced"      # a frame returned in a SyncBatch
HEAD = "head"          # a SyncBatch with has_more false: synced to the end
FINAL = "final"        # after the heal phase: a full sync from 0 is done
FAULT = "fault"        # a nemesis action starts or ends
MAY_READ = "may_read"  # a membership fact: who may read a group
CONNECT = "connect"    # the client's MQTT connection (re)started
REQUEST = "request"    # a request (sync, ack, ...) was published
REPLY = "reply"        # the answer to a request arrived

SEND_KINDS = (SEND, EDIT, RECALL)
FRAME_KINDS = (LIVE, SYNCED)
KINDS = (SEND, EDIT, RECALL, ACK, RECEIPT, LIVE, SYNCED, HEAD, FINAL, FAULT,
         MAY_READ, CONNECT, REQUEST, REPLY)

# Header.flags bits (proto/im.proto, HeaderFlag).  Duplicated here rather
# than imported from generated protobuf code: the checker must run with a
# bare python3.
FLAG_SYSTEM = 1
FLAG_COMPRESSED = 2
FLAG_EDIT = 4
FLAG_RECALL = 8
FLAG_EDITED = 16
FLAG_RECALLED = 32

# im.v1.Status: only OK matters to the checker; the others are refusals.
STATUS_OK = 0

NEMESIS = "nemesis"


def body_hash(body):
    """Hex sha256 of a body as the sender published it.

    For a compressed frame (FLAG_COMPRESSED) hash the inflated body: the
    checker compares what was sent with what was read.  A str is hashed as
    UTF-8."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return hashlib.sha256(body).hexdigest()


# A recalled message has no body; its frames carry body_len 0.
EMPTY_BODY_HASH = body_hash(b"")


class Recorder:
    """Appends one process's history to `path`, one flushed line per call.

    Each method writes one record and returns the dict written.  Bodies can
    be given as `body` (bytes or str, hashed here) or as `body_hash` (hex):
    a client holds the body, a synthetic test may prefer the hash.

    `clock` is time.time by default; tests pass a fake one to build
    histories with known times.  The lock makes a Recorder safe to share
    between the threads of one client (paho's network thread writes frames
    while the main thread sends): one line is one write() call.
    """

    def __init__(self, path, proc, user, dev, clock=time.time):
        self.path = path
        self.proc = proc
        self.user = user
        self.dev = dev
        self.clock = clock
        self._lock = threading.Lock()
        # Append: a client restarted under the same name continues its file,
        # and the checker reads the lines in order.
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")

    def close(self):
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, kind, fields, t=None):
        rec = {"t": self.clock() if t is None else t, "proc": self.proc,
               "user": self.user, "dev": self.dev, "kind": kind}
        rec.update(fields)
        # Compact separators: a long run writes millions of lines.
        line = json.dumps(rec, separators=(",", ":"), sort_keys=False) + "\n"
        with self._lock:
            if self._f is None:
                raise ValueError("Recorder is closed")
            self._f.write(line)
            # Flush every line: a client killed by the nemesis must leave
            # everything it saw on disk (the OS keeps it on SIGKILL).
            self._f.flush()
        return rec

    @staticmethod
    def _hash(body, body_hash_):
        if body_hash_ is not None:
            return body_hash_
        if body is None:
            return None
        return body_hash(body)

    # -- uplink -----------------------------------------------------------

    def send(self, cmid, to, body=None, qos=1, body_hash=None, t=None):
        """A publish attempt to timeline `to` ("u/bob", "g/team").

        A re-send after a reconnect writes another `send` with the same
        cmid: the checker expects the message stored once."""
        return self._write(SEND, {"cmid": cmid, "to": to,
                                  "body_hash": self._hash(body, body_hash),
                                  "qos": qos}, t)

    def edit(self, cmid, to, ref_seq, body=None, qos=1, body_hash=None,
             t=None):
        """A publish with im-edit: ref_seq is the seq in `to` it replaces."""
        return self._write(EDIT, {"cmid": cmid, "to": to,
                                  "body_hash": self._hash(body, body_hash),
                                  "qos": qos, "ref_seq": ref_seq,
                                  "change": "edit"}, t)

    def recall(self, cmid, to, ref_seq, qos=1, t=None):
        """A publish with im-recall (empty body): ref_seq is the seq in `to`."""
        return self._write(RECALL, {"cmid": cmid, "to": to,
                                    "body_hash": EMPTY_BODY_HASH,
                                    "qos": qos, "ref_seq": ref_seq,
                                    "change": "recall"}, t)

    def ack(self, cmid, t=None):
        """The PUBACK (QoS 1) or PUBCOMP (QoS 2) of the publish of `cmid`
        arrived with a success code: the broker promised the message."""
        return self._write(ACK, {"cmid": cmid}, t)

    def receipt(self, cmid, timeline, seq, duplicate=False, status=0,
                store_id=None, own_seq=None, t=None):
        """An im.v1.Receipt.  For a refusal (status != 0) seq is None."""
        return self._write(RECEIPT, {"cmid": cmid, "timeline": timeline,
                                     "seq": seq, "duplicate": bool(duplicate),
                                     "status": status, "store_id": store_id,
                                     "own_seq": own_seq}, t)

    # -- downlink ---------------------------------------------------------

    def _frame(self, kind, timeline, seq, sender, cmid, body, body_hash_,
               flags, ref_seq, peer_seq, store_id, t):
        return self._write(kind, {
            "timeline": timeline, "seq": seq, "sender": sender,
            "cmid": cmid, "body_hash": self._hash(body, body_hash_),
            "flags": flags, "ref_seq": ref_seq, "peer_seq": peer_seq,
            "store_id": store_id}, t)

    def live(self, timeline, seq, sender, cmid=None, body=None, flags=0,
             ref_seq=None, peer_seq=None, store_id=None, body_hash=None,
             t=None):
        """A frame delivered live.  Do not record events (seq 0)."""
        return self._frame(LIVE, timeline, seq, sender, cmid, body, body_hash,
                           flags, ref_seq, peer_seq, store_id, t)

    def synced(self, timeline, seq, sender, cmid=None, body=None, flags=0,
               ref_seq=None, peer_seq=None, store_id=None, body_hash=None,
               t=None):
        """A frame of a SyncBatch."""
        return self._frame(SYNCED, timeline, seq, sender, cmid, body,
                           body_hash, flags, ref_seq, peer_seq, store_id, t)

    def head(self, timeline, head_seq, first_seq, store_id=None, t=None):
        """A SyncBatch with has_more false: the client is synced to head."""
        return self._write(HEAD, {"timeline": timeline, "head_seq": head_seq,
                                  "first_seq": first_seq,
                                  "store_id": store_id}, t)

    def final(self, timeline, head_seq, store_id=None, first_seq=None,
              t=None):
        """Written at the very end, after the heal phase, once this client
        synced `timeline` from 0 to its head: from here on the client's
        frames of that timeline are its final view of it."""
        return self._write(FINAL, {"timeline": timeline, "head_seq": head_seq,
                                   "store_id": store_id,
                                   "first_seq": first_seq}, t)

    # -- requests (liveness) ----------------------------------------------

    def request(self, rid, op, t=None):
        """A request published on im/req/...: `rid` its correlation data
        (as a string), `op` what it asks ("sync", "ack", ...).  With the
        matching `reply` the checker measures how long the plugin took to
        answer, and how long it stayed silent."""
        return self._write(REQUEST, {"rid": rid, "op": op}, t)

    def reply(self, rid, status=0, t=None):
        """The answer to request `rid` arrived, with its im.v1.Status."""
        return self._write(REPLY, {"rid": rid, "status": status}, t)

    # -- facts ------------------------------------------------------------

    def connect(self, broker=None, session_present=None, t=None):
        """The MQTT connection (re)started (CONNACK received): live
        delivery order is promised within one connection only."""
        return self._write(CONNECT, {"broker": broker,
                                     "session_present": session_present}, t)

    def may_read(self, timeline, allowed, reader=None, seq=None,
                 store_id=None, moderator=None, t=None):
        """A membership fact about group `timeline` for user `reader`
        (default: this process's user).

        allowed=True: record it BEFORE sending the add request (the user
        may read from then on, at the latest).  allowed=False: record it
        when the removal's reply arrived, with `seq` = the seq of its system
        message (and its store_id) when known: frames above that seq are
        never the user's to read.  Without `seq` a removal counts from `t`.
        moderator=True says `reader` is the group's owner or an admin, who
        may recall others' messages (11.2)."""
        return self._write(MAY_READ, {"timeline": timeline,
                                      "allowed": bool(allowed),
                                      "reader": reader, "seq": seq,
                                      "store_id": store_id,
                                      "moderator": moderator}, t)

    def fault(self, action, target, phase, t=None):
        """A nemesis action ("kill", "partition", "pause", ...) on `target`
        starting (phase "start") or over ("end")."""
        if phase not in ("start", "end"):
            raise ValueError("phase must be 'start' or 'end'")
        return self._write(FAULT, {"action": action, "target": target,
                                   "phase": phase}, t)
