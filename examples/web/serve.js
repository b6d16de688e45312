// A tiny static server for the chat page: no framework, no build step.
//
//   node examples/web/serve.js [--port 8080] [--host 127.0.0.1]
//
// Serves this folder; under /vendor/ the mosquitto-im package (clients/js,
// a file: dependency: node_modules/mosquitto-im links to it after `npm ci`
// here) and the browser bundles of MQTT.js and protobufjs from node_modules,
// which index.html's import map names. The package carries proto/im.proto,
// made from the project's by `npm ci` in clients/js: the page decodes with
// the very file the plugin is built from.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const port = Number(arg('--port', process.env.PORT || 8080));
const host = arg('--host', '127.0.0.1');

const routes = {
  '/': join(here, 'index.html'),
  '/vendor/mqtt.esm.js': join(here, 'node_modules/mqtt/dist/mqtt.esm.js'),
  '/vendor/protobuf.min.js': join(here, 'node_modules/protobufjs/dist/protobuf.min.js'),
};
// the package's modules (src/*.js; file-store.js is Node's only)
const pkg = join(here, 'node_modules/mosquitto-im/src');
// protobufjs has no ES module build: its browser bundle (a classic script
// in index.html) sets globalThis.protobuf, which this module hands on
const PROTOBUF_MODULE = 'export default globalThis.protobuf;\n';
const pageFiles = new Set(['index.html', 'app.js', 'im.js', 'style.css']);
const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.proto': 'text/plain; charset=utf-8',
};

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
  if (path === '/vendor/protobufjs.mjs' && req.method === 'GET') {
    res.writeHead(200, { 'content-type': types['.js'], 'cache-control': 'no-store' }).end(PROTOBUF_MODULE);
    return;
  }
  let file = routes[path];
  if (!file && pageFiles.has(path.slice(1))) file = join(here, path.slice(1));
  const m = /^\/vendor\/mosquitto-im\/([a-z-]+\.js)$/.exec(path);
  if (!file && m && m[1] !== 'file-store.js') file = join(pkg, m[1]);
  if (!file || req.method !== 'GET') {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    return;
  }
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': types[extname(file)] || 'application/octet-stream',
      'cache-control': 'no-store' }).end(body);
  } catch (e) {
    const hint = file.endsWith('proto.js') ? ' (run `npm ci` in clients/js: it makes src/proto.js from proto/im.proto)'
      : file.includes('node_modules') ? ' (run `npm ci` in examples/web)' : '';
    res.writeHead(500, { 'content-type': 'text/plain' }).end(`cannot read ${path}${hint}\n`);
  }
});
server.listen(port, host, () => {
  console.log(`mosquitto-im chat page on http://${host}:${server.address().port}/`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
