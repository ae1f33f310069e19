// The galaxy (GalaxyScoreNet, models/galaxy/hsc32 from scripts/setup-galaxy.sh) and terrain
// (GuidedUNetModel, models/terrain from scripts/setup-terrain.sh) networks through the
// browser Engine: load by folder URL, generate with the config's render mode, the same
// pixels as the native CLI's PNG for the same seed/solver/steps (mean |diff| ≤ 1/255),
// terrain's `difficulty` required (BAD_OPTION naming it and its range), and the time per
// sample. The converted weights are not redistributable, so each part skips when its folder
// is absent, unless WEBDIFFUSION_REQUIRE_GALAXY=1 / WEBDIFFUSION_REQUIRE_TERRAIN=1.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from './server.mjs';
import { decodePng } from './png.mjs';
import { launch } from './web-helpers.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const NATIVE = process.env.WEBDIFFUSION_BIN ??
  path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, 'target'), 'release', 'webdiffusion');
const RUN_MS = Number(process.env.WEBDIFFUSION_BROWSER_TIMEOUT_MS ?? 300_000);

const GALAXY = 'models/galaxy/hsc32';
const TERRAIN = 'models/terrain';
const present = (dir) => fs.existsSync(path.join(ROOT, dir, 'config.json')) &&
  fs.existsSync(path.join(ROOT, dir, 'model.safetensors'));

function skipReason(dir, env) {
  if (present(dir)) return false;
  assert.notEqual(process.env[env], '1', `${env}=1 but ${dir} has no converted model`);
  return `${dir} is absent (run scripts/setup-${dir.includes('galaxy') ? 'galaxy' : 'terrain'}.sh)`;
}
const skipGalaxy = skipReason(GALAXY, 'WEBDIFFUSION_REQUIRE_GALAXY');
const skipTerrain = skipReason(TERRAIN, 'WEBDIFFUSION_REQUIRE_TERRAIN');

let server, chrome, page;

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

const context = () => `\nbrowser log:\n${chrome?.log.slice(-30).join('\n')}`;

before(async () => {
  if (skipGalaxy && skipTerrain) return;
  server = await startServer();
  chrome = await launch();
  page = await chrome.open(`${server.url}/tests/browser/pages/engine.html`);
  await page.waitForFunction(() => window.wd && window.wd.state !== 'loading', null, { timeout: 60_000 });
  const r = await inPage(async () => {
    window.engine = await window.wd.Engine.create({ canvas: document.getElementById('c') });
    return true;
  });
  assert.ok(r.value, `Engine.create failed: ${JSON.stringify(r.error)}${context()}`);
});

after(async () => {
  await chrome?.close();
  await server?.close();
});

/** Loads `dir` and generates with `opts`; returns `{ info, width, height, pixels, ms }`. */
async function loadAndGenerate(dir, opts) {
  const r = await inPage(async ([url, o]) => {
    const info = await window.engine.load(url);
    const t0 = performance.now();
    const out = await window.engine.generate(o);
    return { info, width: out.width, height: out.height, pixels: Array.from(out.pixels), ms: performance.now() - t0, timings: out.timings };
  }, [`${server.url}/${dir}/`, opts]);
  assert.ok(r.value, `load/generate of ${dir} failed: ${JSON.stringify(r.error)}${context()}`);
  return r.value;
}

/** The native CLI's PNG for the same run, and the mean/max |diff| against the browser's. */
function compareNative(args, got, t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-models-'));
  const png = path.join(dir, 'native.png');
  execFileSync(NATIVE, ['sample', ...args, '--out', png, '--force', '--quiet'],
    { stdio: ['ignore', 'pipe', 'pipe'], timeout: RUN_MS });
  const img = decodePng(fs.readFileSync(png));
  fs.rmSync(dir, { recursive: true, force: true });
  assert.deepEqual([img.width, img.height], [got.width, got.height], 'the browser image and the native PNG differ in size');
  let sum = 0, max = 0, n = 0;
  for (let i = 0; i < img.width * img.height; i++) {
    for (let c = 0; c < 3; c++) {
      const d = Math.abs(img.rgba[i * 4 + c] - got.pixels[i * 4 + c]);
      sum += d;
      max = Math.max(max, d);
      n++;
    }
  }
  return { mad: sum / n, max, img };
}

function spread(pixels) {
  let lo = 255, hi = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    lo = Math.min(lo, pixels[i]);
    hi = Math.max(hi, pixels[i]);
  }
  return hi - lo;
}

test('galaxy hsc32: loads from its folder, samples in the asinh stretch, matches the native CLI', { skip: skipGalaxy, timeout: RUN_MS }, async (t) => {
  const run = { seed: 5, steps: 10, solver: 'dpmpp_2m' };
  const got = await loadAndGenerate(GALAXY, { ...run, preview: 'none' });
  t.diagnostic(`info: ${JSON.stringify(got.info)}`);
  assert.equal(got.info.className, 'GalaxyScoreNet');
  assert.equal(got.info.render, 'asinh');
  assert.deepEqual([got.width, got.height], [32, 32]);
  t.diagnostic(`browser: ${got.ms.toFixed(0)} ms per sample (${run.steps} steps ${run.solver}; load ${got.info.loadMs.toFixed(0)} ms)`);
  assert.ok(spread(got.pixels) > 50, 'the galaxy sample is (nearly) uniform');
  const args = ['--model', path.join(ROOT, GALAXY), '--seed', String(run.seed), '--steps', String(run.steps), '--solver', run.solver];
  const { mad, max } = compareNative(args, got, t);
  t.diagnostic(`parity with the native CLI: mean |diff| ${mad.toFixed(4)}/255, max ${max}/255`);
  assert.ok(mad <= 1, `mean absolute difference ${mad}/255 exceeds 1/255`);
  // Control: another seed's native image is far from ours, so the check can fail.
  const other = compareNative(['--model', path.join(ROOT, GALAXY), '--seed', String(run.seed + 1), '--steps', String(run.steps), '--solver', run.solver], got, t);
  t.diagnostic(`control (seed ${run.seed + 1}): mean |diff| ${other.mad.toFixed(2)}/255`);
  assert.ok(other.mad > 3, 'another seed gives the same image: the parity check cannot fail');
  // Options a galaxy network does not take are refused by name.
  const bad = await inPage(() => window.engine.generate({ difficulty: 0.5 }));
  assert.equal(bad.error?.code, 'BAD_OPTION');
  assert.match(bad.error.message, /difficulty/);
});

test('terrain: difficulty is required (BAD_OPTION with its range); sampled in relief, matches the native CLI', { skip: skipTerrain, timeout: 2 * RUN_MS }, async (t) => {
  const load = await inPage(async (url) => window.engine.load(url), `${server.url}/${TERRAIN}/`);
  assert.ok(load.value, `load failed: ${JSON.stringify(load.error)}${context()}`);
  assert.equal(load.value.className, 'GuidedUNetModel');
  assert.deepEqual(load.value.condition, { name: 'difficulty', min: 0, max: 1 });
  assert.equal(load.value.render, 'relief');
  const missing = await inPage(() => window.engine.generate({ seed: 1 }));
  assert.equal(missing.error?.code, 'BAD_OPTION', JSON.stringify(missing));
  assert.match(missing.error.message, /`difficulty`.*\[0, 1\]/);
  const outside = await inPage(() => window.engine.generate({ seed: 1, difficulty: 2 }));
  assert.equal(outside.error?.code, 'BAD_OPTION', JSON.stringify(outside));
  assert.match(outside.error.message, /difficulty/);

  const run = { seed: 3, difficulty: 0.5 };
  const got = await loadAndGenerate(TERRAIN, { ...run });
  assert.deepEqual([got.width, got.height], [128, 128]);
  t.diagnostic(`browser: ${got.ms.toFixed(0)} ms per sample (one consistency step at σ = 80; load ${got.info.loadMs.toFixed(0)} ms)`);
  // Relief is coloured: the tint makes R, G and B differ somewhere.
  let coloured = 0;
  for (let i = 0; i < got.pixels.length; i += 4) {
    if (got.pixels[i] !== got.pixels[i + 1] || got.pixels[i + 1] !== got.pixels[i + 2]) coloured++;
  }
  assert.ok(coloured > 1000, `the terrain image is grey (${coloured} coloured pixels): not drawn in relief`);
  const args = ['--model', path.join(ROOT, TERRAIN), '--seed', String(run.seed), '--difficulty', String(run.difficulty)];
  const { mad, max } = compareNative(args, got, t);
  t.diagnostic(`parity with the native CLI: mean |diff| ${mad.toFixed(4)}/255, max ${max}/255`);
  assert.ok(mad <= 1, `mean absolute difference ${mad}/255 exceeds 1/255`);
  const other = compareNative(['--model', path.join(ROOT, TERRAIN), '--seed', String(run.seed + 1), '--difficulty', String(run.difficulty)], got, t);
  t.diagnostic(`control (seed ${run.seed + 1}): mean |diff| ${other.mad.toFixed(2)}/255`);
  assert.ok(other.mad > 3, 'another seed gives the same image: the parity check cannot fail');
});
