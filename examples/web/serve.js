// A tiny static server for the chat page: no framework, no build step.
//
//   node examples/web/serve.js [--port 8080] [--host 127.0.0.1]
//
// Serves this folder, the two browser bundles from node_modules (after
// `npm ci` here) under /vendor/, and the project's proto/im.proto under
// /proto/, so the page decodes with the very file the plugin is built from.
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
  '/proto/im.proto': join(here, '../../proto/im.proto'),
};
const pageFiles = new Set(['index.html', 'app.js', 'im.js', 'style.css']);
const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.proto': 'text/plain; charset=utf-8',
};

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
  let file = routes[path];
  if (!file && pageFiles.has(path.slice(1))) file = join(here, path.slice(1));
  if (!file || req.method !== 'GET') {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    return;
  }
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': types[extname(file)] || 'application/octet-stream',
      'cache-control': 'no-store' }).end(body);
  } catch (e) {
    const hint = file.includes('node_modules') ? ' (run `npm ci` in examples/web)' : '';
    res.writeHead(500, { 'content-type': 'text/plain' }).end(`cannot read ${path}${hint}\n`);
  }
});
server.listen(port, host, () => {
  console.log(`mosquitto-im chat page on http://${host}:${server.address().port}/`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
