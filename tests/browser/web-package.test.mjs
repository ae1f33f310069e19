// The package's own layers in headless Chromium, with a JS stand-in for the wasm engine
// (fixtures/mock-pkg, served in place of web/pkg/) so they run in seconds: the Web Worker
// proxy (results, callbacks, errors with their name/code/message, abort, dispose, a caller's
// fetch hook), the weight cache (a second load downloads nothing, per the server's request
// log; a quota error falls back to memory and says so; purge), and the main thread's frame
// cadence while the engine is busy, worker vs { worker: false }.
// The real engine is exercised by demo.test.mjs and web-tarball.test.mjs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDemoServer } from '../../scripts/demo-server.mjs';
import { launch, requestsFor } from './web-helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const WEIGHTS = 'diffusion_pytorch_model.safetensors';
const TEST_MS = 120_000;

let server;
let chrome;
before(async () => {
  server = await startDemoServer({
    mounts: {
      '/web/pkg/': path.join(HERE, 'fixtures/mock-pkg'),
      '/web/': path.join(ROOT, 'web'),
      '/models/': path.join(ROOT, 'models'),
      '/fixtures/': path.join(HERE, 'fixtures'),
      // The package without its pkg/ folder.
      '/broken/pkg/': path.join(HERE, 'fixtures/no-such-folder'),
      '/broken/': path.join(ROOT, 'web'),
      // The same model, but its weights break off after 1 MB.
      '/cut/': path.join(ROOT, 'models'),
    },
    truncate: { [`/cut/mnist/${WEIGHTS}`]: 1_000_000 },
  });
  chrome = await launch();
});
after(async () => {
  await chrome?.close();
  await server?.close();
});

async function harness() {
  const page = await chrome.open(`${server.url}/fixtures/harness.html`);
  await page.waitForFunction(() => window.harnessReady, null, { timeout: 30_000 });
  return page;
}

const context = () => `\nbrowser log:\n${chrome.log.join('\n')}`;

test('worker engine: capabilities, solvers, load with progress, generate with steps, pixels back', { timeout: TEST_MS }, async () => {
  const page = await harness();
  const r = await page.evaluate(async () => {
    const { Engine } = window.webdiffusion;
    await Engine.purgeCache();
    const engine = await Engine.create({ canvas: document.getElementById('canvas') });
    const progress = [];
    const steps = [];
    const info = await engine.load('/models/mnist/', { onProgress: (p) => progress.push(p) });
    const out = await engine.generate({ steps: 3, seed: 7, onStep: (s) => steps.push(s) });
    const result = {
      inWorker: engine.inWorker,
      caps: engine.capabilities(),
      solvers: engine.solvers(),
      staticSolvers: await Engine.solvers(),
      info, progress, steps,
      out: { width: out.width, height: out.height, isClamped: out.pixels instanceof Uint8ClampedArray, length: out.pixels.length, first: [...out.pixels.slice(0, 4)], seed: out.seed },
    };
    engine.dispose();
    return result;
  });
  assert.equal(r.inWorker, true);
  assert.equal(r.caps.webgpu, true);
  assert.deepEqual(r.solvers.map((s) => s.name), r.staticSolvers.map((s) => s.name));
  assert.equal(r.info.width, 32);
  assert.ok(r.progress.length > 1, `expected several progress events, got ${r.progress.length}`);
  const loaded = r.progress.map((p) => p.loaded);
  assert.deepEqual(loaded, [...loaded].sort((a, b) => a - b), 'progress must be monotone');
  assert.equal(loaded.at(-1), r.progress.at(-1).total);
  assert.deepEqual(r.steps.map((s) => s.step), [1, 2, 3]);
  assert.deepEqual(r.out, { width: 32, height: 32, isClamped: true, length: 32 * 32 * 4, first: [7, 128, 0, 255], seed: 7 });
});

test('errors cross the worker with their name, code and message; abort and dispose', { timeout: TEST_MS }, async () => {
  const page = await harness();
  const r = await page.evaluate(async () => {
    const { Engine, WebDiffusionError } = window.webdiffusion;
    const catchIt = async (p) => {
      try {
        await p;
        return null;
      } catch (e) {
        return { name: e.name, code: e.code, message: e.message, isClass: e instanceof WebDiffusionError, isError: e instanceof Error };
      }
    };
    const out = {};
    for (const worker of [true, false]) {
      const engine = await Engine.create({ worker });
      const k = worker ? 'worker' : 'main';
      out[k] = {};
      out[k].notLoaded = await catchIt(engine.generate({ steps: 2 }));
      out[k].http = await catchIt(engine.load('/models/no-such-model/'));
      await engine.load('/models/mnist/');
      out[k].badSolver = await catchIt(engine.generate({ solver: 'nope', steps: 2 }));
      const running = engine.generate({ steps: 200 });
      setTimeout(() => engine.abort(), 100);
      out[k].aborted = await catchIt(running);
      const again = await engine.generate({ steps: 2, seed: 3 });
      out[k].afterAbort = again.seed;
      const controller = new AbortController();
      controller.abort();
      out[k].signal = await catchIt(engine.load('/models/mnist/', { signal: controller.signal }));
      const pending = engine.generate({ steps: 500 });
      engine.dispose();
      out[k].pendingAtDispose = await catchIt(pending);
      out[k].afterDispose = await catchIt(engine.generate({ steps: 2 }));
    }
    return out;
  });
  for (const k of ['worker', 'main']) {
    const o = r[k];
    const ctx = `${k}: ${JSON.stringify(o, null, 1)}${context()}`;
    assert.equal(o.notLoaded?.code, 'NOT_LOADED', ctx);
    assert.equal(o.notLoaded.name, 'WebDiffusionError', ctx);
    assert.ok(o.notLoaded.isClass && o.notLoaded.isError, ctx);
    assert.equal(o.http?.code, 'HTTP', ctx);
    assert.match(o.http.message, /no-such-model\/config\.json: HTTP 404/, ctx);
    assert.equal(o.badSolver?.code, 'BAD_OPTION', ctx);
    assert.equal(o.aborted?.code, 'ABORTED', ctx);
    assert.equal(o.afterAbort, 3, ctx);
    assert.equal(o.signal?.code, 'ABORTED', ctx);
    assert.equal(o.afterDispose?.code, 'DISPOSED', ctx);
  }
  // Worker mode rejects what was running at dispose() at once (the worker is stopped).
  assert.equal(r.worker.pendingAtDispose?.code, 'DISPOSED', JSON.stringify(r.worker));
});

test('a package served without its pkg/ folder fails with a WebDiffusionError saying so', { timeout: TEST_MS }, async () => {
  const page = await harness();
  const r = await page.evaluate(async () => {
    const { Engine } = await import('/broken/index.js');
    const out = {};
    for (const worker of [true, false]) {
      try {
        await Engine.create({ worker });
        out[worker] = 'created';
      } catch (e) {
        out[worker] = { name: e.name, code: e.code, message: e.message };
      }
    }
    return out;
  });
  for (const o of Object.values(r)) {
    assert.equal(o.name, 'WebDiffusionError', JSON.stringify(r));
    assert.equal(o.code, 'INTERNAL', JSON.stringify(r));
    assert.match(o.message, /pkg\/ folder/, JSON.stringify(r));
  }
});

test('a promise from onStep holds the next step, across the worker too', { timeout: TEST_MS }, async () => {
  const page = await harness();
  const r = await page.evaluate(async () => {
    const out = {};
    for (const worker of [true, false]) {
      const engine = await window.webdiffusion.Engine.create({ worker, cache: 'memory' });
      await engine.load('/models/mnist/');
      const times = [];
      const t0 = performance.now();
      await engine.generate({
        steps: 3,
        onStep: () => {
          times.push(performance.now() - t0);
          return new Promise((res) => setTimeout(res, 400));
        },
      });
      const held = performance.now() - t0;
      const t1 = performance.now();
      await engine.generate({ steps: 3, onStep: () => {} });
      out[worker ? 'worker' : 'main'] = { times, held, free: performance.now() - t1 };
      engine.dispose();
    }
    return out;
  });
  for (const [k, o] of Object.entries(r)) {
    const gaps = o.times.slice(1).map((t, i) => t - o.times[i]);
    assert.ok(gaps.every((g) => g >= 400), `${k}: steps were not held: ${JSON.stringify(o)}`);
    assert.ok(o.held >= 1200 && o.free < o.held - 600, `${k}: ${JSON.stringify(o)}`);
  }
});

test('weight cache: the second load downloads nothing; purge makes it download again', { timeout: TEST_MS }, async () => {
  const page = await harness();
  await page.evaluate(() => window.webdiffusion.Engine.purgeCache());
  const loadOnce = () =>
    page.evaluate(async () => {
      const { Engine } = window.webdiffusion;
      // A new engine each time: a new worker with an empty memory, like a new visit.
      const engine = await Engine.create();
      const cache = [];
      await engine.load('/models/mnist/', { onCache: (e) => cache.push(e) });
      engine.dispose();
      // Storing runs alongside the engine's read; wait until it is written.
      return cache;
    });
  const before1 = requestsFor(server.log, WEIGHTS).length;
  const first = await loadOnce();
  assert.equal(requestsFor(server.log, WEIGHTS).length - before1, 1, 'the first load downloads the weights once');
  assert.ok(first.some((e) => e.status === 'miss' && e.url.endsWith(WEIGHTS)), JSON.stringify(first));
  // Cache.put finishes after the engine has its bytes; wait for the entry.
  await page.waitForFunction(
    async (w) => !!(await (await caches.open('webdiffusion-weights-v1')).match(new URL(`/models/mnist/${w}`, location.href).href)),
    WEIGHTS,
    { timeout: 20_000, polling: 200 },
  );
  const before2 = server.log.length;
  const second = await loadOnce();
  const downloads = server.log.slice(before2).filter((e) => e.path.startsWith('/models/'));
  assert.deepEqual(downloads, [], `the second load must not touch the server's models/: ${JSON.stringify(downloads)}; cache events ${JSON.stringify(second)}`);
  assert.ok(second.some((e) => e.status === 'hit' && e.url.endsWith(WEIGHTS)), JSON.stringify(second));
  assert.ok(second.some((e) => e.status === 'hit' && e.url.endsWith('config.json')), JSON.stringify(second));

  const deleted = await page.evaluate(() => window.webdiffusion.Engine.purgeCache());
  assert.equal(deleted, true);
  const before3 = requestsFor(server.log, WEIGHTS).length;
  await loadOnce();
  assert.equal(requestsFor(server.log, WEIGHTS).length - before3, 1, 'after purgeCache() the weights are downloaded again');
});

test('OPFS store: a second load downloads nothing', { timeout: TEST_MS }, async () => {
  const page = await harness();
  const load = () =>
    page.evaluate(async () => {
      const engine = await window.webdiffusion.Engine.create({ cache: 'opfs', cacheName: 'opfs-test' });
      const cache = [];
      await engine.load('/models/mnist/', { onCache: (e) => cache.push(e.status) });
      // Wait for the storage branch to commit (a 'stored' event per file).
      for (let i = 0; i < 100 && cache.filter((s) => s === 'stored' || s === 'hit').length < 2; i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      engine.dispose();
      return cache;
    });
  const n0 = requestsFor(server.log, WEIGHTS).length;
  const first = await load();
  const second = await load();
  assert.equal(requestsFor(server.log, WEIGHTS).length - n0, 1, `first ${first}, second ${second}`);
  assert.ok(second.includes('hit') && !second.includes('miss'), `second load: ${second}`);
  await page.evaluate(() => window.webdiffusion.Engine.purgeCache('opfs-test'));
});

test('quota exceeded: the cache falls back to memory and says so', { timeout: TEST_MS }, async () => {
  const page = await harness();
  const cdp = await chrome.context.newCDPSession(page);
  const origin = new URL(server.url).origin;
  await page.evaluate(() => window.webdiffusion.Engine.purgeCache());
  // A quota far below the 5 MB weights.
  await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: 100_000 });
  try {
    const engine = await page.evaluateHandle(() => window.webdiffusion.Engine.create());
    const load = () =>
      page.evaluate(async (e) => {
        const events = [];
        await e.load('/models/mnist/', { onCache: (ev) => events.push(ev) });
        // Storing ends after load() resolves: wait until every miss has its outcome.
        for (let i = 0; i < 100; i++) {
          const misses = events.filter((ev) => ev.status === 'miss').length;
          const settled = events.filter((ev) => ['stored', 'memory', 'warning'].includes(ev.status)).length;
          if (settled >= misses) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        return events.map((ev) => ({ ...ev, file: ev.url.split('/').pop() }));
      }, engine);
    const first = await load();
    const warning = first.find((e) => e.status === 'warning');
    assert.ok(warning, `expected a quota warning: ${JSON.stringify(first)}`);
    assert.match(warning.message, /[Qq]uota/);
    assert.match(warning.message, /kept in memory/);
    // The file whose write was refused midway is fetched once more, then kept in memory;
    // after that nothing is downloaded.
    const second = await load();
    const n = server.log.length;
    const third = await load();
    const downloads = server.log.slice(n).filter((e) => e.path.startsWith('/models/'));
    const ctx = JSON.stringify({ first, second, third, downloads });
    assert.deepEqual(downloads, [], ctx);
    assert.ok(third.every((e) => e.status === 'hit'), ctx);
    assert.equal(third.find((e) => e.file === WEIGHTS)?.store, 'memory', ctx);
    await page.evaluate((e) => e.dispose(), engine);
  } finally {
    await cdp.send('Storage.overrideQuotaForOrigin', { origin });
  }
});

test('a download that breaks off is reported and never cached', { timeout: TEST_MS }, async () => {
  const page = await harness();
  const r = await page.evaluate(async (weights) => {
    const { Engine } = window.webdiffusion;
    const out = {};
    for (const cache of ['cache-api', 'opfs']) {
      const engine = await Engine.create({ cache, cacheName: `cut-${cache}` });
      const events = [];
      try {
        await engine.load('/cut/mnist/', { onCache: (e) => events.push(`${e.status}:${e.url.split('/').pop()}`) });
        out[cache] = { loaded: true };
      } catch (e) {
        out[cache] = { name: e.name, code: e.code, message: e.message };
      }
      await new Promise((res) => setTimeout(res, 500));
      // A second load must hit the network again (and fail again), not a cached stub.
      const again = [];
      await engine.load('/cut/mnist/', { onCache: (e) => again.push(`${e.status}:${e.url.split('/').pop()}`) }).catch(() => {});
      out[cache].events = events;
      out[cache].again = again;
      engine.dispose();
      if (cache === 'cache-api') {
        const c = await caches.open('cut-cache-api');
        out[cache].stored = !!(await c.match(new URL(`/cut/mnist/${weights}`, location.href).href));
      }
      await Engine.purgeCache(`cut-${cache}`);
    }
    return out;
  }, WEIGHTS);
  for (const cache of ['cache-api', 'opfs']) {
    const o = r[cache];
    const ctx = `${cache}: ${JSON.stringify(o)}${context()}`;
    assert.equal(o.loaded, undefined, ctx);
    assert.equal(o.name, 'WebDiffusionError', ctx);
    assert.ok(!o.events.includes(`stored:${WEIGHTS}`), ctx);
    assert.ok(o.again.includes(`miss:${WEIGHTS}`) && !o.again.includes(`hit:${WEIGHTS}`), ctx);
  }
  assert.equal(r['cache-api'].stored, false);
});

test("a caller's fetch hook runs on the main thread and streams into the worker", { timeout: TEST_MS }, async () => {
  const page = await harness();
  const r = await page.evaluate(async () => {
    const { Engine } = window.webdiffusion;
    await Engine.purgeCache();
    const engine = await Engine.create({ cache: 'none' });
    const seen = [];
    const info = await engine.load('/models/mnist/', {
      fetch: (url, init) => {
        seen.push(url);
        return fetch(url, init);
      },
    });
    engine.dispose();
    return { seen, width: info.width };
  });
  assert.equal(r.width, 32);
  assert.ok(r.seen.some((u) => u.endsWith(WEIGHTS)), JSON.stringify(r.seen));
});

test('responsiveness: frames keep flowing on the main thread while the worker engine is busy', { timeout: TEST_MS }, async (t) => {
  const page = await harness();
  const r = await page.evaluate(async () => {
    const { Engine } = window.webdiffusion;
    const measure = async (worker) => {
      const engine = await Engine.create({ worker, cache: 'memory' });
      await engine.load('/models/mnist/');
      const frames = [];
      let on = true;
      const tick = (t) => {
        if (!on) return;
        frames.push(t);
        requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
      const t0 = performance.now();
      // The stand-in spins 60 ms per step on the engine's thread.
      await engine.generate({ steps: 12 });
      const ms = performance.now() - t0;
      on = false;
      engine.dispose();
      const gaps = frames.slice(1).map((f, i) => f - frames[i]).sort((a, b) => a - b);
      return { ms, frames: frames.length, fps: (1000 * frames.length) / ms, p50: gaps[gaps.length >> 1] ?? null, max: gaps.at(-1) ?? null };
    };
    return { worker: await measure(true), main: await measure(false) };
  });
  t.diagnostic(`rAF with a busy worker engine: ${JSON.stringify(r.worker)}`);
  t.diagnostic(`rAF with the engine on the main thread: ${JSON.stringify(r.main)}`);
  // Robust: 12 steps of 60 ms spinning cannot fit between frames on the main thread, but
  // off it the page keeps drawing (headless Chromium paces rAF at ~60 Hz).
  assert.ok(r.worker.fps > 20, `worker: ${JSON.stringify(r.worker)}`);
  assert.ok(r.worker.max < 200, `worker: the longest frame gap was ${r.worker.max} ms`);
  assert.ok(r.main.max >= 55, `main thread: the longest gap should include a whole 60 ms step, got ${JSON.stringify(r.main)}`);
});
