// The engine's Web Worker (a module worker started by index.js). It owns the wasm engine
// and the OffscreenCanvas it draws on; the main thread only posts requests and hears back
// results, progress, steps and cache events, so a generation never blocks the page.
//
// Protocol (main → worker): { id, op, args } with op create | load | generate | setCanvas |
// dispose | purge; { type: 'abort' }; { type: 'signal', id } (the load's AbortSignal fired);
// { type: 'fetchResult', fid, … } (answer to a proxied fetch); { type: 'stepDone', sid, async }
// (the page's onStep has finished; `async`: it returned a promise).
// Worker → main: { id, ok: true, value } | { id, ok: false, error } | { id, event, data } |
// { type: 'fetch', fid, url, init } (the caller's own fetch hook runs on the main thread).
import { LocalEngine } from './local.js';
import { serializeError, WebDiffusionError } from './errors.js';

let engine = null;
const signals = new Map();
const fetches = new Map();
let nextFid = 1;
// onStep round trips: the engine waits for a promise onStep returns (pacing a run, looking
// at each frame), so the worker asks the main thread whether the page's onStep returned one.
const stepWaits = new Map();
let nextSid = 1;

const post = (m, transfer) => self.postMessage(m, transfer ?? []);

// A caller-supplied fetch cannot cross the worker boundary; the worker asks the main
// thread to run it and gets the body back as a transferred ReadableStream (or bytes).
const proxiedFetch = (loadId) => (input, init) => {
  const fid = nextFid++;
  const plain = init ? { method: init.method, headers: init.headers ? [...new Headers(init.headers)] : undefined } : undefined;
  return new Promise((resolve, reject) => {
    fetches.set(fid, { resolve, reject });
    post({ type: 'fetch', fid, loadId, url: String(input), init: plain });
    init?.signal?.addEventListener('abort', () => post({ type: 'fetchAbort', fid }), { once: true });
  });
};

function answerFetch(m) {
  const f = fetches.get(m.fid);
  if (!f) return;
  fetches.delete(m.fid);
  if (!m.ok) {
    f.reject(new TypeError(m.message));
    return;
  }
  f.resolve(new Response(m.body ?? null, { status: m.status, statusText: m.statusText, headers: m.headers }));
}

async function run(id, op, args) {
  if (op === 'create') {
    engine = await LocalEngine.create(args);
    return { value: { capabilities: engine.capabilities(), solvers: LocalEngine.solvers() } };
  }
  if (!engine) throw new WebDiffusionError('INTERNAL', `'${op}' reached the worker before create()`);
  switch (op) {
    case 'load': {
      // Engine-wide, not tied to this request: storing ends after the load resolved.
      const options = { onCache: (data) => post({ type: 'cache', data }) };
      if (args.weights !== undefined) options.weights = args.weights;
      if (args.previewDecoder !== undefined) options.previewDecoder = args.previewDecoder;
      if (args.onProgress) options.onProgress = (data) => post({ id, event: 'progress', data });
      if (args.proxyFetch) options.fetch = proxiedFetch(id);
      if (args.signal) {
        const controller = new AbortController();
        signals.set(id, controller);
        if (args.signalAborted) controller.abort();
        options.signal = controller.signal;
      }
      try {
        return { value: await engine.load(args.source, options) };
      } finally {
        signals.delete(id);
      }
    }
    case 'generate': {
      const { onStep, ...rest } = args;
      if (onStep) {
        // The first step waits for the answer; if the page's onStep returned no promise,
        // later steps do not wait (a busy main thread must not slow the engine down).
        let waits = true;
        rest.onStep = (data) => {
          if (!waits) {
            post({ id, event: 'step', data });
            return undefined;
          }
          const sid = nextSid++;
          post({ id, event: 'step', data, sid });
          return new Promise((resolve) => {
            stepWaits.set(sid, (isAsync) => {
              waits = isAsync;
              resolve();
            });
          });
        };
      }
      const value = await engine.generate(rest);
      const transfer = value?.pixels?.buffer instanceof ArrayBuffer ? [value.pixels.buffer] : [];
      return { value, transfer };
    }
    case 'setCanvas':
      engine.setCanvas(args.canvas);
      return { value: undefined };
    case 'dispose': {
      // GPU memory goes now; the worker lives on until the weight cache has written what
      // it was storing, or that write would die with it.
      const e = engine;
      engine = null;
      e.dispose();
      await e.cacheSettled();
      return { value: undefined };
    }
    case 'purge':
      return { value: await engine.purgeCache() };
    default:
      throw new WebDiffusionError('INTERNAL', `unknown worker request '${op}'`);
  }
}

self.onmessage = async (event) => {
  const m = event.data;
  if (m?.type === 'abort') {
    engine?.abort();
    return;
  }
  if (m?.type === 'signal') {
    signals.get(m.id)?.abort();
    return;
  }
  if (m?.type === 'fetchResult') {
    answerFetch(m);
    return;
  }
  if (m?.type === 'stepDone') {
    const done = stepWaits.get(m.sid);
    stepWaits.delete(m.sid);
    done?.(m.async);
    return;
  }
  const { id, op, args } = m;
  try {
    const { value, transfer } = await run(id, op, args ?? {});
    post({ id, ok: true, value }, transfer);
  } catch (e) {
    post({ id, ok: false, error: serializeError(e) });
  }
};
