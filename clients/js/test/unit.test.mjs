// The codec, the stores, and the schema this package ships, without a broker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import PROTO from '../src/proto.js';
import { decodeFrame, encode, inflate, storeIdOf, MemoryStore, LocalStorageStore, FLAG, changeTarget, root }
  from '../src/index.js';
import { FileStore } from '../src/file-store.js';
import { ROOT } from './helpers.mjs';

const HERE = new URL('..', import.meta.url).pathname;

test('the schema shipped is proto/im.proto, byte for byte', () => {
  const source = readFileSync(join(ROOT, 'proto/im.proto'), 'utf8');
  assert.equal(PROTO, source, 'src/proto.js is stale: run `npm ci` (or node scripts/gen-proto.mjs) in clients/js');
  assert.equal(readFileSync(join(HERE, 'proto/im.proto'), 'utf8'), source);
  // every message of the proto is known to the parsed root
  for (const name of source.matchAll(/^message (\w+)/gm)) assert.ok(root.lookupType('im.v1.' + name[1]), name[1]);
});

function frame(header, body) {
  const h = encode('Header', header);
  const out = new Uint8Array(5 + h.length + body.length);
  out.set([0x49, 0x4d, 1, h.length >> 8, h.length & 255]);
  out.set(h, 5);
  out.set(body, 5 + h.length);
  return out;
}

test('frames: decoded; a store id read exactly from its 64 bits; bad frames refused', async () => {
  const id = 0xfedcba9876543210n;
  const f = frame({ timeline: 'u/bob', seq: 7, sender: 'alice', storeId: { low: Number(id & 0xffffffffn) | 0,
    high: Number(id >> 32n) | 0, unsigned: true }, peerSeq: 3 }, new TextEncoder().encode('hi'));
  const { header, body } = decodeFrame(f);
  assert.deepEqual([header.timeline, header.seq, header.sender, header.peerSeq, header.storeId],
    ['u/bob', 7, 'alice', 3, 'fedcba9876543210']);
  assert.equal(new TextDecoder().decode(body), 'hi');
  assert.equal(storeIdOf(encode('Receipt', { status: 0 }), 9), '');
  assert.throws(() => decodeFrame(Uint8Array.from([0x49, 0x4d, 2, 0, 0])), /version/);
  assert.throws(() => decodeFrame(Uint8Array.from([0x49, 0x4d, 1, 0, 9, 1])), /truncated/);
  assert.throws(() => decodeFrame(Uint8Array.from([1, 2, 3, 4, 5])), /not a/);
  const text = 'deflated '.repeat(50);
  const z = deflateSync(Buffer.from(text));
  assert.equal(new TextDecoder().decode(await inflate(z, text.length)), text);
  await assert.rejects(inflate(z, text.length + 1), /raw_len/);
  await assert.rejects(inflate(z, 1e12), /too large/);
  assert.equal(FLAG.COMPRESSED, 2);
});

test('change targets: a direct message I sent is changed in the peer\'s inbox', () => {
  const copy = { timeline: 'u/alice', seq: 5, to: 'u/bob', peerSeq: 9 };
  assert.deepEqual(changeTarget(copy, 'u/alice'), { timeline: 'u/bob', seq: 9 });
  assert.deepEqual(changeTarget({ timeline: 'g/x', seq: 4, to: 'g/x' }, 'u/alice'), { timeline: 'g/x', seq: 4 });
  assert.deepEqual(changeTarget({ timeline: 'u/alice', seq: 2, to: 'u/alice' }, 'u/alice'),
    { timeline: 'u/alice', seq: 2 });
});

test('stores: memory, web storage and a file keep JSON values apart from the caller\'s objects', async () => {
  const map = new Map();
  const fake = { getItem: (k) => map.get(k) ?? null, setItem: (k, v) => map.set(k, v), removeItem: (k) => map.delete(k) };
  const dir = mkdtempSync(join(tmpdir(), 'im-js-unit-'));
  try {
    const path = join(dir, 'sub', 'state.json');
    for (const s of [new MemoryStore(), new LocalStorageStore('p/', fake), await FileStore.open(path)]) {
      const v = { last: 3, msgs: [{ seq: 1, text: 'x' }] };
      await s.set('tl/u/bob', v);
      v.last = 99;
      assert.deepEqual(await s.get('tl/u/bob'), { last: 3, msgs: [{ seq: 1, text: 'x' }] });
      assert.equal(await s.get('none'), undefined);
      await s.set('outbox', []);
      await s.delete('outbox');
      assert.equal(await s.get('outbox'), undefined);
    }
    assert.ok(map.has('p/tl/u/bob'));
    // the file is whole JSON, read back by a new store
    assert.deepEqual(JSON.parse(readFileSync(path, 'utf8')), { 'tl/u/bob': { last: 3, msgs: [{ seq: 1, text: 'x' }] } });
    assert.deepEqual(await (await FileStore.open(path)).get('tl/u/bob'), { last: 3, msgs: [{ seq: 1, text: 'x' }] });
    assert.ok(!existsSync(path + `.${process.pid}.tmp`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
