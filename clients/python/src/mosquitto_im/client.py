"""The mosquitto-im client: docs/PROTOCOL.md section 7 on paho-mqtt.

Threads
-------
- paho's network thread reads the socket. It never takes the client's
  lock: it parses replies, resolves the futures of requests and sends
  (under a small lock of their own), and queues everything else.
- the client's event thread ("im-events") owns the algorithm: it takes
  what the network thread queued, in arrival order, under the client's
  lock, and then calls the application's callbacks, outside the lock, one
  at a time, in order. It also runs the timers (acks, retries, timeouts,
  saving the state).
- the application's threads call the public methods; they take the lock
  and may publish.

So a callback may call any method of the client, and may even wait for a
future (send(...).result()): futures are resolved by the network thread.
A callback that blocks holds up the callbacks after it, nothing else.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import queue
import socket
import ssl
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import (Any, Callable, Deque, Dict, Iterable, List, Optional, OrderedDict, Sequence,
                    Set, Tuple, Union)

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import frame as _frame
from . import im_pb2 as pb
from .store import MemoryStore, PendingSend, State, Store
from .types import (Conversation, ConversationPage, ConnectionLostError, Flag, FrameError, GroupInfo,
                    GroupResult, ImError, Membership, Message, NotConnectedError, ReadMark, Receipt,
                    RefusedError, RequestTimeout, Status, Typing)

log = logging.getLogger("mosquitto_im")

CONTROL = "$CONTROL/im/v1/"
# Where Receipts come: the plugin answers on the Response Topic of the
# publish, to this client only (no subscription needed). The same topic as
# examples/web/im.js.
RECEIPT_TOPIC = CONTROL + "receipt"
PAHO_V2 = hasattr(mqtt, "CallbackAPIVersion")

# paho 1.6 ignores the Receive Maximum of CONNACK; Mosquitto's default
# (max_inflight_messages) is 20 and a publish beyond it is refused (0x97).
MAX_INFLIGHT = 16
# Messages handed to paho and not yet acknowledged by the broker, per
# connection. The rest wait in the client's own queue: after a drop only
# what has no Receipt is sent again, once per connection, so a flapping
# link does not pile up copies in paho's queue.
SEND_WINDOW = 10
# Sync requests out at once (below the plugin's sync_inflight, 16).
SYNC_WINDOW = 8
RETRY_S = 1.0               # a TOO_MANY without retry_after_ms, a failed `list`
SAVE_EVERY_S = 0.2          # cursors are saved at most this often (sends at once)
TICK_S = 0.1
EVENT_MEMBERSHIP = 3        # im.v1.Event.Kind (the plugin's, before our im_pb2 knew it)

Callback = Optional[Callable[..., Any]]


def valid_name(name: str) -> bool:
    """A user or group name (PROTOCOL.md 1): UTF-8, 1 to 64 bytes, none of
    / + # $ or control characters."""
    b = name.encode("utf-8")
    if not 1 <= len(b) <= 64:
        return False
    return not any(c in "/+#$" or ord(c) < 0x20 or ord(c) == 0x7f for c in name)


def _timeline(tl: str) -> str:
    if not (tl.startswith("u/") or tl.startswith("g/")) or not valid_name(tl[2:]):
        raise ValueError("not a timeline: %r (u/<user> or g/<group>)" % (tl,))
    return tl


def _rc(x: Any) -> int:
    return int(getattr(x, "value", x))


def _opt(msg: Any, name: str, default: Any = None) -> Any:
    return getattr(msg, name) if msg.HasField(name) else default


class _Paho(mqtt.Client):  # type: ignore[misc]
    """paho's client, telling the reason code of each PUBACK: paho 1.6 calls
    on_publish whatever it is, and 0x87 (refused) is no acceptance. (paho
    2.x passes it to on_publish; this hook is used on 1.x only.)"""

    _im_puback: Optional[Callable[[int, int], None]] = None

    def _handle_pubackcomp(self, cmd: Any) -> Any:
        hook = self._im_puback
        if hook is not None:
            try:
                pkt = self._in_packet["packet"]
                mid = struct.unpack("!H", pkt[:2])[0]
                code = pkt[2] if self._in_packet["remaining_length"] > 2 else 0
                hook(mid, code)
            except Exception:       # a paho without these internals: codes unknown
                log.debug("PUBACK reason code not readable", exc_info=True)
        return super()._handle_pubackcomp(cmd)


@dataclass
class _TL:
    """The algorithm's state of one timeline."""
    name: str
    last: int = 0                   # highest seq delivered to the application
    seen: int = 0                   # highest seq to ack (read by the user)
    acked: int = 0                  # highest seq acked on this connection
    held: Dict[int, Message] = field(default_factory=dict)
    syncing: bool = False           # hold live frames until the sync reached the head
    want: bool = False              # a sync request is to be sent
    req: Optional[str] = None       # correlation data of the sync request out
    req_after: int = 0
    req_at: float = 0.0
    retry_at: Optional[float] = None
    history: "OrderedDict[int, Message]" = field(default_factory=collections.OrderedDict)


@dataclass
class _Req:
    future: "concurrent.futures.Future[Any]"
    op: str
    parse: Callable[[bytes], Any]
    deadline: float


class Client:
    """One device of one user. See the package README for a walk-through.

    user, password: the MQTT username (the IM identity) and password.
    client_id: the device; its cursors live under it on the server. By
      default the one the store remembers, or a new one saved there.
    store: where the device's state survives restarts (cursors, store id,
      messages without a Receipt): a JsonFileStore for a real device;
      MemoryStore (the default) forgets everything when the process ends.
    auto_ack: ack (msg-fin, and the read mark others see) every message
      delivered to on_message; False: call ack() when the user read them.
    history: messages kept per timeline in memory, for edits and recalls
      to be applied to (messages() returns them).
    tls: an ssl.SSLContext for a TLS listener.

    Callbacks (attributes; called on the client's event thread, in order):
      on_message(Message)                 a message, once, in seq order per timeline
      on_edit(edit: Message, original: Message | None)   original updated in place
      on_recall(recall: Message, original: Message | None)
      on_read(ReadMark)                   someone's read mark moved up
      on_typing(Typing)
      on_membership(Membership)           I was added to / removed from a group
      on_reset(old_store_id, new_store_id)  the server's history was replaced:
                                          everything is delivered again from seq 1
      on_receipt(Receipt)                 every message sent got its answer
                                          (also those sent before a restart)
      on_gap(timeline, first, last)       seqs removed by retention, never delivered
      on_status(str)                      "connecting", "syncing", "online", "offline"
      on_error(Exception)                 a frame not understood, a callback that raised,
                                          a message refused with no future to tell
    """

    def __init__(self, user: str, host: str = "localhost", port: int = 1883, *,
                 password: Optional[str] = None, client_id: Optional[str] = None,
                 store: Optional[Store] = None, prefix: str = "im", keepalive: int = 30,
                 tls: Optional[ssl.SSLContext] = None, auto_ack: bool = True,
                 ack_interval: float = 2.0, request_timeout: float = 30.0,
                 sync_limit: int = 500, history: int = 1000,
                 session_expiry: int = 7 * 24 * 3600,
                 reconnect_delay: Tuple[float, float] = (0.2, 10.0)) -> None:
        if not valid_name(user):
            raise ValueError("not a valid user name: %r" % (user,))
        self.user = user
        self.me = "u/" + user
        self.host, self.port = host, port
        self._password = password
        self._prefix = prefix
        self._keepalive = keepalive
        self._tls_ctx = tls
        self.auto_ack = auto_ack
        self.ack_interval = ack_interval
        self.request_timeout = request_timeout
        self._sync_limit = sync_limit
        self._history = history
        self._session_expiry = session_expiry
        self._reconnect_delay = reconnect_delay

        self.on_message: Callback = None
        self.on_edit: Callback = None
        self.on_recall: Callback = None
        self.on_read: Callback = None
        self.on_typing: Callback = None
        self.on_membership: Callback = None
        self.on_reset: Callback = None
        self.on_receipt: Callback = None
        self.on_gap: Callback = None
        self.on_status: Callback = None
        self.on_error: Callback = None

        self._store = store if store is not None else MemoryStore()
        st = self._store.load()
        self.client_id = client_id or st.client_id or "%s-py-%s" % (user, uuid.uuid4().hex[:12])
        self._store_id = st.store_id
        self._cursors: Dict[str, int] = dict(st.cursors)
        self._pending: Dict[str, PendingSend] = dict(st.pending)

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._flock = threading.Lock()       # the futures (a leaf lock)
        self._q: "queue.Queue[Tuple[Any, ...]]" = queue.Queue()
        self._events: List[Tuple[Callable[..., Any], Tuple[Any, ...]]] = []
        self._tls: Dict[str, _TL] = {}
        for name in [self.me] + sorted(k for k in self._cursors if k.startswith("g/")):
            last = self._cursors.get(name, 0)
            self._tls[name] = _TL(name, last=last, seen=last)
        self._cursors = {k: v for k, v in self._cursors.items() if k in self._tls}
        self._abandoned: Set[int] = set()
        self._marks: Dict[str, Dict[str, int]] = {}
        self._send_futures: Dict[str, "concurrent.futures.Future[Receipt]"] = {}
        self._reqs: Dict[str, _Req] = {}
        self._mids: Dict[int, str] = {}
        self._unsent: Deque[str] = collections.deque()
        self._inflight = 0
        self._conn = 0
        self._connected = False
        self._store_ok = False
        self._groups_known = False
        self._groups_retry_at: Optional[float] = None
        self._next_ack: Optional[float] = None
        self._dirty = False
        self._last_save = 0.0
        self._status = "new"
        self._run = uuid.uuid4().hex[:8]     # correlation data of this process's requests
        self._n = itertools.count(1)
        self._rr = 0
        self._mqtt: Optional[Any] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        if st.client_id != self.client_id:
            self._save(force=True)

    # ------------------------------------------------------------------
    # life cycle

    def start(self) -> "Client":
        """Connects (in the background, reconnecting for ever) and starts
        the event thread. Returns at once: see wait_online()."""
        if self._mqtt is not None:
            raise ImError("already started")
        kw: Dict[str, Any] = {"client_id": self.client_id, "protocol": mqtt.MQTTv5}
        if PAHO_V2:
            c = _Paho(mqtt.CallbackAPIVersion.VERSION2, **kw)
        else:
            c = _Paho(**kw)
            c._im_puback = lambda mid, code: self._q.put(("puback", mid, code))
        c.username_pw_set(self.user, self._password)
        if self._tls_ctx is not None:
            c.tls_set_context(self._tls_ctx)
        c.max_inflight_messages_set(MAX_INFLIGHT)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(*self._reconnect_delay)
        c.on_connect = self._paho_connect
        c.on_disconnect = self._paho_disconnect
        c.on_message = self._paho_message
        c.on_socket_open = self._paho_socket_open
        if PAHO_V2:
            c.on_publish = self._paho_publish_v2
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
        self._mqtt = c
        self._thread = threading.Thread(target=self._loop, name="im-events", daemon=True)
        self._thread.start()
        with self._lock:
            self._set_status("connecting")
        c.connect_async(self.host, self.port, self._keepalive, clean_start=False, properties=props)
        c.loop_start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Sends the acks due, disconnects, saves the state and closes the
        store. Messages without a Receipt stay in the store and are sent
        again by the next start(); their futures fail with
        ConnectionLostError."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            if self._connected:
                self._send_acks()
        c = self._mqtt
        if c is not None:
            try:
                c.disconnect()
            except Exception:
                pass
            c.loop_stop()
        self._q.put(("stop",))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            self._connected = False
            self._save(force=True)
        self._fail_requests(ConnectionLostError("client closed"))
        with self._flock:
            futs = list(self._send_futures.values())
            self._send_futures.clear()
        for f in futs:
            f.set_exception(ConnectionLostError("client closed; the message is kept in the store "
                                                "and sent again by the next start()"))
        self._store.close()

    def __enter__(self) -> "Client":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _not_from_callback(self) -> None:
        if threading.current_thread() is self._thread:
            raise ImError("wait_online(), flush() and wait_for() cannot be called from a callback: "
                          "the event thread they wait for is the caller")

    def wait_online(self, timeout: Optional[float] = None) -> bool:
        """Waits until connected and caught up: every timeline synced to its
        head, nothing held, the group list read. False at the timeout."""
        self._not_from_callback()
        with self._cond:
            return self._cond.wait_for(self._online, timeout)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until every message sent has its Receipt. False at the timeout."""
        self._not_from_callback()
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: Optional[float] = None) -> bool:
        """Waits until predicate() is true; it is checked under the client's
        lock after each change the event thread makes."""
        self._not_from_callback()
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    # ------------------------------------------------------------------
    # what the application asks

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def status(self) -> str:
        return self._status

    @property
    def store_id(self) -> int:
        """The store id the seqs count in (0: not known yet)."""
        return self._store_id

    def timelines(self) -> List[str]:
        """u/<me> and the groups followed."""
        with self._lock:
            return list(self._tls)

    def last(self, timeline: str) -> int:
        """The highest seq of timeline delivered so far."""
        with self._lock:
            t = self._tls.get(timeline)
            return t.last if t else 0

    def messages(self, timeline: str) -> List[Message]:
        """The messages of timeline kept in memory (the last `history`
        delivered by this process), edits and recalls applied."""
        with self._lock:
            t = self._tls.get(timeline)
            return list(t.history.values()) if t else []

    def pending(self) -> List[PendingSend]:
        """Messages sent that have no Receipt yet, in send order."""
        with self._lock:
            return list(self._pending.values())

    def read_mark(self, timeline: str, user: str) -> int:
        """How far user read timeline, as far as this client heard (0: nothing known)."""
        with self._lock:
            return self._marks.get(timeline, {}).get(user, 0)

    def readers(self, timeline: str) -> Dict[str, int]:
        with self._lock:
            return dict(self._marks.get(timeline, {}))

    def send(self, to: str, body: Union[bytes, str], *, content_type: Optional[str] = None,
             expiry: Optional[int] = None) -> "concurrent.futures.Future[Receipt]":
        """Sends body to `u/<user>` or `g/<group>`. Returns at once (also
        offline) with a Future that resolves to the Receipt once the
        message is stored, or fails with RefusedError. The message is in
        the store when send() returns and is sent again, with the same
        cmid, after every reconnect until its Receipt comes: it is stored
        once. expiry: seconds after which nobody gets it any more."""
        if isinstance(body, str):
            body = body.encode("utf-8")
            content_type = content_type or "text/plain; charset=utf-8"
        if expiry is not None and not 0 <= int(expiry) <= 315360000:
            raise ValueError("expiry: 0 to 315360000 seconds")
        return self._submit(PendingSend(cmid=str(uuid.uuid4()), timeline=_timeline(to), body=bytes(body),
                                        content_type=content_type, expiry=expiry,
                                        created_ms=int(time.time() * 1000)))

    def edit(self, timeline: str, seq: int, body: Union[bytes, str], *,
             content_type: Optional[str] = None) -> "concurrent.futures.Future[Receipt]":
        """Replaces the body of my message `seq` of `timeline` (the timeline
        it was sent to; Message.target() gives both)."""
        if isinstance(body, str):
            body = body.encode("utf-8")
            content_type = content_type or "text/plain; charset=utf-8"
        return self._submit(PendingSend(cmid=str(uuid.uuid4()), timeline=_timeline(timeline),
                                        body=bytes(body), kind="edit", ref_seq=int(seq),
                                        content_type=content_type, created_ms=int(time.time() * 1000)))

    def recall(self, timeline: str, seq: int) -> "concurrent.futures.Future[Receipt]":
        """Recalls message `seq` of `timeline` for everyone (mine; in a
        group also the owner's and admins' right)."""
        return self._submit(PendingSend(cmid=str(uuid.uuid4()), timeline=_timeline(timeline), body=b"",
                                        kind="recall", ref_seq=int(seq),
                                        created_ms=int(time.time() * 1000)))

    def ack(self, timeline: str, seq: Optional[int] = None) -> None:
        """The user has read timeline up to seq (default: everything
        delivered). Sent within a moment; moves this device's cursor and
        the user's read mark, never back."""
        with self._lock:
            t = self._tls.get(timeline)
            if t is None:
                raise KeyError(timeline)
            s = t.last if seq is None else min(int(seq), t.last)
            if s > t.seen:
                t.seen = s
                self._next_ack = time.monotonic()

    def typing(self, timeline: str, typing: bool = True) -> "concurrent.futures.Future[None]":
        """Tells the other side(s) of `u/<peer>` or `g/<group>` that the user
        is typing, or stopped. Send it at most every few seconds while the
        user types (others drop it after 6 s), and False once."""
        return self._request("typing", pb.TypingRequest(timeline=_timeline(timeline), typing=typing),
                             self._parse_response)

    def conversations(self, limit: int = 50, before_ts_ms: Optional[int] = None,
                      before_timeline: Optional[str] = None) -> "concurrent.futures.Future[ConversationPage]":
        """My conversations, the latest first (PROTOCOL.md 11.5). Next page:
        conversations(limit, *page.next_page())."""
        req = pb.ConversationsRequest(limit=limit)
        if before_ts_ms is not None:
            req.before_ts_ms = before_ts_ms
        if before_timeline is not None:
            req.before_timeline = before_timeline
        return self._request("conversations", req, self._parse_conversations)

    def reads(self, timeline: str) -> "concurrent.futures.Future[List[ReadMark]]":
        """The read marks of a conversation as the server has them (after
        being offline: events are not queued)."""
        return self._request("reads", pb.ReadsRequest(timeline=_timeline(timeline)), self._parse_reads)

    def groups(self) -> "concurrent.futures.Future[List[GroupInfo]]":
        """The groups I am in, with this device's cursor and unread count.
        The client follows what the answer says (subscribes to groups it did
        not know, drops those it is no longer in), as after every connect."""
        with self._lock:
            fut = self._request("group", pb.GroupRequest(op="list"), self._parse_group_list)
            conn = self._conn
        fut.add_done_callback(lambda f: self._q.put(("groups", conn, f)))
        return fut

    def create_group(self, group: str, members: Iterable[str] = ()) -> "concurrent.futures.Future[GroupResult]":
        """Creates group with me as owner and member, and members."""
        return self._group("create", group, members)

    def add_members(self, group: str, members: Iterable[str]) -> "concurrent.futures.Future[GroupResult]":
        return self._group("add", group, members)

    def remove_members(self, group: str, members: Iterable[str]) -> "concurrent.futures.Future[GroupResult]":
        return self._group("remove", group, members)

    def leave_group(self, group: str) -> "concurrent.futures.Future[GroupResult]":
        return self._group("leave", group, ())

    def group_info(self, group: str) -> "concurrent.futures.Future[GroupResult]":
        """Owner, members (sorted) and head seq of a group."""
        return self._group("info", group, ())

    # ------------------------------------------------------------------
    # the network thread: parse, resolve futures, queue the rest

    def _paho_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # PROTOCOL.md 7: with Nagle on, every sync page waits for a delayed ACK.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _paho_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        code = _rc(rc)
        if code != 0:
            self._q.put(("refused", code))
            return
        sp = flags.get("session present") if isinstance(flags, dict) else getattr(flags, "session_present", 0)
        self._q.put(("connected", bool(sp)))

    def _paho_disconnect(self, client: Any, userdata: Any, *args: Any) -> None:
        # 1.x: (rc, properties); 2.x: (flags, reason_code, properties)
        rc = args[1] if PAHO_V2 and len(args) >= 2 else (args[0] if args else 0)
        self._q.put(("disconnected", _rc(rc)))
        self._fail_requests(ConnectionLostError("connection lost before the reply"))

    def _paho_publish_v2(self, client: Any, userdata: Any, mid: int, rc: Any = 0, props: Any = None) -> None:
        self._q.put(("puback", mid, _rc(rc)))

    def _paho_message(self, client: Any, userdata: Any, m: Any) -> None:
        try:
            self._route(m)
        except Exception as e:      # never into paho: it would drop the connection
            log.exception("mosquitto_im: message on %s", m.topic)
            self._q.put(("error", e))

    def _route(self, m: Any) -> None:
        t = m.topic
        corr_b = getattr(m.properties, "CorrelationData", None) if m.properties else None
        corr = corr_b.decode("utf-8", "replace") if corr_b else ""
        if t.startswith(CONTROL):
            if t == RECEIPT_TOPIC:
                self._on_receipt_msg(m.payload, corr)
            elif t == CONTROL + "sync/response":
                self._q.put(("batch", m.payload, corr))
            elif t.endswith("/response"):
                self._on_reply(t[len(CONTROL):-len("/response")], m.payload, corr)
            return
        p = self._prefix + "/"
        if t.startswith(p + "e/"):
            self._q.put(("event", m.payload))
        elif t.startswith(p + "u/") or t.startswith(p + "g/"):
            self._q.put(("frame", m.payload))

    def _on_receipt_msg(self, payload: bytes, corr: str) -> None:
        r = pb.Receipt()
        r.ParseFromString(payload)
        rc = Receipt(status=r.status, cmid=_opt(r, "cmid", corr), timeline=r.timeline, seq=r.seq,
                     own_seq=r.own_seq, ts_ms=r.ts_ms, duplicate=r.duplicate, store_id=r.store_id,
                     reason=r.reason)
        self._resolve_send(rc)
        self._q.put(("receipt", rc))

    def _resolve_send(self, rc: Receipt) -> None:
        with self._flock:
            fut = self._send_futures.pop(rc.cmid, None)
        if fut is None:
            return
        if rc.status == Status.OK:
            fut.set_result(rc)
        else:
            fut.set_exception(RefusedError(rc.status, rc.reason, rc))

    def _on_reply(self, op: str, payload: bytes, corr: str) -> None:
        with self._flock:
            req = self._reqs.pop(corr, None)
        if req is None:
            if op == "ack":
                r = pb.AckResponse()
                r.ParseFromString(payload)
                self._q.put(("sid", r.store_id))
            return
        try:
            res = req.parse(payload)
        except Exception as e:
            req.future.set_exception(e)
        else:
            req.future.set_result(res)

    def _fail_requests(self, err: Exception) -> None:
        with self._flock:
            reqs = list(self._reqs.values())
            self._reqs.clear()
        for r in reqs:
            r.future.set_exception(err)

    # reply parsers (network thread)

    def _status_of(self, r: Any, op: str) -> None:
        if r.HasField("store_id"):
            self._q.put(("sid", r.store_id))
        if r.status != Status.OK:
            raise RefusedError(r.status, r.reason or op)

    def _parse_response(self, payload: bytes) -> None:
        r = pb.Response()
        r.ParseFromString(payload)
        if r.status != Status.OK:
            raise RefusedError(r.status, r.reason)

    def _parse_conversations(self, payload: bytes) -> ConversationPage:
        r = pb.ConversationsResponse()
        r.ParseFromString(payload)
        self._status_of(r, "conversations")
        convs = [Conversation(timeline=c.timeline, last_sender=c.last_sender, last_ts_ms=c.last_ts_ms,
                              last_preview=_opt(c, "last_preview"), last_flags=c.last_flags,
                              last_seq=c.last_seq, unread=c.unread, peer_read_seq=c.peer_read_seq)
                 for c in r.conversations]
        self._q.put(("marks", [ReadMark(c.timeline, c.timeline[2:], c.peer_read_seq)
                               for c in convs if c.timeline.startswith("u/") and c.peer_read_seq]))
        return ConversationPage(convs, r.has_more)

    def _parse_reads(self, payload: bytes) -> List[ReadMark]:
        r = pb.ReadsResponse()
        r.ParseFromString(payload)
        self._status_of(r, "reads")
        marks = [ReadMark(r.timeline, m.user, m.seq) for m in r.marks]
        self._q.put(("marks", marks))
        return marks

    def _parse_group(self, payload: bytes) -> GroupResult:
        r = pb.GroupResponse()
        r.ParseFromString(payload)
        self._status_of(r, "group " + r.op)
        return GroupResult(op=r.op, group=r.group, owner=r.owner, members=tuple(r.members),
                           head_seq=r.head_seq, seq=r.seq, store_id=r.store_id)

    def _parse_group_list(self, payload: bytes) -> List[GroupInfo]:
        r = pb.GroupResponse()
        r.ParseFromString(payload)
        self._status_of(r, "group list")
        return [GroupInfo(g.name, g.head_seq, g.cursor, g.unread) for g in r.groups]

    # ------------------------------------------------------------------
    # requests

    def _corr(self, kind: str) -> str:
        return "%s/%s/%d" % (self._run, kind, next(self._n))

    def _request(self, op: str, msg: Any, parse: Callable[[bytes], Any]) -> "concurrent.futures.Future[Any]":
        fut: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        with self._lock:
            if not self._connected or self._mqtt is None:
                fut.set_exception(NotConnectedError("not connected: %s not asked" % op))
                return fut
            corr = self._corr("r")
            with self._flock:
                self._reqs[corr] = _Req(fut, op, parse, time.monotonic() + self.request_timeout)
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = corr.encode()
            self._mqtt.publish(CONTROL + op, msg.SerializeToString(), qos=1, properties=props)
        return fut

    def _group(self, op: str, group: str, members: Iterable[str]) -> "concurrent.futures.Future[GroupResult]":
        if not valid_name(group):
            raise ValueError("not a valid group name: %r" % (group,))
        if isinstance(members, str):
            members = [members]
        fut = self._request("group", pb.GroupRequest(op=op, group=group, members=list(members)),
                            self._parse_group)
        if op != "info":
            # Follow the change without waiting for the membership event
            # (a plugin before it, or an event lost with a connection).
            fut.add_done_callback(lambda f: self._q.put(("refresh_groups",)))
        return fut

    # ------------------------------------------------------------------
    # sending (under the lock)

    def _submit(self, p: PendingSend) -> "concurrent.futures.Future[Receipt]":
        fut: "concurrent.futures.Future[Receipt]" = concurrent.futures.Future()
        with self._lock:
            if self._stopping:
                raise ImError("client closed")
            self._pending[p.cmid] = p
            try:
                self._save(force=True)
            except Exception:
                del self._pending[p.cmid]
                raise
            with self._flock:
                self._send_futures[p.cmid] = fut
            self._unsent.append(p.cmid)
            self._pump_sends()
        return fut

    def _pump_sends(self) -> None:
        if not self._connected or self._mqtt is None:
            return
        while self._unsent and self._inflight < SEND_WINDOW:
            p = self._pending.get(self._unsent.popleft())
            if p is None:
                continue                      # answered meanwhile
            props = Properties(PacketTypes.PUBLISH)
            ups = [("im-cmid", p.cmid)]
            if p.kind in ("edit", "recall"):
                ups.append(("im-" + p.kind, str(p.ref_seq)))
            if p.expiry is not None:
                ups.append(("im-expiry", str(int(p.expiry))))
            props.UserProperty = ups
            props.ResponseTopic = RECEIPT_TOPIC
            props.CorrelationData = p.cmid.encode()
            if p.content_type:
                props.ContentType = p.content_type
            info = self._mqtt.publish(self._prefix + "/" + p.timeline, p.body, qos=1, properties=props)
            self._mids[info.mid] = p.cmid
            self._inflight += 1

    # ------------------------------------------------------------------
    # the event thread

    def _loop(self) -> None:
        while True:
            try:
                item: Optional[Tuple[Any, ...]] = self._q.get(timeout=TICK_S)
            except queue.Empty:
                item = None
            stop = False
            with self._lock:
                n = 0
                while item is not None:
                    if item[0] == "stop":
                        stop = True
                        break
                    try:
                        self._handle(item)
                    except Exception as e:
                        log.exception("mosquitto_im: handling %s", item[0])
                        self._emit(self.on_error, e)
                    n += 1
                    if n >= 200:
                        break
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        item = None
                if not stop:
                    try:
                        self._tick()
                    except Exception as e:
                        log.exception("mosquitto_im: timers")
                        self._emit(self.on_error, e)
                self._update_status()
                events, self._events = self._events, []
                self._cond.notify_all()
            for fn, args in events:
                try:
                    fn(*args)
                except Exception as e:
                    log.exception("mosquitto_im: callback %r raised", fn)
                    if fn is not self.on_error and self.on_error is not None:
                        try:
                            self.on_error(e)
                        except Exception:
                            log.exception("mosquitto_im: on_error raised")
            if stop:
                return

    def _emit(self, fn: Callback, *args: Any) -> None:
        if fn is not None:
            self._events.append((fn, args))

    def _handle(self, item: Tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "frame":
            self._on_frame(item[1])
        elif kind == "batch":
            self._on_batch(item[1], item[2])
        elif kind == "event":
            self._on_event(item[1])
        elif kind == "receipt":
            self._on_receipt(item[1])
        elif kind == "puback":
            self._on_puback(item[1], item[2])
        elif kind == "connected":
            self._on_connected(item[1])
        elif kind == "disconnected":
            self._on_disconnected(item[1])
        elif kind == "refused":
            self._emit(self.on_error, ImError("connection refused by the broker: reason 0x%02x" % item[1]))
        elif kind == "sid":
            self._check_store(item[1])
        elif kind == "marks":
            for m in item[1]:
                self._mark(m.timeline, m.user, m.seq)
        elif kind == "groups":
            self._on_groups(item[1], item[2])
        elif kind == "refresh_groups":
            self._refresh_groups()
        elif kind == "error":
            self._emit(self.on_error, item[1])

    # connection

    def _subscribe(self, names: Sequence[str]) -> None:
        topics = []
        for n in names:
            topics += [(self._prefix + "/" + n, 1), (self._prefix + "/e/" + n, 1)]
        if topics and self._mqtt is not None:
            self._mqtt.subscribe(topics)

    def _on_connected(self, session_present: bool) -> None:
        self._connected = True
        self._conn += 1
        self._store_ok = False
        self._groups_known = False
        self._groups_retry_at = None
        self._mids.clear()
        self._inflight = 0
        # 7.1: subscribe, then sync every timeline from `last` (the broker
        # reads our packets in order: the subscription is in place first).
        self._subscribe(list(self._tls))
        for t in self._tls.values():
            t.req = None
            t.retry_at = None
            t.acked = 0                 # ack again what was seen: a lost ack, a reset cursor
            self._start_sync(t)
        self._pump_syncs()
        self._refresh_groups()
        # 7.4: everything without a Receipt again, same cmid, in send order.
        self._unsent = collections.deque(self._pending)
        self._pump_sends()

    def _on_disconnected(self, rc: int) -> None:
        if self._stopping:
            self._connected = False
            return
        self._connected = False
        self._store_ok = False
        for t in self._tls.values():
            t.req = None
            t.retry_at = None

    def _refresh_groups(self) -> None:
        if self._connected:
            self.groups()

    def _on_groups(self, conn: int, fut: "concurrent.futures.Future[List[GroupInfo]]") -> None:
        if conn != self._conn or not self._connected:
            return
        try:
            groups = fut.result()
        except Exception as e:
            if not isinstance(e, (ConnectionLostError, NotConnectedError)):
                log.warning("mosquitto_im: group list: %s", e)
                self._groups_retry_at = time.monotonic() + RETRY_S
            return
        names = {"g/" + g.name for g in groups}
        for name in sorted(names - set(self._tls)):
            self._follow(name, 0)
        for name in [n for n in self._tls if n.startswith("g/") and n not in names]:
            self._unfollow(name, 0)
        self._groups_known = True

    def _follow(self, name: str, seq: int) -> None:
        if name in self._tls:
            return
        t = _TL(name)
        self._tls[name] = t
        self._cursors[name] = 0
        self._dirty = True
        if self._connected:
            self._subscribe([name])
            self._start_sync(t)
            self._pump_syncs()
        self._emit(self.on_membership, Membership(name[2:], True, seq))

    def _unfollow(self, name: str, seq: int) -> None:
        t = self._tls.pop(name, None)
        if t is None:
            return
        self._cursors.pop(name, None)
        self._marks.pop(name, None)
        self._dirty = True
        if self._connected and self._mqtt is not None:
            self._mqtt.unsubscribe([self._prefix + "/" + name, self._prefix + "/e/" + name])
        self._emit(self.on_membership, Membership(name[2:], False, seq))

    # the store id (7.6)

    def _check_store(self, sid: int) -> bool:
        """False: carries the id of a store left behind; drop it."""
        if not sid:
            return True
        if sid == self._store_id:
            self._store_ok = True
            return True
        if sid in self._abandoned:
            return False
        if not self._store_id:
            self._store_id = sid
            self._store_ok = True
            self._save(force=True)
            return True
        old = self._store_id
        self._abandoned.add(old)
        self._store_id = sid
        self._store_ok = True
        self._marks.clear()
        for t in self._tls.values():
            t.last = t.seen = t.acked = 0
            t.held.clear()
            t.history.clear()
            t.req = None                  # its answer counts in the old store
            t.want = False
            t.retry_at = None
            t.syncing = False
            self._cursors[t.name] = 0
        self._save(force=True)
        log.warning("mosquitto_im: the server's message store was replaced (%016x -> %016x): "
                    "starting over from seq 1", old, sid)
        self._emit(self.on_reset, old, sid)
        if self._connected:
            for t in self._tls.values():
                self._start_sync(t)
            self._pump_syncs()
        return True

    # frames (7.2)

    def _decode(self, payload: bytes) -> Tuple[Message, Any]:
        return _frame.decode(payload, self.user)

    def _on_frame(self, payload: bytes) -> None:
        m, _h = self._decode(payload)
        if not self._check_store(m.store_id):
            return
        t = self._tls.get(m.timeline)
        if t is None or m.seq <= t.last:
            return                         # not followed, or a duplicate
        if m.body_omitted:                 # notify mode: the body comes by sync
            self._start_sync(t)
            self._pump_syncs()
            return
        if t.syncing:
            t.held[m.seq] = m
        elif m.seq == t.last + 1:
            self._deliver(t, m)
            self._drain(t)
        else:                              # a gap: hold, and sync from last
            t.held[m.seq] = m
            self._start_sync(t)
            self._pump_syncs()

    def _drain(self, t: _TL) -> None:
        while t.last + 1 in t.held:
            self._deliver(t, t.held.pop(t.last + 1))
        for s in [s for s in t.held if s <= t.last]:
            del t.held[s]

    def _deliver(self, t: _TL, m: Message) -> None:
        t.last = m.seq
        self._cursors[t.name] = m.seq
        self._dirty = True
        if self.auto_ack:
            t.seen = m.seq
            if self._next_ack is None:
                self._next_ack = time.monotonic() + self.ack_interval
        if m.outgoing and m.cmid and m.cmid in self._pending:
            # My own copy: stored, whatever happened to its Receipt.
            if m.timeline.startswith("g/"):
                rc = Receipt(Status.OK, m.cmid, m.timeline, m.seq, 0, m.ts_ms, False, m.store_id)
            else:
                rc = Receipt(Status.OK, m.cmid, m.to, m.peer_seq, m.seq, m.ts_ms, False, m.store_id)
            self._resolve_send(rc)
            self._on_receipt(rc)
        change = m.flags & (Flag.EDIT | Flag.RECALL)
        if not change:
            t.history[m.seq] = m
            while len(t.history) > self._history:
                t.history.popitem(last=False)
            self._emit(self.on_message, m)
            return
        orig = t.history.get(m.ref_seq)
        if m.flags & Flag.EDIT:
            if orig is not None and not orig.recalled:
                orig.body = m.body
                orig.content_type = m.content_type
                orig.flags |= Flag.EDITED
            self._emit(self.on_edit, m, orig)
        else:
            if orig is not None:
                orig.body = b""
                orig.flags |= Flag.RECALLED
            self._emit(self.on_recall, m, orig)

    # sync (7.1)

    def _start_sync(self, t: _TL) -> None:
        t.syncing = True
        t.want = True

    def _pump_syncs(self) -> None:
        if not self._connected or self._mqtt is None:
            return
        now = time.monotonic()
        tls = list(self._tls.values())
        out = sum(1 for t in tls if t.req is not None)
        for k in range(len(tls)):
            if out >= SYNC_WINDOW:
                break
            t = tls[(self._rr + k) % len(tls)]
            if not t.want or t.req is not None or (t.retry_at is not None and now < t.retry_at):
                continue
            t.want = False
            t.retry_at = None
            t.req = self._corr("s")
            t.req_after = t.last
            t.req_at = now
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = t.req.encode()
            req = pb.SyncRequest(timeline=t.name, after_seq=t.last, limit=self._sync_limit)
            self._mqtt.publish(CONTROL + "sync", req.SerializeToString(), qos=1, properties=props)
            out += 1
            self._rr = (self._rr + k + 1) % len(tls)   # a long catch-up does not starve the others

    def _on_batch(self, payload: bytes, corr: str) -> None:
        b = pb.SyncBatch()
        b.ParseFromString(payload)
        if not self._check_store(b.store_id):
            return
        t = next((x for x in self._tls.values() if x.req is not None and x.req == corr), None)
        if t is None:
            return                          # late: asked before a reconnect or a reset
        t.req = None
        if b.status == Status.TOO_MANY or b.status == Status.INTERNAL:
            t.want = True
            t.retry_at = time.monotonic() + (b.retry_after_ms / 1000.0 if b.retry_after_ms else RETRY_S)
            return
        if b.status != Status.OK:
            t.syncing = False
            if b.status == Status.FORBIDDEN and t.name.startswith("g/"):
                self._refresh_groups()      # not a member any more
            else:
                self._emit(self.on_error, RefusedError(b.status, "sync %s: %s" % (t.name, b.reason)))
            return
        self._store_ok = True
        if t.req_after != t.last:           # the state moved meanwhile: ask again
            self._start_sync(t)
            return
        if b.first_seq > t.last + 1:        # gone by retention, not lost
            self._emit(self.on_gap, t.name, t.last + 1, b.first_seq - 1)
            t.last = b.first_seq - 1
        got = 0
        for f in b.frames:
            got += 1
            try:
                m, _h = self._decode(f)
            except FrameError as e:
                # Not readable (a body above the inflate limit, an unknown
                # frame version): told, and skipped if its seq is known;
                # else this timeline stops until the next connect, rather
                # than asking for the same frame for ever.
                self._emit(self.on_error, e)
                seq = _frame.seq_of(f)
                if not seq:
                    t.syncing = t.want = False
                    return
                if seq > t.last:
                    t.last = seq
                    self._cursors[t.name] = seq
                    self._dirty = True
                continue
            if m.seq > t.last:              # a batch skips only expired seqs
                self._deliver(t, m)
        if b.has_more and got:
            t.want = True
            self._pump_syncs()
            return
        # At the head: held frames up to it are in order now; seqs up to the
        # head that no batch held are gone (expired), so `last` moves there.
        for s in sorted(t.held):
            if s > b.head_seq:
                break
            m = t.held.pop(s)
            if s > t.last:
                self._deliver(t, m)
        if b.head_seq > t.last:
            t.last = b.head_seq
            self._cursors[t.name] = t.last
            self._dirty = True
        self._drain(t)
        if t.held:
            self._start_sync(t)             # live frames missing after the head
            self._pump_syncs()
        else:
            t.syncing = False
        if self._next_ack is None or self._next_ack > time.monotonic():
            self._next_ack = time.monotonic()

    # events (11)

    def _on_event(self, payload: bytes) -> None:
        _m, h = self._decode(payload)
        if not self._check_store(h.store_id) or h.seq or not h.HasField("event"):
            return
        e = h.event
        if e.kind == pb.Event.READ:
            self._mark(e.timeline, e.user, e.seq)
        elif e.kind == pb.Event.TYPING:
            self._emit(self.on_typing, Typing(e.timeline, e.user, e.typing, e.ts_ms))
        elif e.kind == EVENT_MEMBERSHIP and e.timeline.startswith("g/"):
            member = bool(getattr(e, "member", False))
            if member:
                if e.timeline in self._tls:
                    return
                self._follow(e.timeline, e.seq)
            else:
                self._unfollow(e.timeline, e.seq)

    def _mark(self, timeline: str, user: str, seq: int) -> None:
        marks = self._marks.setdefault(timeline, {})
        if not seq or seq <= marks.get(user, 0):
            return
        marks[user] = seq
        self._emit(self.on_read, ReadMark(timeline, user, seq))

    # receipts (7.4)

    def _on_receipt(self, rc: Receipt) -> None:
        self._check_store(rc.store_id)
        if self._pending.pop(rc.cmid, None) is None:
            return                           # a repeat's answer, or one of a send refused
        self._dirty = True
        if rc.status != Status.OK:
            log.warning("mosquitto_im: message %s refused: %d %s", rc.cmid, rc.status, rc.reason)
        self._emit(self.on_receipt, rc)

    def _on_puback(self, mid: int, code: int) -> None:
        cmid = self._mids.pop(mid, None)
        if cmid is None:
            return                           # a request, or a publish of an earlier connection
        if self._inflight > 0:
            self._inflight -= 1
        if code >= 0x80:
            # The broker refused the publish (0x87: not allowed, too large,
            # an invalid name...; 0x97: rate limit): it is not stored and
            # will never have a Receipt.
            p = self._pending.pop(cmid, None)
            if p is not None:
                self._dirty = True
                err = RefusedError(0, "the broker refused the message to %s (reason 0x%02x)"
                                   % (p.timeline, code), mqtt_reason=code)
                with self._flock:
                    fut = self._send_futures.pop(cmid, None)
                if fut is not None:
                    fut.set_exception(err)
                else:
                    self._emit(self.on_error, err)
        self._pump_sends()

    # timers

    def _tick(self) -> None:
        now = time.monotonic()
        with self._flock:
            late = [c for c, r in self._reqs.items() if now > r.deadline]
            reqs = [self._reqs.pop(c) for c in late]
        for r in reqs:
            r.future.set_exception(RequestTimeout("no reply to %s within %.0f s (is the mosquitto-im "
                                                  "plugin loaded?)" % (r.op, self.request_timeout)))
        if self._connected:
            for t in self._tls.values():
                if t.req is not None and now - t.req_at > self.request_timeout:
                    t.req = None            # its answer never came: ask again
                    t.want = True
            self._pump_syncs()
            if self._groups_retry_at is not None and now >= self._groups_retry_at:
                self._groups_retry_at = None
                self._refresh_groups()
            if self._next_ack is not None and now >= self._next_ack:
                self._send_acks()
            self._pump_sends()
        if self._dirty and now - self._last_save >= SAVE_EVERY_S:
            self._save()

    def _send_acks(self) -> None:
        """7.3: the highest seq shown, per timeline; not before this
        connection showed the store is still the one the seqs count in."""
        if not self._connected or self._mqtt is None or not self._store_ok:
            return
        self._next_ack = None
        for t in self._tls.values():
            if t.seen > t.acked:
                t.acked = t.seen
                self._mqtt.publish(CONTROL + "ack", pb.Ack(timeline=t.name, seq=t.seen).SerializeToString(),
                                   qos=1)

    def _save(self, force: bool = False) -> None:
        if not force and not self._dirty:
            return
        self._store.save(State(client_id=self.client_id, store_id=self._store_id,
                               cursors=dict(self._cursors), pending=dict(self._pending)))
        self._dirty = False
        self._last_save = time.monotonic()

    def _online(self) -> bool:
        if not self._connected or not self._groups_known:
            return False
        return all(not t.syncing and not t.held and t.req is None for t in self._tls.values())

    def _update_status(self) -> None:
        if self._stopping:
            return
        if self._connected:
            s = "online" if self._online() else "syncing"
        else:
            s = "offline" if self._conn else "connecting"
        self._set_status(s)

    def _set_status(self, s: str) -> None:
        if s != self._status:
            self._status = s
            self._emit(self.on_status, s)
