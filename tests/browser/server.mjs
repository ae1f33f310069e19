// A tiny static server for the browser test: loopback only, a free port chosen by the OS,
// and only the repository's www/ (pages), web/pkg/ (wasm-bindgen output), models/ (the
// bundled model, loaded by URL) and tests/browser/pages/ (test-only pages) are served.
// WebGPU needs a secure context; http://127.0.0.1 is one.
import http from 'node:http';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SERVED = ['www', 'web/pkg', 'models', 'tests/browser/pages'];
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  // wasm-bindgen uses WebAssembly.instantiateStreaming, which insists on this type.
  '.wasm': 'application/wasm',
  '.ts': 'text/plain; charset=utf-8',
  '.png': 'image/png',
};

function resolve(urlPath) {
  let rel;
  try {
    rel = decodeURIComponent(urlPath.split('?')[0]).replace(/^\/+/, '');
  } catch {
    return null;
  }
  const file = path.resolve(ROOT, rel);
  const ok = SERVED.some((dir) => file.startsWith(path.join(ROOT, dir) + path.sep));
  return ok ? file : null;
}

/** Start serving; resolves to `{ url, close, requests }` once listening. `options.handle(req,
 * res)` may answer a request itself (a test's broken responses) by returning true.
 * `requests` lists every request path, in order. */
export function startServer(options = {}) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    requests.push(req.url ?? '/');
    if (options.handle && (await options.handle(req, res, ROOT))) return;
    const file = resolve(req.url ?? '/');
    if (req.method !== 'GET' || !file) {
      res.writeHead(404).end('not found');
      return;
    }
    try {
      const body = await fs.readFile(file);
      res.writeHead(200, {
        'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
        'cache-control': 'no-store',
      });
      res.end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  return new Promise((resolveStart, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolveStart({
        url: `http://127.0.0.1:${port}`,
        requests,
        close: () => new Promise((r) => { server.close(() => r()); server.closeAllConnections?.(); }),
      });
    });
  });
}

// `node server.mjs` serves until interrupted, for looking at the pages by hand.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { url } = await startServer();
  console.log(`serving www/ and web/pkg/ at ${url}/www/selfcheck.html`);
}
