// The chat page: conversations (direct messages grouped by peer, and
// groups) with unread counts, live messages with their seq, sending with a
// cmid. The protocol work is in im.js.
import { ImClient, loadProto } from '/im.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const defaultBroker = params.get('ws') || `ws://${location.hostname || '127.0.0.1'}:9001`;
const LOGIN_KEY = 'imweb/login';

let client = null;
let me = '';
let convs = new Map();   // 'u:bob' | 'g:team' -> {key, kind, name, timeline, msgs, readSeq, lastAt}
let active = null;
let readKey = '';

function convKeyOf(m) {
  if (m.timeline.startsWith('g/')) return 'g:' + m.timeline.slice(2);
  const peer = m.sender === me ? (m.to || 'u/' + me).slice(2) : m.sender;
  return 'u:' + peer;
}

function conv(key) {
  let c = convs.get(key);
  if (!c) {
    const [kind, name] = [key[0], key.slice(2)];
    const read = JSON.parse(localStorage.getItem(readKey) || '{}');
    c = { key, kind, name, timeline: `${kind}/${name}`, msgs: [], readSeq: read[key] || 0, lastAt: 0 };
    convs.set(key, c);
  }
  return c;
}

function saveRead() {
  const read = {};
  for (const c of convs.values()) read[c.key] = c.readSeq;
  localStorage.setItem(readKey, JSON.stringify(read));
}

function unread(c) {
  let n = c.msgs.filter((m) => m.seq > c.readSeq && m.sender !== me).length;
  if (c.kind === 'g') {
    const t = client.tls.get(c.timeline);
    if (t && t.head > t.last) n += t.head - t.last;  // known by `group list`, not synced yet
  }
  return n;
}

function systemText(m) {
  try {
    const e = JSON.parse(m.text);
    const users = (e.users || []).join(', ');
    const what = { create: `created the group${users ? ' with ' + users : ''}`, add: `added ${users}`,
      remove: `removed ${users}`, leave: 'left' }[e.event] || e.event;
    return `${e.by || m.sender} ${what}`;
  } catch {
    return m.text;
  }
}

// Updates the list in place (same <li> per conversation), so a row does
// not change under the pointer when messages arrive.
function renderConvs() {
  const ul = $('convs');
  const list = [...convs.values()].sort((a, b) => b.lastAt - a.lastAt || a.key.localeCompare(b.key));
  const rows = new Map([...ul.children].map((li) => [li.dataset.conv, li]));
  list.forEach((c, i) => {
    let li = rows.get(c.key);
    if (!li) {
      li = document.createElement('li');
      li.dataset.conv = c.key;
      const label = document.createElement('span');
      const kind = document.createElement('span');
      kind.className = 'kind';
      kind.textContent = c.kind === 'g' ? '#' : '@';
      label.append(kind, c.name);
      const badge = document.createElement('span');
      badge.className = 'badge';
      li.append(label, badge);
      li.onclick = () => open(c.key);
    }
    rows.delete(c.key);
    li.className = c === active ? 'active' : '';
    const n = c === active ? 0 : unread(c);
    const b = li.querySelector('.badge');
    if (b.textContent !== (n ? String(n) : '')) b.textContent = n ? String(n) : '';
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
  });
  for (const li of rows.values()) li.remove();
}

function msgElement(m, pending) {
  const li = document.createElement('li');
  li.className = 'msg' + (m.sender === me ? ' mine' : '') + (m.system ? ' system' : '') + (pending ? ' pending' : '');
  li.dataset.tl = m.timeline;
  li.dataset.sender = m.sender;
  if (!pending) li.dataset.seq = String(m.seq);
  const meta = document.createElement('span');
  meta.className = 'meta';
  const seq = document.createElement('span');
  seq.className = 'seq';
  seq.textContent = pending ? 'sending…' : '#' + m.seq;
  const time = new Date(pending ? m.at : m.tsMs).toLocaleTimeString([], { hour12: false });
  meta.append(seq, ` ${time} ${m.sender}`);
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = m.system ? systemText(m) : m.omitted ? '(body omitted)' : m.text;
  li.append(meta, text);
  return li;
}

function renderMessages() {
  const ol = $('messages');
  ol.textContent = '';
  if (!active) return;
  for (const m of active.msgs) ol.append(msgElement(m, false));
  for (const o of client.outbox.filter((x) => x.timeline === active.timeline)) {
    ol.append(msgElement({ ...o, sender: me }, true));
  }
  ol.scrollTop = ol.scrollHeight;
}

function open(key) {
  active = conv(key);
  $('title').textContent = (active.kind === 'g' ? 'Group ' : 'Chat with ') + active.name;
  $('text').disabled = $('send').disabled = false;
  markRead();
  renderConvs();
  renderMessages();
  $('text').focus();
}

function markRead() {
  if (!active) return;
  const top = active.msgs.length ? active.msgs[active.msgs.length - 1].seq : 0;
  if (top > active.readSeq) { active.readSeq = top; saveRead(); }
}

function addMessage(m) {
  const c = conv(convKeyOf(m));
  c.msgs.push(m);
  c.lastAt = Math.max(c.lastAt, m.tsMs || 0);
}

async function start(login) {
  $('login-error').textContent = '';
  me = login.user;
  readKey = `imweb/${me}@${login.url}/read`;
  convs = new Map();
  active = null;
  const proto = await loadProto();
  client = new ImClient({ url: login.url, user: login.user, password: login.password, proto });
  // what this browser already showed (kept with `last` in localStorage)
  for (const t of client.tls.values()) {
    if (t.name.startsWith('g/')) conv('g:' + t.name.slice(2));
    for (const m of t.msgs) addMessage(m);
  }
  client.addEventListener('message', (e) => {
    addMessage(e.detail);
    const c = conv(convKeyOf(e.detail));
    if (c === active) { markRead(); renderMessages(); }
    renderConvs();
  });
  client.addEventListener('groups', (e) => {
    for (const g of e.detail) conv('g:' + g.name);
    for (const c of [...convs.values()]) {
      if (c.kind === 'g' && !e.detail.some((g) => g.name === c.name)) convs.delete(c.key);
    }
    renderConvs();
  });
  client.addEventListener('receipt', () => { if (active) renderMessages(); });
  client.addEventListener('status', (e) => {
    $('status').textContent = e.detail.text;
    $('status').dataset.state = e.detail.state;
    if (e.detail.state === 'refused') {
      sessionStorage.removeItem(LOGIN_KEY);
      showLogin(e.detail.text);
    }
  });
  client.addEventListener('error', (e) => { $('error').textContent = e.detail; });
  client.addEventListener('gap', (e) => {
    $('error').textContent = `${e.detail.timeline}: messages ${e.detail.from}..${e.detail.to} were removed by retention`;
  });
  // The server's history was replaced: what is shown counted seqs of a store
  // that is gone. Clear it (and the read marks); the messages the new store
  // holds arrive again from seq 1.
  client.addEventListener('reset', () => {
    for (const c of convs.values()) {
      c.msgs = [];
      c.readSeq = 0;
      c.lastAt = 0;
    }
    saveRead();
    $('notice').textContent = 'The server\'s message store was replaced: messages are shown again from the start.';
    $('notice').hidden = false;
    renderConvs();
    renderMessages();
  });
  $('me').textContent = me;
  $('login-view').hidden = true;
  $('chat-view').hidden = false;
  $('notice').hidden = true;
  renderConvs();
  client.start();
}

function showLogin(error) {
  client?.stop();
  client = null;
  $('chat-view').hidden = true;
  $('login-view').hidden = false;
  $('login-error').textContent = error || '';
}

$('broker').value = defaultBroker;
$('login').onsubmit = (ev) => {
  ev.preventDefault();
  const login = { user: $('user').value.trim(), password: $('password').value, url: $('broker').value.trim() };
  sessionStorage.setItem(LOGIN_KEY, JSON.stringify(login));
  start(login).catch((e) => showLogin(e.message));
};
$('logout').onclick = () => { sessionStorage.removeItem(LOGIN_KEY); showLogin(); };
$('compose').onsubmit = (ev) => {
  ev.preventDefault();
  const text = $('text').value;
  if (!text || !active) return;
  client.send(active.timeline, text);
  $('text').value = '';
  renderMessages();
};
$('newchat').onsubmit = (ev) => {
  ev.preventDefault();
  const peer = $('peer').value.trim();
  if (!peer) return;
  $('peer').value = '';
  open('u:' + peer);
};
$('newgroup').onsubmit = async (ev) => {
  ev.preventDefault();
  const name = $('gname').value.trim();
  const members = $('gmembers').value.split(/[\s,]+/).filter(Boolean);
  try {
    await client.group('create', name, members);
    $('gname').value = $('gmembers').value = '';
    conv('g:' + name);
    open('g:' + name);
  } catch (e) {
    $('error').textContent = e.message;
  }
};

// A reload in this tab logs in again (sessionStorage) and catches up by sync.
const saved = sessionStorage.getItem(LOGIN_KEY);
if (saved) start(JSON.parse(saved)).catch((e) => showLogin(e.message));
