// A TypeScript program using the package as installed from its tarball:
// test/pack.test.mjs compiles it with tsc --strict against the shipped types.
import { ImClient, ImError, MemoryStore, LocalStorageStore, FLAG, STATUS, type Message, type Receipt,
  type ImStore } from 'mosquitto-im';
import { FileStore } from 'mosquitto-im/file-store';

export async function chat(store: ImStore = new MemoryStore()): Promise<Receipt> {
  const c = new ImClient({ url: 'mqtt://127.0.0.1:1883', user: 'alice', store, autoAck: true });
  const off = c.on('message', (m: Message) => console.log(m.seq, m.sender, m.text, (m.flags & FLAG.SYSTEM) !== 0));
  c.on('edit', (e) => console.log(e.seq, e.message?.text ?? '(not kept)'));
  c.on('read', ({ timeline, user, seq }) => console.log(timeline, user, seq));
  c.on('typing', (e) => console.log(e.user, e.typing ? 'typing' : 'stopped'));
  c.on('membership', (e) => console.log(e.group, e.member));
  c.on('reset', ({ from, to }) => console.log(from, '->', to));
  c.on('status', ({ state }) => { if (state === 'refused') off(); });
  await c.start();
  await c.sync();
  const g = await c.groups.create('team', ['bob']);
  const seq: number = g.seq;
  const list = await c.groups.list();
  const { conversations, hasMore } = await c.conversations({ limit: 20 });
  console.log(seq, list.map((x) => x.unread), conversations[0]?.peerReadSeq, hasMore);
  try {
    const r = await c.send('u/bob', 'hi');
    await c.edit(r.timeline, r.seq, 'hi!');
    c.seen('u/alice', c.timelineState('u/alice')?.last ?? 0);
    return r;
  } catch (e) {
    if (e instanceof ImError && e.status === STATUS.FORBIDDEN) console.log(e.code, e.reason);
    throw e;
  } finally {
    await c.close();
  }
}

export const stores: ImStore[] = [new MemoryStore(), new LocalStorageStore('x/'), await FileStore.open('/tmp/x.json')];
