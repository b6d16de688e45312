// Where a client keeps its offline state: per timeline `last` (the highest
// seq delivered) with the messages kept and the store id they count in,
// the outbox (sent, no Receipt yet), the groups followed and the client id.
//
// A store is any object with async get/set/delete of JSON-able values
// under string keys (see ImStore in index.d.ts). The client calls set for
// a key at most every `flushMs` and on close, with the whole value.

/** In memory: state lasts as long as the object (tests, bots that need no restart). */
export class MemoryStore {
  constructor() { this.map = new Map(); }
  async get(key) { const v = this.map.get(key); return v === undefined ? undefined : structuredClone(v); }
  async set(key, value) { this.map.set(key, structuredClone(value)); }
  async delete(key) { this.map.delete(key); }
}

/**
 * Web Storage (localStorage by default, or sessionStorage, or any object
 * with getItem/setItem/removeItem), values as JSON under `prefix` + key.
 * A full storage (QuotaExceededError) is reported by rejecting set: the
 * client then tells 'error' and keeps going in memory.
 */
export class LocalStorageStore {
  constructor(prefix = 'mosquitto-im/', storage = globalThis.localStorage) {
    if (!storage) throw new Error('LocalStorageStore: no localStorage here (use MemoryStore, or FileStore in Node)');
    this.prefix = prefix;
    this.storage = storage;
  }
  async get(key) {
    const v = this.storage.getItem(this.prefix + key);
    if (v == null) return undefined;
    try { return JSON.parse(v); } catch { return undefined; }
  }
  async set(key, value) { this.storage.setItem(this.prefix + key, JSON.stringify(value)); }
  async delete(key) { this.storage.removeItem(this.prefix + key); }
}

/**
 * IndexedDB (browsers): one object store `kv` in database `name`; values
 * are stored as structured clones. Larger than localStorage's few MB, and
 * off the main thread's synchronous path.
 */
export class IndexedDBStore {
  constructor(name = 'mosquitto-im', indexedDB = globalThis.indexedDB) {
    if (!indexedDB) throw new Error('IndexedDBStore: no indexedDB here');
    this.name = name;
    this.idb = indexedDB;
    this.db = null;
  }
  open() {
    this.db ??= new Promise((resolve, reject) => {
      const req = this.idb.open(this.name, 1);
      req.onupgradeneeded = () => req.result.createObjectStore('kv');
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error(`IndexedDB ${this.name} is blocked by another tab's older version`));
    });
    return this.db;
  }
  async tx(mode, fn) {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const t = db.transaction('kv', mode);
      const req = fn(t.objectStore('kv'));
      t.oncomplete = () => resolve(req.result);
      t.onerror = t.onabort = () => reject(t.error || new Error('IndexedDB transaction aborted'));
    });
  }
  get(key) { return this.tx('readonly', (s) => s.get(key)); }
  async set(key, value) { await this.tx('readwrite', (s) => s.put(value, key)); }
  async delete(key) { await this.tx('readwrite', (s) => s.delete(key)); }
  async close() { if (this.db) (await this.db).close(); this.db = null; }
}
