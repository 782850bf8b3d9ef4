#!/usr/bin/env node
// A static file server on 127.0.0.1 with HTTP byte ranges: serves the web app's build (`node scripts/static-server.mjs
// apps/web/dist 8080`) and the URL-loading tests. Only GET/HEAD of files under the root; nothing else.
import { createReadStream, existsSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
};

/**
 * Start serving `root`. Options: `ranges` (default true; false = ignore Range headers and always send the whole file),
 * `spaFallback` (answer unknown paths with index.html, as single-page-app hosts do), `port` (default 0 = any free one).
 * Every request is recorded in `requests` ({ path, range, status, bytes }).
 * @returns {Promise<{ url: string, port: number, requests: object[], close(): Promise<void> }>}
 */
export async function startStaticServer({ root, port = 0, ranges = true, spaFallback = false }) {
  const base = resolve(root);
  const requests = [];
  const server = createServer((req, res) => {
    const record = { path: req.url, range: req.headers.range ?? null, status: 0, bytes: 0 };
    requests.push(record);
    const send = (status, headers, body) => {
      record.status = status;
      res.writeHead(status, headers);
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, { allow: 'GET, HEAD' });
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      return send(400, {});
    }
    let file = normalize(join(base, path));
    if (file !== base && !file.startsWith(base + sep)) return send(403, {});
    if (existsSync(file) && statSync(file).isDirectory()) file = join(file, 'index.html');
    if (!existsSync(file) || !statSync(file).isFile()) {
      if (spaFallback && existsSync(join(base, 'index.html'))) file = join(base, 'index.html');
      else return send(404, { 'content-type': 'text/plain' }, 'not found');
    }
    const size = statSync(file).size;
    const type = TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream';
    const m = ranges ? /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '') : null;
    let start = 0;
    let end = size - 1;
    let status = 200;
    const headers = { 'content-type': type, 'cache-control': 'no-store' };
    if (ranges) headers['accept-ranges'] = 'bytes';
    if (m) {
      if (m[1] === '') {
        start = Math.max(0, size - Number(m[2]));
      } else {
        start = Number(m[1]);
        end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
      }
      if (start >= size || start > end) return send(416, { 'content-range': `bytes */${size}` });
      status = 206;
      headers['content-range'] = `bytes ${start}-${end}/${size}`;
    }
    headers['content-length'] = String(Math.max(0, end - start + 1));
    record.status = status;
    res.writeHead(status, headers);
    if (req.method === 'HEAD' || size === 0) return res.end();
    const stream = createReadStream(file, { start, end });
    stream.on('data', (c) => (record.bytes += c.length));
    stream.pipe(res);
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, '127.0.0.1', ok);
  });
  const actual = server.address().port;
  return {
    url: `http://127.0.0.1:${actual}/`,
    port: actual,
    requests,
    close: () => new Promise((ok) => server.close(() => ok())),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  const root = process.argv[2] ?? 'apps/web/dist';
  const port = Number(process.argv[3] ?? 8080);
  if (!existsSync(root)) {
    console.error(`static-server: ${root} does not exist (build the app first: pnpm build)`);
    process.exit(1);
  }
  const s = await startStaticServer({ root, port });
  console.log(`serving ${resolve(root)} at ${s.url} (Ctrl-C to stop)`);
}
