// The demo page (www/index.html) with the real engine (web/pkg from scripts/build-wasm.sh) in
// headless Chromium, WebGPU on SwiftShader: capabilities shown, the bundled model loads with
// monotone progress, a digit forms on the live canvas (screenshots), abort then a second
// run, a second visit served from the weight cache (the server's request log), the main
// thread's frame cadence worker vs { worker: false }, and the page's message when the
// browser has no WebGPU. SwiftShader is slow: few steps.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startDemoServer, DEFAULT_MOUNTS } from '../../scripts/demo-server.mjs';
import { launch, decodePng } from './web-helpers.mjs';

const STEPS = Number(process.env.WEBDIFFUSION_DEMO_STEPS ?? 6);
const READY_MS = 120_000;
const LOAD_MS = 180_000;
const RUN_MS = Number(process.env.WEBDIFFUSION_BROWSER_TIMEOUT_MS ?? 300_000);

let server;
let chrome;
before(async () => {
  const pkg = new URL('../../web/pkg/webdiffusion.js', import.meta.url);
  assert.ok(fs.existsSync(pkg), 'web/pkg/webdiffusion.js is missing: run scripts/build-wasm.sh first');
  // /cut/ serves the models again, with the bundled weights breaking off after 1 MB.
  server = await startDemoServer({
    mounts: { ...DEFAULT_MOUNTS, '/cut/': DEFAULT_MOUNTS['/models/'] },
    truncate: { '/cut/mnist/diffusion_pytorch_model.safetensors': 1_000_000 },
  });
  chrome = await launch();
});
after(async () => {
  await chrome?.close();
  await server?.close();
});

const context = (page) => async () =>
  `\nwindow.demo: ${JSON.stringify(await page.evaluate(() => ({ ...window.demo, progress: window.demo.progress.length })).catch(() => null))}` +
  `\nbrowser log:\n${chrome.log.slice(-40).join('\n')}`;

async function waitState(page, states, ms) {
  try {
    await page.waitForFunction((s) => s.includes(window.demo?.state), states, { timeout: ms, polling: 200 });
  } catch (e) {
    throw new Error(`the demo did not reach ${states.join('/')} within ${ms / 1000} s (${e.message.split('\n')[0]})${await context(page)()}`);
  }
  return page.evaluate(() => window.demo.state);
}

async function openDemo(query = '') {
  const page = await chrome.open(`${server.url}/www/index.html${query}`, { viewport: { width: 1200, height: 900 } });
  const state = await waitState(page, ['ready', 'error', 'nowebgpu'], READY_MS);
  assert.equal(state, 'ready', await context(page)());
  return page;
}

async function loadDefault(page) {
  await page.click('#load');
  const state = await waitState(page, ['loaded', 'error'], LOAD_MS);
  assert.equal(state, 'loaded', await context(page)());
}

async function generate(page, { steps = STEPS, seed = 1, label = '3', solver } = {}) {
  await page.fill('#steps', String(steps));
  await page.fill('#seed', String(seed));
  await page.selectOption('#class-label', label);
  if (solver) await page.selectOption('#solver', solver);
  await page.click('#generate');
}

/** The canvas as the user sees it, resampled to w×h cell centres, as gray levels. */
async function canvasCells(page, w, h) {
  const png = await decodePng(await page.locator('#canvas').screenshot());
  const cells = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const px = Math.floor(((x + 0.5) * png.width) / w);
      const py = Math.floor(((y + 0.5) * png.height) / h);
      const o = (py * png.width + px) * 4;
      cells[y * w + x] = (png.data[o] + png.data[o + 1] + png.data[o + 2]) / 3;
    }
  }
  return cells;
}

const meanAbs = (a, b) => a.reduce((s, v, i) => s + Math.abs(v - b[i]), 0) / a.length;

test('demo: capabilities, monotone load progress, a digit forms on the live canvas', { timeout: READY_MS + LOAD_MS + RUN_MS }, async (t) => {
  const page = await openDemo();
  const d = await page.evaluate(() => window.demo);
  t.diagnostic(`adapter: ${JSON.stringify(d.capabilities.adapter)}; in worker: ${d.inWorker}`);
  assert.equal(d.inWorker, true);
  assert.match(await page.locator('#caps').innerText(), /adapter[\s\S]*subgroups[\s\S]*max storage binding/);
  assert.ok(d.solvers.length >= 3, `solver menu: ${JSON.stringify(d.solvers)}`);
  assert.equal(await page.locator('#solver option').count(), d.solvers.length);

  await loadDefault(page);
  const progress = await page.evaluate(() => window.demo.progress);
  const byFile = new Map();
  for (const p of progress) byFile.set(p.file, [...(byFile.get(p.file) ?? []), p]);
  const weights = [...byFile.entries()].find(([f]) => f.endsWith('.safetensors'));
  assert.ok(weights, `no progress for the weights: ${[...byFile.keys()]}`);
  for (const [file, ps] of byFile) {
    const loaded = ps.map((p) => p.loaded);
    assert.deepEqual(loaded, [...loaded].sort((a, b) => a - b), `progress of ${file} goes backwards`);
  }
  const last = weights[1].at(-1);
  assert.equal(last.loaded, last.total, JSON.stringify(last));
  assert.equal(last.tensorsReady, last.tensorsTotal, JSON.stringify(last));
  t.diagnostic(`${progress.length} progress events; weights ${last.total} bytes, ${last.tensorsTotal} tensors`);

  const blank = await canvasCells(page, 32, 32);
  await generate(page);
  assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
  const final = await canvasCells(page, 32, 32);
  const r = await page.evaluate(() => window.demo);
  t.diagnostic(`steps (ms): ${r.steps.map((s) => s.ms.toFixed(0)).join(' ')}; total ${r.result.timings.totalMs.toFixed(0)} ms`);
  assert.equal(r.steps.length, STEPS);
  assert.deepEqual(r.steps.map((s) => s.step), Array.from({ length: STEPS }, (_, i) => i + 1));
  assert.match(await page.locator('#step-text').innerText(), new RegExp(`${STEPS} steps in \\d+ ms`));
  assert.equal(await page.locator('#timeline span').count(), STEPS);

  // A digit: mostly dark background with a solid bright stroke, where the canvas was blank.
  const bright = final.filter((v) => v > 160).length / final.length;
  const dark = final.filter((v) => v < 60).length / final.length;
  t.diagnostic(`final canvas: ${(100 * bright).toFixed(1)} % bright, ${(100 * dark).toFixed(1)} % dark; blank before: mean ${(blank.reduce((a, b) => a + b, 0) / blank.length).toFixed(1)}`);
  assert.ok(bright > 0.04 && bright < 0.5, `bright fraction ${bright}`);
  assert.ok(dark > 0.4, `dark fraction ${dark}`);
  assert.ok(meanAbs(blank, final) > 5, 'the canvas did not change');
  // The canvas (drawn by the worker's render pass) shows the image generate() returned.
  assert.deepEqual([r.result.width, r.result.height], [32, 32]);
  const diff = meanAbs(final, r.result.gray);
  const maxDiff = Math.max(...final.map((v, i) => Math.abs(v - r.result.gray[i])));
  t.diagnostic(`canvas vs returned pixels: mean |diff| ${diff.toFixed(2)}, max ${maxDiff.toFixed(0)} gray levels`);
  assert.ok(diff <= 2 && maxDiff <= 8, `the canvas does not show the returned image: mean ${diff}, max ${maxDiff}`);
  await page.close();
});

test('demo: abort stops a run between steps and the next run completes', { timeout: READY_MS + LOAD_MS + 2 * RUN_MS }, async () => {
  const page = await openDemo();
  await loadDefault(page);
  await generate(page, { steps: 200 });
  await page.waitForFunction(() => window.demo.steps.length >= 1, null, { timeout: RUN_MS, polling: 50 });
  await page.click('#abort');
  assert.equal(await waitState(page, ['aborted', 'done', 'error'], RUN_MS), 'aborted', await context(page)());
  const aborted = await page.evaluate(() => ({ code: window.demo.errorCode, steps: window.demo.steps.length }));
  assert.equal(aborted.code, 'ABORTED');
  assert.ok(aborted.steps < 200, `aborted after ${aborted.steps} steps`);
  await generate(page, { steps: 2, seed: 5 });
  assert.equal(await waitState(page, ['done', 'error', 'aborted'], RUN_MS), 'done', await context(page)());
  await page.close();
});

test('demo: an adaptive solver from the menu disables Steps and runs with total null', { timeout: READY_MS + LOAD_MS + RUN_MS }, async (t) => {
  const page = await openDemo();
  await loadDefault(page);
  await page.selectOption('#solver', 'dpm_adaptive_12');
  assert.equal(await page.locator('#steps').isDisabled(), true);
  assert.match(await page.locator('#solver-description').innerText(), /adaptive step size/);
  await page.fill('#seed', '2');
  await page.selectOption('#class-label', '7');
  await page.click('#generate');
  assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
  const r = await page.evaluate(() => ({ steps: window.demo.steps, solver: window.demo.result.solver, stepsMs: window.demo.result.timings.stepsMs }));
  t.diagnostic(`dpm_adaptive_12: ${r.stepsMs.length} accepted steps, ${r.steps.length} attempted`);
  assert.equal(r.solver, 'dpm_adaptive_12');
  assert.ok(r.steps.length >= r.stepsMs.length && r.stepsMs.length >= 2, JSON.stringify(r));
  assert.ok(r.steps.every((s) => s.total === null), JSON.stringify(r.steps));
  assert.match(await page.locator('#step-text').innerText(), new RegExp(`${r.stepsMs.length} steps in \\d+ ms`));
  await page.selectOption('#solver', 'ddim');
  assert.equal(await page.locator('#steps').isDisabled(), false);
  await page.close();
});

test('demo: the second visit loads the model from the cache (no download in the server log)', { timeout: 2 * (READY_MS + LOAD_MS) }, async (t) => {
  const first = await openDemo();
  await first.evaluate(() => caches.delete('webdiffusion-weights-v1'));
  const n0 = server.log.length;
  await loadDefault(first);
  const downloaded = server.log.slice(n0).filter((e) => e.path.startsWith('/models/'));
  assert.ok(downloaded.some((e) => e.path.endsWith('.safetensors')), `first visit: ${JSON.stringify(downloaded)}`);
  // Storing finishes alongside the engine's read; wait for the weights' 'stored' event.
  await first.waitForFunction(() => window.demo.cache.some((e) => e.status === 'stored' && e.url.endsWith('.safetensors')), null, { timeout: 30_000 });
  await first.close();

  const n1 = server.log.length;
  const second = await openDemo();
  await loadDefault(second);
  const again = server.log.slice(n1).filter((e) => e.path.startsWith('/models/'));
  const cache = await second.evaluate(() => window.demo.cache);
  t.diagnostic(`second visit: ${again.length} requests to models/; cache events ${JSON.stringify(cache.map((e) => [e.status, e.url.split('/').pop()]))}`);
  assert.deepEqual(again, [], 'the second visit must not download model files');
  assert.ok(cache.some((e) => e.status === 'hit' && e.url.endsWith('.safetensors')));
  assert.match(await second.locator('#cache-text').innerText(), /from the cache/);
  await second.close();
});

test('demo: when storage refuses the weights (quota), the page says they are kept in memory', { timeout: READY_MS + LOAD_MS }, async () => {
  const page = await openDemo();
  await page.evaluate(() => caches.delete('webdiffusion-weights-v1'));
  const cdp = await chrome.context.newCDPSession(page);
  const origin = new URL(server.url).origin;
  await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: 100_000 });
  try {
    await loadDefault(page);
    await page.waitForFunction(() => window.demo.warnings.length > 0, null, { timeout: 30_000 });
    assert.ok(await page.locator('#cache-warning').isVisible());
    assert.match(await page.locator('#cache-warning').innerText(), /refused to store .*[Qq]uota.*kept in memory/);
  } finally {
    await cdp.send('Storage.overrideQuotaForOrigin', { origin });
    await page.close();
  }
});

test('demo: main-thread responsiveness during a run, worker vs { worker: false }', { timeout: 2 * (READY_MS + LOAD_MS + RUN_MS) }, async (t) => {
  // With GPU compositing, SwiftShader's WebGPU work holds up the compositor itself and
  // requestAnimationFrame drops to ~1 frame/s whichever thread runs the engine; software
  // compositing takes the compositor out of it, so what is left is the page's main thread
  // (the WebGPU canvas then stays black on screen; the engine runs and draws all the same).
  const soft = await launch({ extraFlags: ['--disable-gpu-compositing'] });
  const result = {};
  try {
    for (const [name, query] of [['worker', ''], ['main', '?worker=0']]) {
      const page = await soft.open(`${server.url}/www/index.html${query}`, { viewport: { width: 1200, height: 900 } });
      assert.equal(await waitState(page, ['ready', 'error', 'nowebgpu'], READY_MS), 'ready', soft.log.join('\n'));
      await loadDefault(page);
      await generate(page, { steps: STEPS, seed: 2 });
      assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
      result[name] = await page.evaluate(() => ({ ...window.demo.frames, ms: window.demo.result.timings.totalMs, inWorker: window.demo.inWorker }));
      await page.close();
    }
  } finally {
    await soft.close();
  }
  const fmt = (r) => `${r.fps.toFixed(1)} frames/s, longest frame gap ${r.maxGapMs.toFixed(0)} ms, longest main-thread stall ${r.maxStallMs.toFixed(0)} ms, run ${r.ms.toFixed(0)} ms`;
  t.diagnostic(`${STEPS} steps, engine in a worker: ${fmt(result.worker)}`);
  t.diagnostic(`${STEPS} steps, engine on the main thread: ${fmt(result.main)}`);
  assert.equal(result.worker.inWorker, true);
  assert.equal(result.main.inWorker, false);
  // Robust on a loaded 2-core machine: with the engine in a worker the page keeps drawing
  // throughout the run (most frames on time, no freeze of a second or more).
  assert.ok(result.worker.fps > 20, fmt(result.worker));
  assert.ok(result.worker.maxGapMs < 1000 && result.worker.maxStallMs < 1000, fmt(result.worker));
});

test('demo: a wrong URL and a truncated download give readable errors on the page; then local files (and the picked folder) load', { timeout: READY_MS + 3 * LOAD_MS }, async (t) => {
  const page = await openDemo('?model=/models/no-such-model/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'error', await context(page)());
  const missing = await page.locator('#status').innerText();
  t.diagnostic(`wrong URL: ${missing}`);
  assert.equal(await page.evaluate(() => window.demo.errorCode), 'HTTP');
  assert.match(missing, /Loading failed: .*no-such-model\/config\.json.*404/);

  await page.fill('#model-url', '/cut/mnist/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'error', await context(page)());
  const cut = await page.locator('#status').innerText();
  t.diagnostic(`truncated: ${cut}`);
  assert.ok(['TRUNCATED', 'NETWORK'].includes(await page.evaluate(() => window.demo.errorCode)), cut);
  assert.match(cut, /Loading failed: .*diffusion_pytorch_model\.safetensors/);

  // The same engine then loads the model from local files (the file picker).
  await page.check('input[name="source"][value="files"]');
  const dir = new URL('../../models/mnist/', import.meta.url).pathname;
  await page.setInputFiles('#model-files', ['config.json', 'scheduler_config.json', 'diffusion_pytorch_model.safetensors'].map((f) => dir + f));
  const before = server.log.length;
  await loadDefault(page);
  assert.equal(await page.evaluate(() => window.demo.model.width), 32);
  assert.deepEqual(server.log.slice(before).filter((e) => e.path.startsWith('/models/')), [], 'local files must not be fetched');
  const params = await page.evaluate(() => window.demo.model.parameters);

  // And from the whole folder picked (webkitdirectory): its README, training logs and the
  // eval/ subfolder (another config and safetensors) are left alone.
  await page.check('input[name="source"][value="folder"]');
  await page.setInputFiles('#model-folder', dir);
  const before2 = server.log.length;
  await loadDefault(page);
  assert.equal(await page.evaluate(() => window.demo.model.width), 32);
  assert.equal(await page.evaluate(() => window.demo.model.parameters), params, 'the picked folder loaded other weights than the picked files');
  assert.deepEqual(server.log.slice(before2).filter((e) => e.path.startsWith('/models/')), [], 'a picked folder must not be fetched');
  await page.close();
});

test('demo without WebGPU shows the explanatory message', { timeout: 2 * READY_MS }, async () => {
  const nogpu = await launch({ webgpu: false });
  try {
    const page = await nogpu.open(`${server.url}/www/index.html`);
    await page.waitForFunction(() => window.demo && window.demo.state !== 'init', null, { timeout: READY_MS });
    const d = await page.evaluate(() => ({ state: window.demo.state, code: window.demo.errorCode, error: window.demo.error }));
    const log = `\n${JSON.stringify(d)}\n${nogpu.log.join('\n')}`;
    assert.equal(d.state, 'nowebgpu', log);
    assert.ok(['NO_WEBGPU', 'NO_ADAPTER'].includes(d.code), log);
    assert.ok(await page.locator('#nowebgpu').isVisible(), log);
    assert.ok(!(await page.locator('#app').isVisible()), log);
    assert.match(await page.locator('#nowebgpu').innerText(), /WebGPU is not available[\s\S]*(WebGPU|adapter)[\s\S]*Chrome/);
    assert.ok(!nogpu.log.some((l) => l.startsWith('pageerror') || l === 'page crashed'), log);
  } finally {
    await nogpu.close();
  }
});
