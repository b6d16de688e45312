"""The frame (PROTOCOL.md 4): 'I' 'M' 0x01, a 16-bit big-endian header
length H, H bytes of im.v1.Header (protobuf), the body."""
from __future__ import annotations

import zlib
from typing import Any, Tuple

from . import im_pb2 as pb
from .types import Flag, FrameError, Message

MAGIC = b"IM"
VERSION = 1
# A compressed body is refused above this many bytes inflated (the
# reference reader's limit; PROTOCOL.md 4 "SHOULD refuse a raw_len it
# cannot afford").
MAX_INFLATE = 256 * 1024 * 1024


def split(payload: bytes) -> Tuple[Any, bytes]:
    """(im.v1.Header, body) of a frame; FrameError if it is not one."""
    if len(payload) < 5 or payload[:2] != MAGIC:
        raise FrameError("not a frame: %r" % bytes(payload[:16]))
    if payload[2] != VERSION:
        raise FrameError("unknown frame version %d" % payload[2])
    hlen = int.from_bytes(payload[3:5], "big")
    if 5 + hlen > len(payload):
        raise FrameError("truncated frame: header of %d bytes in %d" % (hlen, len(payload)))
    h = pb.Header()
    try:
        h.ParseFromString(bytes(payload[5:5 + hlen]))
    except Exception as e:  # google.protobuf.message.DecodeError
        raise FrameError("bad frame header: %s" % e) from None
    return h, bytes(payload[5 + hlen:])


def seq_of(payload: bytes) -> int:
    """The seq of a frame whose body cannot be read; 0 if its header cannot either."""
    try:
        return int(split(payload)[0].seq)
    except FrameError:
        return 0


def inflate(body: bytes, raw_len: int, limit: int = MAX_INFLATE) -> bytes:
    if raw_len > limit:
        raise FrameError("compressed body of %d bytes: above the limit of %d" % (raw_len, limit))
    d = zlib.decompressobj()
    try:
        out = d.decompress(body, raw_len + 1)
    except zlib.error as e:
        raise FrameError("compressed body does not inflate: %s" % e) from None
    if len(out) != raw_len:
        raise FrameError("compressed body inflates to %d bytes, not raw_len %d" % (len(out), raw_len))
    return out


def decode(payload: bytes, me: str = "", inflate_limit: int = MAX_INFLATE) -> Tuple[Message, Any]:
    """A frame as a Message (body inflated), and its raw Header (events
    are in Header.event)."""
    h, body = split(payload)
    flags = h.flags
    if flags & Flag.COMPRESSED and body:
        body = inflate(body, h.raw_len, inflate_limit)
        flags &= ~int(Flag.COMPRESSED)
    m = Message(timeline=h.timeline, seq=h.seq, sender=h.sender, body=body, ts_ms=h.ts_ms,
                to=h.to, cmid=h.cmid if h.HasField("cmid") else None,
                content_type=h.content_type if h.HasField("content_type") else None,
                flags=flags, ref_seq=h.ref_seq, peer_seq=h.peer_seq, expires_ms=h.expires_ms,
                body_omitted=h.body_omitted, store_id=h.store_id, me=me)
    return m, h
