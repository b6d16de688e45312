"""Offline state of one device: what a restart must not forget.

- the MQTT client id (a device is its client id: its cursors live under it),
- the store id the seqs count in,
- per timeline `last`, the highest seq delivered to the application,
- every message sent that has no Receipt yet (re-sent with the same cmid).

A Store saves the whole State at once, atomically: after a crash, load()
returns one of the states saved, never a mix. Subclass Store to keep it
elsewhere (a database the application already has); MemoryStore and
JsonFileStore are the two given.
"""
from __future__ import annotations

import abc
import base64
import errno
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional

from .types import StoreError

try:
    import fcntl
except ImportError:  # not POSIX: no lock file
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class PendingSend:
    """A message sent and not yet answered by a Receipt."""
    cmid: str
    timeline: str                    # where it was sent: u/<peer> or g/<group>
    body: bytes
    kind: str = "send"               # "send", "edit" or "recall"
    ref_seq: int = 0                 # edit / recall: the seq it changes
    content_type: Optional[str] = None
    expiry: Optional[int] = None     # im-expiry, seconds
    created_ms: int = 0


@dataclass
class State:
    client_id: Optional[str] = None
    store_id: int = 0                                   # 0: not known yet
    cursors: Dict[str, int] = field(default_factory=dict)   # timeline -> last
    pending: Dict[str, PendingSend] = field(default_factory=dict)  # cmid -> send, in send order


class Store(abc.ABC):
    """Where a Client keeps its State. save() is called with a State the
    store may keep (the client does not change it afterwards); it must
    replace what was saved before atomically. Called from the client's
    threads, one call at a time."""

    @abc.abstractmethod
    def load(self) -> State:
        """The state saved last, or a new State()."""

    @abc.abstractmethod
    def save(self, state: State) -> None:
        """Replaces the saved state; raises on failure."""

    def close(self) -> None:
        """Releases what the store holds (a lock, a file)."""


class MemoryStore(Store):
    """Keeps the state in memory: for tests, and for a process that may
    forget everything when it ends (it then gets everything again)."""

    def __init__(self, state: Optional[State] = None) -> None:
        self._state = _copy(state) if state else State()
        self._lock = threading.Lock()

    def load(self) -> State:
        with self._lock:
            return _copy(self._state)

    def save(self, state: State) -> None:
        with self._lock:
            self._state = _copy(state)


def _copy(state: State) -> State:
    # PendingSend is frozen: the dicts are all there is to copy.
    return State(client_id=state.client_id, store_id=state.store_id,
                 cursors=dict(state.cursors), pending=dict(state.pending))


def state_to_json(state: State) -> dict:
    return {
        "version": 1,
        "client_id": state.client_id,
        # hex: JSON numbers above 2^53 are not exact everywhere
        "store_id": "%016x" % state.store_id if state.store_id else None,
        "cursors": dict(sorted(state.cursors.items())),
        "pending": [{
            "cmid": p.cmid, "timeline": p.timeline, "kind": p.kind,
            "body": base64.b64encode(p.body).decode("ascii"), "ref_seq": p.ref_seq,
            "content_type": p.content_type, "expiry": p.expiry, "created_ms": p.created_ms,
        } for p in state.pending.values()],
    }


def state_from_json(d: dict) -> State:
    if d.get("version") != 1:
        raise StoreError("unknown state file version %r" % d.get("version"))
    pending: Dict[str, PendingSend] = {}
    for p in d.get("pending") or []:
        pending[p["cmid"]] = PendingSend(
            cmid=p["cmid"], timeline=p["timeline"], kind=p.get("kind", "send"),
            body=base64.b64decode(p.get("body", "")), ref_seq=int(p.get("ref_seq") or 0),
            content_type=p.get("content_type"), expiry=p.get("expiry"),
            created_ms=int(p.get("created_ms") or 0))
    sid = d.get("store_id")
    return State(client_id=d.get("client_id"), store_id=int(sid, 16) if sid else 0,
                 cursors={k: int(v) for k, v in (d.get("cursors") or {}).items()},
                 pending=pending)


class JsonFileStore(Store):
    """The state as one small JSON file, replaced atomically (written to
    `<path>.tmp`, then renamed over `<path>`): a process that crashes
    leaves the old or the new file, never half of one.

    fsync=False (the default) survives the process crashing or being
    killed, as the plugin's `synchronous normal` does; fsync=True also
    survives an operating-system crash or power loss, at the cost of a
    disk flush per send.

    The file `<path>.lock` is locked (flock) while the store is open: two
    processes running the same device would take each other's MQTT session
    over in a loop; the second one gets StoreError instead.
    """

    def __init__(self, path: str, fsync: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self._lockf = None
        if fcntl is not None:
            self._lockf = open(self.path + ".lock", "a+")
            try:
                fcntl.flock(self._lockf.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                self._lockf.close()
                self._lockf = None
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise StoreError("%s is in use by another process" % self.path) from None
                raise

    def load(self) -> State:
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                return state_from_json(json.load(f))
        except FileNotFoundError:
            return State()
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError("%s: unreadable state: %s" % (self.path, e)) from None

    def save(self, state: State) -> None:
        data = json.dumps(state_to_json(state), separators=(",", ":")).encode()
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if self.fsync:
            d = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fsync(d)
            finally:
                os.close(d)

    def close(self) -> None:
        if self._lockf is not None:
            self._lockf.close()      # releases the flock
            self._lockf = None
