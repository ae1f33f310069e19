// The browser Engine end to end in headless Chromium (WebGPU on SwiftShader): create and
// capabilities, load the bundled model by URL with progress events, generate with a live
// canvas (screenshots), the same image as the native CLI for the same seed, abort and a
// second run, and the typed errors (HTTP 404, truncated weights, unsupported config, no
// adapter). Run by scripts/browser-test.sh after scripts/build-wasm.sh filled web/pkg/ and
// the native release binary was built.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { decodePng, readNpy, toU8 } from './png.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.WEBDIFFUSION_CHROMIUM ?? '/usr/bin/chromium';
const NATIVE = process.env.WEBDIFFUSION_BIN ??
  path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, 'target'), 'release', 'webdiffusion');
const BASE_FLAGS = [
  '--headless=new', '--no-sandbox', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];
const WEBGPU_FLAGS = [
  '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-angle=swiftshader', '--use-webgpu-adapter=swiftshader',
];
const LAUNCH_MS = 60_000;
// SwiftShader compiles each pipeline on first use and runs the UNet on the CPU: seconds per
// step. The limits only turn a hang into a failure.
const RUN_MS = Number(process.env.WEBDIFFUSION_BROWSER_TIMEOUT_MS ?? 300_000);

// The parity run: the bundled model's defaults (dpmpp_2m_sde, guidance 2), a stochastic
// solver so the per-step Philox noise is compared too.
const PARITY = { seed: 7, steps: 4, solver: 'dpmpp_2m_sde', classLabel: 3 };
const MODEL_FILE = 'diffusion_pytorch_model.safetensors';
const CUT_AT = 0.6;
const BIGRES = 7400;
const WRAPRES = 16384;

let server, browser, page, profile;
const log = [];

/** The bundled model served with broken parts under /broken/<kind>/. */
async function handle(req, res, root) {
  const m = (req.url ?? '').match(/^\/broken\/(cut|dropped|badconfig|bigres|wrapres|slow|huge|sharded)\/(.*)$/);
  if (!m) return false;
  const [, kind, name] = m;
  if (kind === 'sharded' && (name === MODEL_FILE || name.startsWith('shard-') || name.endsWith('.index.json'))) {
    const files = shardedModel(root);
    if (!files[name]) {
      res.writeHead(404).end('not found');
      return true;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(files[name]);
    return true;
  }
  if (name === MODEL_FILE && kind === 'huge') {
    // A header describing one tensor larger than any adapter buffer (1.2 GB as float32),
    // followed by a few bytes: the engine must refuse it from the header alone.
    const json = Buffer.from(JSON.stringify({ big: { dtype: 'F32', shape: [300_000_000], data_offsets: [0, 1_200_000_000] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(Buffer.concat([len, json, Buffer.alloc(1024)]));
    return true;
  }
  const file = path.join(root, 'models', 'mnist', path.basename(name));
  if (!fs.existsSync(file)) {
    res.writeHead(404).end('not found');
    return true;
  }
  let body = fs.readFileSync(file);
  if (kind === 'badconfig' && name === 'config.json') {
    const cfg = JSON.parse(body.toString());
    cfg.act_fn = 'no_such_activation';
    body = Buffer.from(JSON.stringify(cfg));
  }
  if ((kind === 'bigres' || kind === 'wrapres') && name === 'config.json') {
    // The bundled weights at 7400×7400: conv_in's output alone is 16 × 7400² × 4 B = 3.5 GB,
    // more than an adapter gives one buffer (LIMIT, checked before any allocation). At
    // 16384×16384 the input is 1 GiB, within SwiftShader's maxBufferSize but more than it
    // allocates (OUT_OF_MEMORY), and conv_in's output 16 × 16384² = 2^32 elements, a count
    // that wraps to 0 in wasm32's 32-bit usize and must still be refused.
    const cfg = JSON.parse(body.toString());
    cfg.sample_size = kind === 'bigres' ? BIGRES : WRAPRES;
    body = Buffer.from(JSON.stringify(cfg));
  }
  if (name === MODEL_FILE && kind === 'cut') {
    // A server holding a partial file: Content-Length says what it has.
    body = body.subarray(0, Math.floor(body.length * CUT_AT));
  }
  if (name === MODEL_FILE && kind === 'slow') {
    // 64 KiB every 40 ms (about 3 s for the model): time to abort mid-download.
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'cache-control': 'no-store' });
    let off = 0;
    const timer = setInterval(() => {
      if (off >= body.length || res.destroyed) {
        clearInterval(timer);
        res.end();
        return;
      }
      res.write(body.subarray(off, off + 65536));
      off += 65536;
    }, 40);
    res.on('close', () => clearInterval(timer));
    return true;
  }
  if (name === MODEL_FILE && kind === 'dropped') {
    // The connection drops mid-download: the full length is announced, part is sent.
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'cache-control': 'no-store' });
    res.write(body.subarray(0, Math.floor(body.length * CUT_AT)), () => setTimeout(() => res.destroy(), 50));
    return true;
  }
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'no-store' });
  res.end(body);
  return true;
}

/** The bundled model re-saved as two safetensors shards plus their index (what diffusers'
 * `save_pretrained(max_shard_size=...)` writes), with no single-file weights. */
let sharded;
function shardedModel(root) {
  if (sharded) return sharded;
  const buf = fs.readFileSync(path.join(root, 'models', 'mnist', MODEL_FILE));
  const hlen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.toString('utf8', 8, 8 + hlen));
  const data = buf.subarray(8 + hlen);
  const names = Object.keys(header).filter((k) => k !== '__metadata__').sort();
  const half = Math.ceil(names.length / 2);
  const shardNames = ['shard-00001-of-00002.safetensors', 'shard-00002-of-00002.safetensors'];
  const files = {};
  const weightMap = {};
  [names.slice(0, half), names.slice(half)].forEach((group, i) => {
    const h = {};
    const parts = [];
    let off = 0;
    for (const n of group) {
      const [a, b] = header[n].data_offsets;
      h[n] = { dtype: header[n].dtype, shape: header[n].shape, data_offsets: [off, off + b - a] };
      parts.push(data.subarray(a, b));
      off += b - a;
      weightMap[n] = shardNames[i];
    }
    const json = Buffer.from(JSON.stringify(h));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    files[shardNames[i]] = Buffer.concat([len, json, ...parts]);
  });
  files[`${MODEL_FILE}.index.json`] = Buffer.from(JSON.stringify({ metadata: { total_size: data.length }, weight_map: weightMap }));
  sharded = files;
  return files;
}

async function launch(flags) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-chromium-'));
  const b = await chromium.launch({
    executablePath: CHROMIUM,
    ignoreDefaultArgs: true,
    args: [...BASE_FLAGS, `--user-data-dir=${dir}`, ...flags, '--remote-debugging-pipe'],
    timeout: LAUNCH_MS,
  });
  return { b, dir };
}

async function openPage(b) {
  const p = await b.newPage({ viewport: { width: 400, height: 300 }, deviceScaleFactor: 1 });
  p.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
  p.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
  p.on('crash', () => log.push('page crashed'));
  await p.goto(`${server.url}/tests/browser/pages/engine.html`, { timeout: LAUNCH_MS });
  await p.waitForFunction(() => window.wd && window.wd.state !== 'loading', null, { timeout: LAUNCH_MS });
  const state = await p.evaluate(() => window.wd.state);
  assert.equal(state, 'ready', `the wasm package did not initialise: ${await p.evaluate(() => window.wd.error)}`);
  return p;
}

const context = () => `\nbrowser log:\n${log.slice(-30).join('\n')}`;

/** Run `fn` in the page; a rejection comes back as `{ error: { name, code, message } }`. */
async function inPage(fn, arg) {
  return page.evaluate(
    async ([src, a]) => {
      const f = (0, eval)(`(${src})`);
      try {
        return { value: await f(a) };
      } catch (e) {
        return { error: { name: e?.name, code: e?.code, message: e?.message ?? String(e) } };
      }
    },
    [fn.toString(), arg],
  );
}

async function canvasShot() {
  return decodePng(await page.locator('#c').screenshot());
}

function stats(img) {
  let sum = 0, sum2 = 0;
  const n = img.width * img.height;
  for (let i = 0; i < n; i++) {
    const v = img.rgba[i * 4];
    sum += v;
    sum2 += v * v;
  }
  const mean = sum / n;
  return { mean, std: Math.sqrt(Math.max(sum2 / n - mean * mean, 0)) };
}

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found (scripts/browser-test.sh installs Debian's chromium)`);
  assert.ok(fs.existsSync(path.join(ROOT, 'web/pkg/webdiffusion.js')), 'web/pkg/webdiffusion.js is missing: run scripts/build-wasm.sh first');
  server = await startServer({ handle });
  ({ b: browser, dir: profile } = await launch(WEBGPU_FLAGS));
  page = await openPage(browser);
  const r = await inPage(async () => {
    window.engine = await window.wd.Engine.create({ canvas: document.getElementById('c') });
    return true;
  });
  assert.ok(r.value, `Engine.create failed: ${JSON.stringify(r.error)}${context()}`);
});

after(async () => {
  await browser?.close().catch(() => {});
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  await server?.close();
});

test('capabilities() is an object with the adapter, features and limits; solvers() lists every solver', async (t) => {
  const r = await inPage(() => ({ caps: window.engine.capabilities(), solvers: window.wd.Engine.solvers() }));
  assert.ok(r.value, JSON.stringify(r.error));
  const { caps, solvers } = r.value;
  t.diagnostic(`adapter: ${JSON.stringify(caps.adapter)} features: ${JSON.stringify(caps.features)}`);
  assert.equal(caps.webgpu, true);
  assert.equal(typeof caps.adapter.name, 'string');
  assert.ok(caps.adapter.name.length > 0, 'the adapter has no name');
  // TESTING.md: Chromium's SwiftShader adapter is a fallback adapter.
  assert.equal(caps.adapter.isFallback, true);
  for (const k of ['shaderF16', 'subgroups', 'timestampQuery']) assert.equal(typeof caps.features[k], 'boolean', k);
  for (const k of ['maxBufferSize', 'maxStorageBufferBindingSize', 'maxComputeWorkgroupStorageSize',
    'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupsPerDimension', 'maxStorageBuffersPerShaderStage']) {
    assert.ok(caps.limits[k] > 0, `limits.${k} = ${caps.limits[k]}`);
  }
  const names = solvers.map((s) => s.name);
  for (const n of ['ddim', 'dpmpp_2m', 'dpmpp_2m_sde', 'euler', 'unipc', 'heun',
    'dpm_adaptive_12', 'dpm_adaptive_23', 'analytic_dpm', 'analytic_ddim', 'gms']) assert.ok(names.includes(n), n);
  assert.deepEqual(solvers.filter((s) => s.adaptive).map((s) => s.name), ['dpm_adaptive_12', 'dpm_adaptive_23']);
  assert.deepEqual(solvers.find((s) => s.name === 'analytic_dpm').aliases, ['analytic_ddpm']);
  assert.ok(solvers.every((s) => Array.isArray(s.aliases) && typeof s.description === 'string'));
});

test('load(url) streams the bundled model with monotone progress events', { timeout: RUN_MS }, async (t) => {
  const r = await inPage(async (url) => {
    const events = [];
    const t0 = performance.now();
    const info = await window.engine.load(url, { onProgress: (p) => events.push({ ...p }) });
    return { info, events, ms: performance.now() - t0 };
  }, `${server.url}/models/mnist/`);
  assert.ok(r.value, `load failed: ${JSON.stringify(r.error)}${context()}`);
  const { info, events, ms } = r.value;
  const size = fs.statSync(path.join(ROOT, 'models/mnist', MODEL_FILE)).size;
  t.diagnostic(`load: ${ms.toFixed(0)} ms for ${size} bytes (${(size / 1e6 / (ms / 1e3)).toFixed(1)} MB/s incl. upload), ${events.length} progress events`);
  t.diagnostic(`ModelInfo: ${JSON.stringify(info)}`);
  assert.equal(info.className, 'UNet2DModel');
  assert.deepEqual([info.width, info.height, info.channels, info.numClassEmbeds, info.nullClass], [32, 32, 1, 11, 10]);
  assert.equal(info.predictionType, 'epsilon');
  assert.equal(info.defaultSolver, 'dpmpp_2m_sde');
  assert.equal(info.defaultGuidance, 2);
  assert.ok(info.parameters > 100_000, `parameters ${info.parameters}`);
  const w = events.filter((e) => e.file.endsWith(MODEL_FILE));
  assert.ok(w.length >= 3, `expected several progress events for the weights, got ${JSON.stringify(events)}`);
  for (let i = 1; i < w.length; i++) {
    assert.ok(w[i].loaded >= w[i - 1].loaded, `progress went back: ${JSON.stringify(w.slice(i - 1, i + 1))}`);
    assert.ok(w[i].tensorsReady >= w[i - 1].tensorsReady);
  }
  const last = w.at(-1);
  assert.equal(last.loaded, size);
  assert.equal(last.total, size);
  assert.ok(last.tensorsTotal > 10 && last.tensorsReady === last.tensorsTotal, JSON.stringify(last));
  // Most tensors went to the GPU while the file was still arriving (all but the q/k/v and
  // time projections the layers fuse on the host).
  assert.ok(info.tensorsUploadedWhileStreaming > last.tensorsTotal / 2, `only ${info.tensorsUploadedWhileStreaming} of ${last.tensorsTotal} tensors uploaded while streaming`);
  // Tensors became ready while bytes were still arriving (streamed, not parsed at the end).
  assert.ok(w.some((e) => e.tensorsReady > 0 && e.loaded < size), 'no tensor was ready before the last byte');
});

test('generate: the canvas shows each step, the result equals the native CLI for the same seed', { timeout: RUN_MS }, async (t) => {
  assert.ok(fs.existsSync(NATIVE), `native binary ${NATIVE} not found (scripts/browser-test.sh builds it with cargo build --release)`);
  const before = await canvasShot();
  // onStep returns a promise: the engine waits for it, so each step's frame can be looked at.
  await page.evaluate((opts) => {
    window.steps = [];
    window.held = null;
    window.run = window.engine.generate({
      ...opts,
      onStep: (s) => { window.steps.push(s); return new Promise((resume) => { window.held = { step: s.step, resume }; }); },
    }).then((v) => ({ value: { ...v, pixels: Array.from(v.pixels) } }), (e) => ({ error: { code: e.code, message: e.message } }));
    window.run.then((r) => { window.runResult = r; });
  }, PARITY);
  const shots = [];
  for (;;) {
    const state = await page.waitForFunction(
      () => (window.runResult !== undefined ? 'done' : window.held ? window.held.step : null), null,
      { timeout: RUN_MS, polling: 50 });
    const v = await state.jsonValue();
    if (v === 'done') break;
    // The browser presents the frame once the task that drew it has ended.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    shots.push({ step: v, img: await canvasShot() });
    await page.evaluate(() => { const h = window.held; window.held = null; h.resume(); });
  }
  const r = await page.evaluate(() => window.runResult);
  assert.ok(r.value, `generate failed: ${JSON.stringify(r.error)}${context()}`);
  const { width, height, pixels, timings, seed } = r.value;
  const steps = await page.evaluate(() => window.steps);
  t.diagnostic(`browser: ${PARITY.steps} steps in ${timings.totalMs.toFixed(0)} ms, per step ${timings.stepsMs.map((m) => m.toFixed(0)).join(', ')} ms`);
  assert.equal(seed, PARITY.seed);
  assert.deepEqual([width, height, pixels.length], [32, 32, 32 * 32 * 4]);
  assert.deepEqual(steps.map((s) => [s.step, s.total]), [[1, 4], [2, 4], [3, 4], [4, 4]]);
  assert.ok(steps.every((s) => s.ms > 0));

  // The final canvas: the 32×32 result scaled 4× into the 128×128 canvas by the render pass.
  const final = await canvasShot();
  assert.equal(final.width, 128);
  const st = stats(final);
  t.diagnostic(`canvas: mean ${st.mean.toFixed(1)}, std ${st.std.toFixed(1)}`);
  assert.ok(st.std > 30, `the canvas is (nearly) uniform: ${JSON.stringify(st)}`);
  let canvasDiff = 0;
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const c = final.rgba[((y * 4 + 2) * 128 + x * 4 + 2) * 4];
      canvasDiff = Math.max(canvasDiff, Math.abs(c - pixels[(y * 32 + x) * 4]));
    }
  }
  t.diagnostic(`canvas vs returned pixels: max |diff| ${canvasDiff}`);
  assert.ok(canvasDiff <= 2, `the canvas does not show the returned image (max diff ${canvasDiff})`);
  // Every step drew its x0 prediction, and the picture changed from step to step.
  assert.deepEqual(shots.map((s) => s.step), [1, 2, 3, 4]);
  const frames = [before, ...shots.map((s) => s.img)];
  for (let i = 1; i < frames.length; i++) {
    const diff = frames[i].rgba.reduce((n, v, k) => n + (v !== frames[i - 1].rgba[k] ? 1 : 0), 0);
    t.diagnostic(`step ${i}: ${diff} canvas bytes changed, std ${stats(frames[i]).std.toFixed(1)}`);
    if (i < frames.length - 1) assert.ok(diff > 0, `the canvas did not change at step ${i}`);
    assert.ok(stats(frames[i]).std > 10, `the canvas is uniform after step ${i}`);
  }

  // Same seed ⇒ same image as `webdiffusion sample`.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-parity-'));
  const npy = path.join(dir, 'native.npy');
  const t0 = Date.now();
  execFileSync(NATIVE, ['sample', '--seed', String(PARITY.seed), '--steps', String(PARITY.steps),
    '--solver', PARITY.solver, '--class-labels', String(PARITY.classLabel), '--out', npy, '--force', '--quiet'],
  { stdio: ['ignore', 'pipe', 'pipe'], timeout: RUN_MS });
  const native = readNpy(fs.readFileSync(npy));
  assert.deepEqual(native.shape, [1, 1, 32, 32]);
  let sum = 0, max = 0;
  for (let i = 0; i < 32 * 32; i++) {
    const d = Math.abs(toU8(native.data[i]) - pixels[i * 4]);
    sum += d;
    max = Math.max(max, d);
  }
  const mad = sum / (32 * 32) / 255;
  t.diagnostic(`parity with the native CLI (${Date.now() - t0} ms): mean |diff| ${(mad * 255).toFixed(4)}/255 = ${mad.toExponential(3)}, max ${max}/255`);
  assert.ok(mad <= 1 / 255, `mean absolute difference ${mad * 255}/255 exceeds 1/255`);
  // Control: the comparison can fail. The native image of the next seed is far from ours.
  execFileSync(NATIVE, ['sample', '--seed', String(PARITY.seed + 1), '--steps', String(PARITY.steps),
    '--solver', PARITY.solver, '--class-labels', String(PARITY.classLabel), '--out', npy, '--force', '--quiet'],
  { stdio: ['ignore', 'pipe', 'pipe'], timeout: RUN_MS });
  const other = readNpy(fs.readFileSync(npy));
  let otherSum = 0;
  for (let i = 0; i < 32 * 32; i++) otherSum += Math.abs(toU8(other.data[i]) - pixels[i * 4]);
  t.diagnostic(`control (native seed ${PARITY.seed + 1}): mean |diff| ${(otherSum / 1024).toFixed(2)}/255`);
  assert.ok(otherSum / 1024 > 5, 'another seed gives the same image: the parity check cannot fail');
  fs.rmSync(dir, { recursive: true, force: true });
  // The native image is itself a digit, not noise: the comparison is not between two blanks.
  const nst = stats({ width: 32, height: 32, rgba: Uint8Array.from(pixels) });
  assert.ok(nst.std > 30, `the result is (nearly) uniform: ${JSON.stringify(nst)}`);
});

test('abort() stops a run between steps with ABORTED; the next run succeeds', { timeout: RUN_MS }, async () => {
  const r = await inPage(async () => {
    const e = window.engine;
    let aborted;
    try {
      await e.generate({ steps: 50, seed: 1, preview: 'xt', onStep: (s) => { if (s.step === 2) e.abort(); } });
      aborted = { code: 'none' };
    } catch (err) {
      aborted = { name: err.name, code: err.code, message: err.message };
    }
    const again = await e.generate({ steps: 2, seed: 2, solver: 'ddim', guidance: 1, classLabel: 5 });
    return { aborted, again: { width: again.width, n: again.timings.stepsMs.length } };
  });
  assert.ok(r.value, `${JSON.stringify(r.error)}${context()}`);
  assert.equal(r.value.aborted.code, 'ABORTED', JSON.stringify(r.value.aborted));
  assert.equal(r.value.aborted.name, 'WebDiffusionError');
  assert.deepEqual(r.value.again, { width: 32, n: 2 });
});

test('bad options and no model are typed errors', async () => {
  const r = await inPage(async () => {
    const codes = {};
    const tryIt = async (k, f) => { try { await f(); codes[k] = 'none'; } catch (e) { codes[k] = `${e.code}: ${e.message}`; } };
    await tryIt('solver', () => window.engine.generate({ solver: 'no_such_solver', steps: 1 }));
    await tryIt('steps', () => window.engine.generate({ steps: 0 }));
    await tryIt('label', () => window.engine.generate({ classLabel: 42, steps: 1 }));
    const fresh = await window.wd.Engine.create();
    await tryIt('notLoaded', () => fresh.generate({ steps: 1 }));
    fresh.dispose();
    await tryIt('disposed', () => fresh.load('/models/mnist/'));
    return codes;
  });
  assert.ok(r.value, JSON.stringify(r.error));
  const c = r.value;
  assert.match(c.solver, /^BAD_OPTION: .*no_such_solver/);
  assert.match(c.steps, /^BAD_OPTION: .*steps/);
  assert.match(c.label, /^BAD_OPTION: .*42/);
  assert.match(c.notLoaded, /^NOT_LOADED: /);
  assert.match(c.disposed, /^DISPOSED: /);
});

test('a batch is returned as the CLI\'s --grid image, equal to the native one', { timeout: RUN_MS }, async (t) => {
  const labels = [0, 1, 2, 3];
  const r = await inPage(async (labels) => {
    const g = await window.engine.generate({ steps: 1, seed: 3, solver: 'ddim', classLabel: labels, preview: 'none' });
    return { width: g.width, height: g.height, pixels: Array.from(g.pixels) };
  }, labels);
  assert.ok(r.value, `${JSON.stringify(r.error)}${context()}`);
  const { width, height, pixels } = r.value;
  assert.deepEqual([width, height], [66, 66]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-grid-'));
  const png = path.join(dir, 'grid.png');
  execFileSync(NATIVE, ['sample', '--seed', '3', '--steps', '1', '--solver', 'ddim', '--class-labels', labels.join(','),
    '--grid', '--out', png, '--force', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'], timeout: RUN_MS });
  const native = decodePng(fs.readFileSync(png));
  fs.rmSync(dir, { recursive: true, force: true });
  assert.deepEqual([native.width, native.height], [width, height]);
  let sum = 0;
  for (let i = 0; i < width * height; i++) sum += Math.abs(native.rgba[i * 4] - pixels[i * 4]);
  const mad = sum / (width * height);
  t.diagnostic(`grid parity with the native CLI: mean |diff| ${mad.toFixed(4)}/255`);
  assert.ok(mad <= 1, `mean absolute difference ${mad}/255 exceeds 1/255`);
  // The gap between tiles is black in both.
  assert.equal(pixels[(10 * 66 + 32) * 4], 0);
});

/** `webdiffusion sample ARGS --out X.npy` → { data, stderr }. */
function nativeSample(args) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-native-'));
  const npy = path.join(dir, 'native.npy');
  try {
    const r = spawnSync(NATIVE, ['sample', ...args, '--out', npy, '--force'], { encoding: 'utf8', timeout: RUN_MS });
    assert.equal(r.status, 0, `native sample ${args.join(' ')} failed: ${r.stderr}`);
    const n = readNpy(fs.readFileSync(npy));
    return { data: n.data, shape: n.shape, stderr: r.stderr };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Mean |diff| (in 1/255 units) between a native sample and the browser's grey pixels. */
function meanDiff(native, pixels) {
  let sum = 0;
  for (let i = 0; i < 32 * 32; i++) sum += Math.abs(toU8(native[i]) - pixels[i * 4]);
  return sum / (32 * 32);
}

// Loose tolerances and no guidance keep the adaptive run to a few model calls on SwiftShader.
const ADAPTIVE = { solver: 'dpm_adaptive_23', rtol: 0.5, atol: 0.5, guidance: 1, seed: 7, classLabel: 3 };

test('dpm_adaptive_23 generates the native CLI\'s digit; onStep gets total null', { timeout: RUN_MS }, async (t) => {
  assert.ok(fs.existsSync(NATIVE), `native binary ${NATIVE} not found`);
  const r = await inPage(async (opts) => {
    const steps = [];
    const g = await window.engine.generate({ ...opts, onStep: (s) => { steps.push(s); } });
    return { steps, pixels: Array.from(g.pixels), n: g.steps, solver: g.solver, stepsMs: g.timings.stepsMs, totalMs: g.timings.totalMs };
  }, ADAPTIVE);
  assert.ok(r.value, `generate failed: ${JSON.stringify(r.error)}${context()}`);
  const { steps, pixels, n, solver, stepsMs, totalMs } = r.value;
  t.diagnostic(`browser: ${n} accepted steps, ${steps.length} attempted, ${totalMs.toFixed(0)} ms`);
  assert.equal(solver, 'dpm_adaptive_23');
  assert.ok(steps.length >= n && n >= 2, JSON.stringify(steps));
  assert.ok(steps.every((s) => s.total === null && s.ms >= 0 && typeof s.accepted === 'boolean'), JSON.stringify(steps));
  assert.equal(steps.at(-1).step, n);
  assert.equal(steps.at(-1).timestep, 0);
  assert.equal(stepsMs.length, n);

  const args = ['--solver', 'dpm_adaptive_23', '--rtol', String(ADAPTIVE.rtol), '--atol', String(ADAPTIVE.atol),
    '--guidance', '1', '--class-labels', String(ADAPTIVE.classLabel)];
  const native = nativeSample([...args, '--seed', String(ADAPTIVE.seed)]);
  const m = native.stderr.match(/adaptive: (\d+) accepted steps, (\d+) rejected/);
  assert.ok(m, native.stderr);
  // Same decisions: the error norm is far from 1 at these tolerances unless the two runs
  // diverge, so the accepted/rejected counts must agree exactly.
  assert.deepEqual([Number(m[1]), Number(m[2])], [n, steps.length - n], `native: ${m[0]}`);
  const mad = meanDiff(native.data, pixels);
  t.diagnostic(`parity with the native CLI: mean |diff| ${mad.toFixed(4)}/255 (native: ${m[0]})`);
  assert.ok(mad <= 1, `mean absolute difference ${mad}/255 exceeds 1/255`);
  const other = nativeSample([...args, '--seed', String(ADAPTIVE.seed + 1)]);
  const control = meanDiff(other.data, pixels);
  t.diagnostic(`control (native seed ${ADAPTIVE.seed + 1}): mean |diff| ${control.toFixed(2)}/255`);
  assert.ok(control > 5, 'another seed gives the same image: the parity check cannot fail');
  const st = stats({ width: 32, height: 32, rgba: Uint8Array.from(pixels) });
  assert.ok(st.std > 30, `the result is (nearly) uniform: ${JSON.stringify(st)}`);
});

test('analytic_ddim runs on the bundled model with its held-out digits, as the native CLI', { timeout: RUN_MS }, async (t) => {
  const opts = { solver: 'analytic_ddim', steps: 3, momentSamples: 2, guidance: 1, seed: 5, classLabel: 2 };
  const r = await inPage(async (opts) => {
    const g = await window.engine.generate({ ...opts, preview: 'none' });
    return { pixels: Array.from(g.pixels), solver: g.solver, steps: g.steps, ms: g.timings.totalMs };
  }, opts);
  assert.ok(r.value, `generate failed: ${JSON.stringify(r.error)}${context()}`);
  t.diagnostic(`browser: ${r.value.steps} steps (Γ from 2 held-out digits) in ${r.value.ms.toFixed(0)} ms`);
  assert.equal(r.value.steps, 3);
  const native = nativeSample(['--solver', 'analytic_ddim', '--steps', '3', '--moment-samples', '2', '--guidance', '1',
    '--class-labels', '2', '--seed', '5']);
  const mad = meanDiff(native.data, r.value.pixels);
  t.diagnostic(`parity with the native CLI: mean |diff| ${mad.toFixed(4)}/255`);
  assert.ok(mad <= 1, `mean absolute difference ${mad}/255 exceeds 1/255`);
  const st = stats({ width: 32, height: 32, rgba: Uint8Array.from(r.value.pixels) });
  assert.ok(st.std > 30, `the result is (nearly) uniform: ${JSON.stringify(st)}`);
});

test('analytic_dpm takes momentData as a URL (the default file gives the default image) or a Float32Array', { timeout: RUN_MS }, async (t) => {
  const r = await inPage(async (url) => {
    const base = { solver: 'analytic_dpm', steps: 5, momentSamples: 2, guidance: 1, seed: 9, classLabel: 1, preview: 'none' };
    const px = async (o) => Array.from((await window.engine.generate({ ...base, ...o })).pixels);
    const byDefault = await px({});
    const byUrl = await px({ momentData: new URL(url) });
    // Two all-white images: far from the digits, a different Γ, so a different image.
    const blank = await px({ momentData: new Float32Array(2 * 32 * 32).fill(1) });
    return { byDefault, byUrl, blank };
  }, `${server.url}/models/mnist/eval/heldout.safetensors`);
  assert.ok(r.value, `generate failed: ${JSON.stringify(r.error)}${context()}`);
  const { byDefault, byUrl, blank } = r.value;
  assert.deepEqual(byUrl, byDefault);
  const d = byDefault.reduce((n, v, i) => n + Math.abs(v - blank[i]), 0) / byDefault.length;
  t.diagnostic(`held-out digits vs all-white momentData: mean |diff| ${d.toFixed(2)}/255`);
  assert.ok(d > 0, 'momentData does not change the image');
});

test('gms on a model without moment outputs, and options for other solvers, are BAD_OPTION', async () => {
  const r = await inPage(async () => {
    const codes = {};
    const tryIt = async (k, f) => { try { await f(); codes[k] = 'none'; } catch (e) { codes[k] = `${e.code}: ${e.message}`; } };
    await tryIt('gms', () => window.engine.generate({ solver: 'gms', steps: 2 }));
    await tryIt('rtol', () => window.engine.generate({ solver: 'ddim', steps: 1, rtol: 0.1 }));
    await tryIt('atol', () => window.engine.generate({ solver: 'dpm_adaptive_12', atol: -1 }));
    await tryIt('momentData', () => window.engine.generate({ solver: 'ddim', steps: 1, momentData: new Float32Array(1024) }));
    await tryIt('momentShape', () => window.engine.generate({ solver: 'analytic_dpm', steps: 1, momentData: new Float32Array(1000) }));
    return codes;
  });
  assert.ok(r.value, JSON.stringify(r.error));
  const c = r.value;
  assert.match(c.gms, /^BAD_OPTION: solver gms needs a model that predicts E\[ε²\].*out_channels 1/);
  assert.match(c.rtol, /^BAD_OPTION: .*rtol.*adaptive/);
  assert.match(c.atol, /^BAD_OPTION: .*atol.*positive/);
  assert.match(c.momentData, /^BAD_OPTION: .*momentData.*analytic/);
  assert.match(c.momentShape, /^BAD_OPTION: .*momentData.*1000 values/);
});

test('runs needing more GPU memory than the adapter gives are LIMIT or OUT_OF_MEMORY; the engine generates afterwards', { timeout: RUN_MS }, async (t) => {
  const r = await inPage(async (base) => {
    const e = window.engine;
    const limits = e.capabilities().limits;
    const info = await e.load(`${base}/broken/bigres/`);
    const fails = async () => {
      try {
        await e.generate({ steps: 1, solver: 'ddim', seed: 1, classLabel: 0, preview: 'none' });
        return { code: 'none' };
      } catch (x) {
        return { name: x.name, code: x.code, message: x.message };
      }
    };
    const t0 = performance.now();
    const err = await fails();
    const failMs = performance.now() - t0;
    await e.load(`${base}/broken/wrapres/`);
    const wrapped = await fails();
    await e.load(`${base}/models/mnist/`);
    const g = await e.generate({ steps: 2, solver: 'ddim', seed: 4, classLabel: 4, guidance: 1, preview: 'none' });
    return { limits, size: [info.width, info.height], err, failMs, wrapped, after: { width: g.width, pixels: Array.from(g.pixels) } };
  }, server.url);
  assert.ok(r.value, `${JSON.stringify(r.error)}${context()}`);
  const { limits, size, err, failMs, wrapped, after } = r.value;
  t.diagnostic(`maxBufferSize ${limits.maxBufferSize}, maxStorageBufferBindingSize ${limits.maxStorageBufferBindingSize}; ${size.join('×')} model: ${err.code} after ${failMs.toFixed(0)} ms: ${err.message}`);
  assert.deepEqual(size, [BIGRES, BIGRES]);
  assert.equal(err.name, 'WebDiffusionError', JSON.stringify(err));
  assert.ok(['LIMIT', 'OUT_OF_MEMORY'].includes(err.code), JSON.stringify(err));
  t.diagnostic(`${WRAPRES}² model: ${wrapped.code}: ${wrapped.message}`);
  assert.equal(wrapped.name, 'WebDiffusionError', JSON.stringify(wrapped));
  assert.ok(['LIMIT', 'OUT_OF_MEMORY'].includes(wrapped.code), JSON.stringify(wrapped));
  assert.match(wrapped.message, /17179869184|out of memory/i);
  // The engine is usable: the bundled model loads again and samples a digit.
  assert.equal(after.width, 32);
  const st = stats({ width: 32, height: 32, rgba: Uint8Array.from(after.pixels) });
  assert.ok(st.std > 30, `the run after the failure is (nearly) uniform: ${JSON.stringify(st)}`);
});

test('a list of file URLs loads; an unreachable server is a NETWORK error naming the URL', { timeout: RUN_MS }, async () => {
  const r = await inPage(async (base) => {
    const info = await window.engine.load(['config.json', 'scheduler_config.json', 'diffusion_pytorch_model.safetensors'].map((n) => base + n));
    let err;
    try {
      await window.engine.load('http://127.0.0.1:9/unreachable/');
    } catch (e) {
      err = { code: e.code, message: e.message };
    }
    return { width: info.width, err };
  }, `${server.url}/models/mnist/`);
  assert.ok(r.value, `${JSON.stringify(r.error)}${context()}`);
  assert.equal(r.value.width, 32);
  assert.equal(r.value.err?.code, 'NETWORK', JSON.stringify(r.value.err));
  assert.match(r.value.err.message, /127\.0\.0\.1:9\/unreachable\/config\.json/);
  assert.match(r.value.err.message, /CORS/);
});

test('a wrong URL is an HTTP error naming the file and the status', async () => {
  const r = await inPage((url) => window.engine.load(url), `${server.url}/models/no-such-model/`);
  assert.ok(r.error, 'load should have failed');
  assert.equal(r.error.name, 'WebDiffusionError');
  assert.equal(r.error.code, 'HTTP', JSON.stringify(r.error));
  assert.match(r.error.message, /no-such-model\/config\.json/);
  assert.match(r.error.message, /404/);
  // A failed load leaves the loaded model in place.
  const g = await inPage(async () => (await window.engine.generate({ steps: 1, seed: 9 })).width);
  assert.equal(g.value, 32, JSON.stringify(g.error));
});

for (const kind of ['cut', 'dropped']) {
  test(`a safetensors file ${kind === 'cut' ? 'served cut short' : 'whose connection drops'} is TRUNCATED, naming the file and the sizes`, { timeout: RUN_MS }, async () => {
    const r = await inPage((url) => window.engine.load(url), `${server.url}/broken/${kind}/`);
    assert.ok(r.error, 'load should have failed');
    assert.equal(r.error.code, 'TRUNCATED', JSON.stringify(r.error));
    const size = fs.statSync(path.join(ROOT, 'models/mnist', MODEL_FILE)).size;
    assert.match(r.error.message, new RegExp(MODEL_FILE));
    assert.match(r.error.message, new RegExp(`${size} bytes`));
    assert.match(r.error.message, new RegExp(`${Math.floor(size * CUT_AT)} bytes`));
  });
}

test('a tensor larger than the adapter allows is LIMIT, from the header alone', async () => {
  const r = await inPage((url) => window.engine.load(url), `${server.url}/broken/huge/`);
  assert.ok(r.error, 'load should have failed');
  assert.equal(r.error.code, 'LIMIT', JSON.stringify(r.error));
  assert.match(r.error.message, /maxBufferSize/);
  assert.match(r.error.message, /1200000000 bytes/);
  assert.match(r.error.message, /`big`/);
});

test('a download is aborted by its AbortSignal and by abort(); the fetch hook is used; the engine loads afterwards', { timeout: RUN_MS }, async (t) => {
  const r = await inPage(async (base) => {
    const out = {};
    const attempt = async (how) => {
      const ctl = new AbortController();
      const t0 = performance.now();
      let firstBytes = null;
      try {
        await window.engine.load(`${base}/broken/slow/`, {
          signal: ctl.signal,
          onProgress: (p) => {
            if (p.file.endsWith('.safetensors') && p.loaded > 0 && firstBytes === null) {
              firstBytes = p.loaded;
              if (how === 'signal') ctl.abort();
              else window.engine.abort();
            }
          },
        });
        return { code: 'none' };
      } catch (e) {
        return { code: e.code, message: e.message, firstBytes, ms: performance.now() - t0 };
      }
    };
    out.signal = await attempt('signal');
    out.method = await attempt('method');
    const calls = [];
    const info = await window.engine.load(`${base}/models/mnist/`, {
      fetch: (url, init) => { calls.push(url); return fetch(url, init); },
    });
    out.calls = calls;
    out.width = info.width;
    // The model works after the aborted loads.
    const g = await window.engine.generate({ steps: 1, seed: 4 });
    out.generated = g.width;
    return out;
  }, server.url);
  assert.ok(r.value, `${JSON.stringify(r.error)}${context()}`);
  const v = r.value;
  t.diagnostic(`aborted after ${v.signal.firstBytes} bytes in ${v.signal.ms?.toFixed(0)} ms (signal), ${v.method.firstBytes} bytes in ${v.method.ms?.toFixed(0)} ms (abort())`);
  for (const k of ['signal', 'method']) {
    assert.equal(v[k].code, 'ABORTED', `${k}: ${JSON.stringify(v[k])}`);
    assert.ok(v[k].ms < 2500, `${k}: took ${v[k].ms} ms to stop (the slow download takes ~3 s)`);
  }
  assert.deepEqual(v.calls.map((u) => u.split('/').pop()), ['config.json', 'scheduler_config.json', MODEL_FILE]);
  assert.equal(v.width, 32);
  assert.equal(v.generated, 32);
});

test('a sharded checkpoint (index + shards) loads from a folder URL and gives the same image', { timeout: RUN_MS }, async () => {
  const r = await inPage(async (base) => {
    const opts = { steps: 2, seed: 5, classLabel: 1, solver: 'euler' };
    const a = await window.engine.generate(opts);
    const files = new Set();
    const info = await window.engine.load(`${base}/broken/sharded/`, { onProgress: (p) => files.add(p.file.split('/').pop()) });
    const b = await window.engine.generate(opts);
    let same = a.pixels.length === b.pixels.length;
    for (let i = 0; same && i < a.pixels.length; i++) same = a.pixels[i] === b.pixels[i];
    return { files: [...files].sort(), parameters: info.parameters, same };
  }, server.url);
  assert.ok(r.value, `${JSON.stringify(r.error)}${context()}`);
  assert.deepEqual(r.value.files, ['config.json', `${MODEL_FILE}.index.json`, 'scheduler_config.json',
    'shard-00001-of-00002.safetensors', 'shard-00002-of-00002.safetensors']);
  assert.ok(r.value.same, 'the sharded model gives another image than the single file');
});

test('an unsupported config is UNSUPPORTED_CONFIG naming the key', async () => {
  const r = await inPage((url) => window.engine.load(url), `${server.url}/broken/badconfig/`);
  assert.ok(r.error, 'load should have failed');
  assert.equal(r.error.code, 'UNSUPPORTED_CONFIG', JSON.stringify(r.error));
  assert.match(r.error.message, /act_fn/);
});

test('load([File, ...]) reads files the user picked', { timeout: RUN_MS }, async () => {
  const r = await inPage(async (base) => {
    const names = ['config.json', 'scheduler_config.json', 'diffusion_pytorch_model.safetensors'];
    const files = await Promise.all(names.map(async (n) => new File([await (await fetch(base + n)).blob()], n)));
    const events = [];
    const info = await window.engine.load(files, { onProgress: (p) => events.push(p.loaded) });
    return { info, events: events.length };
  }, `${server.url}/models/mnist/`);
  assert.ok(r.value, `${JSON.stringify(r.error)}${context()}`);
  assert.equal(r.value.info.width, 32);
  assert.ok(r.value.events > 0);
});

test('in a Web Worker with an OffscreenCanvas: loads, generates and draws while the page keeps animating', { timeout: RUN_MS }, async (t) => {
  const p = await browser.newPage({ viewport: { width: 400, height: 300 }, deviceScaleFactor: 1 });
  p.on('console', (m) => log.push(`worker page console.${m.type()}: ${m.text()}`));
  try {
    await p.goto(`${server.url}/tests/browser/pages/worker.html`, { timeout: LAUNCH_MS });
    await p.waitForFunction(() => window.workerResult !== undefined, null, { timeout: RUN_MS, polling: 200 });
    const r = await p.evaluate(() => ({ ...window.workerResult, frames: window.frames }));
    assert.ok(r.value, `the worker failed: ${JSON.stringify(r.error)}${context()}`);
    t.diagnostic(`worker: 3 steps in ${r.value.totalMs.toFixed(0)} ms; the page drew ${r.frames} animation frames meanwhile`);
    assert.deepEqual(r.value.steps, [1, 2, 3]);
    assert.ok(r.value.max - r.value.min > 100, `flat image: ${JSON.stringify(r.value)}`);
    assert.ok(r.frames > 10, `the page's requestAnimationFrame ran only ${r.frames} times`);
    await p.evaluate(() => new Promise((res) => requestAnimationFrame(() => requestAnimationFrame(res))));
    const shot = stats(decodePng(await p.locator('#c').screenshot()));
    assert.ok(shot.std > 30, `the OffscreenCanvas shows nothing: ${JSON.stringify(shot)}`);
  } finally {
    await p.close();
  }
});

test('without --enable-unsafe-webgpu, Engine.create() rejects with NO_ADAPTER or NO_WEBGPU', { timeout: 2 * LAUNCH_MS }, async (t) => {
  const { b, dir } = await launch([]);
  try {
    const p = await openPage(b);
    const r = await p.evaluate(async () => {
      try {
        await window.wd.Engine.create();
        return { code: 'none' };
      } catch (e) {
        return { name: e.name, code: e.code, message: e.message };
      }
    });
    t.diagnostic(`rejection: ${r.code}: ${r.message}`);
    assert.equal(r.name, 'WebDiffusionError');
    assert.ok(['NO_ADAPTER', 'NO_WEBGPU'].includes(r.code), JSON.stringify(r));
    assert.match(r.message, /WebGPU/);
  } finally {
    await b.close().catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
