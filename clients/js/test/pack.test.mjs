// `npm pack` gives an installable tarball with README and types: it is
// installed into an empty project, imported, its schema compared with
// proto/im.proto, and a strict TypeScript program is compiled against it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './helpers.mjs';

const PKG = join(ROOT, 'clients/js');
const npm = (args, cwd) => execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'],
  { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

test('npm pack: a tarball that installs, imports, carries README, types and proto/im.proto', { timeout: 300000 }, (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'im-js-pack-'));
  t.after(() => rmSync(tmp, { recursive: true, force: true }));
  const { version } = JSON.parse(readFileSync(join(PKG, 'package.json'), 'utf8'));
  const out = JSON.parse(npm(['pack', '--json', '--pack-destination', tmp], PKG));
  const tgz = join(tmp, out[0].filename);
  assert.equal(out[0].filename, `mosquitto-im-${version}.tgz`);
  const files = out[0].files.map((f) => f.path).sort();
  for (const f of ['README.md', 'package.json', 'proto/im.proto', 'src/index.js', 'src/index.d.ts', 'src/client.js',
    'src/proto.js', 'src/file-store.js', 'src/file-store.d.ts']) assert.ok(files.includes(f), `${f} in the tarball`);
  assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('node_modules/')), files.join(' '));

  const app = join(tmp, 'app');
  execFileSync('mkdir', ['-p', app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  npm(['install', '--prefer-offline', tgz], app);
  const installed = join(app, 'node_modules/mosquitto-im');
  assert.equal(readFileSync(join(installed, 'proto/im.proto'), 'utf8'), readFileSync(join(ROOT, 'proto/im.proto'), 'utf8'));
  writeFileSync(join(app, 'probe.mjs'), `import { ImClient, MemoryStore, root } from 'mosquitto-im';
    import { FileStore } from 'mosquitto-im/file-store';
    import { readFileSync } from 'node:fs';
    const c = new ImClient({ url: 'mqtt://127.0.0.1:1', user: 'x', store: new MemoryStore() });
    const v = JSON.parse(readFileSync('node_modules/mosquitto-im/package.json', 'utf8')).version;
    console.log(JSON.stringify({ me: c.me, fs: typeof FileStore.open, hdr: !!root.lookupType('im.v1.Header'), v }));`);
  const got = JSON.parse(execFileSync(process.execPath, ['probe.mjs'], { cwd: app, encoding: 'utf8' }));
  assert.deepEqual(got, { me: 'u/x', fs: 'function', hdr: true, v: version });

  // the types: a strict program against the installed package
  const tsc = join(PKG, 'node_modules/typescript/bin/tsc');
  if (!existsSync(tsc)) { t.skip('typescript not installed: run `npm ci` in clients/js'); return; }
  copyFileSync(join(PKG, 'test/consumer/chat.ts'), join(app, 'chat.ts'));
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext',
      lib: ['es2022', 'dom'], types: [], skipLibCheck: false },
    files: ['chat.ts'],
  }));
  try {
    execFileSync(process.execPath, [tsc, '-p', app], { cwd: app, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    assert.fail(`tsc: ${e.stdout}${e.stderr}`);
  }
});
