// The wire format of docs/PROTOCOL.md: the schema (proto/im.proto, parsed
// by protobufjs when this module loads), the frame (section 4), store ids
// (6.4) and compressed bodies.
import protobuf from 'protobufjs';
import PROTO from './proto.js';

/** Header.flags bits (im.v1.HeaderFlag). */
export const FLAG = Object.freeze({ SYSTEM: 1, COMPRESSED: 2, EDIT: 4, RECALL: 8, EDITED: 16, RECALLED: 32 });
/** im.v1.Event.Kind */
export const EVENT = Object.freeze({ READ: 1, TYPING: 2, MEMBERSHIP: 3 });
/** im.v1.Status */
export const STATUS = Object.freeze({
  OK: 0, BAD_REQUEST: 400, UNAUTHENTICATED: 401, FORBIDDEN: 403, NOT_FOUND: 404, CONFLICT: 409,
  TOO_LARGE: 413, TOO_MANY: 429, INTERNAL: 500,
});

/** The schema, proto/im.proto as shipped. */
export const root = protobuf.parse(PROTO, { keepCase: false }).root;
const types = {};
for (const n of ['Header', 'Event', 'SyncRequest', 'SyncBatch', 'Ack', 'AckResponse', 'Receipt', 'Response',
  'GroupRequest', 'GroupResponse', 'TypingRequest', 'ReadsRequest', 'ReadsResponse', 'ConversationsRequest',
  'ConversationsResponse']) types[n] = root.lookupType('im.v1.' + n);
export const T = Object.freeze(types);

/** Whether the schema this package carries knows Event.member (membership news). */
export const HAS_MEMBERSHIP = !!types.Event.fields.member;

/** Encodes a request of type `name` (a plain object, camelCase fields). */
export function encode(name, msg) {
  const t = types[name];
  return t.encode(t.fromObject(msg)).finish();
}

/** Decodes a reply of type `name` into a plain object (uint64 as numbers, defaults filled). */
export function decode(name, bytes) {
  const t = types[name];
  const o = t.toObject(t.decode(bytes), { longs: Number, defaults: true });
  const f = STORE_FIELD[name];
  if (f) o.storeId = storeIdOf(bytes, f);
  return o;
}

// The field number of store_id in each message that carries one (fixed64).
const STORE_FIELD = { Header: 14, SyncBatch: 11, AckResponse: 6, Receipt: 9, GroupResponse: 10, ReadsResponse: 6,
  ConversationsResponse: 5 };

/**
 * The store id (a fixed64 field) of an encoded message, as 16 hex digits;
 * '' if absent or 0 (a broker without store ids). Read from the bytes: a
 * protobufjs without long.js (the browser bundle) rounds 64-bit numbers.
 */
export function storeIdOf(bytes, field) {
  const r = protobuf.Reader.create(bytes);
  let id = '';
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 === field && (tag & 7) === 1) {
      let hex = '';
      for (let i = r.pos + 7; i >= r.pos; i--) hex += bytes[i].toString(16).padStart(2, '0');
      id = hex;
    }
    r.skipType(tag & 7);
  }
  return /^0*$/.test(id) ? '' : id;
}

/**
 * A frame: 'I' 'M', version 1, a big-endian uint16 header length H, H bytes
 * of im.v1.Header, then the body exactly as the sender published it.
 * Throws on anything else (section 4: a reader rejects an unknown version
 * and checks 5 + H <= length).
 */
export function decodeFrame(bytes) {
  if (!(bytes instanceof Uint8Array)) bytes = new Uint8Array(bytes);
  if (bytes.length < 5 || bytes[0] !== 0x49 || bytes[1] !== 0x4d) throw new Error('not a mosquitto-im frame');
  if (bytes[2] !== 1) throw new Error('unknown frame version ' + bytes[2]);
  const h = (bytes[3] << 8) | bytes[4];
  if (5 + h > bytes.length) throw new Error('truncated frame');
  const hb = bytes.subarray(5, 5 + h);
  const header = decode('Header', hb);
  return { header, body: bytes.subarray(5 + h) };
}

/** Refused above this many bytes after inflating (a decompression bomb). */
export const INFLATE_MAX = 256 * 1024 * 1024;

/**
 * A body the plugin deflated (Header.flags COMPRESSED): a zlib stream
 * (RFC 1950), what DecompressionStream calls 'deflate'. Browsers and
 * Node >= 18 have it.
 */
export async function inflate(bytes, rawLen, max = INFLATE_MAX) {
  if (rawLen > max) throw new Error(`compressed body of ${rawLen} bytes: too large`);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  const out = new Uint8Array(await new Response(stream).arrayBuffer());
  if (out.length !== rawLen) throw new Error('compressed body does not inflate to raw_len');
  return out;
}

/** A random UUID (version 4): a cmid. */
export function uuid() {
  const c = globalThis.crypto;
  if (c?.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c?.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256); // Node 18 without the global
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}
