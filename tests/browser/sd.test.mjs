// Stable Diffusion in the browser, from the demo page: the tiny repository
// (tests/fixtures/tiny-sd, which the demo server mounts at /models/tiny-sd/) is offered in the
// model list and loaded from its URL (model_index.json, the component configs, the tokenizer
// and three streamed safetensors), the prompt box appears, and a run with the txt2img
// golden's prompt, negative prompt, steps, guidance and initial latents (injected through the
// page's test hook) gives diffusers' final latents and decoded image
// (scripts/goldens/make_tiny_sd.py) to ≤ 1e-3 relative; the canvas changes after every
// step (a screenshot per step, the engine held by onStep's promise). A second load comes from
// the weight cache, a repository missing a component names it, and image-to-image with a PNG
// picked in the page's start-image input gives the native `webdiffusion sd --init` image for
// the same seed (WEBDIFFUSION_BIN), as does the LCM-distilled repository
// (tests/fixtures/tiny-lcm: its guidance embedding, no CFG; and its image-to-image, whose
// strength cuts LCM's schedule); a tiny-autoencoder preview decoder
// draws the step previews. The repository folder picked from disk (the demo's folder input,
// webkitdirectory) loads without a request and matches diffusers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startDemoServer, DEFAULT_MOUNTS } from '../../scripts/demo-server.mjs';
import { execFileSync } from 'node:child_process';
import { launch, decodePng, requestsFor } from './web-helpers.mjs';

const READY_MS = 120_000;
const LOAD_MS = 180_000;
const RUN_MS = Number(process.env.WEBDIFFUSION_BROWSER_TIMEOUT_MS ?? 300_000);
const ROOT = new URL('../../', import.meta.url).pathname;
const GOLDENS = path.join(ROOT, 'tests/goldens/sd');
const NATIVE = process.env.WEBDIFFUSION_BIN ??
  path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, 'target'), 'release', 'webdiffusion');

/** The float32 tensors of a safetensors file. */
function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.toString('utf8', 8, 8 + n));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    assert.equal(t.dtype, 'F32', `${file}: ${name} is ${t.dtype}`);
    const [a, b] = t.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    out[name] = { shape: t.shape, data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
  }
  return out;
}

/** max |got − want| / max |want|, as the native golden tests measure it. */
function relErr(got, want) {
  assert.equal(got.length, want.length);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return err / Math.max(scale, 1e-30);
}

let server;
let chrome;
let broken;
before(async () => {
  const pkg = new URL('../../web/pkg/webdiffusion.js', import.meta.url);
  assert.ok(fs.existsSync(pkg), 'web/pkg/webdiffusion.js is missing: run scripts/build-wasm.sh first');
  // A copy of the tiny repository without its vae/ folder.
  broken = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-sd-'));
  fs.cpSync(path.join(ROOT, 'tests/fixtures/tiny-sd'), broken, { recursive: true });
  fs.rmSync(path.join(broken, 'vae'), { recursive: true });
  server = await startDemoServer({ mounts: { ...DEFAULT_MOUNTS, '/broken-sd/': broken } });
  chrome = await launch();
});
after(async () => {
  await chrome?.close();
  await server?.close();
  if (broken) fs.rmSync(broken, { recursive: true, force: true });
});

const context = (page) => async () =>
  `\nwindow.demo: ${JSON.stringify(await page.evaluate(() => ({ ...window.demo, progress: window.demo.progress.length, result: null })).catch(() => null))}` +
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
  assert.equal(await waitState(page, ['ready', 'error', 'nowebgpu'], READY_MS), 'ready', await context(page)());
  return page;
}

/** The canvas as shown, as RGB bytes. */
async function canvasPixels(page) {
  const png = await decodePng(await page.locator('#canvas').screenshot());
  return png.data;
}

const meanAbs = (a, b) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i] - b[i]);
  return s / a.length;
};

test('sd: the tiny repository from the demo page matches diffusers txt2img; the canvas changes every step', { timeout: READY_MS + 2 * LOAD_MS + RUN_MS }, async (t) => {
  const cases = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'cases.json'), 'utf8'));
  const c = cases.txt2img;
  const golden = readSafetensors(path.join(GOLDENS, 'txt2img.safetensors'));
  const page = await openDemo();
  // The served list offers the repository under its pipeline class.
  await page.waitForFunction(() => [...document.querySelectorAll('#model-choice option')].some((o) => o.value === 'tiny-sd/'), null, { timeout: 30_000 });
  assert.equal(await page.locator('#prompt-box').isVisible(), false);
  await page.selectOption('#model-choice', 'tiny-sd/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'loaded', await context(page)());
  const info = await page.evaluate(() => window.demo.model);
  t.diagnostic(`loaded ${info.className}: ${info.parameters} parameters, ${info.bytesRead} bytes in ${info.loadMs.toFixed(0)} ms`);
  assert.equal(info.kind, 'stable-diffusion');
  // The default weight storage ('auto') keeps the f16 UNet and VAE filters and matrices packed
  // on the GPU (the text encoder is stored f32; biases and norms are widened): 3,061,076
  // bytes natively (tests/sd_pipeline.rs weight_storage_auto_f16_f32), 52% of the
  // 4 bytes a parameter that widening everything takes.
  t.diagnostic(`weights: ${info.weightBytes} bytes stored, ${info.gpuWeightBytes} on the GPU, ${info.parameters} parameters`);
  assert.equal(info.gpuWeightBytes, 3_061_076);
  assert.ok(info.gpuWeightBytes < 0.6 * 4 * info.parameters);
  assert.equal(info.className, 'StableDiffusionPipeline');
  assert.deepEqual([info.width, info.height], [c.width, c.height]);
  assert.equal(info.defaultSolver, 'pndm');
  assert.ok(await page.locator('#prompt-box').isVisible(), 'no prompt box for an SD repository');
  const progress = await page.evaluate(() => window.demo.progress);
  for (const f of ['unet/diffusion_pytorch_model.safetensors', 'vae/diffusion_pytorch_model.safetensors', 'text_encoder/model.safetensors']) {
    const last = progress.filter((p) => p.file.endsWith(`/tiny-sd/${f}`)).at(-1);
    assert.ok(last, `no progress for ${f}`);
    assert.equal(last.loaded, last.total, JSON.stringify(last));
    assert.equal(last.tensorsReady, last.tensorsTotal, JSON.stringify(last));
  }

  await page.fill('#prompt', c.prompt);
  await page.fill('#negative-prompt', c.negative_prompt);
  await page.fill('#steps', String(c.steps));
  await page.fill('#guidance', String(c.guidance));
  assert.equal(await page.locator('#solver').inputValue(), 'pndm');
  // The golden's initial latents, the final floats back, and each step held until the test
  // has its screenshot.
  await page.evaluate((init) => {
    window.demoHooks = {
      initLatents: new Float32Array(init),
      raw: true,
      onStep: () => new Promise((resolve) => {
        window.releaseStep = resolve;
      }),
    };
  }, [...golden.init_latents.data]);
  let shown = await canvasPixels(page);
  await page.click('#generate');
  const changes = [];
  // diffusers' PNDM with skip_prk_steps makes n + 1 model calls for n steps; `total` says.
  let total = Infinity;
  for (let k = 1; k <= total; k++) {
    await page.waitForFunction((n) => window.demo.steps.length >= n || window.demo.state === 'error', k, { timeout: RUN_MS, polling: 100 });
    assert.notEqual(await page.evaluate(() => window.demo.state), 'error', await context(page)());
    total = await page.evaluate(() => window.demo.steps[0].total);
    // The worker presents the step's frame before onStep; give the compositor a frame.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const now = await canvasPixels(page);
    changes.push(meanAbs(shown, now));
    shown = now;
    await page.evaluate(() => window.releaseStep?.());
  }
  assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
  t.diagnostic(`canvas change per step (mean |Δ| of 0–255 levels): ${changes.map((x) => x.toFixed(2)).join(' ')}`);
  assert.ok(changes.every((x) => x > 0), `the canvas did not change on every step: ${changes}`);
  const r = await page.evaluate(() => window.demo.result);
  const sc = await page.evaluate(() => window.demo.steps.map((s) => s.step));
  assert.equal(total, c.steps + 1);
  assert.deepEqual(sc, Array.from({ length: total }, (_, i) => i + 1));
  const eLat = relErr(r.latents, golden.latents.data);
  const eImg = relErr(r.image, golden.image.data);
  t.diagnostic(`vs diffusers: latents rel err ${eLat.toExponential(2)}, image rel err ${eImg.toExponential(2)}; steps (ms): ${r.timings.stepsMs.map((m) => m.toFixed(0)).join(' ')}, text ${r.timings.textMs.toFixed(0)} ms, decode ${r.timings.decodeMs.toFixed(0)} ms`);
  assert.ok(eLat <= 1e-3, `final latents differ from diffusers: ${eLat}`);
  assert.ok(eImg <= 1e-3, `decoded image differs from diffusers: ${eImg}`);
  assert.deepEqual([r.width, r.height], [c.width, c.height]);
  // The final canvas is the decoded image, not the last preview.
  const final = await canvasPixels(page);
  assert.ok(meanAbs(shown, final) > 0, 'the decoded image was not drawn');

  // A seeded one-step run without the hook, twice: the same seed gives the same latents.
  await page.evaluate(() => {
    window.demoHooks = { raw: true };
  });
  await page.fill('#steps', '1');
  await page.fill('#seed', '7');
  const runSeeded = async () => {
    await page.click('#generate');
    assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
    return page.evaluate(() => window.demo.result.latents);
  };
  const a = await runSeeded();
  const b = await runSeeded();
  assert.deepEqual(a, b, 'the same seed gave different latents');
  assert.ok(relErr(a, golden.latents.data) > 1e-2, 'a seeded run must not reproduce the injected latents');

  // diffusers' VAE tiling (make_tiny_sd_tiled.py): 40×24 pixels in 16-pixel tiles.
  const ct = cases.txt2img_tiled;
  const gt = readSafetensors(path.join(GOLDENS, 'txt2img_tiled.safetensors'));
  await page.fill('#prompt', ct.prompt);
  await page.fill('#negative-prompt', ct.negative_prompt);
  await page.fill('#steps', String(ct.steps));
  await page.fill('#guidance', String(ct.guidance));
  await page.evaluate(([init, w, h, tile]) => {
    window.demoHooks = { initLatents: new Float32Array(init), raw: true, width: w, height: h, vaeTiling: tile };
  }, [[...gt.init_latents.data], ct.width, ct.height, ct.vae_tile]);
  await page.click('#generate');
  assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
  const rt = await page.evaluate(() => window.demo.result);
  const eLatT = relErr(rt.latents, gt.latents.data);
  const eImgT = relErr(rt.image, gt.image.data);
  t.diagnostic(`tiled VAE vs diffusers: latents rel err ${eLatT.toExponential(2)}, image rel err ${eImgT.toExponential(2)}`);
  assert.equal(rt.vaeTile, ct.vae_tile);
  assert.deepEqual([rt.width, rt.height], [ct.width, ct.height]);
  assert.ok(eLatT <= 1e-3 && eImgT <= 1e-3, `tiled run differs from diffusers: ${eLatT} ${eImgT}`);
  await page.evaluate(() => {
    window.demoHooks = {};
  });

  // A second load of the repository reads every weight file from the cache.
  await page.waitForFunction(() => window.demo.cache.filter((e) => e.status === 'stored' && e.url.endsWith('.safetensors')).length === 3, null, { timeout: 30_000 });
  const before = server.log.length;
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'loaded', await context(page)());
  const again = server.log.slice(before);
  assert.deepEqual(requestsFor(again, '.safetensors'), [], `weights downloaded again: ${JSON.stringify(again)}`);
  await page.close();
});

test('sd: a repository URL missing a component names it', { timeout: READY_MS + LOAD_MS }, async (t) => {
  const page = await openDemo('?model=/broken-sd/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'error', await context(page)());
  const d = await page.evaluate(() => ({ code: window.demo.errorCode, error: window.demo.error }));
  t.diagnostic(`missing vae/: ${d.code}: ${d.error}`);
  assert.equal(d.code, 'HTTP');
  assert.match(d.error, /broken-sd\/vae\/config\.json/);
  assert.match(d.error, /`vae` component/);
  // Nothing large was fetched before the error.
  assert.deepEqual(requestsFor(server.log, '.safetensors').filter((e) => e.path.startsWith('/broken-sd/')), []);
  assert.equal(await page.locator('#prompt-box').isVisible(), false);
  await page.close();
});

test('sd: image-to-image from the page gives the native `webdiffusion sd` image for the same seed', { timeout: READY_MS + LOAD_MS + 2 * RUN_MS }, async (t) => {
  assert.ok(fs.existsSync(NATIVE), `native binary ${NATIVE} not found (scripts/browser-test.sh builds it with cargo build --release)`);
  const c = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'cases.json'), 'utf8')).img2img;
  const initPng = path.join(GOLDENS, 'init.png');
  const init = await decodePng(fs.readFileSync(initPng));
  const SEED = 11;
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-sd-')), 'native.png');
  execFileSync(NATIVE, ['sd', '--model', path.join(ROOT, 'tests/fixtures/tiny-sd'), '--prompt', c.prompt, '--negative', c.negative_prompt,
    '--steps', String(c.steps), '--guidance', String(c.guidance), '--solver', c.solver, '--init', initPng, '--strength', String(c.strength),
    '--seed', String(SEED), '--out', out, '--force', '--quiet'], { stdio: 'pipe', timeout: RUN_MS });
  const native = await decodePng(fs.readFileSync(out));
  fs.rmSync(path.dirname(out), { recursive: true, force: true });

  const page = await openDemo();
  await page.waitForFunction(() => [...document.querySelectorAll('#model-choice option')].some((o) => o.value === 'tiny-sd/'), null, { timeout: 30_000 });
  await page.selectOption('#model-choice', 'tiny-sd/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'loaded', await context(page)());
  await page.fill('#prompt', c.prompt);
  await page.fill('#negative-prompt', c.negative_prompt);
  await page.fill('#steps', String(c.steps));
  await page.fill('#guidance', String(c.guidance));
  await page.fill('#seed', String(SEED));
  await page.selectOption('#solver', c.solver);
  // The page's own picker: the PNG goes through createImageBitmap and a canvas of the same
  // size, so the engine gets its exact pixels.
  await page.setInputFiles('#init-image', initPng);
  await page.fill('#strength', String(c.strength));
  await page.waitForFunction(() => window.demo.initImage, null, { timeout: 30_000 });
  const picked = await page.evaluate(() => window.demo.initImage);
  assert.deepEqual([picked.width, picked.height], [init.width, init.height]);
  await page.click('#generate');
  assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
  const r = await page.evaluate(() => ({ steps: window.demo.steps.length, result: window.demo.result }));
  // ⌊5 · 0.6⌋ = 3 of the 5 steps run.
  assert.equal(r.steps, Math.floor(c.steps * c.strength));
  assert.deepEqual([r.result.width, r.result.height], [native.width, native.height]);
  let sum = 0;
  let max = 0;
  for (let i = 0; i < r.result.gray.length; i++) {
    const d = Math.abs(r.result.gray[i] - native.data[i * 4]);
    sum += d;
    max = Math.max(max, d);
  }
  const mean = sum / r.result.gray.length;
  t.diagnostic(`img2img, browser vs native CLI (red channel): mean |diff| ${mean.toFixed(3)}, max ${max} of 255`);
  assert.ok(mean <= 0.5 && max <= 2, `the browser's image-to-image differs from the native CLI: mean ${mean}, max ${max}`);
  await page.close();
});

test('sd: a tiny-autoencoder preview decoder (previewDecoder) draws the step previews; a bad URL names the option', { timeout: READY_MS + 3 * LOAD_MS + 2 * RUN_MS }, async (t) => {
  const page = await openDemo();
  await page.waitForFunction(() => [...document.querySelectorAll('#model-choice option')].some((o) => o.value === 'tiny-sd/'), null, { timeout: 30_000 });
  await page.selectOption('#model-choice', 'tiny-sd/');
  // One seeded step with the preview held on the canvas until its screenshot is taken.
  const oneStep = async () => {
    await page.fill('#steps', '1');
    await page.fill('#seed', '7');
    await page.evaluate(() => {
      window.demoHooks = {
        raw: true,
        onStep: () => new Promise((resolve) => {
          window.releaseStep = resolve;
        }),
      };
    });
    await page.click('#generate');
    await page.waitForFunction(() => window.demo.steps.length >= 1 || window.demo.state === 'error', null, { timeout: RUN_MS, polling: 100 });
    assert.notEqual(await page.evaluate(() => window.demo.state), 'error', await context(page)());
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const shown = await canvasPixels(page);
    // PNDM's warm-up makes a one-step run two model calls.
    while (await page.evaluate(() => window.demo.state) === 'generating') {
      await page.evaluate(() => window.releaseStep?.());
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
    return { shown, result: await page.evaluate(() => window.demo.result) };
  };

  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'loaded', await context(page)());
  assert.equal(await page.evaluate(() => window.demo.model.previewDecoder), 'linear');
  const linear = await oneStep();
  assert.equal(linear.result.previewDecoder, 'linear');

  await page.fill('#preview-decoder', '/previews/tiny-taesd/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'loaded', await context(page)());
  assert.equal(await page.evaluate(() => window.demo.model.previewDecoder), 'taesd');
  const taesd = await oneStep();
  assert.equal(taesd.result.previewDecoder, 'taesd');
  // The decoder changes what the steps show, not what they compute.
  assert.deepEqual([...taesd.result.latents], [...linear.result.latents]);
  const d = meanAbs(linear.shown, taesd.shown);
  t.diagnostic(`step preview, TAESD vs linear: mean |Δ| ${d.toFixed(2)} of 255`);
  assert.ok(d > 1, `the TAESD preview looks like the linear one (mean |Δ| ${d})`);

  await page.fill('#preview-decoder', '/previews/missing/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'error');
  const err = await page.evaluate(() => ({ message: window.demo.error, code: window.demo.errorCode }));
  t.diagnostic(`missing preview decoder: ${err.code}: ${err.message}`);
  assert.match(err.message, /previewDecoder/);
  assert.match(err.message, /AutoencoderTiny/);
  await page.close();
});

// The native run is checked against diffusers' LatentConsistencyModelPipeline
// (tests/sd_pipeline.rs, lcm_distilled); the LCM scheduler's per-step noise cannot be injected
// in the page, so the browser is compared with the native CLI for one seed. A native run at
// another guidance scale differs from it far more than the tolerance, so a browser that
// dropped the guidance embedding (or ran CFG) would fail.
test('sd: an LCM-distilled repository from the page gives the native `webdiffusion sd` image for the same seed', { timeout: READY_MS + LOAD_MS + 3 * RUN_MS }, async (t) => {
  assert.ok(fs.existsSync(NATIVE), `native binary ${NATIVE} not found (scripts/browser-test.sh builds it with cargo build --release)`);
  const c = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'cases.json'), 'utf8')).lcm_distilled;
  const SEED = 13;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-lcm-'));
  const native = async (guidance) => {
    const out = path.join(tmp, `native-${guidance}.png`);
    execFileSync(NATIVE, ['sd', '--model', path.join(ROOT, 'tests/fixtures/tiny-lcm'), '--prompt', c.prompt,
      '--steps', String(c.steps), '--guidance', String(guidance), '--seed', String(SEED), '--out', out, '--force', '--quiet'],
    { stdio: 'pipe', timeout: RUN_MS });
    return decodePng(fs.readFileSync(out));
  };
  const want = await native(c.guidance);
  const other = await native(2);
  fs.rmSync(tmp, { recursive: true, force: true });

  const page = await openDemo();
  await page.waitForFunction(() => [...document.querySelectorAll('#model-choice option')].some((o) => o.value === 'tiny-lcm/'), null, { timeout: 30_000 });
  await page.selectOption('#model-choice', 'tiny-lcm/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'loaded', await context(page)());
  const info = await page.evaluate(() => window.demo.model);
  assert.equal(info.className, 'LatentConsistencyModelPipeline');
  assert.equal(info.defaultSolver, 'lcm');
  await page.fill('#prompt', c.prompt);
  await page.fill('#negative-prompt', '');
  await page.fill('#steps', String(c.steps));
  await page.fill('#guidance', String(c.guidance));
  await page.fill('#seed', String(SEED));
  await page.click('#generate');
  assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
  const r = await page.evaluate(() => ({ steps: window.demo.steps.length, result: window.demo.result }));
  assert.equal(r.steps, c.steps);
  assert.equal(r.result.solver, 'lcm');
  assert.deepEqual([r.result.width, r.result.height], [want.width, want.height]);
  // The browser image's red channel against a native PNG's.
  const diff = (png, gray = r.result.gray) => {
    let sum = 0;
    let max = 0;
    for (let i = 0; i < gray.length; i++) {
      const d = Math.abs(gray[i] - png.data[i * 4]);
      sum += d;
      max = Math.max(max, d);
    }
    return { mean: sum / gray.length, max };
  };
  const same = diff(want);
  const away = diff(other);
  t.diagnostic(`LCM-distilled, browser vs native CLI (red channel): mean |diff| ${same.mean.toFixed(3)}, max ${same.max} of 255; vs native at guidance 2: mean ${away.mean.toFixed(3)}, max ${away.max}`);
  assert.ok(same.mean <= 0.5 && same.max <= 2, `the browser's LCM run differs from the native CLI: mean ${same.mean}, max ${same.max}`);
  assert.ok(away.max > 2, `the guidance scale does not change the native image enough for this check: max ${away.max}`);

  // Image-to-image as diffusers' LatentConsistencyModelImg2ImgPipeline: strength 0.5 cuts
  // LCM's schedule and all 4 steps run (the generic rule would run 2).
  const initPng = path.join(GOLDENS, 'init.png');
  const tmp2 = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-lcm-'));
  const out2 = path.join(tmp2, 'i2i.png');
  execFileSync(NATIVE, ['sd', '--model', path.join(ROOT, 'tests/fixtures/tiny-lcm'), '--prompt', c.prompt,
    '--steps', String(c.steps), '--guidance', String(c.guidance), '--seed', String(SEED), '--init', initPng, '--strength', '0.5',
    '--out', out2, '--force', '--quiet'], { stdio: 'pipe', timeout: RUN_MS });
  const wantI2i = await decodePng(fs.readFileSync(out2));
  fs.rmSync(tmp2, { recursive: true, force: true });
  await page.setInputFiles('#init-image', initPng);
  await page.fill('#strength', '0.5');
  await page.waitForFunction(() => window.demo.initImage, null, { timeout: 30_000 });
  await page.click('#generate');
  assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
  const i2i = await page.evaluate(() => ({ steps: window.demo.steps.length, result: window.demo.result }));
  assert.equal(i2i.steps, c.steps, 'LCM image-to-image runs every step of the cut schedule');
  const sameI2i = diff(wantI2i, i2i.result.gray);
  t.diagnostic(`LCM img2img, browser vs native CLI (red channel): mean |diff| ${sameI2i.mean.toFixed(3)}, max ${sameI2i.max} of 255`);
  assert.ok(sameI2i.mean <= 0.5 && sameI2i.max <= 2, `the browser's LCM img2img differs from the native CLI: mean ${sameI2i.mean}, max ${sameI2i.max}`);
  await page.close();
});

test('sd: a repository folder picked from disk loads without a request and matches diffusers; a picked folder missing a component names it', { timeout: 2 * READY_MS + 2 * LOAD_MS + RUN_MS }, async (t) => {
  const cases = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'cases.json'), 'utf8'));
  const c = cases.txt2img;
  const golden = readSafetensors(path.join(GOLDENS, 'txt2img.safetensors'));
  // The repository as a user has it on disk: with a README and a PyTorch checkpoint beside
  // the safetensors, which the engine leaves alone.
  const picked = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-pick-')), 'my-tiny-sd');
  fs.cpSync(path.join(ROOT, 'tests/fixtures/tiny-sd'), picked, { recursive: true });
  fs.writeFileSync(path.join(picked, 'README.md'), '# a tiny random-weight pipeline\n');
  fs.writeFileSync(path.join(picked, 'unet/diffusion_pytorch_model.bin'), 'not a safetensors file');
  try {
    const page = await openDemo();
    await page.check('input[name="source"][value="folder"]');
    await page.setInputFiles('#model-folder', picked);
    const before = server.log.length;
    await page.click('#load');
    assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'loaded', await context(page)());
    const fetched = server.log.slice(before);
    assert.deepEqual(fetched.filter((e) => e.path.startsWith('/models/') || e.path.endsWith('.safetensors')), [], `a picked folder must not be fetched: ${JSON.stringify(fetched)}`);
    const info = await page.evaluate(() => window.demo.model);
    t.diagnostic(`picked folder: ${info.className}, ${info.gpuWeightBytes} weight bytes on the GPU, ${info.bytesRead} bytes read`);
    assert.equal(info.className, 'StableDiffusionPipeline');
    assert.equal(info.gpuWeightBytes, 3_061_076);
    assert.ok(await page.locator('#prompt-box').isVisible(), 'no prompt box for a picked SD repository');
    const progress = await page.evaluate(() => window.demo.progress);
    for (const f of ['unet/diffusion_pytorch_model.safetensors', 'vae/diffusion_pytorch_model.safetensors', 'text_encoder/model.safetensors']) {
      const last = progress.filter((p) => p.file === `my-tiny-sd/${f}`).at(-1);
      assert.ok(last, `no progress for my-tiny-sd/${f}: ${JSON.stringify(progress.map((p) => p.file))}`);
      assert.equal(last.tensorsReady, last.tensorsTotal, JSON.stringify(last));
    }
    await page.fill('#prompt', c.prompt);
    await page.fill('#negative-prompt', c.negative_prompt);
    await page.fill('#steps', String(c.steps));
    await page.fill('#guidance', String(c.guidance));
    await page.evaluate((init) => {
      window.demoHooks = { initLatents: new Float32Array(init), raw: true };
    }, [...golden.init_latents.data]);
    await page.click('#generate');
    assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
    const r = await page.evaluate(() => window.demo.result);
    const eLat = relErr(r.latents, golden.latents.data);
    const eImg = relErr(r.image, golden.image.data);
    t.diagnostic(`picked folder vs diffusers: latents rel err ${eLat.toExponential(2)}, image rel err ${eImg.toExponential(2)}`);
    assert.ok(eLat <= 1e-3 && eImg <= 1e-3, `the picked repository differs from diffusers: ${eLat} ${eImg}`);
    await page.close();

    // The engine on the page's own thread this time; the folder lacks vae/.
    const page2 = await openDemo('?worker=0');
    await page2.check('input[name="source"][value="folder"]');
    await page2.setInputFiles('#model-folder', broken);
    await page2.click('#load');
    assert.equal(await waitState(page2, ['loaded', 'error'], LOAD_MS), 'error', await context(page2)());
    const d = await page2.evaluate(() => ({ code: window.demo.errorCode, error: window.demo.error }));
    t.diagnostic(`picked folder without vae/: ${d.code}: ${d.error}`);
    assert.equal(d.code, 'BAD_OPTION');
    assert.match(d.error, /vae\/config\.json/);
    assert.match(d.error, /`vae` component/);
    assert.match(d.error, /pick the repository's folder/);
    await page2.close();
  } finally {
    fs.rmSync(path.dirname(picked), { recursive: true, force: true });
  }
});

test('sd: a batch of two from the page gives the native `webdiffusion sd --batch 2 --grid` image for the same seed', { timeout: READY_MS + LOAD_MS + 2 * RUN_MS }, async (t) => {
  assert.ok(fs.existsSync(NATIVE), `native binary ${NATIVE} not found (scripts/browser-test.sh builds it with cargo build --release)`);
  const SEED = 17;
  const prompt = 'two cats on a sofa';
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-batch-'));
  const native = (args, name) => {
    const out = path.join(tmp, name);
    execFileSync(NATIVE, ['sd', '--model', path.join(ROOT, 'tests/fixtures/tiny-sd'), '--prompt', prompt, '--steps', '3',
      '--guidance', '7.5', '--seed', String(SEED), '--out', out, '--force', '--quiet', ...args], { stdio: 'pipe', timeout: RUN_MS });
    return out;
  };
  const want = await decodePng(fs.readFileSync(native(['--batch', '2', '--grid'], 'grid.png')));
  const single = await decodePng(fs.readFileSync(native([], 'one.png')));
  fs.rmSync(tmp, { recursive: true, force: true });

  const page = await openDemo();
  await page.waitForFunction(() => [...document.querySelectorAll('#model-choice option')].some((o) => o.value === 'tiny-sd/'), null, { timeout: 30_000 });
  await page.selectOption('#model-choice', 'tiny-sd/');
  await page.click('#load');
  assert.equal(await waitState(page, ['loaded', 'error'], LOAD_MS), 'loaded', await context(page)());
  await page.fill('#prompt', prompt);
  await page.fill('#negative-prompt', '');
  await page.fill('#steps', '3');
  await page.fill('#guidance', '7.5');
  await page.fill('#seed', String(SEED));
  await page.fill('#batch', '2');
  await page.click('#generate');
  assert.equal(await waitState(page, ['done', 'error'], RUN_MS), 'done', await context(page)());
  const r = await page.evaluate(() => window.demo.result);
  assert.equal(r.batch, 2);
  // Two 16×16 images side by side, 2 pixels apart, as the CLI's grid.
  assert.deepEqual([r.width, r.height], [want.width, want.height]);
  assert.deepEqual([r.width, r.height], [34, 16]);
  let sum = 0;
  let max = 0;
  for (let i = 0; i < r.gray.length; i++) {
    const d = Math.abs(r.gray[i] - want.data[i * 4]);
    sum += d;
    max = Math.max(max, d);
  }
  const mean = sum / r.gray.length;
  // The left image is the batch-of-one image for the seed.
  let left = 0;
  for (let y = 0; y < 16; y++) {
    for (let x = 0; x < 16; x++) left = Math.max(left, Math.abs(r.gray[y * 34 + x] - single.data[(y * 16 + x) * 4]));
  }
  t.diagnostic(`batch 2, browser vs native grid (red channel): mean |diff| ${mean.toFixed(3)}, max ${max} of 255; left image vs the native single run: max ${left}`);
  assert.ok(mean <= 0.5 && max <= 2, `the browser's batch differs from the native CLI: mean ${mean}, max ${max}`);
  assert.ok(left <= 2, `the batch's first image is not the single run's: max ${left}`);
  await page.close();
});
