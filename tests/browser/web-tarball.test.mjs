// The npm package as a user gets it: `npm pack` of web/ (after scripts/build-wasm.sh filled
// web/pkg/), installed with `npm install <tarball>` into an empty folder, and used from a
// plain HTML page with an import map and no bundler, in headless Chromium with WebGPU on
// SwiftShader: the engine starts in its worker, loads the bundled model and samples a digit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDemoServer } from '../../scripts/demo-server.mjs';
import { launch, decodePng } from './web-helpers.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const RUN_MS = Number(process.env.WEBDIFFUSION_BROWSER_TIMEOUT_MS ?? 300_000);
const NPM = process.env.NPM ?? 'npm';

const PAGE = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8"><link rel="icon" href="data:,"><title>webdiffusion from npm</title>
  <script type="importmap">{ "imports": { "webdiffusion": "./node_modules/webdiffusion/index.js" } }</script>
</head>
<body>
  <canvas id="c" width="128" height="128" style="width:128px;height:128px"></canvas>
  <script type="module">
    import { Engine, WebDiffusionError } from 'webdiffusion';
    window.result = { state: 'running' };
    try {
      const engine = await Engine.create({ canvas: document.getElementById('c') });
      const info = await engine.load('/models/mnist/');
      const out = await engine.generate({ steps: 3, seed: 11, classLabel: 7 });
      let bright = 0;
      for (let i = 0; i < out.pixels.length; i += 4) if (out.pixels[i] > 160) bright++;
      window.result = {
        state: 'done', inWorker: engine.inWorker, solvers: engine.solvers().length,
        adapter: engine.capabilities().adapter.name, info, width: out.width, height: out.height,
        bright: bright / (out.width * out.height), errorClass: typeof WebDiffusionError,
      };
    } catch (e) {
      window.result = { state: 'error', code: e.code, error: String(e.message) };
    }
  </script>
</body>
</html>
`;

let tmp;
let tarball;
let server;
let chrome;
before(async () => {
  assert.ok(fs.existsSync(path.join(ROOT, 'web/pkg/webdiffusion_bg.wasm')), 'web/pkg is missing: run scripts/build-wasm.sh first');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-npm-'));
  const packed = execFileSync(NPM, ['pack', '--silent', '--pack-destination', tmp], { cwd: path.join(ROOT, 'web'), encoding: 'utf8' });
  tarball = path.join(tmp, packed.trim().split('\n').pop());
  const app = path.join(tmp, 'app');
  fs.mkdirSync(app);
  execFileSync(NPM, ['install', '--no-audit', '--no-fund', '--offline', '--loglevel=error', tarball], { cwd: app, encoding: 'utf8' });
  fs.writeFileSync(path.join(app, 'index.html'), PAGE);
  server = await startDemoServer({ mounts: { '/app/': app, '/models/': path.join(ROOT, 'models') }, index: '/app/index.html' });
  chrome = await launch();
});
after(async () => {
  await chrome?.close();
  await server?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('npm pack: the tarball holds the package files and nothing else', (t) => {
  const files = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).trim().split('\n').sort();
  t.diagnostic(`${path.basename(tarball)}: ${fs.statSync(tarball).size} bytes, ${files.length} files`);
  for (const f of ['index.js', 'index.d.ts', 'worker.js', 'package.json', 'README.md', 'pkg/webdiffusion.js', 'pkg/webdiffusion_bg.wasm']) {
    assert.ok(files.includes(`package/${f}`), `${f} missing from the tarball: ${files}`);
  }
  // Every relative import of the package's modules resolves inside the tarball.
  for (const f of files.filter((x) => x.endsWith('.js'))) {
    const src = execFileSync('tar', ['-xzOf', tarball, f], { encoding: 'utf8' });
    for (const m of src.matchAll(/(?:from|import\(|new URL\()\s*'(\.\/[^']+)'/g)) {
      const target = path.posix.join(path.posix.dirname(f), m[1]);
      assert.ok(files.includes(target), `${f} refers to ${m[1]}, which the tarball lacks`);
    }
  }
  assert.ok(!files.some((f) => /node_modules|\.test\.|fixtures/.test(f)), files.join('\n'));
});

test('the installed package works from a plain HTML page (import map, no bundler)', { timeout: RUN_MS + 60_000 }, async (t) => {
  const page = await chrome.open(`${server.url}/app/index.html`);
  try {
    await page.waitForFunction(() => window.result && window.result.state !== 'running', null, { timeout: RUN_MS, polling: 500 });
  } catch (e) {
    throw new Error(`${e.message.split('\n')[0]}\n${chrome.log.join('\n')}`);
  }
  const r = await page.evaluate(() => window.result);
  const ctx = `\n${JSON.stringify(r)}\n${chrome.log.join('\n')}`;
  t.diagnostic(JSON.stringify(r));
  assert.equal(r.state, 'done', ctx);
  assert.equal(r.inWorker, true, ctx);
  assert.equal(r.errorClass, 'function', ctx);
  assert.deepEqual([r.width, r.height], [32, 32], ctx);
  assert.ok(r.solvers >= 3, ctx);
  assert.ok(r.bright > 0.02 && r.bright < 0.6, `bright fraction of the returned image ${r.bright}${ctx}`);
  // The canvas (an OffscreenCanvas in the worker) shows the image: not one flat colour.
  const png = await decodePng(await page.locator('#c').screenshot());
  const grays = [];
  for (let i = 0; i < png.data.length; i += 4) grays.push(png.data[i]);
  const spread = Math.max(...grays) - Math.min(...grays);
  assert.ok(spread > 100, `the canvas looks blank (gray levels span ${spread})${ctx}`);
  // Nothing was fetched from outside the installed package and the model folder.
  const stray = server.log.filter((e) => e.status !== 200);
  assert.deepEqual(stray, [], ctx);
});
