// The client algorithm of docs/PROTOCOL.md section 7 on MQTT.js (MQTT v5,
// over TCP in Node, WebSockets in a browser): a persistent session;
// subscribe and sync every timeline after every connect; the gap check on
// live frames; cmids, Receipts and re-sends; acks; the store id; edits and
// recalls applied; read marks, typing, the conversation list, groups and
// membership news (11).
import mqtt from 'mqtt';
import { Emitter } from './emitter.js';
import { MemoryStore } from './stores.js';
import { EVENT, FLAG, STATUS, decode, decodeFrame, encode, inflate, uuid } from './frame.js';

export const RECEIPT_TOPIC = '$CONTROL/im/v1/receipt';
const CONTROL = '$CONTROL/im/v1/';
const STATUS_NAME = Object.fromEntries(Object.entries(STATUS).map(([k, v]) => [v, k]));
// requests answered on $CONTROL/im/v1/<op>/response, by their reply's type
const REPLY = { group: 'GroupResponse', typing: 'Response', reads: 'ReadsResponse',
  conversations: 'ConversationsResponse', ack: 'AckResponse' };
const utf8 = new TextDecoder();
const utf8enc = new TextEncoder();

// Messages re-sent at once after a connect; one more per Receipt, up to
// maxInflight.
const START_WINDOW = 10;

const DEFAULTS = {
  prefix: 'im',
  keep: 1000,             // messages kept per timeline (and persisted with `last`)
  autoAck: false,         // ack every message delivered (bots); else the app calls seen()/ack()
  ackDelayMs: 1000,       // seen() is acked this long after (one ack per timeline)
  replyTimeoutMs: 10000,
  syncLimit: 500,         // frames asked for per sync batch (the plugin caps it)
  maxInflight: 100,       // messages sent and waiting for their Receipt at once (at most)
  sessionExpiry: 3600,    // seconds the broker keeps the persistent session after a disconnect
  flushMs: 100,           // state is written to the store at most this often
  reconnectPeriod: 1000,
  connectTimeout: 10000,
  keepalive: 30,
  retryMs: 1000,          // after a TOO_MANY without retry_after_ms, or a failed sync
};

/** A request or send that did not succeed. */
export class ImError extends Error {
  constructor(message, { code, status = 0, reason = '', reply = null, reasonCode = 0 } = {}) {
    super(message);
    this.name = 'ImError';
    this.code = code || STATUS_NAME[status] || 'ERROR';
    this.status = status;
    this.reason = reason;
    this.reply = reply;
    this.reasonCode = reasonCode;
  }
}

/**
 * Where a change (edit, recall) of a message of mine goes: the timeline it
 * was sent to and its seq there. A direct message I sent is held in my copy
 * (u/<me>): it was sent to `to`, where its seq is peerSeq.
 */
export function changeTarget(m, me) {
  if (!m.timeline.startsWith('u/') || !m.to || m.to === m.timeline || m.to === me) {
    return { timeline: m.timeline, seq: m.seq };
  }
  return { timeline: m.to, seq: m.peerSeq };
}

const b64 = (bytes) => {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
};
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

export class ImClient extends Emitter {
  constructor(opts) {
    super();
    if (!opts?.url || !opts?.user) throw new Error('ImClient: url and user are required');
    this.o = { ...DEFAULTS, ...opts };
    this.user = opts.user;
    this.me = 'u/' + opts.user;
    this.store = opts.store || new MemoryStore();
    this.ns = opts.namespace ?? `${opts.user}/`;
    this.clientId = opts.clientId || '';
    this.storeId = '';              // the store the seqs we keep count in ('' = not known yet)
    this.oldStores = new Set();     // store ids we left: late deliveries carrying one are dropped
    this.storeSeen = false;         // this connection showed the store id: acks may go
    this.gen = 0;                   // store resets so far
    this.tls = new Map();           // timeline -> state (see #timeline)
    this.loading = new Map();       // timeline -> promise of its state being read from the store
    this.outbox = [];               // sent, no Receipt yet (in order)
    this.waiters = new Map();       // cmid -> {resolve, reject} of send()
    this.pending = new Map();       // correlation data -> a request waiting for its reply
    this.marks = new Map();         // timeline -> Map(user -> seq)
    this.touched = new Map();       // group -> membership epoch of its last news
    this.epoch = 0;
    this.reqNo = 0;
    this.conn = 0;                  // connections so far
    this.connected = false;
    this.state = 'new';
    this.dirty = new Set();
    this.chain = Promise.resolve(); // messages are shown in this order, one after the other
    this.caughtUp = [];             // sync() waiters
    this.connWaiters = [];
    this.groups = {
      create: (group, members = []) => this.#groupOp('create', group, members),
      add: (group, members) => this.#groupOp('add', group, members),
      remove: (group, members) => this.#groupOp('remove', group, members),
      leave: (group) => this.#groupOp('leave', group),
      info: (group) => this.#groupOp('info', group),
      list: () => this.#listGroups(),
    };
  }

  // ---------------------------------------------------------------- state

  #key(k) { return this.ns + k; }

  async #timeline(name) {
    const have = this.tls.get(name);
    if (have) return have;
    let p = this.loading.get(name);
    if (!p) {
      p = (async () => {
        let s = null;
        try { s = await this.store.get(this.#key('tl/' + name)); } catch (e) { this.#error(e); }
        const gen = this.gen;
        if (this.tls.has(name)) return this.tls.get(name);
        // none, or of a store that is gone: from 0
        if (!s || (s.store || '') !== this.storeId || gen !== this.gen) s = { last: 0, msgs: [] };
        const t = {
          name, last: s.last, shown: s.last, msgs: s.msgs || [], held: new Map(), head: s.last,
          syncing: false, req: 0, again: false, retry: null, seen: 0, acked: 0,   // seen again after a restart
        };
        this.tls.set(name, t);
        return t;
      })().finally(() => this.loading.delete(name));
      this.loading.set(name, p);
    }
    return p;
  }

  #dirty(k) {
    this.dirty.add(k);
    this.flushTimer ??= setTimeout(() => { this.flushTimer = null; this.flush(); }, this.o.flushMs);
  }

  /** Writes what changed to the store now (it is also done every flushMs and on close). */
  flush() {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    const keys = [...this.dirty];
    this.dirty.clear();
    const writes = keys.map((k) => {
      let v;
      if (k === 'store') v = this.storeId;
      else if (k === 'outbox') v = this.outbox.map(({ conn, sent, ...m }) => m);
      else if (k === 'groups') v = this.#groupNames();
      else if (k === 'client') v = this.clientId;
      else if (k.startsWith('tl/')) {
        const t = this.tls.get(k.slice(3));
        if (!t) return Promise.resolve(this.store.delete(this.#key(k)));
        v = { store: this.storeId, last: t.shown, msgs: t.msgs.slice(-this.o.keep) };
      }
      return Promise.resolve(this.store.set(this.#key(k), v));
    });
    this.flushing = Promise.all(writes).catch((e) => this.#error(new Error('store: ' + (e?.message || e))));
    return this.flushing;
  }

  #groupNames() { return [...this.tls.keys()].filter((n) => n.startsWith('g/')).map((n) => n.slice(2)); }

  #status(state, text) {
    this.state = state;
    this.emit('status', { state, text });
  }

  #error(e) { this.emit('error', e instanceof Error ? e : new Error(String(e))); }

  // A request of the client's own: losing the connection meanwhile is no
  // error (it is asked again after the next connect).
  #bg(p) {
    p.catch((e) => { if (!['DISCONNECTED', 'CLOSED', 'OFFLINE'].includes(e?.code)) this.#error(e); });
  }

  #topic(tl) { return `${this.o.prefix}/${tl}`; }

  // ----------------------------------------------------------- connection

  /**
   * Reads the offline state from the store and starts connecting (and
   * reconnecting, for as long as the client runs). Resolves once the state
   * is read; sync() waits until the client is caught up.
   */
  start() {
    this.started ??= (async () => {
      const get = async (k, d) => (await this.store.get(this.#key(k))) ?? d;
      this.storeId = await get('store', '');
      if (!this.clientId) {
        this.clientId = await get('client', '');
        if (!this.clientId) {
          this.clientId = `im-${this.user}-${uuid().slice(0, 8)}`.slice(0, 64);
          this.#dirty('client');
        }
      }
      this.outbox = await get('outbox', []);
      await this.#timeline(this.me);
      for (const g of await get('groups', [])) await this.#timeline('g/' + g);
      this.#connect();
    })();
    return this.started;
  }

  #connect() {
    this.#status('connecting', 'connecting to ' + this.o.url);
    const c = mqtt.connect(this.o.url, {
      protocolVersion: 5, clientId: this.clientId, username: this.user, password: this.o.password || undefined,
      clean: false, properties: { sessionExpiryInterval: this.o.sessionExpiry },
      reconnectPeriod: this.o.reconnectPeriod, connectTimeout: this.o.connectTimeout, keepalive: this.o.keepalive,
      resubscribe: false,
      ...this.o.mqtt,
    });
    this.c = c;
    c.on('connect', (connack) => this.#onConnect(connack));
    c.on('close', () => this.#onClose());
    c.on('error', (e) => {
      // MQTT v5 CONNACK 0x86 bad user name or password, 0x87 not authorized
      if (e?.code === 134 || e?.code === 135 || e?.code === 4 || e?.code === 5) {
        this.#status('refused', 'login refused: not authorised');
        this.#error(new ImError('login refused: ' + e.message, { code: 'UNAUTHORIZED', reasonCode: e.code }));
        c.end(true);
        for (const w of this.caughtUp.splice(0)) w.reject(new ImError('login refused', { code: 'UNAUTHORIZED' }));
      } else if (this.state !== 'closed') {
        this.#status('offline', e?.message || String(e));
      }
    });
    c.on('message', (topic, payload, packet) => this.#onMessage(topic, payload, packet));
  }

  /** Stops: acks what was seen, writes the state, disconnects. Pending sends stay in the outbox. */
  async close() {
    if (this.state === 'closed') return;
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.#sendAcks();
    for (const t of this.tls.values()) clearTimeout(t.retry);
    const err = new ImError('client closed', { code: 'CLOSED' });
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(err); }
    this.pending.clear();
    for (const w of this.caughtUp.splice(0)) w.reject(err);
    for (const w of this.connWaiters.splice(0)) w.reject(err);
    this.connected = false;
    this.#status('closed', 'closed');
    await this.chain.catch(() => {});
    if (this.c) await new Promise((r) => this.c.end(false, {}, () => r()));
    await this.flush();
    await this.flushing;
  }

  #onConnect(connack) {
    this.connected = true;
    this.storeSeen = false;
    this.conn++;
    this.c.stream?.setNoDelay?.(true);   // section 7: Nagle would delay each sync batch by ~40 ms
    this.#status('syncing', 'connected, catching up');
    // 1. Subscribe, then sync each timeline before trusting live frames (the
    // broker reads our packets in order: the subscriptions are in place
    // before the sync requests are read).
    const tls = [...this.tls.values()];
    this.#subscribe(tls.map((t) => t.name));
    for (const t of tls) this.#startSync(t);
    for (const w of this.connWaiters.splice(0)) w.resolve();
    this.emit('connect', { sessionPresent: !!connack?.sessionPresent });
    // the groups I am in now (membership news is missed while offline)
    this.#bg(this.#listGroups());
    for (const t of tls) if (t.name.startsWith('g/')) this.reads(t.name).catch(() => {});
    // 4. re-send every message without a Receipt, with its cmid: a few at
    // first, more as Receipts come (a link that keeps dropping must not
    // spend each short connection re-sending the whole window).
    for (const m of this.outbox) m.conn = 0;
    this.window = Math.min(START_WINDOW, this.o.maxInflight);
    this.#pump();
    this.#checkCaughtUp();
  }

  #subscribe(names, tries = 3) {
    const topics = names.flatMap((n) => [this.#topic(n), this.#topic('e/' + n)]);
    this.c.subscribe(topics, { qos: 1 }, (err, granted) => {
      if (err || !this.connected) return;
      // refused (0x87): a group just joined through another broker may be
      // refused for a moment (section 12); a group I left: list drops it
      const refused = [...new Set((granted || []).filter((g) => g.qos >= 128)
        .map((g) => g.topic.slice(this.o.prefix.length + 1).replace(/^e\//, '')))];
      if (refused.length && tries > 1) {
        setTimeout(() => {
          if (this.connected) this.#subscribe(refused.filter((n) => this.tls.has(n)), tries - 1);
        }, this.o.retryMs);
      }
    });
  }

  #onClose() {
    if (this.connected && this.state !== 'closed') this.#status('offline', 'connection lost, reconnecting');
    this.connected = false;
    this.storeSeen = false;
    for (const t of this.tls.values()) {
      t.again = false;
      t.req = 0;                    // not answered on the next connection
      clearTimeout(t.retry);
      t.retry = null;
    }
    const err = new ImError('connection lost before the reply', { code: 'DISCONNECTED' });
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(err); }
    this.pending.clear();
  }

  #whenConnected(ms) {
    if (this.connected) return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(new ImError('client closed', { code: 'CLOSED' }));
    return new Promise((resolve, reject) => {
      const w = { resolve: () => { clearTimeout(timer); resolve(); }, reject: (e) => { clearTimeout(timer); reject(e); } };
      const timer = setTimeout(() => {
        this.connWaiters = this.connWaiters.filter((x) => x !== w);
        reject(new ImError('not connected', { code: 'OFFLINE' }));
      }, ms);
      this.connWaiters.push(w);
    });
  }

  // ------------------------------------------------------------ store id

  // Every frame and reply carries it (6.4, step 6).
  #checkStore(id) {
    if (!id) return;
    if (id !== this.storeId) {
      if (this.storeId) this.#reset(id);
      else {                        // the first one seen: kept, nothing to start over
        this.storeId = id;
        this.#dirty('store');
        for (const t of this.tls.values()) this.#dirty('tl/' + t.name);
      }
    }
    this.storeSeen = true;
  }

  #fromOldStore(id) { return !!id && this.oldStores.has(id); }

  // The server's history was replaced: every `last`, held frame and ack
  // counts seqs of a store that is gone. Forget them and sync from 0, not
  // using answers to syncs asked before.
  #reset(id) {
    const from = this.storeId;
    this.oldStores.add(from);
    this.storeId = id;
    this.gen++;
    this.marks.clear();
    this.#dirty('store');
    for (const t of this.tls.values()) {
      Object.assign(t, { last: 0, shown: 0, acked: 0, seen: 0, head: 0, msgs: [], req: 0, again: false });
      t.held.clear();
      clearTimeout(t.retry);
      t.retry = null;
      this.#dirty('tl/' + t.name);
    }
    // edits and recalls name seqs of the old store: dropped; messages are sent again
    for (const m of this.outbox.filter((x) => x.change)) {
      this.#settle(m.cmid, null, new ImError(`${m.change} of #${m.ref}: the server's store was replaced`,
        { code: 'RESET' }));
    }
    this.emit('reset', { from, to: id });
    if (this.connected) for (const t of this.tls.values()) this.#startSync(t);
  }

  // ------------------------------------------------------------- receive

  #onMessage(topic, payload, packet) {
    try {
      const corr = packet?.properties?.correlationData;
      const corrS = corr ? utf8.decode(corr) : '';
      if (topic.startsWith(CONTROL)) {
        if (topic === CONTROL + 'sync/response') return this.#onBatch(payload, corrS);
        if (topic === RECEIPT_TOPIC) return this.#onReceipt(payload);
        const m = /^\$CONTROL\/im\/v1\/([a-z]+)\/response$/.exec(topic);
        if (m) return this.#onReply(m[1], payload, corrS);
        return;
      }
      const p = this.o.prefix + '/';
      if (!topic.startsWith(p)) return;
      const rest = topic.slice(p.length);
      if (rest.startsWith('e/')) return this.#onEvent(rest.slice(2), payload);
      if (rest.startsWith('u/') || rest.startsWith('g/')) return this.#onFrame(payload);
    } catch (e) {
      this.#error(new Error(`${topic}: ${e.message}`));
    }
  }

  // Step 2, a live frame.
  #onFrame(bytes) {
    const d = decodeFrame(bytes);
    const h = d.header;
    if (this.#fromOldStore(h.storeId)) return;
    this.#checkStore(h.storeId);
    const t = this.tls.get(h.timeline);
    if (!t || !h.seq || h.seq <= t.last) return;   // not followed, an event, or a duplicate
    t.head = Math.max(t.head, h.seq);
    if (t.syncing) {
      t.held.set(h.seq, d);         // until the sync is complete
    } else if (h.seq === t.last + 1) {
      this.#deliver(t, d);
      this.#drain(t, 0);
    } else {
      t.held.set(h.seq, d);         // a gap: fill it by sync
      this.#startSync(t);
    }
  }

  // Catch t up from `last`, holding live frames meanwhile. One request out
  // per timeline; its correlation data tells its answer (also a TOO_MANY,
  // which names no timeline) from a late one.
  #startSync(t) {
    t.syncing = true;
    if (!this.connected) return;
    if (t.req || t.retry) { t.again = true; return; }  // after that answer, or the TOO_MANY wait
    t.again = false;
    t.req = ++this.reqNo;
    const req = encode('SyncRequest', { timeline: t.name, afterSeq: t.last, limit: this.o.syncLimit });
    this.c.publish(CONTROL + 'sync', req, { qos: 1, properties: { correlationData: 'sync/' + t.req } });
  }

  #onBatch(payload, corr) {
    const b = decode('SyncBatch', payload);
    if (this.#fromOldStore(b.storeId)) return;
    this.#checkStore(b.storeId);  // a reset forgets the requests out
    const req = Number(corr.replace(/^sync\//, '')) || -1;
    const t = [...this.tls.values()].find((x) => x.req === req);
    if (!t) return;                 // late: asked before a reconnect or a reset
    t.req = 0;
    const again = (ms) => {
      t.retry = setTimeout(() => {
        t.retry = null;
        if (this.connected && this.tls.get(t.name) === t) this.#startSync(t);
      }, ms);
    };
    if (b.status === STATUS.TOO_MANY) { again(b.retryAfterMs || this.o.retryMs); return; }
    if (b.status !== STATUS.OK) {
      if (b.status === STATUS.FORBIDDEN && t.name.startsWith('g/')) {
        t.syncing = false;          // no longer a member: the list drops it
        this.#bg(this.#listGroups());
        return;
      }
      this.#error(new ImError(`sync ${t.name}: ${b.status} ${b.reason}`, { status: b.status, reason: b.reason }));
      again(this.o.retryMs * 2);
      return;
    }
    t.head = Math.max(t.head, b.headSeq);
    if (b.firstSeq > t.last + 1) {
      this.emit('gap', { timeline: t.name, from: t.last + 1, to: b.firstSeq - 1 });
      t.last = b.firstSeq - 1;      // gone by retention, not lost
    }
    for (const f of b.frames) {
      const d = decodeFrame(f);
      if (d.header.seq > t.last) this.#deliver(t, d);   // a batch skips only expired seqs
    }
    if (b.hasMore || t.again) {
      this.#startSync(t);
      return;
    }
    t.syncing = false;
    this.#drain(t, b.headSeq);
    if (t.held.size) this.#startSync(t);    // live frames lost in between
    this.#sendAcks();                       // 3. ack after a batch
    this.#checkCaughtUp();
  }

  #drain(t, upTo) {
    for (const seq of [...t.held.keys()].sort((a, b) => a - b)) {
      if (seq > t.last + 1 && seq > upTo) break;
      const d = t.held.get(seq);
      t.held.delete(seq);
      if (seq > t.last) this.#deliver(t, d);
    }
  }

  // `last` moves now; showing may wait for inflating a body, so it goes
  // through one promise chain: messages are shown in seq order all the same.
  #deliver(t, { header: h, body }) {
    t.last = h.seq;
    const gen = this.gen;
    const show = async () => {
      let bytes = body;
      let text;
      try {
        if (h.flags & FLAG.COMPRESSED) bytes = await inflate(body, h.rawLen);
        text = utf8.decode(bytes);
      } catch (e) {
        text = '';
        this.#error(new Error(`${t.name} #${h.seq}: ${e.message}`));
      }
      if (gen !== this.gen || this.tls.get(t.name) !== t) return;   // of a store replaced, or a group left
      this.#show(t, h, bytes, text);
    };
    this.chain = this.chain.then(show).catch((e) => this.#error(e));
  }

  #show(t, h, bytes, text) {
    const f = h.flags;
    const peer = h.timeline.startsWith('g/') ? h.timeline
      : 'u/' + (h.sender === this.user ? (h.to || this.me).slice(2) : h.sender);
    const m = {
      timeline: h.timeline, seq: h.seq, sender: h.sender, to: h.to, conversation: peer, tsMs: h.tsMs,
      cmid: h.cmid, contentType: h.contentType, text, flags: f,
      system: (f & FLAG.SYSTEM) !== 0, omitted: h.bodyOmitted, edited: (f & FLAG.EDITED) !== 0,
      recalled: (f & FLAG.RECALLED) !== 0, peerSeq: h.peerSeq || 0, refSeq: h.refSeq || 0,
      expiresMs: h.expiresMs || 0,
    };
    Object.defineProperty(m, 'body', { value: bytes, enumerable: false, writable: true });
    t.shown = h.seq;
    this.#dirty('tl/' + t.name);
    // 5. an edit or a recall changes the message it names in this timeline
    // (if still kept here); it is not a message to show
    const change = f & (FLAG.EDIT | FLAG.RECALL);
    let orig = null;
    if (change) {
      for (let i = t.msgs.length - 1; i >= 0; i--) {
        if (t.msgs[i].seq === h.refSeq) { orig = t.msgs[i]; break; }
        if (t.msgs[i].seq < h.refSeq) break;
      }
      if (orig && f & FLAG.EDIT && !orig.recalled) Object.assign(orig, { text, edited: true });
      if (orig && f & FLAG.RECALL) Object.assign(orig, { text: '', recalled: true, edited: false });
    } else {
      t.msgs.push(m);
      if (t.msgs.length > this.o.keep + 100) t.msgs.splice(0, t.msgs.length - this.o.keep);
    }
    // my own copy (or my group message) names the cmid: it is stored
    if (h.sender === this.user && h.cmid && this.outbox.some((o) => o.cmid === h.cmid)) {
      const dm = h.timeline === this.me && h.to && h.to !== this.me;
      this.#settle(h.cmid, {
        status: 0, reason: '', timeline: dm ? h.to : h.timeline, seq: dm ? h.peerSeq : h.seq, cmid: h.cmid,
        tsMs: h.tsMs, duplicate: false, ownSeq: dm ? h.seq : 0, storeId: h.storeId,
      });
    }
    if (f & FLAG.EDIT) this.emit('edit', { timeline: t.name, seq: h.refSeq, message: orig, edit: m });
    else if (f & FLAG.RECALL) this.emit('recall', { timeline: t.name, seq: h.refSeq, message: orig, recall: m });
    else this.emit('message', m);
    if (this.o.autoAck) this.seen(t.name, h.seq);
  }

  #checkCaughtUp() {
    if (!this.connected) return;
    for (const t of this.tls.values()) if (t.syncing || t.held.size) return;
    const conn = this.conn;
    this.chain.then(() => {
      if (!this.connected || conn !== this.conn) return;
      for (const t of this.tls.values()) if (t.syncing || t.held.size) return;
      if (this.state !== 'online') this.#status('online', 'online, up to date');
      for (const w of this.caughtUp.splice(0)) w.resolve();
    });
  }

  /**
   * Catches up (timeline, or every one followed) now, and resolves once
   * every timeline is caught up and what came is delivered. Waits for a
   * connection if there is none.
   */
  sync(timeline) {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') { reject(new ImError('client closed', { code: 'CLOSED' })); return; }
      this.caughtUp.push({ resolve, reject });
      for (const t of this.tls.values()) if (!timeline || t.name === timeline) this.#startSync(t);
      this.#checkCaughtUp();
    });
  }

  // --------------------------------------------------------------- events

  #onEvent(tl, bytes) {
    const { header: h } = decodeFrame(bytes);
    if (this.#fromOldStore(h.storeId)) return;
    this.#checkStore(h.storeId);
    const e = h.event;
    if (!e || h.seq !== 0 || !this.tls.has(tl)) return;
    if (e.kind === EVENT.READ) this.#mark(e.timeline, e.user, e.seq);
    else if (e.kind === EVENT.TYPING) {
      this.emit('typing', { timeline: e.timeline, user: e.user, typing: e.typing, tsMs: e.tsMs });
    } else if (e.kind === EVENT.MEMBERSHIP && tl === this.me && e.timeline?.startsWith('g/')) {
      const group = e.timeline.slice(2);
      this.touched.set(group, ++this.epoch);
      if (e.member === true) this.#follow(e.timeline, e.seq);
      else if (e.member === false) this.#unfollow(e.timeline, e.seq);
      else this.#bg(this.#listGroups());  // a schema without Event.member
    }
  }

  async #follow(name, seq = 0) {
    if (this.tls.has(name)) return;
    const t = await this.#timeline(name);
    if (this.tls.get(name) !== t || t.followed) return;
    t.followed = true;
    this.#dirty('groups');
    this.emit('membership', { group: name.slice(2), timeline: name, member: true, seq });
    if (this.connected) {
      this.#subscribe([name]);
      this.#startSync(t);
      this.reads(name).catch(() => {});
    }
  }

  #unfollow(name, seq = 0) {
    const t = this.tls.get(name);
    if (!t || name === this.me) return;
    this.tls.delete(name);
    clearTimeout(t.retry);
    if (this.connected) this.c.unsubscribe([this.#topic(name), this.#topic('e/' + name)]);
    this.marks.delete(name);
    this.#dirty('groups');
    this.#dirty('tl/' + name);      // forgotten in the store
    this.emit('membership', { group: name.slice(2), timeline: name, member: false, seq });
    this.#checkCaughtUp();
  }

  #mark(timeline, user, seq) {
    let m = this.marks.get(timeline);
    if (!m) this.marks.set(timeline, m = new Map());
    if (!seq || seq <= (m.get(user) || 0)) return;
    m.set(user, seq);
    this.emit('read', { timeline, user, seq });
  }

  /** How far `user` read `timeline` (a seq of it; 0: nothing known). */
  readBy(timeline, user) { return this.marks.get(timeline)?.get(user) || 0; }
  /** Every read mark known in `timeline`: user -> seq. */
  readers(timeline) { return new Map(this.marks.get(timeline) || []); }

  // ------------------------------------------------------------- requests

  // A request whose reply comes on $CONTROL/im/v1/<op>/response with its
  // correlation data. TOO_MANY is asked again when the reply says.
  async #request(op, type, msg, { retry = 3 } = {}) {
    for (let attempt = 0; ; attempt++) {
      await this.#whenConnected(this.o.replyTimeoutMs);
      const r = await new Promise((resolve, reject) => {
        const corr = `${op}/${++this.reqNo}`;
        const p = { resolve, reject };
        p.timer = setTimeout(() => {
          this.pending.delete(corr);
          reject(new ImError(`no reply on ${CONTROL}${op} in ${this.o.replyTimeoutMs} ms: is the mosquitto-im plugin loaded?`,
            { code: 'TIMEOUT' }));
        }, this.o.replyTimeoutMs);
        this.pending.set(corr, p);
        this.c.publish(CONTROL + op, encode(type, msg), { qos: 1, properties: { correlationData: corr } });
      });
      if (r.status === STATUS.OK) return r;
      if (r.status === STATUS.TOO_MANY && attempt < retry) {
        const ms = r.retryAfterMs || Number(/ask again in (\d+) ms/.exec(r.reason || '')?.[1]) || this.o.retryMs;
        await new Promise((res) => setTimeout(res, ms));
        continue;
      }
      throw new ImError(`${op}: ${r.status} ${r.reason}`, { status: r.status, reason: r.reason, reply: r });
    }
  }

  #onReply(op, payload, corr) {
    const r = decode(REPLY[op] || 'Response', payload);
    if (this.#fromOldStore(r.storeId)) return;
    this.#checkStore(r.storeId);
    const p = this.pending.get(corr);
    if (!p) return;                 // late (its wait was given up), or an ack nobody waits for
    this.pending.delete(corr);
    clearTimeout(p.timer);
    p.resolve(r);
  }

  async #groupOp(op, group, members = []) {
    const r = await this.#request('group', 'GroupRequest', { op, group, members });
    if (op === 'create') { this.touched.set(group, ++this.epoch); await this.#follow('g/' + group, r.seq); }
    if (op === 'leave') { this.touched.set(group, ++this.epoch); this.#unfollow('g/' + group, r.seq); }
    return r;
  }

  // `group list`, and the groups followed made to match it (a group news
  // of which came after the list was asked keeps what the news said).
  async #listGroups() {
    const epoch = this.epoch;
    const r = await this.#request('group', 'GroupRequest', { op: 'list' });
    const names = new Set(r.groups.map((g) => g.name));
    const fresh = (g) => (this.touched.get(g) || 0) <= epoch;
    for (const g of r.groups) {
      if (!this.tls.has('g/' + g.name) && fresh(g.name)) await this.#follow('g/' + g.name);
      const t = this.tls.get('g/' + g.name);
      if (t) t.head = Math.max(t.head, g.headSeq);
    }
    for (const g of this.#groupNames()) if (!names.has(g) && fresh(g)) this.#unfollow('g/' + g);
    this.emit('groups', r.groups);
    return r.groups;
  }

  /** The conversation list, the latest activity first (11.5); peers' read marks are taken from it. */
  async conversations({ limit = 50, beforeTsMs, beforeTimeline } = {}) {
    const r = await this.#request('conversations', 'ConversationsRequest', { limit, beforeTsMs, beforeTimeline });
    for (const c of r.conversations) {
      if (c.timeline.startsWith('u/') && c.peerReadSeq) this.#mark(c.timeline, c.timeline.slice(2), c.peerReadSeq);
    }
    return { conversations: r.conversations, hasMore: r.hasMore, storeId: r.storeId };
  }

  /** How far the other side(s) of a conversation read (11.3); updates readBy(). */
  async reads(timeline) {
    const r = await this.#request('reads', 'ReadsRequest', { timeline });
    for (const m of r.marks) this.#mark(timeline, m.user, m.seq);
    return r;
  }

  /** Tells timeline's other side(s) the user is typing, or stopped (11.4). Not retried: a hint. */
  typing(timeline, typing = true) {
    return this.#request('typing', 'TypingRequest', { timeline, typing }, { retry: 0 });
  }

  /** Moves this device's cursor in timeline to seq now (msg-fin, 6.2): also the user's read mark. */
  async ack(timeline, seq) {
    const r = await this.#request('ack', 'Ack', { timeline, seq });
    const t = this.tls.get(timeline);
    if (t) { t.acked = Math.max(t.acked, seq); t.seen = Math.max(t.seen, seq); }
    return r;
  }

  /**
   * The user has seen timeline up to seq: acked (at most every ackDelayMs,
   * one ack per timeline), never past what was delivered.
   */
  seen(timeline, seq) {
    const t = this.tls.get(timeline);
    if (!t) return;
    const s = Math.min(seq, t.shown);
    if (s <= t.seen) return;
    t.seen = s;
    this.ackTimer ??= setTimeout(() => { this.ackTimer = null; this.#sendAcks(); }, this.o.ackDelayMs);
  }

  #sendAcks() {
    if (!this.connected || !this.storeSeen) return;   // not before this connection showed the store is ours
    for (const t of this.tls.values()) {
      if (t.seen <= t.acked) continue;
      this.c.publish(CONTROL + 'ack', encode('Ack', { timeline: t.name, seq: t.seen }),
        { qos: 1, properties: { correlationData: 'ack/' + ++this.reqNo } });
      t.acked = t.seen;
    }
  }

  // ---------------------------------------------------------------- send

  /**
   * Sends body (a string, sent as UTF-8, or bytes) to a timeline: u/<user>
   * or g/<group>. Resolves to the Receipt once it is stored; rejects with
   * ImError if the plugin refused it. Kept (and re-sent with its cmid after
   * every reconnect, and after a restart with a persistent store) until then.
   */
  send(timeline, body, opts = {}) {
    if (!/^[ug]\/./.test(timeline)) throw new Error(`send: timeline must be u/<user> or g/<group>, not ${timeline}`);
    const m = {
      cmid: opts.cmid || uuid(), timeline, at: Date.now(),
      ...(typeof body === 'string' ? { text: body } : { b64: b64(body) }),
      contentType: opts.contentType ?? (typeof body === 'string' ? 'text/plain; charset=utf-8' : undefined),
      expiry: opts.expiry, change: opts.change, ref: opts.ref,
    };
    const p = new Promise((resolve, reject) => this.waiters.set(m.cmid, { resolve, reject }));
    p.catch(() => {});              // a send nobody awaits fails quietly ('outbox' says 'failed')
    this.outbox.push(m);
    this.#dirty('outbox');
    this.emit('outbox', { ...m, state: 'queued' });
    this.#pump();
    return p;
  }

  /** Replaces the body of a message I sent, named by its seq in the timeline it was sent to (see target()). */
  edit(timeline, seq, body) { return this.send(timeline, body, { change: 'edit', ref: seq }); }
  /** Recalls a message for everyone (mine; in a group also the owner's and admins'). */
  recall(timeline, seq) { return this.send(timeline, '', { change: 'recall', ref: seq, contentType: '' }); }
  /** Where to edit or recall a message delivered here: {timeline, seq}. */
  target(m) { return changeTarget(m, this.me); }

  // Sends what the window allows, in outbox order: the first ones again
  // after a reconnect (the broker stores a cmid once).
  #pump() {
    if (!this.connected) return;
    let n = 0;
    for (const m of this.outbox) if (m.conn === this.conn) n++;
    const limit = Math.min(this.window ?? START_WINDOW, this.o.maxInflight);
    for (const m of this.outbox) {
      if (n >= limit) break;
      if (m.conn === this.conn) continue;
      m.conn = this.conn;
      n++;
      this.#publish(m);
    }
  }

  #publish(m) {
    const userProperties = { 'im-cmid': m.cmid };
    if (m.change) userProperties['im-' + m.change] = String(m.ref);
    if (m.expiry != null) userProperties['im-expiry'] = String(m.expiry);
    const properties = { userProperties, responseTopic: RECEIPT_TOPIC, correlationData: 'send/' + m.cmid };
    if (m.contentType) properties.contentType = m.contentType;
    const payload = m.b64 != null ? unb64(m.b64) : utf8enc.encode(m.text);
    this.c.publish(this.#topic(m.timeline), payload, { qos: 1, properties }, (err) => {
      if (err && typeof err.code === 'number' && err.code >= 0x80) {
        // refused by the broker (0x87 not authorised, 0x97 quota, 0x95 too
        // large): not stored, and a re-send would be refused too
        this.#settle(m.cmid, null, new ImError(`message to ${m.timeline} refused: ${err.message}`,
          { code: 'REFUSED', reasonCode: err.code }));
      } else if (!err && this.outbox.includes(m) && !m.sent) {
        m.sent = true;              // journaled by the broker: durable, not stored yet
        this.emit('outbox', { ...m, state: 'sent' });
      }
    });
  }

  #onReceipt(payload) {
    const r = decode('Receipt', payload);
    if (this.#fromOldStore(r.storeId)) return;
    this.#checkStore(r.storeId);
    this.#settle(r.cmid, r);
  }

  #settle(cmid, receipt, error) {
    const i = this.outbox.findIndex((m) => m.cmid === cmid);
    if (i < 0) return;
    if (receipt) this.window = Math.min(this.o.maxInflight, (this.window ?? START_WINDOW) + 1);
    const [m] = this.outbox.splice(i, 1);
    this.#dirty('outbox');
    const w = this.waiters.get(cmid);
    this.waiters.delete(cmid);
    if (!error && receipt.status !== STATUS.OK) {
      error = new ImError(`message to ${m.timeline} refused: ${receipt.status} ${receipt.reason}`,
        { status: receipt.status, reason: receipt.reason, reply: receipt });
    }
    if (receipt) this.emit('receipt', receipt);
    this.emit('outbox', { ...m, state: error ? 'failed' : 'stored', conn: undefined, error });
    if (error) {
      if (w) w.reject(error); else this.#error(error);
    } else {
      w?.resolve(receipt);
    }
    this.#pump();
  }

  // ---------------------------------------------------------------- views

  /** Messages kept for timeline (the latest `keep`), edits and recalls applied. */
  messages(timeline) { return [...(this.tls.get(timeline)?.msgs || [])]; }
  /** The timelines followed: u/<me> and the groups. */
  timelines() { return [...this.tls.keys()]; }
  /** The algorithm's state of a timeline, or null if not followed. */
  timelineState(timeline) {
    const t = this.tls.get(timeline);
    return t && { last: t.last, shown: t.shown, seen: t.seen, acked: t.acked, head: t.head, syncing: t.syncing,
      held: t.held.size };
  }
  /** Messages sent and not stored yet, in order. */
  pendingSends() { return this.outbox.map(({ conn, ...m }) => ({ ...m, sent: !!m.sent })); }
}
