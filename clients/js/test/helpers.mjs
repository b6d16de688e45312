// Test helpers: a real mosquitto with the plugin (IM_PLUGIN) on a free
// 127.0.0.1 port with its own config and data folder, a link that drops
// every connection on a schedule, and waiting on conditions with deadlines.
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync,
  writeFileSync, closeSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const PLUGIN = resolve(process.env.IM_PLUGIN || join(ROOT, 'build/mosquitto_im.so'));
export const MOSQUITTO = process.env.IM_MOSQUITTO || 'mosquitto';

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

/** Waits until cond() is truthy (polled, or awaited if it returns a promise); throws what() after ms. */
export async function waitFor(cond, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${typeof what === 'function' ? what() : what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// Started as root, mosquitto becomes 'mosquitto' before it loads the
// plugin: its folder must be writable by that user. (The browser test,
// tests/e2e, uses it too.)
export function chownForBroker(dir) {
  if (process.getuid?.() !== 0) return;
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('mosquitto:'));
  if (!line) return;
  const [, , uid, gid] = line.split(':').map(Number);
  const walk = (p) => {
    chownSync(p, uid, gid);
    for (const e of readdirSync(p, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(p, e.name)); else chownSync(join(p, e.name), uid, gid);
    }
  };
  walk(dir);
}

export class Broker {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'im-js-'));
    chmodSync(this.dir, 0o755);
    this.data = join(this.dir, 'data');
    this.port = 0;
    this.proc = null;
    this.log = join(this.dir, 'broker.log');
    this.started = false;
  }

  /** A fresh data folder: a new store, a new store id. */
  newData() {
    this.data = join(this.dir, 'data-' + Date.now());
  }

  writeConf() {
    mkdirSync(this.data, { recursive: true });
    writeFileSync(join(this.dir, 'mosquitto.conf'), [
      `listener ${this.port} 127.0.0.1`, 'allow_anonymous true', 'log_dest stderr',
      'log_type error', 'log_type warning', 'log_type notice', 'log_type information',
      // not 0: Debian's 2.0.11 closes the connection of a client whose
      // publish is denied when its queue is at max_queued_messages
      'max_queued_messages 1000000', 'persistence false',
      `plugin ${PLUGIN}`, `plugin_opt_db_path ${join(this.data, 'im.db')}`, '',
    ].join('\n'));
    chownForBroker(this.dir);
  }

  async start() {
    if (!existsSync(PLUGIN)) throw new Error(`the plugin is not at ${PLUGIN}: build it, or set IM_PLUGIN`);
    const first = !this.started;
    for (let tries = 0; ; tries++) {
      if (first) this.port = await freePort();
      this.writeConf();
      const since = existsSync(this.log) ? readFileSync(this.log).length : 0;
      const fd = openSync(this.log, 'a');
      this.proc = spawn(MOSQUITTO, ['-c', join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', fd, fd] });
      closeSync(fd);
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.exited = exited;
      const listening = `listen socket on port ${this.port}.`;
      const deadline = Date.now() + 20000;
      let ok = false;
      while (Date.now() < deadline) {
        const text = readFileSync(this.log, 'utf8').slice(since);
        if (this.proc.exitCode !== null) {
          // another test's broker took the port between freePort() and bind
          if (first && tries < 5 && text.includes('Address already in use')) break;
          throw new Error(`mosquitto exited (${this.proc.exitCode}):\n${text}`);
        }
        const at = text.indexOf(listening);
        if (at >= 0 && text.indexOf(' running', at) >= 0) { ok = true; break; }
        await new Promise((r) => setTimeout(r, 30));
      }
      if (ok) { this.started = true; return; }
      if (this.proc.exitCode === null) throw new Error(`mosquitto did not listen on ${this.port}:\n${this.tail()}`);
    }
  }

  /** SIGTERM (SIGKILL with hard), and wait for it to exit: only the process this object started. */
  async stop(hard = false) {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode) { this.proc = null; return; }
    p.kill(hard ? 'SIGKILL' : 'SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 20000);
    await this.exited;
    clearTimeout(t);
    this.proc = null;
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  tail(n = 40) {
    try { return readFileSync(this.log, 'utf8').trimEnd().split('\n').slice(-n).join('\n'); } catch { return ''; }
  }

  async cleanup() {
    await this.stop();
    if (process.env.IM_JS_KEEP) console.log('kept', this.dir);
    else rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy to a port that closes every connection through it every
 * `dropMs` (the weak-network link of the issue): both sides see the
 * connection end abruptly.
 */
export class DroppingProxy {
  constructor(target, dropMs = 500) {
    this.target = target;
    this.dropMs = dropMs;
    this.socks = new Set();
    this.drops = 0;
    this.connections = 0;
  }

  async start() {
    this.server = createServer((down) => {
      this.connections++;
      const up = connect(this.target(), '127.0.0.1');
      const pair = { down, up };
      this.socks.add(pair);
      const end = () => { down.destroy(); up.destroy(); this.socks.delete(pair); };
      down.on('error', end).on('close', end);
      up.on('error', end).on('close', end);
      down.pipe(up);
      up.pipe(down);
    });
    await new Promise((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = this.server.address().port;
    this.timer = setInterval(() => this.drop(), this.dropMs);
    return this;
  }

  drop() {
    for (const p of this.socks) { p.down.resetAndDestroy?.() ?? p.down.destroy(); p.up.destroy(); }
    if (this.socks.size) this.drops++;
    this.socks.clear();
  }

  /** Stops dropping (the link is good from now on). */
  calm() { clearInterval(this.timer); }

  async stop() {
    clearInterval(this.timer);
    this.drop();
    await new Promise((r) => this.server.close(r));
  }
}
