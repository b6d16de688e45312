"""What the client hands the application: messages, receipts, events, errors."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional, Tuple


class Flag(enum.IntFlag):
    """Header.flags bits (proto/im.proto, HeaderFlag)."""
    SYSTEM = 1       # written by the plugin (a membership change, a notice)
    COMPRESSED = 2   # the body was deflated on the wire (the client inflates it)
    EDIT = 4         # replaces the body of ref_seq
    RECALL = 8       # recalls ref_seq
    EDITED = 16      # edited later: the body is the latest one
    RECALLED = 32    # recalled: the body is gone


class Status(enum.IntEnum):
    """im.v1.Status: every reply and refusal carries one."""
    OK = 0
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    TOO_LARGE = 413
    TOO_MANY = 429
    INTERNAL = 500


@dataclass
class Message:
    """One message of a timeline, as the plugin stored it.

    `timeline` is where it is stored and counted: `u/<me>` (my inbox: what
    others sent me, and my own copies of what I sent) or `g/<group>`.
    (store_id, timeline, seq) identifies it.
    """
    timeline: str
    seq: int
    sender: str
    body: bytes
    ts_ms: int = 0
    to: str = ""                      # the timeline the sender addressed
    cmid: Optional[str] = None
    content_type: Optional[str] = None
    flags: int = 0
    ref_seq: int = 0                  # an edit or recall: the seq (in `timeline`) it changes
    peer_seq: int = 0                 # a direct message: its seq in the other inbox
    expires_ms: int = 0
    body_omitted: bool = False
    store_id: int = 0
    me: str = field(default="", repr=False)

    @property
    def text(self) -> str:
        """The body as UTF-8 text (invalid bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    @property
    def system(self) -> bool:
        return bool(self.flags & Flag.SYSTEM)

    @property
    def edited(self) -> bool:
        return bool(self.flags & Flag.EDITED)

    @property
    def recalled(self) -> bool:
        return bool(self.flags & Flag.RECALLED)

    @property
    def outgoing(self) -> bool:
        """Sent by this user (from this device or another one)."""
        return self.sender == self.me

    @property
    def conversation(self) -> str:
        """Where a reply goes: `u/<peer>` or `g/<group>`."""
        if self.timeline.startswith("g/"):
            return self.timeline
        if self.outgoing:
            return self.to
        return "u/" + self.sender

    def target(self) -> Tuple[str, int]:
        """(timeline, seq) to pass to Client.edit() / Client.recall() for
        this message: a group message by its seq in the group, my copy of a
        direct message by its seq in the recipient's inbox (peer_seq)."""
        if self.timeline.startswith("g/"):
            return self.timeline, self.seq
        if self.outgoing and self.peer_seq:
            return self.to, self.peer_seq
        raise ValueError("only my own messages and group messages can be edited or recalled")


@dataclass(frozen=True)
class Receipt:
    """The plugin's answer to a send, edit or recall (PROTOCOL.md 3.1)."""
    status: int
    cmid: str
    timeline: str = ""        # where it is stored (for a repeat: where the original is)
    seq: int = 0              # its seq in `timeline`
    own_seq: int = 0          # a direct message: the seq of my copy in u/<me>
    ts_ms: int = 0
    duplicate: bool = False   # a re-send of a message stored before: the original's seq
    store_id: int = 0
    reason: str = ""


@dataclass(frozen=True)
class ReadMark:
    """`user` has read `timeline` up to `seq` (PROTOCOL.md 11.3). For a
    direct conversation, timeline is u/<reader> and seq counts in the
    reader's inbox: my copy c is read when c.peer_seq <= seq."""
    timeline: str
    user: str
    seq: int


@dataclass(frozen=True)
class Typing:
    """`user` is typing (or stopped) in the conversation `timeline`
    (u/<typist> for a direct one: where I would reply)."""
    timeline: str
    user: str
    typing: bool
    ts_ms: int = 0


@dataclass(frozen=True)
class Membership:
    """This user became a member of `group` (member True) or stopped being
    one. seq: the group's system message of the change, 0 if not known
    (a change found by `list` after a reconnect)."""
    group: str
    member: bool
    seq: int = 0


@dataclass(frozen=True)
class GroupInfo:
    """A group I am in, from `list`."""
    name: str
    head_seq: int = 0
    cursor: int = 0
    unread: int = 0


@dataclass(frozen=True)
class GroupResult:
    """The reply to a group request (create, add, remove, leave, info)."""
    op: str
    group: str
    owner: str = ""
    members: Tuple[str, ...] = ()
    head_seq: int = 0
    seq: int = 0              # the system message the change wrote
    store_id: int = 0


@dataclass(frozen=True)
class Conversation:
    """One entry of the conversation list (PROTOCOL.md 11.5)."""
    timeline: str             # where I send: u/<peer> or g/<group>
    last_sender: str = ""
    last_ts_ms: int = 0
    last_preview: Optional[str] = None
    last_flags: int = 0
    last_seq: int = 0
    unread: int = 0
    peer_read_seq: int = 0


@dataclass(frozen=True)
class ConversationPage:
    conversations: List[Conversation]
    has_more: bool

    def next_page(self) -> Optional[Tuple[int, str]]:
        """(before_ts_ms, before_timeline) for the next page, or None."""
        if not self.has_more or not self.conversations:
            return None
        last = self.conversations[-1]
        return last.last_ts_ms, last.timeline


class ImError(Exception):
    """Base of every error this package raises."""


class RefusedError(ImError):
    """A request or message the plugin or broker refused; nothing changed.
    status: an im.v1.Status (0 when only the MQTT reason code is known),
    mqtt_reason: the PUBACK reason code when the broker refused the publish."""

    def __init__(self, status: int, reason: str, receipt: Optional[Receipt] = None,
                 mqtt_reason: int = 0) -> None:
        self.status = status
        self.reason = reason
        self.receipt = receipt
        self.mqtt_reason = mqtt_reason
        what = "status %d" % status if status else "MQTT reason 0x%02x" % mqtt_reason
        super().__init__("%s: %s" % (what, reason) if reason else what)


class NotConnectedError(ImError):
    """A request asked while the client has no connection."""


class ConnectionLostError(ImError):
    """The connection dropped before the request's reply came (the request
    may or may not have been applied: ask again)."""


class RequestTimeout(ImError, TimeoutError):
    """No reply within the client's request_timeout."""


class FrameError(ImError, ValueError):
    """A payload on an IM topic that is not a frame this client can read."""


class StoreError(ImError):
    """The offline store cannot be used (locked by another process, unreadable)."""
