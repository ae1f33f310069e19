// The demo's static server (node, no dependencies): loopback only, GET/HEAD only, files only
// from the folders mounted (by default the repository's www/, web/ and models/), with a
// request log the browser tests read to prove a second visit downloads nothing.
//
//   node scripts/demo-server.mjs [--port 8080]   # then open http://127.0.0.1:8080/
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  // wasm-bindgen uses WebAssembly.instantiateStreaming, which insists on this type.
  '.wasm': 'application/wasm',
  '.ts': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.safetensors': 'application/octet-stream',
};

export const DEFAULT_MOUNTS = {
  '/www/': path.join(ROOT, 'www'),
  '/web/': path.join(ROOT, 'web'),
  '/models/': path.join(ROOT, 'models'),
  // The tiny Stable Diffusion repository (random weights, 16×16 images) the tests and the
  // diffusers goldens use: a whole pipeline the demo can load in seconds.
  '/models/tiny-sd/': path.join(ROOT, 'tests', 'fixtures', 'tiny-sd'),
  // A tiny random-weight AutoencoderTiny for tiny-sd's latents (the preview decoder); outside
  // /models/ so the model list does not offer it as a model.
  '/previews/tiny-taesd/': path.join(ROOT, 'tests', 'fixtures', 'tiny-taesd'),
  // Its LCM-distilled sibling (a UNet with a guidance embedding; the other components are
  // links to tiny-sd's).
  '/models/tiny-lcm/': path.join(ROOT, 'tests', 'fixtures', 'tiny-lcm'),
};

const WEIGHT_FILES = ['diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.safetensors.index.json', 'model.safetensors'];

/** `_class_name` of a JSON file, or null. */
function classOf(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'))._class_name ?? null;
  } catch {
    // An unreadable config is still listed; loading it reports what is wrong.
    return null;
  }
}

/**
 * The model folders under `dir` (it and two levels of subfolders) that hold a config.json
 * and weights, or a pipeline's model_index.json: `[{ path, className }]`, `path` relative
 * with a trailing '/'. The demo page offers these (the galaxy and terrain models appear once
 * their setup scripts ran; Stable Diffusion repositories by their pipeline class).
 */
export function listModels(dir) {
  const found = [];
  const visit = (rel, depth) => {
    const abs = path.join(dir, rel);
    let entries;
    try {
      entries = fs.readdirSync(abs, { withFileTypes: true });
    } catch {
      return;
    }
    const names = new Set(entries.map((e) => e.name));
    if (names.has('config.json') && WEIGHT_FILES.some((w) => names.has(w))) {
      found.push({ path: rel ? `${rel}/` : '', className: classOf(path.join(abs, 'config.json')) });
    } else if (names.has('model_index.json')) {
      found.push({ path: rel ? `${rel}/` : '', className: classOf(path.join(abs, 'model_index.json')) });
      return;
    }
    if (depth === 0) return;
    for (const e of entries) {
      if ((e.isDirectory() || e.isSymbolicLink()) && !e.name.startsWith('.')) {
        visit(rel ? `${rel}/${e.name}` : e.name, depth - 1);
      }
    }
  };
  visit('', 2);
  return found.sort((a, b) => a.path.localeCompare(b.path));
}

/**
 * Start serving; resolves to `{ url, port, log, close }` once listening.
 * @param {{ port?: number, mounts?: Record<string, string>, index?: string,
 *            truncate?: Record<string, number> }} [options]
 *   `mounts` maps URL prefixes (ending in '/') to folders; `index` is where '/' redirects.
 *   `truncate` (tests) maps URL paths to a byte count: the full Content-Length is announced
 *   but the connection is cut after that many bytes, like a download that breaks off.
 *   `log` collects `{ method, path, status, bytes }` for every request.
 */
export function startDemoServer(options = {}) {
  const mounts = Object.entries(options.mounts ?? DEFAULT_MOUNTS)
    .map(([prefix, dir]) => [prefix, path.resolve(dir)])
    .sort((a, b) => b[0].length - a[0].length);
  const index = options.index ?? '/www/index.html';
  const log = [];

  function resolve(urlPath) {
    let p;
    try {
      p = decodeURIComponent(urlPath.split('?')[0]);
    } catch {
      return null;
    }
    for (const [prefix, dir] of mounts) {
      if (!p.startsWith(prefix)) continue;
      const file = path.resolve(dir, p.slice(prefix.length));
      // Nothing outside the mounted folder (no '..', no absolute escapes).
      if (file !== dir && !file.startsWith(dir + path.sep)) return null;
      return file;
    }
    return null;
  }

  const server = http.createServer((req, res) => {
    const entry = { method: req.method, path: req.url, status: 0, bytes: 0 };
    log.push(entry);
    const done = (status, headers, body) => {
      entry.status = status;
      res.writeHead(status, headers);
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return done(405, { allow: 'GET, HEAD' }, 'method not allowed');
    if (req.url === '/' || req.url === '/index.html') return done(302, { location: index }, '');
    const modelsDir = mounts.find(([prefix]) => prefix === '/models/')?.[1];
    if (modelsDir && req.url?.split('?')[0] === '/models.json') {
      // Folders mounted under /models/ (the tiny SD repository) are models too.
      const extra = mounts
        .filter(([prefix]) => prefix.startsWith('/models/') && prefix !== '/models/')
        .flatMap(([prefix, dir]) => listModels(dir).map((m) => ({ ...m, path: prefix.slice('/models/'.length) + m.path })));
      const all = [...listModels(modelsDir), ...extra].sort((a, b) => a.path.localeCompare(b.path));
      const body = JSON.stringify(all);
      entry.bytes = body.length;
      return done(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }, req.method === 'HEAD' ? '' : body);
    }
    let file = resolve(req.url ?? '/');
    if (!file) return done(404, {}, 'not found');
    fs.stat(file, (err, st) => {
      if (!err && st.isDirectory()) {
        if (!req.url.split('?')[0].endsWith('/')) return done(301, { location: `${req.url.split('?')[0]}/` }, '');
        file = path.join(file, 'index.html');
        st = fs.existsSync(file) ? fs.statSync(file) : null;
      }
      if (err || !st || !st.isFile()) return done(404, {}, 'not found');
      entry.status = 200;
      entry.bytes = req.method === 'HEAD' ? 0 : st.size;
      res.writeHead(200, {
        'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
        'content-length': st.size,
        // The engine's own weight cache is what makes a second visit free; the HTTP
        // cache would hide whether it works.
        'cache-control': 'no-store',
      });
      if (req.method === 'HEAD') return res.end();
      const cut = options.truncate?.[req.url.split('?')[0]];
      if (cut !== undefined) {
        entry.bytes = cut;
        fs.createReadStream(file, { start: 0, end: cut - 1 })
          .on('end', () => res.socket?.destroy())
          .pipe(res, { end: false });
        return;
      }
      fs.createReadStream(file).pipe(res);
    });
  });
  return new Promise((resolveStart, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => {
      const { port } = server.address();
      resolveStart({
        url: `http://127.0.0.1:${port}`,
        port,
        log,
        close: () =>
          new Promise((r) => {
            server.closeAllConnections?.();
            server.close(() => r());
          }),
      });
    });
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--port');
  const port = i > 0 ? Number(process.argv[i + 1]) : Number(process.env.PORT ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`demo-server: --port wants a number from 0 to 65535, got '${process.argv[i + 1]}'`);
    process.exit(2);
  }
  try {
    const { url } = await startDemoServer({ port });
    console.log(`webdiffusion demo: ${url}/  (Ctrl-C stops; serves www/, web/ and models/ on loopback only)`);
  } catch (e) {
    console.error(`demo-server: cannot listen on 127.0.0.1:${port}: ${e.message}; pick another with --port`);
    process.exit(1);
  }
}
