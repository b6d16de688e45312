// The chat page: conversations (direct messages grouped by peer, and
// groups) ordered by last activity, with unread counts; live messages with
// their seq, ticks on mine (sending, sent, stored, read), edits and recalls
// of mine, "typing…"; sending with a cmid. The protocol work is in the
// mosquitto-im package (clients/js); im.js makes the page's client.
import { pageClient } from '/im.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const defaultBroker = params.get('ws') || `ws://${location.hostname || '127.0.0.1'}:9001`;
const LOGIN_KEY = 'imweb/login';
const TYPING_EVERY_MS = 3000;   // "typing" again while typing goes on (the plugin allows 2 a second)
const TYPING_IDLE_MS = 5000;    // no key for this long: "stopped"
const TYPING_SHOWN_MS = 7000;   // someone's "typing" is shown this long unless renewed
const CONVS_LIMIT = 200;        // conversations asked for on connect (the plugin's page maximum)

let client = null;
let me = '';
let convs = new Map();   // 'u:bob' | 'g:team' -> {key, kind, name, timeline, msgs, readSeq, lastAt, preview, serverUnread}
let active = null;
let readKey = '';
let editing = null;     // the message of mine being edited
const typers = new Map(); // conversation key -> Map(user -> until, ms)
let typingOut = null;   // {timeline, at, idle}: my "typing" was sent there

const keyOf = (timeline) => timeline[0] + ':' + timeline.slice(2);

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
    c = { key, kind, name, timeline: `${kind}/${name}`, msgs: [], readSeq: read[key] || 0, lastAt: 0, preview: '',
      serverUnread: 0 };
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
  // none of its messages here yet (older than this browser): the server's count
  if (!c.msgs.length && c.serverUnread) return c.serverUnread;
  let n = c.msgs.filter((m) => m.seq > c.readSeq && m.sender !== me).length;
  if (c.kind === 'g') {
    const t = client.timelineState(c.timeline);
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

const textOf = (m) => m.recalled ? 'message recalled' : m.system ? systemText(m) : m.omitted ? '(body omitted)' : m.text;

// ---- who is typing ----
function typingIn(c) {
  const t = typers.get(c.key);
  const now = Date.now();
  return t ? [...t].filter(([, until]) => until > now).map(([u]) => u) : [];
}

function onTyping({ timeline, user, typing }) {
  if (user === me) return;                       // mine, from another device
  const key = keyOf(timeline);
  let t = typers.get(key);
  if (!t) typers.set(key, t = new Map());
  if (typing) {
    t.set(user, Date.now() + TYPING_SHOWN_MS);
    setTimeout(renderTyping, TYPING_SHOWN_MS + 50);   // gone unless renewed
  } else {
    t.delete(user);
  }
  renderTyping();
}

function renderTyping() {
  const who = active ? typingIn(active) : [];
  const el = $('typing');
  el.textContent = who.length ? `${who.join(', ')} ${who.length > 1 ? 'are' : 'is'} typing…` : '';
  el.hidden = !who.length;
  renderConvs();
}

// Mine: "typing" when a key is pressed (again every TYPING_EVERY_MS while it
// goes on), "stopped" after TYPING_IDLE_MS without one, on sending, on
// clearing the text or on leaving the conversation.
function typed() {
  if (!active || !client?.connected) return;
  if (!$('text').value) { stopTyping(); return; }
  const now = Date.now();
  if (typingOut && typingOut.timeline !== active.timeline) stopTyping();
  if (!typingOut || now - typingOut.at >= TYPING_EVERY_MS) {
    typingOut = { timeline: active.timeline, at: now };
    client.typing(active.timeline, true).catch(() => {});   // 429 or offline: it is only a hint
  }
  clearTimeout(typingOut.idle);
  typingOut.idle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  if (!typingOut) return;
  clearTimeout(typingOut.idle);
  if (client?.connected) client.typing(typingOut.timeline, false).catch(() => {});
  typingOut = null;
}

// ---- the conversation list ----
function previewOf(c) {
  const who = typingIn(c);
  if (who.length) return 'typing…';
  const m = c.msgs[c.msgs.length - 1];
  return m ? textOf(m) : c.preview;
}

// Updates the list in place (same <li> per conversation), so a row does
// not change under the pointer when messages arrive. The latest activity
// first.
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
      label.className = 'label';
      const kind = document.createElement('span');
      kind.className = 'kind';
      kind.textContent = c.kind === 'g' ? '#' : '@';
      const preview = document.createElement('small');
      preview.className = 'preview';
      label.append(kind, c.name, preview);
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
    const p = li.querySelector('.preview');
    const text = previewOf(c);
    if (p.textContent !== text) p.textContent = text;
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
  });
  for (const li of rows.values()) li.remove();
}

// ---- messages ----
// A message of mine is changed where it was sent, by its seq there: a
// group's; for a direct message the peer's inbox, my copy's peerSeq (a
// note to myself has no copy).
const changeTarget = (m) => client.target(m);
const report = (e) => { $('error').textContent = e.message; };

// sending (not acknowledged yet) → sent (the broker has it) → stored (it
// has its seq) → read: for a direct message, the peer read its inbox up to
// this message's seq there; in a group, by how many of the others.
function tick(m, pending) {
  const el = document.createElement('span');
  el.className = 'tick';
  let state = pending ? (m.sent ? 'sent' : 'sending') : 'stored';
  let text = { sending: '…', sent: '✓', stored: '✓✓' }[state];
  let title = { sending: 'sending', sent: 'sent', stored: 'stored as #' + m.seq }[state];
  if (!pending && m.timeline.startsWith('g/')) {
    const readers = [...client.readers(m.timeline)].filter(([u, s]) => u !== me && s >= m.seq).map(([u]) => u);
    if (readers.length) [state, text, title] = ['read', `✓✓ ${readers.length}`, 'read by ' + readers.join(', ')];
  } else if (!pending && m.to && m.to !== client.me && m.peerSeq
      && client.readBy(m.to, m.to.slice(2)) >= m.peerSeq) {
    [state, title] = ['read', 'read'];
  }
  el.dataset.state = state;
  el.textContent = text;
  el.title = title;
  return el;
}

function button(cls, label, fn) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = cls;
  b.textContent = label;
  b.onclick = fn;
  return b;
}

function msgElement(m, pending) {
  const li = document.createElement('li');
  const mine = m.sender === me && !m.system;
  const changing = !pending && mine && client.pendingSends().find((o) => o.change
    && o.timeline === changeTarget(m).timeline && o.ref === changeTarget(m).seq);
  li.className = 'msg' + (m.sender === me ? ' mine' : '') + (m.system ? ' system' : '') + (pending ? ' pending' : '')
    + (m.recalled ? ' recalled' : '') + (m.edited && !m.recalled ? ' edited' : '') + (changing ? ' changing' : '');
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
  if (m.edited && !m.recalled) {
    const e = document.createElement('span');
    e.className = 'edited-mark';
    e.textContent = ' (edited)';
    meta.append(e);
  }
  if (changing) meta.append(changing.change === 'edit' ? ' editing…' : ' recalling…');
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = textOf(m);
  li.append(meta, text);
  if (mine) li.append(tick(m, pending));
  if (mine && !pending && !m.recalled && !changing && changeTarget(m).seq) {
    const actions = document.createElement('span');
    actions.className = 'actions';
    actions.append(button('edit', 'edit', () => startEdit(m)),
      button('recall', 'recall', () => {
        const t = changeTarget(m);
        client.recall(t.timeline, t.seq).catch(report);
        renderMessages();
      }));
    li.append(actions);
  }
  return li;
}

function renderMessages() {
  const ol = $('messages');
  const atEnd = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  ol.textContent = '';
  if (!active) return;
  for (const m of active.msgs) ol.append(msgElement(m, false));
  for (const o of client.pendingSends().filter((x) => x.timeline === active.timeline && !x.change)) {
    ol.append(msgElement({ ...o, sender: me }, true));
  }
  if (atEnd || !editing) ol.scrollTop = ol.scrollHeight;
}

function startEdit(m) {
  editing = m;
  $('editing-seq').textContent = '#' + m.seq;
  $('editing').hidden = false;
  $('text').value = m.text;
  $('text').focus();
}

function cancelEdit() {
  editing = null;
  $('editing').hidden = true;
  $('text').value = '';
}

function open(key) {
  if (typingOut && typingOut.timeline !== conv(key).timeline) stopTyping();
  if (editing) cancelEdit();
  active = conv(key);
  $('title').textContent = (active.kind === 'g' ? 'Group ' : 'Chat with ') + active.name;
  $('text').disabled = $('send').disabled = false;
  markRead();
  renderConvs();
  renderMessages();
  renderTyping();
  $('text').focus();
}

// The open conversation, while the page is in view, is read up to its
// latest message.
function markRead() {
  if (active && document.visibilityState !== 'hidden') {
    const top = active.msgs.length ? active.msgs[active.msgs.length - 1].seq : 0;
    if (top > active.readSeq) { active.readSeq = top; saveRead(); }
  }
  ackSeen();
}

// What is acked, and what the senders see as read: per timeline, up to the
// first message the user has not seen (one inbox holds every direct
// conversation: a message in one not opened yet keeps the mark before it,
// never past it).
function ackSeen() {
  for (const name of client.timelines()) {
    let upTo = client.timelineState(name).shown;
    for (const m of client.messages(name)) {
      if (m.sender !== me && m.seq > (convs.get(convKeyOf(m))?.readSeq || 0)) { upTo = m.seq - 1; break; }
    }
    client.seen(name, upTo);
  }
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
  typers.clear();
  client = pageClient(login);
  window.imClient = client;                      // for the browser's console (and tests/e2e)
  client.on('message', (m) => {
    addMessage(m);
    const c = conv(convKeyOf(m));
    typers.get(c.key)?.delete(m.sender);         // it was sent: no longer typing
    markRead();
    if (c === active) { renderMessages(); renderTyping(); }
    renderConvs();
  });
  // an edit or recall of a message shown: the message object itself changed
  const changed = (msg, tsMs) => {
    if (!msg) return;                            // not kept here: nothing to change
    const c = conv(convKeyOf(msg));
    c.lastAt = Math.max(c.lastAt, tsMs || 0);
    if (editing === msg && msg.recalled) cancelEdit();
    if (c === active) { renderMessages(); ackSeen(); }
    renderConvs();
  };
  client.on('edit', (e) => changed(e.message, e.edit.tsMs));
  client.on('recall', (e) => changed(e.message, e.recall.tsMs));
  client.on('read', () => { if (active) renderMessages(); });
  client.on('typing', (e) => onTyping(e));
  client.on('outbox', () => { if (active) renderMessages(); });
  // On each connection, the server's list: conversations this browser never
  // saw, the order of the latest activity, a preview, the unread count of
  // those with no messages here.
  client.on('connect', () => {
    client.conversations({ limit: CONVS_LIMIT }).then(({ conversations }) => {
      for (const s of conversations) {
        const c = conv(keyOf(s.timeline));
        c.lastAt = Math.max(c.lastAt, s.lastTsMs);
        c.preview = s.lastPreview || '';
        c.serverUnread = s.unread;
      }
      renderConvs();
    }).catch((e) => { if (e.code !== 'DISCONNECTED') report(e); });
  });
  client.on('groups', (groups) => {
    for (const g of groups) conv('g:' + g.name);
    for (const c of [...convs.values()]) {
      if (c.kind === 'g' && !groups.some((g) => g.name === c.name)) convs.delete(c.key);
    }
    renderConvs();
  });
  // added to a group (it shows up at once), or removed from one
  client.on('membership', (e) => {
    if (e.member) conv('g:' + e.group);
    else if (active?.key !== 'g:' + e.group) convs.delete('g:' + e.group);
    renderConvs();
  });
  client.on('receipt', (r) => {
    if (r.status !== 0) $('error').textContent = `message refused: ${r.status} ${r.reason}`;
    if (active) renderMessages();
  });
  client.on('status', (e) => {
    $('status').textContent = e.text;
    $('status').dataset.state = e.state;
    if (e.state === 'refused') {
      sessionStorage.removeItem(LOGIN_KEY);
      showLogin(e.text);
    }
    if (e.state === 'online') ackSeen();
  });
  client.on('error', report);
  client.on('gap', (e) => {
    $('error').textContent = `${e.timeline}: messages ${e.from}..${e.to} were removed by retention`;
  });
  // The server's history was replaced: what is shown counted seqs of a store
  // that is gone. Clear it (and the read marks); the messages the new store
  // holds arrive again from seq 1.
  client.on('reset', () => {
    for (const c of convs.values()) {
      c.msgs = [];
      c.readSeq = 0;
      c.lastAt = 0;
    }
    if (editing) cancelEdit();
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
  await client.start();
  // what this browser already showed (kept with `last` in localStorage)
  for (const name of client.timelines()) {
    if (name.startsWith('g/')) conv('g:' + name.slice(2));
    for (const m of client.messages(name)) addMessage(m);
  }
  renderConvs();
}

function showLogin(error) {
  stopTyping();
  client?.close();
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
  stopTyping();
  if (editing) {
    const t = changeTarget(editing);
    if (text !== editing.text) client.edit(t.timeline, t.seq, text).catch(report);
    cancelEdit();
  } else {
    client.send(active.timeline, text).catch(report);
    $('text').value = '';
  }
  renderMessages();
};
$('text').oninput = typed;
$('text').onkeydown = (ev) => { if (ev.key === 'Escape' && editing) cancelEdit(); };
$('cancel-edit').onclick = cancelEdit;
document.addEventListener('visibilitychange', () => { if (active) { markRead(); renderConvs(); } });
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
    await client.groups.create(name, members);
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
