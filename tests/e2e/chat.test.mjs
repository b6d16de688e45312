// End-to-end test of the browser chat page (examples/web) in headless
// Chromium: a real mosquitto with the plugin (a websockets listener and a TCP
// one, on free 127.0.0.1 ports), the page's own static server, two pages
// (alice and bob) that chat, bob away and back (catch-up by sync), a reload,
// a broker killed and restarted while alice sends, one restarted on a fresh
// database (a new store id: the pages start over), and the conversation
// features: read ticks, typing, an edit and a recall, read by N in a group.
// The page runs on the mosquitto-im npm package (clients/js), as served by
// examples/web/serve.js.
//
//   IM_PLUGIN=build/mosquitto_im.so node --test tests/e2e/chat.test.mjs
//
// Needs Debian's chromium (/usr/bin/chromium) and `npm ci` in examples/web
// and in clients/js (playwright-core drives the system Chromium; it
// downloads nothing).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync,
  writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chownForBroker } from '../../clients/js/test/helpers.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const WEB = join(ROOT, 'examples/web');
const PLUGIN = resolve(process.env.IM_PLUGIN || join(ROOT, 'build/mosquitto_im.so'));
const CHROMIUM = process.env.IM_CHROMIUM || '/usr/bin/chromium';
const PW = join(WEB, 'node_modules/playwright-core/index.mjs');
const TMP = mkdtempSync(join(tmpdir(), 'im-e2e-'));
chmodSync(TMP, 0o755); // the broker's user must reach its folder inside
const ART = resolve(process.env.IM_E2E_ARTIFACTS || join(TMP, 'artifacts'));

for (const [what, path, hint] of [['the plugin', PLUGIN, 'build it, or set IM_PLUGIN'],
  ['chromium', CHROMIUM, 'scripts/deps.sh installs Debian\'s chromium'],
  ['playwright-core', PW, 'run `npm ci` in examples/web (scripts/test.sh does)'],
  ['the mosquitto-im package\'s schema', join(ROOT, 'clients/js/src/proto.js'),
    'run `npm ci` in clients/js (scripts/test.sh does)']]) {
  if (!existsSync(path)) throw new Error(`${what} not found at ${path}: ${hint}`);
}
const { chromium } = await import(pathToFileURL(PW).href);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// the plugin tells a user added to a group (Event.member, PROTOCOL.md 11.1)
const MEMBERSHIP = /optional bool member = 7;/.test(readFileSync(join(ROOT, 'proto/im.proto'), 'utf8'));

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

async function waitPort(port, proc, what, ms = 15000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}`);
    const ok = await new Promise((r) => {
      const c = connect(port, '127.0.0.1', () => { c.destroy(); r(true); });
      c.on('error', () => r(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what} did not listen on ${port}`);
}

const broker = { dir: join(TMP, 'broker'), proc: null };
let server;
let ctx;
let base;

async function startBroker() {
  mkdirSync(broker.dir, { recursive: true });
  writeFileSync(join(broker.dir, 'mosquitto.conf'), [
    `listener ${broker.tcp} 127.0.0.1`,
    // Debian's build ignores the bind address of a websockets listener
    // unless socket_domain ipv4 is set: always set it.
    `listener ${broker.ws} 127.0.0.1`, 'protocol websockets', 'socket_domain ipv4',
    'allow_anonymous true', 'max_queued_messages 0', 'persistence false', 'log_dest stderr', 'log_type all',
    `plugin ${PLUGIN}`, `plugin_opt_db_path ${join(broker.dir, 'im.db')}`, 'plugin_opt_nonim_acl allow',
    'plugin_opt_compress_min_bytes 200', '',  // long bodies arrive deflated: the page inflates them
  ].join('\n'));
  chownForBroker(broker.dir);
  const log = openSync(join(broker.dir, 'broker.log'), 'a');
  broker.proc = spawn('mosquitto', ['-c', join(broker.dir, 'mosquitto.conf')], { stdio: ['ignore', log, log] });
  await waitPort(broker.tcp, broker.proc, 'mosquitto');
  await waitPort(broker.ws, broker.proc, 'mosquitto (websockets)');
}

function kill9Broker() {
  return new Promise((r) => {
    if (!broker.proc || broker.proc.exitCode !== null) { r(); return; }
    broker.proc.once('exit', () => r());
    broker.proc.kill('SIGKILL');
  });
}

before(async () => {
  mkdirSync(ART, { recursive: true });
  broker.tcp = await freePort();
  broker.ws = await freePort();
  await startBroker();
  const httpPort = await freePort();
  server = spawn(process.execPath, [join(WEB, 'serve.js'), '--port', String(httpPort)], { stdio: 'ignore' });
  await waitPort(httpPort, server, 'serve.js');
  base = `http://127.0.0.1:${httpPort}/?ws=ws://127.0.0.1:${broker.ws}`;
  ctx = await chromium.launchPersistentContext(join(TMP, 'profile'), {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1000, height: 640 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // two pages act in turn: keep the one in the background from being throttled
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows'],
  });
});

after(async () => {
  await ctx?.close().catch(() => {});
  server?.kill('SIGTERM');
  await kill9Broker();
  // The broker's log outlives the run in the artifacts, and its end is
  // printed (ctest shows it when a test failed): a page that lost its
  // connection is explained there (log_type all).
  const blog = join(broker.dir, 'broker.log');
  if (existsSync(blog)) {
    copyFileSync(blog, join(ART, 'broker.log'));
    const lines = readFileSync(blog, 'utf8').trimEnd().split('\n');
    console.log(lines.slice(-120).map((l) => '# broker: ' + l).join('\n'));
  }
  if (process.env.IM_E2E_KEEP) console.log('kept', TMP);
  else rmSync(TMP, { recursive: true, force: true });
});

// ---- page helpers ----
async function login(page, user) {
  await use(page);
  await page.goto(base);
  await page.fill('#user', user);
  await page.click('#login-btn');
  await online(page);
}
const online = (page) => page.waitForSelector('#status[data-state="online"]', { timeout: 15000 });

// Pages are tabs of one window; a tab in the background gets no animation
// frames, which Playwright's actions wait for: bring it to the front first.
let front = null;
async function use(page) {
  if (front !== page) { await page.bringToFront(); front = page; }
  return page;
}
const click = async (page, sel) => (await use(page)).click(sel);

async function say(page, text) {
  await use(page);
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

// [[seq, sender, text]] of the open conversation, stored messages only
function shown(page) {
  return page.$$eval('#messages li.msg[data-seq]', (els) => els.map((e) => [Number(e.dataset.seq),
    e.dataset.sender, e.querySelector('.text').textContent]));
}

async function waitShown(page, n, what) {
  try {
    await page.waitForFunction((k) => document.querySelectorAll('#messages li.msg[data-seq]').length >= k, n,
      { timeout: 15000 });
  } catch (e) {
    throw new Error(`${what}: wanted ${n} messages, page shows ${JSON.stringify(await shown(page))}`);
  }
  return shown(page);
}

const badge = (page, conv) => page.$eval(`#convs li[data-conv="${conv}"] .badge`, (e) => e.textContent);

test('alice and bob chat in the page; bob catches up by sync after being away and after a reload', async () => {
  const alice = ctx.pages()[0] || await ctx.newPage();
  const bob = await ctx.newPage();
  const errors = [];
  for (const p of [alice, bob]) p.on('pageerror', (e) => errors.push(e.message));
  await login(alice, 'alice');
  await login(bob, 'bob');

  // alice opens a chat with bob and writes three messages
  await (await use(alice)).fill('#peer', 'bob');
  await alice.press('#peer', 'Enter');
  for (const t of ['a1', 'a2', 'a3']) await say(alice, t);
  await waitShown(alice, 3, 'alice own copies');

  // bob sees the conversation with 3 unread, opens it, answers
  await bob.waitForFunction(() => document.querySelector('#convs li[data-conv="u:alice"] .badge')?.textContent === '3',
    null, { timeout: 15000 });
  await click(bob, '#convs li[data-conv="u:alice"]');
  assert.deepEqual(await waitShown(bob, 3, 'bob live'), [[1, 'alice', 'a1'], [2, 'alice', 'a2'], [3, 'alice', 'a3']]);
  for (const t of ['b1', 'b2']) await say(bob, t);
  assert.deepEqual((await waitShown(alice, 5, 'alice sees replies')).map((m) => m.slice(1)),
    [['alice', 'a1'], ['alice', 'a2'], ['alice', 'a3'], ['bob', 'b1'], ['bob', 'b2']]);
  assert.deepEqual((await shown(alice)).map((m) => m[0]), [1, 2, 3, 4, 5]);

  // a group with bob
  await (await use(alice)).fill('#gname', 'team');
  await alice.fill('#gmembers', 'bob');
  await click(alice, '#newgroup button');
  await alice.waitForSelector('#convs li[data-conv="g:team"]');
  await say(alice, 'g1');
  await waitShown(alice, 2, 'alice group');

  // bob goes away; alice writes on; bob comes back and catches up by sync
  await bob.goto('about:blank');
  await click(alice, '#convs li[data-conv="u:bob"]');
  const LONG = 'a7 ' + 'is long enough to be deflated by the plugin; '.repeat(12);
  for (let i = 4; i <= 8; i++) await say(alice, i === 7 ? LONG : 'a' + i);
  await click(alice, '#convs li[data-conv="g:team"]');
  await say(alice, 'g2');
  await waitShown(alice, 3, 'alice group 2');
  await alice.waitForFunction(() => !document.querySelector('#messages li.pending'));
  await (await use(bob)).goto(base);                      // logs in again from sessionStorage
  await online(bob);
  await bob.waitForSelector('#convs li[data-conv="g:team"]');
  assert.equal(await badge(bob, 'u:alice'), '5');
  assert.equal(await badge(bob, 'g:team'), '3');
  await bob.screenshot({ path: join(ART, 'catchup.png') });
  await click(bob, '#convs li[data-conv="u:alice"]');
  const want = [[1, 'alice', 'a1'], [2, 'alice', 'a2'], [3, 'alice', 'a3'], [4, 'bob', 'b1'], [5, 'bob', 'b2'],
    [6, 'alice', 'a4'], [7, 'alice', 'a5'], [8, 'alice', 'a6'], [9, 'alice', LONG], [10, 'alice', 'a8']];
  assert.deepEqual(await waitShown(bob, 10, 'bob after sync'), want);
  await click(bob, '#convs li[data-conv="g:team"]');
  const g = await waitShown(bob, 3, 'bob group');
  assert.deepEqual(g.map((m) => m[0]), [1, 2, 3]);
  assert.deepEqual(g.slice(1).map((m) => m[2]), ['g1', 'g2']);
  assert.match(g[0][2], /alice created the group with bob/);

  // a reload: what was shown comes from localStorage, nothing twice
  await (await use(bob)).reload();
  await online(bob);
  await click(bob, '#convs li[data-conv="u:alice"]');   // online: caught up and shown, nothing more to come
  assert.deepEqual(await waitShown(bob, 10, 'bob after a reload'), want);
  assert.equal(await badge(bob, 'u:alice'), '');
  assert.deepEqual(errors, []);
});

test('a dropped connection: alice sends while the broker is down; both catch up, each message once', async () => {
  const [alice, bob] = ctx.pages();
  await click(alice, '#convs li[data-conv="u:bob"]');
  await click(bob, '#convs li[data-conv="u:alice"]');
  await kill9Broker();
  await alice.waitForSelector('#status[data-state="offline"]', { timeout: 10000 });
  await say(alice, 'while down');              // held in the outbox, re-sent with its cmid
  await alice.waitForSelector('#messages li.pending');
  await startBroker();                         // same ports, same store
  await online(alice);
  await say(alice, 'after');
  const want = [[11, 'alice', 'while down'], [12, 'alice', 'after']];
  const got = await waitShown(bob, 12, 'bob after broker restart');
  assert.deepEqual(got.slice(10), want);
  assert.deepEqual(got.map((m) => m[0]), [...Array(12).keys()].map((i) => i + 1));
  await alice.waitForFunction(() => !document.querySelector('#messages li.pending'));
  assert.deepEqual((await shown(alice)).slice(-2).map((m) => m[2]), ['while down', 'after']);
  await (await use(bob)).screenshot({ path: join(ART, 'chat.png') });
  await (await use(alice)).screenshot({ path: join(ART, 'chat-alice.png') });
});

test('the broker restarts on a fresh database: the pages clear what they showed, say so, and start over', async () => {
  const [alice, bob] = ctx.pages();
  const errors = [];
  for (const p of [alice, bob]) p.on('pageerror', (e) => errors.push(e.message));
  await click(alice, '#convs li[data-conv="u:bob"]');
  await click(bob, '#convs li[data-conv="u:alice"]');
  assert.equal((await shown(bob)).length, 12);
  await kill9Broker();
  // a new store: the database, its WAL and shared memory, and the journal
  for (const f of ['im.db', 'im.db-wal', 'im.db-shm', 'im.db.journal']) {
    rmSync(join(broker.dir, f), { recursive: true, force: true });
  }
  await startBroker();
  for (const p of [alice, bob]) {
    await p.waitForSelector('#notice:not([hidden])', { timeout: 15000 });
    assert.match(await p.textContent('#notice'), /message store was replaced/);
    await online(p);
    assert.deepEqual(await shown(p), []);    // the old store's messages are gone from the page
  }
  await say(alice, 'fresh');
  // seq 1 of the new store: bob's page shows it, not dropped as a duplicate of his old #1
  const only = (page, text) => page.waitForFunction((t) => {
    const els = [...document.querySelectorAll('#messages li.msg[data-seq]')];
    return els.length === 1 && els[0].querySelector('.text').textContent === t;
  }, text, { timeout: 15000 }).catch(async () => {
    throw new Error(`wanted only '${text}', page shows ${JSON.stringify(await shown(page))}`);
  });
  await only(bob, 'fresh');
  assert.deepEqual(await shown(bob), [[1, 'alice', 'fresh']]);
  await only(alice, 'fresh');
  assert.deepEqual(await shown(alice), [[1, 'alice', 'fresh']]);   // her own copy, u/alice #1
  await alice.waitForFunction(() => !document.querySelector('#messages li.pending'));

  // a reload keeps the new store's state: the same one message, once
  await (await use(bob)).reload();
  await online(bob);
  await click(bob, '#convs li[data-conv="u:alice"]');
  assert.deepEqual(await shown(bob), [[1, 'alice', 'fresh']]);
  assert.equal(await bob.isHidden('#notice'), true);
  await bob.screenshot({ path: join(ART, 'store-replaced.png') });
  assert.deepEqual(errors, []);
});

// The message of the open conversation with this seq: its classes, text and tick.
const msgAt = (page, seq) => page.$eval(`#messages li.msg[data-seq="${seq}"]`, (e) => ({
  cls: e.className, text: e.querySelector('.text').textContent, tick: e.querySelector('.tick')?.dataset.state,
}));
// Waits until msgAt(page, seq) has what `want` names (a subset of its fields).
async function waitMsg(page, seq, want, what) {
  try {
    await page.waitForFunction(([s, w]) => {
      const e = document.querySelector(`#messages li.msg[data-seq="${s}"]`);
      if (!e) return false;
      const got = { text: e.querySelector('.text').textContent, tick: e.querySelector('.tick')?.dataset.state };
      return Object.entries(w).every(([k, v]) => (k === 'cls' ? v.every((c) => e.classList.contains(c)) : got[k] === v));
    }, [seq, want], { timeout: 15000 });
  } catch (e) {
    const got = await msgAt(page, seq).catch(() => 'no such message');
    throw new Error(`${what}: wanted #${seq} ${JSON.stringify(want)}, page shows ${JSON.stringify(got)}`);
  }
}

test('a read receipt, typing, an edit and a recall between the two pages', async () => {
  const [alice, bob] = ctx.pages();
  const errors = [];
  for (const p of [alice, bob]) p.on('pageerror', (e) => errors.push(e.message));
  // bob looks at another conversation while alice writes: his page gets it, he has not read it
  await (await use(bob)).fill('#peer', 'carol');
  await bob.press('#peer', 'Enter');
  await click(alice, '#convs li[data-conv="u:bob"]');
  await say(alice, 'r1');                                   // u/bob #2 (after 'fresh'), her copy u/alice #2
  await waitMsg(alice, 2, { text: 'r1', tick: 'stored' }, 'alice\'s copy stored');
  await bob.waitForFunction(() => document.querySelector('#convs li[data-conv="u:alice"] .badge')?.textContent === '1',
    null, { timeout: 15000 });
  // not read: bob's page has it but acks only up to what he saw
  assert.deepEqual(await bob.evaluate(() => {
    const t = imClient.timelineState('u/bob');
    return [t.shown, t.seen];
  }), [2, 1]);
  assert.equal((await msgAt(alice, 2)).tick, 'stored');
  assert.equal(await bob.$eval('#convs li', (e) => e.dataset.conv), 'u:alice');   // the latest activity first

  // bob opens the conversation: alice's tick turns to read
  await click(bob, '#convs li[data-conv="u:alice"]');
  await waitMsg(alice, 2, { tick: 'read' }, 'alice sees bob read r1');
  assert.equal((await msgAt(alice, 1)).tick, 'read');       // and what came before it

  // bob types: alice sees "bob is typing…" (in the chat and the list); he clears it: gone
  await (await use(bob)).type('#text', 'hel');
  await alice.waitForSelector('#typing:not([hidden])', { timeout: 15000 });
  assert.equal(await alice.textContent('#typing'), 'bob is typing…');
  assert.equal(await alice.textContent('#convs li[data-conv="u:bob"] .preview'), 'typing…');
  await bob.fill('#text', '');
  await alice.waitForSelector('#typing', { state: 'hidden', timeout: 15000 });

  // alice edits r1: the same message on both pages, new text, marked edited; nothing new shown
  await click(alice, '#messages li.msg[data-seq="2"] button.edit');
  assert.equal(await alice.inputValue('#text'), 'r1');
  await alice.fill('#text', 'r1, edited');
  await alice.press('#text', 'Enter');
  await waitMsg(bob, 2, { text: 'r1, edited', cls: ['edited'] }, 'bob sees the edit');
  await waitMsg(alice, 2, { text: 'r1, edited', cls: ['edited'] }, 'alice sees her edit');
  assert.deepEqual((await shown(bob)).map((m) => m[0]), [1, 2]);

  // alice writes r2 and recalls it: gone from both pages, said so
  await say(alice, 'r2');                                   // #4 in both inboxes (#3: the edit)
  await waitMsg(bob, 4, { text: 'r2' }, 'bob gets r2');
  await click(alice, '#messages li.msg[data-seq="4"] button.recall');
  await waitMsg(bob, 4, { text: 'message recalled', cls: ['recalled'] }, 'bob sees the recall');
  await waitMsg(alice, 4, { text: 'message recalled', cls: ['recalled'] }, 'alice sees her recall');
  assert.equal(await alice.$('#messages li.msg[data-seq="4"] button.edit'), null);   // nothing left to change
  const want = [[1, 'alice', 'fresh'], [2, 'alice', 'r1, edited'], [4, 'alice', 'message recalled']];
  assert.deepEqual(await shown(bob), want);
  await (await use(bob)).screenshot({ path: join(ART, 'conversations-bob.png') });
  await (await use(alice)).screenshot({ path: join(ART, 'conversations-alice.png') });

  // bob's page forgets what it kept and catches up from seq 0: the originals
  // come marked edited and recalled, their edit and recall after them
  await (await use(bob)).evaluate(() => {
    for (const k of Object.keys(localStorage)) if (k.startsWith('imweb/bob@')) localStorage.removeItem(k);
  });
  await bob.reload();
  await online(bob);
  await click(bob, '#convs li[data-conv="u:alice"]');
  await waitShown(bob, 3, 'bob after a catch-up from 0');
  assert.deepEqual(await shown(bob), want);
  assert.match((await msgAt(bob, 2)).cls, /\bedited\b/);
  assert.match((await msgAt(bob, 4)).cls, /\brecalled\b/);
  // and alice's ticks still say read: bob's mark moved past r2 too
  await waitMsg(alice, 4, { tick: 'read' }, 'alice sees bob read up to r2');

  // in a group, the tick counts who read it
  await (await use(alice)).fill('#gname', 'crew');
  await alice.fill('#gmembers', 'bob');
  await click(alice, '#newgroup button');
  await alice.waitForSelector('#convs li[data-conv="g:crew"].active');
  // membership news: bob's page follows the group at once, no reload needed
  if (MEMBERSHIP) await bob.waitForSelector('#convs li[data-conv="g:crew"]', { timeout: 15000 });
  await say(alice, 'g1');                                   // g/crew #2 (#1: the group's creation)
  await waitMsg(alice, 2, { text: 'g1', tick: 'stored' }, 'alice\'s group message stored');
  await (await use(bob)).reload();                          // asks for its groups now, not in 10 s
  await online(bob);
  await click(bob, '#convs li[data-conv="g:crew"]');
  await waitMsg(alice, 2, { tick: 'read' }, 'alice sees bob read g1');
  assert.equal(await alice.$eval('#messages li.msg[data-seq="2"] .tick', (e) => [e.textContent, e.title].join(' | ')),
    '✓✓ 1 | read by bob');
  for (const p of [alice, bob]) assert.equal(await p.textContent('#error'), '');
  assert.deepEqual(errors, []);
});

test('the package\'s browser stores: IndexedDB and localStorage keep the client\'s state', async () => {
  const [alice] = ctx.pages();
  const got = await (await use(alice)).evaluate(async () => {
    const { IndexedDBStore, LocalStorageStore } = await import('mosquitto-im');
    const out = {};
    for (const [name, s] of [['idb', new IndexedDBStore('im-e2e')], ['ls', new LocalStorageStore('im-e2e/')]]) {
      await s.set('tl/u/x', { last: 2, msgs: [{ seq: 2, text: 'kept' }] });
      await s.set('gone', 1);
      await s.delete('gone');
      out[name] = [await s.get('tl/u/x'), await s.get('gone') ?? null];
      await s.close?.();
    }
    return out;
  });
  const want = [{ last: 2, msgs: [{ seq: 2, text: 'kept' }] }, null];
  assert.deepEqual(got, { idb: want, ls: want });
});
