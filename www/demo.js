// The demo page: the webdiffusion package (../web/index.js) driven by a form. Its state is
// also published as `window.demo` for the browser tests (tests/browser/demo.test.mjs):
//   { state, error, errorCode, capabilities, model, progress[], cache[], warnings[], steps[], result }
// URL parameters: ?worker=0 runs the engine on the main thread; ?model=<url> preselects a
// model folder URL.
import { Engine } from '../web/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MODELS = new URL('../models/', location.href).href;
const DEFAULT_MODEL = `${MODELS}mnist/`;
const CLASS_LABELS = {
  GalaxyScoreNet: 'galaxy (galaxygrad score network)',
  GuidedUNetModel: 'terrain (consistency model)',
  StableDiffusionPipeline: 'Stable Diffusion',
  StableDiffusionImg2ImgPipeline: 'Stable Diffusion',
  LatentConsistencyModelPipeline: 'Stable Diffusion (LCM)',
};
const isSd = (info) => info?.kind === 'stable-diffusion';

const demo = {
  state: 'init', error: null, errorCode: null, capabilities: null, model: null, solvers: [],
  progress: [], cache: [], warnings: [], steps: [], result: null, inWorker: null,
};
window.demo = demo;

let engine = null;
let lastResult = null;

function setStatus(state, text) {
  demo.state = state;
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function fail(e, what) {
  demo.error = e?.message ?? String(e);
  demo.errorCode = e?.code ?? null;
  const aborted = e?.code === 'ABORTED';
  setStatus(aborted ? 'aborted' : 'error', aborted ? `${what} aborted.` : `${what} failed: ${demo.error}`);
}

const mb = (n) => `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)} MB`;
// Adapter limits are powers of two; say them that way.
const bin = (n) => (n >= 2 ** 30 ? `${+(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${+(n / 2 ** 20).toFixed(1)} MiB` : `${+(n / 1024).toFixed(1)} KiB`);

function kv(dl, rows) {
  dl.replaceChildren(
    ...rows.flatMap(([k, v]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      return [dt, dd];
    }),
  );
}

function showCapabilities(c) {
  const yes = (b) => (b ? 'yes' : 'no');
  kv($('caps'), [
    ['adapter', c.adapter.name || '(unnamed)'],
    ['vendor', [c.adapter.vendor, c.adapter.architecture].filter(Boolean).join(' · ') || '–'],
    ['backend', `${c.adapter.backend}${c.adapter.isFallback ? ' (software fallback)' : ''}`],
    ['engine thread', engine.inWorker ? 'Web Worker (OffscreenCanvas)' : 'main thread'],
    ['shader-f16', yes(c.features.shaderF16)],
    ['subgroups', yes(c.features.subgroups)],
    ['timestamp-query', yes(c.features.timestampQuery)],
    ['max buffer', bin(c.limits.maxBufferSize)],
    ['max storage binding', bin(c.limits.maxStorageBufferBindingSize)],
    ['workgroup storage', bin(c.limits.maxComputeWorkgroupStorageSize)],
    ['invocations / workgroup', String(c.limits.maxComputeInvocationsPerWorkgroup)],
    ['storage buffers / stage', String(c.limits.maxStorageBuffersPerShaderStage)],
  ]);
}

function fillSolvers(solvers, preferred) {
  const select = $('solver');
  const keep = select.value || preferred;
  select.replaceChildren(
    ...solvers.map((s) => {
      const o = document.createElement('option');
      o.value = s.name;
      o.textContent = s.aliases?.length ? `${s.name} (${s.aliases.join(', ')})` : s.name;
      o.title = s.description;
      return o;
    }),
  );
  const names = solvers.map((s) => s.name);
  select.value = names.includes(keep) ? keep : names.includes(preferred) ? preferred : names[0] ?? '';
  describeSolver();
}

function describeSolver() {
  const s = demo.solvers.find((x) => x.name === $('solver').value);
  $('solver-description').textContent = s?.description ?? '';
  // The adaptive solvers choose their own steps.
  $('steps').disabled = !!s?.adaptive;
}

function fillClasses(info) {
  const select = $('class-label');
  const opts = [];
  const n = info?.numClassEmbeds ?? 0;
  const nullClass = info?.nullClass;
  for (let i = 0; i < n; i++) {
    if (i === nullClass) continue;
    opts.push([String(i), String(i)]);
  }
  if (!n) opts.push(['', 'unconditional']);
  else if (nullClass !== null && nullClass !== undefined) opts.push(['', 'none (unconditional)']);
  select.replaceChildren(
    ...opts.map(([v, t]) => {
      const o = document.createElement('option');
      o.value = v;
      o.textContent = t;
      return o;
    }),
  );
  select.disabled = !n;
  // Guidance mixes in the "no class" prediction, so it needs the model's null class.
  const known = nullClass !== null && nullClass !== undefined;
  $('guidance').disabled = !n || !known;
  $('guidance').title = known ? '' : 'this model has no known null class, so it runs without guidance';
}

// A conditioned model (terrain: difficulty) gets a slider over its range; its consistency
// sampler takes no solver, steps or eta.
function showCondition(info) {
  const c = info?.condition;
  $('condition-row').hidden = !c;
  if (c) {
    $('condition-name').textContent = c.name[0].toUpperCase() + c.name.slice(1);
    $('condition').min = String(c.min);
    $('condition').max = String(c.max);
    $('condition').step = String((c.max - c.min) / 100);
    $('condition').value = String((c.min + c.max) / 2);
    $('condition-value').textContent = Number($('condition').value).toFixed(2);
  }
  const consistency = info?.className === 'GuidedUNetModel';
  for (const id of ['solver', 'steps', 'eta']) $(id).disabled = consistency;
}

// A Stable Diffusion repository: the prompt box, its guidance and steps; no class label or η.
function showPrompt(info) {
  const sd = isSd(info);
  $('prompt-box').hidden = !sd;
  if (!sd) return;
  $('class-label').disabled = true;
  $('eta').disabled = true;
  $('guidance').disabled = false;
  $('guidance').title = 'classifier-free guidance with the negative prompt (off at 1 or below)';
  $('guidance').value = String(info.defaultGuidance);
  $('steps').value = String(info.defaultSteps ?? 20);
  // The repository's own scheduler, as diffusers' from_pretrained runs it.
  if (demo.solvers.some((s) => s.name === info.defaultSolver)) {
    $('solver').value = info.defaultSolver;
    describeSolver();
  }
}

/** Adds the galaxy and terrain folders the server has (its /models.json, outside /models/ so it is not a model download) to the menu. */
async function listServedModels() {
  let list = [];
  try {
    const r = await fetch(new URL('../models.json', location.href));
    if (r.ok) list = await r.json();
  } catch {
    // A plain static server has no listing: the bundled model stays the only choice.
  }
  for (const m of list) {
    if (!CLASS_LABELS[m.className]) continue;
    const o = document.createElement('option');
    o.value = m.path;
    o.textContent = `${CLASS_LABELS[m.className]}: models/${m.path}`;
    $('model-choice').append(o);
  }
  demo.servedModels = list.map((m) => m.path);
}

function busy(on) {
  for (const id of ['load', 'purge', 'generate']) $(id).disabled = on || (id === 'generate' && !demo.model);
  $('abort').disabled = !on;
  $('save').disabled = on || !lastResult;
}

// --- Model loading -----------------------------------------------------------------------

function chosenSource() {
  const kind = document.querySelector('input[name="source"]:checked').value;
  if (kind === 'url') {
    const url = $('model-url').value.trim();
    if (!url) throw Object.assign(new Error('type a model folder URL first'), { code: 'BAD_OPTION' });
    return { source: url, label: url };
  }
  if (kind === 'files') {
    const files = [...$('model-files').files];
    if (!files.length) throw Object.assign(new Error('pick the model files first (config.json and the .safetensors)'), { code: 'BAD_OPTION' });
    return { source: files, label: files.map((f) => f.name).join(', ') };
  }
  if (kind === 'folder') {
    const files = $('model-folder').files;
    if (!files?.length) throw Object.assign(new Error('pick a model folder first (a diffusers model folder, or a Stable Diffusion repository: the folder holding model_index.json)'), { code: 'BAD_OPTION' });
    const top = files[0].webkitRelativePath.split('/')[0];
    return { source: files, label: `the local folder ${top}/ (${files.length} files)` };
  }
  const choice = $('model-choice').value || 'mnist/';
  const source = new URL(choice, MODELS).href;
  return { source, label: source === DEFAULT_MODEL ? 'the bundled MNIST model' : `models/${choice}` };
}

async function loadModel() {
  let chosen;
  try {
    chosen = chosenSource();
  } catch (e) {
    fail(e, 'Loading');
    return;
  }
  busy(true);
  demo.model = null;
  demo.progress = [];
  demo.cache = [];
  demo.error = demo.errorCode = null;
  $('progress').value = 0;
  $('progress-text').textContent = '';
  $('cache-text').textContent = '';
  kv($('model-info'), []);
  setStatus('loading', `Loading ${chosen.label}…`);
  const bytes = new Map();
  const t0 = performance.now();
  const counts = { hit: 0, miss: 0 };
  try {
    const previewDecoder = $('preview-decoder').value.trim();
    const info = await engine.load(chosen.source, {
      ...(previewDecoder ? { previewDecoder } : {}),
      onProgress(p) {
        demo.progress.push(p);
        bytes.set(p.file, p);
        let loaded = 0;
        let total = 0;
        for (const f of bytes.values()) {
          loaded += f.loaded;
          total += f.total;
        }
        $('progress').max = Math.max(total, 1);
        $('progress').value = loaded;
        const tensors = p.tensorsTotal ? ` · ${p.tensorsReady}/${p.tensorsTotal} tensors on the GPU` : '';
        $('progress-text').textContent = `${mb(loaded)}${total ? ` of ${mb(total)}` : ''}${tensors}`;
      },
      onCache(e) {
        demo.cache.push(e);
        if (e.status === 'hit') counts.hit++;
        if (e.status === 'miss') counts.miss++;
        if (e.status === 'warning') {
          demo.warnings.push(e.message);
          $('cache-warning').hidden = false;
          $('cache-warning').textContent = `⚠ ${e.message}`;
        }
        $('cache-text').textContent =
          `${counts.hit} file(s) from the cache on this device, ${counts.miss} downloaded`;
      },
    });
    demo.model = info;
    kv($('model-info'), [
      ['model', `${info.className}, ${info.width}×${info.height}×${info.channels}`],
      ...(isSd(info) ? [['components', Object.entries(info.components).map(([k, v]) => `${k}: ${v}`).join(', ')]] : []),
      ['parameters', info.parameters.toLocaleString()],
      ...(info.previewDecoder ? [['preview', info.previewDecoder === 'taesd' ? 'tiny autoencoder (TAESD)' : info.previewDecoder]] : []),
      ['weights', info.gpuWeightBytes !== undefined ? `${mb(info.weightBytes)} (${mb(info.gpuWeightBytes)} on the GPU)` : mb(info.weightBytes)],
      ['prediction', info.predictionType],
      ['classes', info.numClassEmbeds ? `${info.numClassEmbeds}${info.nullClass !== null ? ` (null class ${info.nullClass})` : ''}` : 'unconditional'],
      ['load time', `${Math.round(performance.now() - t0)} ms`],
    ]);
    fillClasses(info);
    fillSolvers(demo.solvers, info.defaultSolver);
    showCondition(info);
    $('guidance').value = String(info.nullClass !== null && info.nullClass !== undefined ? info.defaultGuidance : 1);
    if (!info.numClassEmbeds) $('class-label').value = '';
    showPrompt(info);
    setStatus('loaded', `Model loaded in ${Math.round(performance.now() - t0)} ms. Ready to sample.`);
  } catch (e) {
    fail(e, 'Loading');
  } finally {
    busy(false);
  }
}

// --- Sampling ----------------------------------------------------------------------------

function numberOf(id, { integer = false } = {}) {
  const el = $(id);
  const v = Number(el.value);
  if (el.value === '' || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw Object.assign(new Error(`${el.closest('label').firstChild.textContent.trim()}: '${el.value}' is not a valid ${integer ? 'whole ' : ''}number`), { code: 'BAD_OPTION' });
  }
  return v;
}

// The image-to-image start image as picked (an ImageBitmap), or null.
let initBitmap = null;

// The bitmap centre-cropped to w:h and scaled to w×h, as ImageData (a picture the size of the
// output is copied pixel for pixel).
function startImage(bitmap, w, h) {
  const c = document.createElement('canvas');
  c.width = w;
  c.height = h;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingQuality = 'high';
  const s = Math.max(w / bitmap.width, h / bitmap.height);
  const sw = w / s;
  const sh = h / s;
  ctx.drawImage(bitmap, (bitmap.width - sw) / 2, (bitmap.height - sh) / 2, sw, sh, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h);
}

async function pickStartImage() {
  const file = $('init-image').files?.[0];
  initBitmap?.close();
  initBitmap = null;
  demo.initImage = null;
  $('init-clear').disabled = !file;
  $('init-text').textContent = '';
  if (!file) return;
  try {
    // No colour management: the pixels as stored, as the native CLI reads a PNG.
    initBitmap = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const w = demo.model?.width;
    const h = demo.model?.height;
    demo.initImage = { name: file.name, width: initBitmap.width, height: initBitmap.height };
    $('init-text').textContent = `image-to-image from ${file.name} (${initBitmap.width}×${initBitmap.height}` +
      (w && (w !== initBitmap.width || h !== initBitmap.height) ? `, cropped and scaled to ${w}×${h})` : ')');
  } catch (e) {
    $('init-image').value = '';
    $('init-clear').disabled = true;
    fail(Object.assign(new Error(`${file.name} is not an image this browser can read (${e.message})`), { code: 'BAD_OPTION' }), 'Reading the start image');
  }
}

async function generate() {
  let options;
  try {
    const cond = demo.model?.condition;
    options = demo.model?.className === 'GuidedUNetModel' ? {
      seed: numberOf('seed', { integer: true }),
      preview: $('preview').value,
    } : {
      solver: $('solver').value,
      steps: $('steps').disabled ? undefined : numberOf('steps', { integer: true }),
      seed: numberOf('seed', { integer: true }),
      eta: numberOf('eta'),
      preview: $('preview').value,
    };
    if (cond) options[cond.name] = Number($('condition').value);
    if (isSd(demo.model)) {
      delete options.eta;
      options.prompt = $('prompt').value;
      options.negativePrompt = $('negative-prompt').value;
      options.guidance = numberOf('guidance');
      options.batch = numberOf('batch', { integer: true });
      // Tests inject diffusers' initial latents to compare with its goldens.
      if (window.demoHooks?.initLatents) options.initLatents = window.demoHooks.initLatents;
      if (window.demoHooks?.raw) options.raw = true;
      // Tests also pick the size and the VAE tiling (the page keeps the model's size).
      for (const k of ['width', 'height', 'vaeTiling']) {
        if (window.demoHooks?.[k] !== undefined) options[k] = window.demoHooks[k];
      }
      // Image-to-image: the picked image, cropped and scaled to the size being generated.
      if (initBitmap) {
        const w = options.width ?? demo.model.width;
        const h = options.height ?? demo.model.height;
        options.initImage = startImage(initBitmap, w, h);
        options.strength = numberOf('strength');
      }
    } else if ($('class-label').value !== '') {
      options.classLabel = Number($('class-label').value);
      if (!$('guidance').disabled) options.guidance = numberOf('guidance');
    }
  } catch (e) {
    fail(e, 'Sampling');
    return;
  }
  busy(true);
  demo.steps = [];
  demo.result = null;
  demo.error = demo.errorCode = null;
  const bars = $('timeline');
  bars.replaceChildren();
  setStatus('generating', options.solver
    ? `Sampling with ${options.solver}, ${options.steps ?? 'adaptive'} steps…`
    : 'Sampling (consistency model, one step)…');
  startFps();
  try {
    const result = await engine.generate({
      ...options,
      onStep(s) {
        demo.steps.push(s);
        // A test hook may hold the next step (e.g. until it has a screenshot of this one).
        const held = window.demoHooks?.onStep?.(s);
        // Adaptive solvers decide their step count while they run: total is null.
        $('step-text').textContent = `step ${s.step}/${s.total ?? '?'} · ${s.ms.toFixed(0)} ms`;
        const bar = document.createElement('span');
        bar.dataset.ms = String(s.ms);
        bar.title = `step ${s.step}: ${s.ms.toFixed(1)} ms`;
        bars.append(bar);
        const max = Math.max(...demo.steps.map((x) => x.ms), 1);
        for (const b of bars.children) b.style.height = `${(100 * Number(b.dataset.ms)) / max}%`;
        return held;
      },
    });
    lastResult = result;
    const { totalMs, stepsMs } = result.timings;
    const mean = stepsMs.length ? stepsMs.reduce((a, b) => a + b, 0) / stepsMs.length : 0;
    const gray = [];
    for (let i = 0; i < result.pixels.length; i += 4) gray.push(result.pixels[i]);
    demo.result = { width: result.width, height: result.height, batch: result.batch ?? 1, seed: result.seed, solver: result.solver, timings: result.timings, vaeTile: result.vaeTile ?? null, previewDecoder: result.previewDecoder ?? null, gray };
    if (result.latents) demo.result.latents = [...result.latents];
    if (result.image) demo.result.image = [...result.image];
    $('step-text').textContent =
      `${stepsMs.length} steps in ${totalMs.toFixed(0)} ms (mean ${mean.toFixed(1)} ms/step) · seed ${result.seed}`;
    setStatus('done', `Done: ${result.width}×${result.height} in ${(totalMs / 1000).toFixed(2)} s.`);
  } catch (e) {
    fail(e, 'Sampling');
  } finally {
    stopFps();
    busy(false);
  }
}

// The page's own responsiveness while the engine works (the point of the worker): the
// frame rate (requestAnimationFrame) and the longest stall of the main thread's event loop
// (a 20 ms timer that fires late by that much). Software WebGPU (SwiftShader) also holds
// up the compositor's frames, so there the frame rate drops even with the main thread free.
let fpsRun = null;
function startFps() {
  const run = { on: true, frames: [], maxLag: 0 };
  fpsRun = run;
  const tick = (t) => {
    if (!run.on) return;
    run.frames.push(t);
    const recent = run.frames.filter((f) => t - f <= 1000).length;
    $('fps').textContent = `longest main-thread stall ${run.maxLag.toFixed(0)} ms; ${recent} frames/s`;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  let last = performance.now();
  run.timer = setInterval(() => {
    const now = performance.now();
    run.maxLag = Math.max(run.maxLag, now - last - 20);
    last = now;
  }, 20);
}
function stopFps() {
  if (!fpsRun) return;
  const run = fpsRun;
  run.on = false;
  clearInterval(run.timer);
  const f = run.frames;
  const gaps = f.slice(1).map((t, i) => t - f[i]);
  const fps = f.length > 1 ? (1000 * (f.length - 1)) / (f.at(-1) - f[0]) : 0;
  const maxGapMs = gaps.length ? Math.max(...gaps) : null;
  demo.frames = { fps, maxGapMs, count: f.length, maxStallMs: run.maxLag };
  const software = demo.capabilities?.adapter?.isFallback
    ? ' (a software GPU: the browser draws the page with it too, so frames wait for the engine whichever thread it runs on)'
    : '';
  $('fps').textContent = `longest main-thread stall ${run.maxLag.toFixed(0)} ms; ${fps.toFixed(0)} frames/s on average, longest frame gap ${maxGapMs?.toFixed(0) ?? '–'} ms${software}`;
}

function savePng() {
  if (!lastResult) return;
  const c = document.createElement('canvas');
  c.width = lastResult.width;
  c.height = lastResult.height;
  c.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(lastResult.pixels), c.width, c.height), 0, 0);
  c.toBlob((blob) => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `webdiffusion-seed${lastResult.seed}.png`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
}

// --- Start -------------------------------------------------------------------------------

async function main() {
  for (const r of document.querySelectorAll('input[name="source"]')) {
    r.addEventListener('change', () => {
      $('model-url').disabled = r.value !== 'url' || !r.checked;
      const kind = document.querySelector('input[name="source"]:checked').value;
      $('model-files').disabled = kind !== 'files';
      $('model-folder').disabled = kind !== 'folder';
      if (r.checked) $('model-url').disabled = r.value !== 'url';
    });
  }
  if (params.get('model')) {
    document.querySelector('input[name="source"][value="url"]').checked = true;
    $('model-url').disabled = false;
    $('model-url').value = params.get('model');
  }
  $('load').addEventListener('click', loadModel);
  $('generate').addEventListener('click', generate);
  $('init-image').addEventListener('change', pickStartImage);
  $('init-clear').addEventListener('click', () => {
    $('init-image').value = '';
    pickStartImage();
  });
  $('abort').addEventListener('click', () => engine?.abort());
  $('save').addEventListener('click', savePng);
  $('solver').addEventListener('change', describeSolver);
  $('condition').addEventListener('input', () => {
    $('condition-value').textContent = Number($('condition').value).toFixed(2);
  });
  listServedModels();
  $('reseed').addEventListener('click', () => {
    $('seed').value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
  });
  $('purge').addEventListener('click', async () => {
    const deleted = await engine.purgeCache();
    $('cache-text').textContent = deleted ? 'Weight cache cleared: the next load downloads again.' : 'The weight cache was already empty.';
  });
  fillClasses(null);

  try {
    engine = await Engine.create({ canvas: $('canvas'), worker: params.get('worker') !== '0' });
  } catch (e) {
    demo.error = e?.message ?? String(e);
    demo.errorCode = e?.code ?? null;
    if (e?.code === 'NO_WEBGPU' || e?.code === 'NO_ADAPTER') {
      setStatus('nowebgpu', 'This browser cannot run the demo: WebGPU is not available.');
      $('nowebgpu-reason').textContent = demo.error;
      $('nowebgpu').hidden = false;
      $('app').hidden = true;
    } else {
      setStatus('error', `The engine could not start: ${demo.error}`);
    }
    return;
  }
  demo.inWorker = engine.inWorker;
  demo.capabilities = engine.capabilities();
  demo.solvers = engine.solvers();
  showCapabilities(demo.capabilities);
  fillSolvers(demo.solvers, 'ddim');
  busy(false);
  setStatus('ready', 'Engine ready. Load a model.');
}

main();
