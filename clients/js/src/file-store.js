// Node only: the client's offline state in one JSON file, replaced
// atomically (written to a temporary file, fsynced, renamed over it), so a
// crash leaves the old state or the new one, never half of each.
//
//   import { FileStore } from 'mosquitto-im/file-store';
//   const store = await FileStore.open('./alice-phone.json');
import { open, readFile, rename, mkdir, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';

export class FileStore {
  /** Reads `path` if it exists (a missing file is an empty state). */
  static async open(path) {
    const s = new FileStore(path);
    await s.load();
    return s;
  }

  constructor(path) {
    this.path = path;
    this.data = null;
    this.writing = Promise.resolve();
    this.dirty = false;
  }

  async load() {
    if (this.data) return;
    try {
      this.data = JSON.parse(await readFile(this.path, 'utf8'));
    } catch (e) {
      if (e.code !== 'ENOENT') throw new Error(`FileStore ${this.path}: ${e.message}`);
      this.data = {};
    }
  }

  async get(key) {
    await this.load();
    const v = this.data[key];
    return v === undefined ? undefined : structuredClone(v);
  }

  async set(key, value) {
    await this.load();
    this.data[key] = structuredClone(value);
    return this.save();
  }

  async delete(key) {
    await this.load();
    delete this.data[key];
    return this.save();
  }

  // Writes after any write in progress; the calls meanwhile share one write.
  save() {
    this.dirty = true;
    this.writing = this.writing.catch(() => {}).then(async () => {
      if (!this.dirty) return;
      this.dirty = false;
      await mkdir(dirname(this.path), { recursive: true });
      const tmp = `${this.path}.${process.pid}.tmp`;
      const f = await open(tmp, 'w', 0o600);
      try {
        await f.writeFile(JSON.stringify(this.data));
        await f.sync();
      } finally {
        await f.close();
      }
      await rename(tmp, this.path).catch(async (e) => { await unlink(tmp).catch(() => {}); throw e; });
    });
    return this.writing;
  }
}
