// Type declarations of mosquitto-im (hand-written; the source is plain ES
// modules that run as they are in browsers and Node). Checked by
// test/pack.test.mjs: a strict TypeScript program uses them from the packed
// tarball.

/** Header.flags bits (im.v1.HeaderFlag). */
export declare const FLAG: Readonly<{ SYSTEM: 1; COMPRESSED: 2; EDIT: 4; RECALL: 8; EDITED: 16; RECALLED: 32 }>;
/** im.v1.Event.Kind */
export declare const EVENT: Readonly<{ READ: 1; TYPING: 2; MEMBERSHIP: 3 }>;
/** im.v1.Status */
export declare const STATUS: Readonly<{
  OK: 0; BAD_REQUEST: 400; UNAUTHENTICATED: 401; FORBIDDEN: 403; NOT_FOUND: 404; CONFLICT: 409;
  TOO_LARGE: 413; TOO_MANY: 429; INTERNAL: 500;
}>;
/** Whether the schema this package carries has Event.member (membership news). */
export declare const HAS_MEMBERSHIP: boolean;
/** The Response Topic of sends: the plugin alone speaks there. */
export declare const RECEIPT_TOPIC: string;
/** The parsed schema (a protobufjs Root of proto/im.proto). */
export declare const root: unknown;

/** A timeline: `u/<user>` (an inbox) or `g/<group>`. */
export type Timeline = string;

/**
 * Offline state: async get/set/delete of JSON-able values under string
 * keys. MemoryStore, LocalStorageStore, IndexedDBStore and (Node)
 * FileStore from 'mosquitto-im/file-store' are provided; any object of
 * this shape will do.
 */
export interface ImStore {
  get(key: string): Promise<unknown> | unknown;
  set(key: string, value: unknown): Promise<void> | void;
  delete(key: string): Promise<void> | void;
}

export declare class MemoryStore implements ImStore {
  constructor();
  get(key: string): Promise<unknown>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
}

/** Web Storage (localStorage by default), values as JSON under prefix + key. */
export declare class LocalStorageStore implements ImStore {
  constructor(prefix?: string, storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'>);
  get(key: string): Promise<unknown>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
}

/** IndexedDB: object store `kv` in database `name`. */
export declare class IndexedDBStore implements ImStore {
  constructor(name?: string, indexedDB?: IDBFactory);
  get(key: string): Promise<unknown>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

export interface ImClientOptions {
  /** mqtt://host:1883, mqtts://, ws://host:9001, wss:// (browsers: ws/wss only). */
  url: string;
  /** The MQTT username: who you are. */
  user: string;
  password?: string;
  /** A device: keep it stable (its cursor and session). Default: made once, kept in the store. */
  clientId?: string;
  /** Default: a MemoryStore (nothing survives the process). */
  store?: ImStore;
  /** Keys in the store start with this. Default `<user>/`. */
  namespace?: string;
  /** The plugin's topic prefix. Default 'im'. */
  prefix?: string;
  /** Messages kept (and persisted) per timeline. Default 1000. */
  keep?: number;
  /** Ack every message once delivered (bots). Default false: call seen() or ack(). */
  autoAck?: boolean;
  /** seen() is acked this long after. Default 1000 ms. */
  ackDelayMs?: number;
  /** A request without a reply this long is rejected with code TIMEOUT. Default 10000 ms. */
  replyTimeoutMs?: number;
  /** Frames asked for per sync batch. Default 500. */
  syncLimit?: number;
  /** Messages sent and waiting for their Receipt at once. Default 100. */
  maxInflight?: number;
  /** Seconds the broker keeps the persistent session. Default 3600. */
  sessionExpiry?: number;
  /** State is written to the store at most this often. Default 100 ms. */
  flushMs?: number;
  reconnectPeriod?: number;
  connectTimeout?: number;
  keepalive?: number;
  /** Wait after a TOO_MANY without retry_after_ms, or a failed sync. Default 1000 ms. */
  retryMs?: number;
  /** More MQTT.js connect options (wsOptions, ca, ...): merged last. */
  mqtt?: Record<string, unknown>;
}

/** A message delivered (once per timeline and seq, in seq order). */
export interface Message {
  timeline: Timeline;
  seq: number;
  sender: string;
  /** The timeline the sender addressed (in my copy of a direct message: the peer's inbox). */
  to: string;
  /** Where I would reply: `u/<peer>` or `g/<group>`. */
  conversation: Timeline;
  tsMs: number;
  cmid: string;
  contentType: string;
  /** The body as UTF-8 text ('' once recalled). */
  text: string;
  /** The body's bytes (inflated); present on delivery, not kept in the store. */
  body?: Uint8Array;
  flags: number;
  /** Written by the plugin (a group change: text is JSON). */
  system: boolean;
  omitted: boolean;
  edited: boolean;
  recalled: boolean;
  /** A direct message: its seq in the other inbox. */
  peerSeq: number;
  refSeq: number;
  expiresMs: number;
}

export interface Receipt {
  status: number;
  reason: string;
  timeline: Timeline;
  seq: number;
  cmid: string;
  tsMs: number;
  duplicate: boolean;
  ownSeq: number;
  storeId: string;
}

export interface PendingSend {
  cmid: string;
  timeline: Timeline;
  at: number;
  text?: string;
  b64?: string;
  contentType?: string;
  expiry?: number;
  change?: 'edit' | 'recall';
  ref?: number;
  /** Acknowledged by the broker (journaled: durable), not stored yet. */
  sent: boolean;
}

export interface Conversation {
  timeline: Timeline;
  lastSender: string;
  lastTsMs: number;
  lastPreview: string;
  lastFlags: number;
  lastSeq: number;
  unread: number;
  peerReadSeq: number;
}

export interface GroupInfo { name: string; headSeq: number; cursor: number; unread: number }

export interface GroupResponse {
  status: number;
  reason: string;
  op: string;
  group: string;
  owner: string;
  members: string[];
  headSeq: number;
  groups: GroupInfo[];
  seq: number;
  storeId: string;
}

export interface ReadsResponse {
  status: number; reason: string; timeline: Timeline; marks: { user: string; seq: number }[]; headSeq: number;
  storeId: string;
}
export interface AckResponse { status: number; reason: string; timeline: Timeline; cursor: number; headSeq: number; storeId: string }
export interface Response { status: number; reason: string }

export type State = 'new' | 'connecting' | 'syncing' | 'online' | 'offline' | 'refused' | 'closed';

export interface ImEvents {
  /** Connection and catch-up state. 'online': connected and caught up. */
  status: { state: State; text: string };
  /** Connected (again): subscriptions and syncs are on their way. */
  connect: { sessionPresent: boolean };
  message: Message;
  /** message: the one edited, if kept (now with the new text). */
  edit: { timeline: Timeline; seq: number; message: Message | null; edit: Message };
  recall: { timeline: Timeline; seq: number; message: Message | null; recall: Message };
  /** user read timeline up to seq (a seq of timeline); told when it moves up. */
  read: { timeline: Timeline; user: string; seq: number };
  /** timeline: the conversation (u/<typist> for a direct one, g/<group>). */
  typing: { timeline: Timeline; user: string; typing: boolean; tsMs: number };
  /** I joined (member) or left a group: it is followed (subscribed, synced) or dropped. */
  membership: { group: string; timeline: Timeline; member: boolean; seq: number };
  /** The answer to `group list` (after each connect). */
  groups: GroupInfo[];
  /** The server's history was replaced: every timeline starts over from seq 1. */
  reset: { from: string; to: string };
  /** Seqs removed by retention (not lost: gone). */
  gap: { timeline: Timeline; from: number; to: number };
  /** A Receipt (the first for each message). */
  receipt: Receipt;
  /** A send changed state. */
  outbox: PendingSend & { state: 'queued' | 'sent' | 'stored' | 'failed'; error?: Error };
  error: Error;
}

export interface TimelineState {
  last: number; shown: number; seen: number; acked: number; head: number; syncing: boolean; held: number;
}

export declare class ImError extends Error {
  /** A status name (FORBIDDEN, TOO_MANY, ...) or TIMEOUT, DISCONNECTED, OFFLINE, CLOSED, REFUSED, RESET, UNAUTHORIZED. */
  code: string;
  /** The reply's im.v1.Status, 0 if none. */
  status: number;
  reason: string;
  reply: unknown;
  /** An MQTT reason code (REFUSED, UNAUTHORIZED). */
  reasonCode: number;
}

export declare class ImClient {
  constructor(opts: ImClientOptions);
  readonly user: string;
  /** u/<user> */
  readonly me: Timeline;
  readonly clientId: string;
  readonly state: State;
  readonly connected: boolean;
  /** The store id the seqs kept count in ('' until the first reply). */
  readonly storeId: string;

  on<K extends keyof ImEvents>(type: K, fn: (detail: ImEvents[K]) => void): () => void;
  once<K extends keyof ImEvents>(type: K, fn: (detail: ImEvents[K]) => void): () => void;
  off<K extends keyof ImEvents>(type: K, fn: (detail: ImEvents[K]) => void): void;

  /** Reads the offline state and starts connecting (and reconnecting). */
  start(): Promise<void>;
  /** Acks what was seen, writes the state, disconnects. */
  close(): Promise<void>;
  /** Catches up now; resolves once every timeline is caught up and delivered. */
  sync(timeline?: Timeline): Promise<void>;
  /** Writes what changed to the store now. */
  flush(): Promise<void>;

  /** Resolves to the Receipt once stored; rejects with ImError if refused. */
  send(timeline: Timeline, body: string | Uint8Array,
    opts?: { contentType?: string; expiry?: number; cmid?: string }): Promise<Receipt>;
  edit(timeline: Timeline, seq: number, body: string | Uint8Array): Promise<Receipt>;
  recall(timeline: Timeline, seq: number): Promise<Receipt>;
  /** Where to edit or recall a message delivered here. */
  target(m: Message): { timeline: Timeline; seq: number };

  /** Acks now: this device's cursor, and the user's read mark. */
  ack(timeline: Timeline, seq: number): Promise<AckResponse>;
  /** The user saw timeline up to seq: acked soon, one ack per timeline. */
  seen(timeline: Timeline, seq: number): void;
  typing(timeline: Timeline, typing?: boolean): Promise<Response>;
  reads(timeline: Timeline): Promise<ReadsResponse>;
  conversations(opts?: { limit?: number; beforeTsMs?: number; beforeTimeline?: Timeline }):
    Promise<{ conversations: Conversation[]; hasMore: boolean; storeId: string }>;
  readonly groups: {
    create(group: string, members?: string[]): Promise<GroupResponse>;
    add(group: string, members: string[]): Promise<GroupResponse>;
    remove(group: string, members: string[]): Promise<GroupResponse>;
    leave(group: string): Promise<GroupResponse>;
    info(group: string): Promise<GroupResponse>;
    /** The groups I am in; the groups followed are made to match. */
    list(): Promise<GroupInfo[]>;
  };

  readBy(timeline: Timeline, user: string): number;
  readers(timeline: Timeline): Map<string, number>;
  messages(timeline: Timeline): Message[];
  timelines(): Timeline[];
  timelineState(timeline: Timeline): TimelineState | null;
  pendingSends(): PendingSend[];
}

export declare function changeTarget(m: Message, me: Timeline): { timeline: Timeline; seq: number };

export interface Header {
  timeline: string; seq: number; sender: string; tsMs: number; cmid: string; to: string; contentType: string;
  bodyOmitted: boolean; bodyLen: number; flags: number; expiresMs: number; rawLen: number; storeId: string;
  refSeq: number; peerSeq: number;
  event: { kind: number; user: string; timeline: string; seq: number; typing: boolean; tsMs: number; member?: boolean } | null;
}
/** Decodes a frame (section 4); throws on anything else. */
export declare function decodeFrame(bytes: Uint8Array): { header: Header; body: Uint8Array };
/** The store id (fixed64 field `field`) of an encoded message, 16 hex digits, '' if 0 or absent. */
export declare function storeIdOf(bytes: Uint8Array, field: number): string;
export declare function inflate(bytes: Uint8Array, rawLen: number, max?: number): Promise<Uint8Array>;
export declare function uuid(): string;
/** Encodes an im.v1 message of type `name` from a plain object (camelCase fields). */
export declare function encode(name: string, msg: Record<string, unknown>): Uint8Array;
/** Decodes an im.v1 message of type `name` into a plain object. */
export declare function decode(name: string, bytes: Uint8Array): Record<string, any>;
