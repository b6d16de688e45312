// mosquitto-im in the browser, on MQTT.js (MQTT v5 over WebSockets) and
// protobufjs: the frame decoder, requests, and the client algorithm of
// docs/PROTOCOL.md section 7 (the same as examples/client/im_client.c).
//
// No DOM in here: the page (app.js) listens to the events.
//   'status'   {detail: {state, text}}        connection and catch-up state
//   'message'  {detail: {timeline, seq, sender, text, edited, recalled, peerSeq, ...}}
//                                             once per (timeline, seq), in order; edits and
//                                             recalls are not messages to show but changes:
//   'change'   {detail: {timeline, msg, header}} msg (shown before) was edited or recalled
//   'groups'   {detail: [{name, headSeq}]}    the groups I am in
//   'conversations' {detail: [Conversation]}  the latest 200, on each connection
//   'read'     {detail: {timeline, user, seq}} user read timeline up to seq (moved up)
//   'typing'   {detail: {timeline, user, typing}} timeline: the conversation (u/<typist>, g/<group>)
//   'outbox'   {detail: message}              a message waiting for its Receipt changed state
//   'receipt'  {detail: {cmid, timeline, seq}} a sent message is stored
//   'gap'      {detail: {timeline, from, to}}  seqs removed by retention
//   'reset'    {detail: {from, to}}           the server's history was replaced (a new store id):
//                                             every timeline starts over from seq 1
//   'error'    {detail: text}
import mqtt from '/vendor/mqtt.esm.js';

const protobuf = globalThis.protobuf; // dist/protobuf.min.js, a classic <script>
const REPLY_MS = 5000;
const ACK_EVERY_MS = 2000;
const GROUPS_EVERY_MS = 10000;   // `group list` again: someone may have added me
const KEEP_MSGS = 1000;              // messages kept per timeline in localStorage
const RETRY_MS = 1000;               // after a TOO_MANY without retry_after_ms
export const RECEIPT_TOPIC = '$CONTROL/im/v1/receipt';
const CONVS_LIMIT = 200;             // conversations asked for on connect (the plugin's page maximum)
const ACK_SOON_MS = 200;             // a read goes out this soon after the user saw it
export const FLAG = { SYSTEM: 1, COMPRESSED: 2, EDIT: 4, RECALL: 8, EDITED: 16, RECALLED: 32 };
const READ = 1;                      // im.v1.Event.Kind
const TYPING = 2;

// Loads proto/im.proto (served by serve.js from the project's proto/).
export async function loadProto(url = '/proto/im.proto') {
  const root = await protobuf.load(url);
  const t = (n) => root.lookupType('im.v1.' + n);
  return {
    Header: t('Header'), SyncRequest: t('SyncRequest'), SyncBatch: t('SyncBatch'), Ack: t('Ack'),
    AckResponse: t('AckResponse'), Receipt: t('Receipt'), GroupRequest: t('GroupRequest'),
    GroupResponse: t('GroupResponse'), Response: t('Response'), TypingRequest: t('TypingRequest'),
    ReadsRequest: t('ReadsRequest'), ReadsResponse: t('ReadsResponse'),
    ConversationsRequest: t('ConversationsRequest'), ConversationsResponse: t('ConversationsResponse'),
  };
}

const toObj = (T, bytes) => T.toObject(T.decode(bytes), { longs: Number, defaults: true });

// The store id (a fixed64 field) of an encoded message, as 16 hex digits,
// '' if absent or 0 (a broker without store ids). Read from the bytes:
// protobufjs without long.js would round it to a double.
export function storeIdOf(bytes, field) {
  const r = protobuf.Reader.create(bytes);
  let id = '';
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 === field && (tag & 7) === 1) {
      id = [...bytes.subarray(r.pos, r.pos + 8)].reverse().map((v) => v.toString(16).padStart(2, '0')).join('');
    }
    r.skipType(tag & 7);
  }
  return /^0*$/.test(id) ? '' : id;
}
// its field number in each message that carries one
const STORE_FIELD = { Header: 14, SyncBatch: 11, AckResponse: 6, Receipt: 9, GroupResponse: 10, ReadsResponse: 6,
  ConversationsResponse: 5, Response: 0 };
// requests answered on $CONTROL/im/v1/<op>/response, by their reply's type
const REPLY = { group: 'GroupResponse', typing: 'Response', reads: 'ReadsResponse',
  conversations: 'ConversationsResponse' };

// The frame: 'I' 'M' 0x01, uint16 big-endian header length H, H bytes of
// im.v1.Header, then the body exactly as the sender published it.
export function decodeFrame(P, bytes) {
  if (bytes.length < 5 || bytes[0] !== 0x49 || bytes[1] !== 0x4d) throw new Error('not a frame');
  if (bytes[2] !== 1) throw new Error('unknown frame version ' + bytes[2]);
  const h = (bytes[3] << 8) | bytes[4];
  if (5 + h > bytes.length) throw new Error('truncated frame');
  const hb = bytes.subarray(5, 5 + h);
  return { header: toObj(P.Header, hb), body: bytes.subarray(5 + h), storeId: storeIdOf(hb, STORE_FIELD.Header) };
}

export function uuid() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

const utf8 = new TextDecoder();
const INFLATE_MAX = 16 * 1024 * 1024;  // refuse larger raw_len (a decompression bomb)

// A body the plugin deflated (compress_min_bytes; Header.flags bit 1): a
// zlib stream (RFC 1950), which is what DecompressionStream calls 'deflate'.
export async function inflate(bytes, rawLen) {
  if (rawLen > INFLATE_MAX) throw new Error(`compressed body of ${rawLen} bytes: too large`);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  const out = new Uint8Array(await new Response(stream).arrayBuffer());
  if (out.length !== rawLen) throw new Error('compressed body does not inflate to raw_len');
  return out;
}

export class ImClient extends EventTarget {
  // opts: {url, user, password, proto, storage (localStorage), prefix ('im')}
  constructor(opts) {
    super();
    this.o = { prefix: 'im', storage: globalThis.localStorage, ...opts };
    this.P = opts.proto;
    this.me = 'u/' + opts.user;
    this.key = `imweb/${opts.user}@${opts.url}/`;
    // Seqs count in one store: `last` of every timeline is kept with the
    // store id it counts in ('' = not known yet).
    this.storeId = this.load('store', '');
    this.storeSeen = false;     // this connection answered with storeId: acks may go
    this.gen = 0;               // store resets so far: what was delivered before one is not shown
    this.reqNo = 0;             // correlation data of requests
    this.tls = new Map();       // timeline -> {name, last, acked, seen, syncing, held: Map, msgs, head, req, ...}
    this.pending = new Map();   // correlation data -> a request waiting for its reply
    this.marks = new Map();     // timeline -> Map(user -> seq): how far each one read it
    this.outbox = this.load('outbox', []);  // sent, no Receipt yet: re-sent with the same cmid
    this.connected = false;
    this.shown = Promise.resolve();         // messages are shown in this order, one after the other
    this.timeline(this.me);
    for (const g of this.load('groups', [])) this.timeline('g/' + g);
  }

  // ---- storage: `last` and the messages shown, per timeline ----
  load(k, dflt) {
    try { const v = this.o.storage.getItem(this.key + k); return v ? JSON.parse(v) : dflt; } catch { return dflt; }
  }
  save(k, v) { try { this.o.storage.setItem(this.key + k, JSON.stringify(v)); } catch { /* full: keep going */ } }
  // `last` is saved with the messages shown, never ahead of them, and with its store id
  saveTl(t) { this.save('tl/' + t.name, { store: this.storeId, last: t.shownSeq, msgs: t.msgs.slice(-KEEP_MSGS) }); }

  timeline(name) {
    let t = this.tls.get(name);
    if (!t) {
      let s = this.load('tl/' + name, null);
      if (!s || (s.store || '') !== this.storeId) s = { last: 0, msgs: [] }; // none, or of a replaced store
      // acked: 0, not `last`: what the user saw is acked again (a cursor never moves back)
      t = { name, last: s.last, shownSeq: s.last, acked: 0, seen: 0, syncing: false, held: new Map(), msgs: s.msgs,
        head: s.last, req: 0, reqAfter: 0, again: false, retry: null };
      this.tls.set(name, t);
    }
    return t;
  }
  topic(tl) { return `${this.o.prefix}/${tl}`; }
  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
  status(state, text) { this.state = state; this.emit('status', { state, text }); }

  // ---- connection ----
  start() {
    let cid = sessionStorage.getItem(this.key + 'cid');
    if (!cid) { cid = `web-${this.o.user}-${uuid().slice(0, 8)}`; sessionStorage.setItem(this.key + 'cid', cid); }
    this.status('connecting', 'connecting to ' + this.o.url);
    this.c = mqtt.connect(this.o.url, {
      protocolVersion: 5, clientId: cid, username: this.o.user, password: this.o.password || undefined,
      clean: true, reconnectPeriod: 1000, connectTimeout: 5000, resubscribe: false, keepalive: 30,
    });
    this.c.on('connect', () => this.onConnect());
    this.c.on('close', () => this.onClose());
    this.c.on('error', (e) => {
      const refused = /authori|password|Bad User/i.test(e.message);
      this.status(refused ? 'refused' : 'error', refused ? 'login refused: not authorised' : e.message);
      if (refused) this.c.end(true);
    });
    this.c.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet));
    this.ackTimer = setInterval(() => this.sendAcks(), ACK_EVERY_MS);
    this.groupTimer = setInterval(() => {
      if (this.connected) this.refreshGroups().catch((e) => this.emit('error', e.message));
    }, GROUPS_EVERY_MS);
  }

  stop() {
    clearInterval(this.ackTimer);
    clearInterval(this.groupTimer);
    clearTimeout(this.ackSoon);
    this.sendAcks();
    this.c?.end();
  }

  async onConnect() {
    this.connected = true;
    this.status('syncing', 'connected, catching up');
    // 1. Subscribe, then sync each timeline before trusting live frames
    // (the broker handles our packets in order: the subscription is in
    // place before the sync request is read).
    for (const t of this.tls.values()) this.follow(t);
    this.refreshConversations().catch((e) => this.emit('error', e.message));
    try {
      await this.refreshGroups();
    } catch (e) {
      this.emit('error', e.message);
    }
    for (const m of this.outbox) this.publishMsg(m); // 4. re-send, same cmid
    this.checkCaughtUp();
  }

  onClose() {
    if (this.connected) this.status('offline', 'connection lost, reconnecting');
    this.connected = false;
    this.storeSeen = false;
    for (const t of this.tls.values()) {
      t.syncing = t.again = false;
      t.req = 0;                                 // not answered on the next connection
      clearTimeout(t.retry);
      t.retry = null;
    }
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(new Error('connection lost')); }
    this.pending.clear();
  }

  // A timeline and its events (read marks, typing). Events reach only who
  // is connected: a group's read marks as they are now are asked for (a
  // direct conversation's come with the conversation list). Without them
  // ticks show less; no need to say so (a group I left: the group list
  // drops it).
  follow(t) {
    this.c.subscribe([this.topic(t.name), this.topic('e/' + t.name)], { qos: 1 });
    this.startSync(t);
    if (t.name.startsWith('g/')) this.askReads(t.name).catch(() => {});
  }

  // ---- requests ----
  publishReq(op, bytes) {
    this.c.publish('$CONTROL/im/v1/' + op, bytes, { qos: 1 });
  }

  // A request whose reply comes back on $CONTROL/im/v1/<op>/response with
  // the request's correlation data (replies of one op may come in another
  // order: a refusal is answered at once, the rest by the store).
  request(op, T, msg) {
    return new Promise((resolve, reject) => {
      if (!this.connected) { reject(new Error('not connected')); return; }
      const corr = `${op}/${++this.reqNo}`;
      const p = { resolve, reject };
      p.timer = setTimeout(() => {
        this.pending.delete(corr);
        reject(new Error(`no reply from the mosquitto-im plugin on $CONTROL/im/v1/${op}: is the plugin loaded?`));
      }, REPLY_MS);
      this.pending.set(corr, p);
      this.c.publish('$CONTROL/im/v1/' + op, T.encode(T.create(msg)).finish(),
        { qos: 1, properties: { correlationData: corr } });
    });
  }

  onReply(op, payload, corr) {
    const T = this.P[REPLY[op]];
    this.checkStore(storeIdOf(payload, STORE_FIELD[REPLY[op]]));
    const p = this.pending.get(corr);
    if (!p) return;                              // late: its wait was given up
    this.pending.delete(corr);
    clearTimeout(p.timer);
    p.resolve(toObj(T, payload));
  }

  async group(op, group, members = []) {
    const r = await this.request('group', this.P.GroupRequest, { op, group, members });
    if (r.status !== 0) throw new Error(`group ${op} ${group || ''}: ${r.status} ${r.reason}`);
    if (['create', 'add', 'remove', 'leave'].includes(op)) this.refreshGroups().catch(() => {});
    return r;
  }

  async refreshGroups() {
    const r = await this.group('list');
    const names = r.groups.map((g) => g.name);
    for (const g of r.groups) {
      const known = this.tls.has('g/' + g.name);
      const t = this.timeline('g/' + g.name);
      t.head = Math.max(t.head, g.headSeq);
      if (!known && this.connected) this.follow(t); // a group I was added to
    }
    for (const name of [...this.tls.keys()]) {
      if (name.startsWith('g/') && !names.includes(name.slice(2))) {
        this.c.unsubscribe([this.topic(name), this.topic('e/' + name)]);
        clearTimeout(this.tls.get(name).retry);
        this.tls.delete(name);
      }
    }
    this.save('groups', names);
    this.emit('groups', r.groups);
    return r.groups;
  }

  // ---- conversations, read marks, typing ----
  // The list, latest first, and the peers' read marks in it.
  async refreshConversations() {
    const r = await this.request('conversations', this.P.ConversationsRequest, { limit: CONVS_LIMIT });
    if (r.status !== 0) throw new Error(`conversations: ${r.status} ${r.reason}`);
    for (const c of r.conversations) {
      if (c.timeline.startsWith('u/')) this.mark(c.timeline, c.timeline.slice(2), c.peerReadSeq);
    }
    this.emit('conversations', r.conversations);
    return r.conversations;
  }

  async askReads(timeline) {
    const r = await this.request('reads', this.P.ReadsRequest, { timeline });
    if (r.status !== 0) throw new Error(`reads ${timeline}: ${r.status} ${r.reason}`);
    for (const m of r.marks) this.mark(timeline, m.user, m.seq);
  }

  // user read timeline up to seq: kept, and told, when it moved up
  mark(timeline, user, seq) {
    let m = this.marks.get(timeline);
    if (!m) this.marks.set(timeline, m = new Map());
    if (!seq || seq <= (m.get(user) || 0)) return;
    m.set(user, seq);
    this.emit('read', { timeline, user, seq });
  }

  // How far user read timeline (0: nothing known).
  readBy(timeline, user) { return this.marks.get(timeline)?.get(user) || 0; }
  readers(timeline) { return this.marks.get(timeline) || new Map(); }

  // A frame on <prefix>/e/<timeline>: seq 0, the Event in its header.
  onEvent(bytes) {
    const { header: h, storeId } = decodeFrame(this.P, bytes);
    this.checkStore(storeId);
    const e = h.event;
    if (!e || h.seq !== 0 || !this.tls.has(h.timeline)) return;
    if (e.kind === READ) this.mark(e.timeline, e.user, e.seq);
    else if (e.kind === TYPING) this.emit('typing', { timeline: e.timeline, user: e.user, typing: e.typing });
  }

  // Tell timeline's other side(s) the user is typing (or stopped). Not
  // stored; the plugin refuses more than typing_rate a second (429).
  typing(timeline, typing) {
    return this.request('typing', this.P.TypingRequest, { timeline, typing });
  }

  // The user has seen every message of timeline up to seq: that is what
  // is acked (msg-fin), and what the senders see as read.
  seen(timeline, seq) {
    const t = this.tls.get(timeline);
    if (!t || Math.min(seq, t.shownSeq) <= t.seen) return;
    t.seen = Math.min(seq, t.shownSeq);
    this.ackSoon ??= setTimeout(() => { this.ackSoon = null; this.sendAcks(); }, ACK_SOON_MS);
  }

  // Catch up t from `last`, holding live frames meanwhile. One request out
  // per timeline; its correlation data tells its answer (also a TOO_MANY,
  // which names no timeline) from a late one.
  startSync(t) {
    t.syncing = true;
    if (t.req || t.retry) { t.again = true; return; } // after that answer, or the TOO_MANY wait
    t.again = false;
    t.req = ++this.reqNo;
    t.reqAfter = t.last;
    const P = this.P.SyncRequest;
    const req = P.encode(P.create({ timeline: t.name, afterSeq: t.last, limit: 500 })).finish();
    this.c.publish('$CONTROL/im/v1/sync', req, { qos: 1, properties: { correlationData: 'sync/' + t.req } });
  }

  // ---- the store id: seqs are comparable only within one ----
  // Every frame and reply carries it. (Clean sessions: all a connection
  // gets comes from one broker process, one store, so nothing arrives late
  // from a store we left.)
  checkStore(id) {
    if (id && id !== this.storeId) {
      if (this.storeId) {
        this.resetStore(id);
      } else {                                   // the first one we see: adopt it
        this.storeId = id;
        this.save('store', id);
        for (const t of this.tls.values()) this.saveTl(t);
      }
    }
    this.storeSeen = true;
  }

  // The server's history was replaced (a new database, a rolled back or
  // restored one): every `last` and message shown counts seqs of a store
  // that is gone, and keeping them would drop the new store's messages as
  // duplicates. Forget them and catch up every timeline from 0.
  resetStore(id) {
    const from = this.storeId;
    this.storeId = id;
    this.save('store', id);
    this.gen++;
    this.marks.clear();                          // they name seqs of the old store too
    for (const t of this.tls.values()) {
      t.last = t.shownSeq = t.acked = t.seen = t.head = 0;
      t.msgs = [];
      t.held.clear();
      this.saveTl(t);
      if (this.connected) this.startSync(t);     // a request out asked from the old `last`: this one follows it
    }
    this.emit('reset', { from, to: id });
  }

  sendAcks() {
    // not before this connection showed the store is still ours
    if (!this.connected || !this.storeSeen) return;
    for (const t of this.tls.values()) {
      if (t.seen <= t.acked) continue;
      // msg-fin: the highest seq the user saw; the reply needs no waiting for
      this.publishReq('ack', this.P.Ack.encode(this.P.Ack.create({ timeline: t.name, seq: t.seen })).finish());
      t.acked = t.seen;
    }
  }

  // ---- sending ----
  // A new message, or (change 'edit' / 'recall') a change of message ref,
  // named by its seq in the timeline it was sent to (for a direct message
  // I sent: my copy's peerSeq). Kept in the outbox until its Receipt.
  send(timeline, text, change = null, ref = 0) {
    const m = { cmid: uuid(), timeline, text: change === 'recall' ? '' : text, at: Date.now(), change, ref };
    this.outbox.push(m);
    this.save('outbox', this.outbox);
    if (this.connected) this.publishMsg(m);
    return m;
  }
  edit(timeline, ref, text) { return this.send(timeline, text, 'edit', ref); }
  recall(timeline, ref) { return this.send(timeline, '', 'recall', ref); }

  publishMsg(m) {
    const props = { 'im-cmid': m.cmid };
    if (m.change) props['im-' + m.change] = String(m.ref);
    m.sent = false;
    this.c.publish(this.topic(m.timeline), m.text, {
      qos: 1, properties: { userProperties: props, responseTopic: RECEIPT_TOPIC, contentType: 'text/plain' },
    }, (err) => {
      // the broker has it (journaled): sent, not stored yet
      if (!err && this.outbox.includes(m)) { m.sent = true; this.emit('outbox', m); }
    });
  }

  onReceipt(r) {
    const i = this.outbox.findIndex((m) => m.cmid === r.cmid);
    if (i >= 0) {
      this.outbox.splice(i, 1);
      this.save('outbox', this.outbox);
    }
    if (r.status !== 0) this.emit('error', `message refused: ${r.status} ${r.reason}`);
    this.emit('receipt', r);
  }

  // ---- incoming ----
  onMessage(topic, payload, packet) {
    const P = this.P;
    try {
      if (topic === '$CONTROL/im/v1/sync/response') {
        const corr = packet?.properties?.correlationData;
        const req = corr ? Number(utf8.decode(corr).replace(/^sync\//, '')) : 0;
        this.checkStore(storeIdOf(payload, STORE_FIELD.SyncBatch));
        return this.onBatch(toObj(P.SyncBatch, payload), req);
      }
      if (topic === RECEIPT_TOPIC) {
        this.checkStore(storeIdOf(payload, STORE_FIELD.Receipt));
        return this.onReceipt(toObj(P.Receipt, payload));
      }
      const reply = /^\$CONTROL\/im\/v1\/([a-z]+)\/response$/.exec(topic);
      if (reply && REPLY[reply[1]]) {
        const corr = packet?.properties?.correlationData;
        return this.onReply(reply[1], payload, corr ? utf8.decode(corr) : '');
      }
      if (topic === '$CONTROL/im/v1/ack/response') {
        this.checkStore(storeIdOf(payload, STORE_FIELD.AckResponse)); // nothing else to do
        return;
      }
      if (topic.startsWith('$CONTROL/')) return;
      if (topic.startsWith(this.topic('e/'))) return this.onEvent(payload);
      this.onFrame(payload);
    } catch (e) {
      this.emit('error', `${topic}: ${e.message}`);
    }
  }

  // Step 2 of the algorithm, for a live frame.
  onFrame(bytes) {
    const { header: h, storeId } = decodeFrame(this.P, bytes);
    this.checkStore(storeId);
    const t = this.tls.get(h.timeline);
    if (!t || h.seq <= t.last) return;           // not ours, or a duplicate
    t.head = Math.max(t.head, h.seq);
    if (t.syncing) {
      t.held.set(h.seq, bytes);                  // until the sync is complete
    } else if (h.seq === t.last + 1) {
      this.deliver(t, bytes);
      this.drain(t, 0);
    } else {
      t.held.set(h.seq, bytes);                  // a gap: fill it by sync
      this.startSync(t);
    }
  }

  onBatch(b, req) {
    // The answer to the request out for its timeline, by correlation data;
    // anything else is late (a request before a reconnect).
    const t = [...this.tls.values()].find((x) => x.req && x.req === req);
    if (!t) return;
    t.req = 0;
    if (b.status === 429) {                      // TOO_MANY: ask again when the server says
      t.retry = setTimeout(() => {
        t.retry = null;
        if (this.connected && this.tls.get(t.name) === t) this.startSync(t);
      }, b.retryAfterMs || RETRY_MS);
      return;
    }
    if (b.status !== 0) {
      t.syncing = false;
      if (t.again) this.startSync(t);
      // no longer a member (removed, or a replaced store without the group):
      // the group list drops it, nothing to tell
      if (b.status === 403 && t.name.startsWith('g/')) this.refreshGroups().catch(() => {});
      else this.emit('error', `sync ${t.name}: ${b.status} ${b.reason}`);
      return;
    }
    if (t.reqAfter > t.last) {                   // asked from a `last` a store reset took back
      this.startSync(t);
      return;
    }
    t.head = Math.max(t.head, b.headSeq);
    if (b.firstSeq > t.last + 1) {
      this.emit('gap', { timeline: t.name, from: t.last + 1, to: b.firstSeq - 1 });
      t.last = b.firstSeq - 1;                   // gone by retention, not lost
    }
    for (const f of b.frames) {
      const seq = decodeFrame(this.P, f).header.seq;
      if (seq > t.last) this.deliver(t, f);      // a batch skips only expired seqs
    }
    if (b.hasMore || t.again) {
      this.startSync(t);
    } else {
      t.syncing = false;
      this.drain(t, b.headSeq);
      if (t.held.size) this.startSync(t);        // live frames lost in between
      this.sendAcks();
      this.checkCaughtUp();
    }
  }

  drain(t, upTo) {
    for (const seq of [...t.held.keys()].sort((a, b) => a - b)) {
      if (seq > t.last + 1 && seq > upTo) break;
      const f = t.held.get(seq);
      t.held.delete(seq);
      if (seq > t.last) this.deliver(t, f);
    }
  }

  // The algorithm's state (`last`) moves now; showing the message may wait
  // for inflating its body, so it goes through one promise chain: messages
  // are shown in seq order all the same.
  deliver(t, bytes) {
    const { header, body } = decodeFrame(this.P, bytes);
    const gen = this.gen;
    t.last = header.seq;
    this.shown = this.shown.then(async () => {
      let text;
      try {
        text = utf8.decode((header.flags & 2) ? await inflate(body, header.rawLen) : body);
      } catch (e) {
        text = `(${e.message})`;
      }
      if (gen !== this.gen) return;              // of a store replaced meanwhile: not shown
      const f = header.flags;
      const m = {
        timeline: header.timeline, seq: header.seq, sender: header.sender, to: header.to, tsMs: header.tsMs,
        cmid: header.cmid, system: (f & FLAG.SYSTEM) !== 0, omitted: header.bodyOmitted, text,
        peerSeq: header.peerSeq || 0,            // a direct message: its seq in the other inbox
        edited: (f & FLAG.EDITED) !== 0, recalled: (f & FLAG.RECALLED) !== 0,
      };
      // An edit or a recall changes the message it names in this timeline
      // (if still kept here); it is not a message to show.
      const change = f & (FLAG.EDIT | FLAG.RECALL);
      const orig = change ? t.msgs.find((x) => x.seq === header.refSeq) : null;
      if (orig && f & FLAG.EDIT && !orig.recalled) Object.assign(orig, { text, edited: true });
      if (orig && f & FLAG.RECALL) Object.assign(orig, { text: '', recalled: true });
      if (!change) t.msgs.push(m);
      t.shownSeq = m.seq;
      this.saveTl(t);
      const i = this.outbox.findIndex((o) => o.cmid && o.cmid === m.cmid && m.sender === this.o.user);
      if (i >= 0) { this.outbox.splice(i, 1); this.save('outbox', this.outbox); } // my copy: stored
      if (orig) this.emit('change', { timeline: t.name, msg: orig, header });
      else if (!change) this.emit('message', m);
    });
  }

  checkCaughtUp() {
    if (!this.connected) return;
    for (const t of this.tls.values()) if (t.syncing || t.held.size) return;
    // once what was delivered is shown too
    this.shown.then(() => { if (this.connected) this.status('online', 'online, up to date'); });
  }
}
