// webdiffusion: diffusion models sampled on the GPU with WebGPU, in the browser.
//
//   import { Engine } from 'webdiffusion';
//   const engine = await Engine.create({ canvas });       // runs in a Web Worker
//   await engine.load('/models/mnist/', { onProgress });   // weights streamed and cached
//   const { pixels } = await engine.generate({ steps: 20, seed: 1, onStep });
//
// By default the engine lives in a module Web Worker and draws on the canvas through an
// OffscreenCanvas, so the page keeps its frame rate while it samples. `{ worker: false }`
// runs it on the calling thread instead (the same API).
import { WebDiffusionError, ERROR_CODES, toWebDiffusionError, deserializeError } from './errors.js';
import { purgeCache as purgeStoredWeights, createCachingFetch, DEFAULT_CACHE_NAME } from './cache.js';

export { WebDiffusionError, ERROR_CODES, createCachingFetch, DEFAULT_CACHE_NAME };

const CREATE = Symbol('create');
const HTML_CANVAS = typeof HTMLCanvasElement === 'undefined' ? null : HTMLCanvasElement;

// The worker resolves URLs against its own script; the caller meant the page's.
function absolute(url) {
  return new URL(String(url), globalThis.document?.baseURI ?? globalThis.location?.href).href;
}

// A picked folder's files carry their paths in webkitRelativePath, which the File API does
// not promise to keep through postMessage to the worker: they travel as { path, file }.
function resolveItem(s) {
  if (typeof s === 'string' || s instanceof URL) return absolute(s);
  if (typeof File !== 'undefined' && s instanceof File && s.webkitRelativePath) return { path: s.webkitRelativePath, file: s };
  return s;
}

function resolveSource(source) {
  if (typeof source === 'string' || source instanceof URL) return absolute(source);
  if (Array.isArray(source) || (typeof FileList !== 'undefined' && source instanceof FileList)) return Array.from(source, resolveItem);
  return source;
}

// The wasm glue is imported only when this thread runs the engine (or asks for solvers()).
async function importLocal() {
  try {
    return await import('./local.js');
  } catch (e) {
    throw new WebDiffusionError(
      'INTERNAL',
      `could not load the engine's modules (${e?.message ?? e}); check that local.js and the pkg/ folder are served next to index.js`,
    );
  }
}

function disposed() {
  return new WebDiffusionError('DISPOSED', 'this Engine was disposed; create a new one with Engine.create()');
}

// The canvas a worker can draw on. A canvas element hands its control over once, for good;
// its size then follows the OffscreenCanvas, which the engine sizes to the image.
function offscreen(canvas) {
  if (HTML_CANVAS && canvas instanceof HTML_CANVAS) {
    try {
      return canvas.transferControlToOffscreen();
    } catch (e) {
      throw new WebDiffusionError(
        'BAD_OPTION',
        `this canvas cannot be handed to the engine's worker (${e?.message ?? e}): a canvas element can be given to one worker engine only, and not after getContext() was called on it; use a fresh <canvas>, or { worker: false }`,
      );
    }
  }
  return canvas;
}

/** The engine behind a Web Worker: every call is a message, every callback an event. */
class WorkerBackend {
  static async create(options) {
    let worker;
    try {
      worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'webdiffusion' });
    } catch (e) {
      throw new WebDiffusionError(
        'INTERNAL',
        `could not start the engine's module Web Worker (${e?.message ?? e}); this browser may not support module workers: pass { worker: false }`,
      );
    }
    const backend = new WorkerBackend(worker);
    const canvas = options.canvas ? offscreen(options.canvas) : undefined;
    try {
      const ready = await backend.call(
        'create',
        {
          canvas,
          powerPreference: options.powerPreference,
          cache: options.cache,
          cacheName: options.cacheName,
          wasmUrl: options.wasmUrl ? absolute(options.wasmUrl) : undefined,
        },
        canvas ? [canvas] : [],
      );
      backend.capabilities = ready.capabilities;
      backend.solvers = ready.solvers;
      return backend;
    } catch (e) {
      backend.terminate(e);
      throw e;
    }
  }

  constructor(worker) {
    this.worker = worker;
    this.pending = new Map();
    this.nextId = 1;
    this.userFetch = new Map();
    this.inflight = new Map();
    this.dead = null;
    worker.onmessage = (ev) => this.receive(ev.data);
    worker.onerror = (ev) => {
      ev.preventDefault?.();
      this.terminate(
        new WebDiffusionError('INTERNAL', `the engine's worker failed: ${ev.message || 'it could not be loaded (check that worker.js and the pkg/ folder are served next to index.js)'}`),
      );
    };
    worker.onmessageerror = () => this.terminate(new WebDiffusionError('INTERNAL', 'a message from the engine worker could not be read'));
  }

  call(op, args, transfer = [], handlers = {}) {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, handlers });
      try {
        this.worker.postMessage({ id, op, args }, transfer);
      } catch (e) {
        this.pending.delete(id);
        reject(new WebDiffusionError('BAD_OPTION', `an option could not be sent to the engine's worker: ${e?.message ?? e}`));
      }
    });
  }

  receive(m) {
    if (m?.type === 'fetch') {
      this.runFetch(m);
      return;
    }
    if (m?.type === 'cache') {
      try {
        this.onCache?.(m.data);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
      return;
    }
    if (m?.type === 'fetchAbort') {
      this.inflight.get(m.fid)?.abort();
      return;
    }
    if (m.id === 0) {
      clearTimeout(this.disposeTimer);
      this.worker.terminate();
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.event) {
      const h = { progress: p.handlers.onProgress, step: p.handlers.onStep }[m.event];
      let r;
      try {
        r = h?.(m.data);
      } catch (e) {
        // A throwing callback is the page's bug; report it without breaking the run.
        console.error('webdiffusion: a callback threw:', e);
      }
      if (m.sid !== undefined) {
        // onStep may return a promise: the engine holds the next step until it settles.
        const done = (isAsync) => {
          if (!this.dead) this.worker.postMessage({ type: 'stepDone', sid: m.sid, async: isAsync });
        };
        if (r && typeof r.then === 'function') {
          Promise.resolve(r).catch((e) => console.error("webdiffusion: onStep's promise rejected:", e)).finally(() => done(true));
        } else {
          done(false);
        }
      }
      return;
    }
    this.pending.delete(m.id);
    if (m.ok) p.resolve(m.value);
    else p.reject(deserializeError(m.error));
  }

  // The worker asked for the caller's own fetch hook: run it here and hand the body over.
  async runFetch({ fid, url, init, loadId }) {
    const f = this.userFetch.get(loadId);
    const controller = new AbortController();
    this.inflight.set(fid, controller);
    try {
      if (!f) throw new TypeError('no fetch hook is registered for this load');
      const r = await f(url, { ...init, signal: controller.signal });
      const head = { type: 'fetchResult', fid, ok: true, status: r.status, statusText: r.statusText, headers: [...r.headers] };
      try {
        this.worker.postMessage({ ...head, body: r.body }, r.body ? [r.body] : []);
      } catch {
        // No transferable streams in this browser: send the bytes instead.
        this.worker.postMessage({ ...head, body: await r.arrayBuffer() });
      }
    } catch (e) {
      this.worker.postMessage({ type: 'fetchResult', fid, ok: false, message: `${e?.name ?? 'Error'}: ${e?.message ?? e}` });
    } finally {
      this.inflight.delete(fid);
    }
  }

  async load(source, options) {
    const { onProgress, onCache, fetch, signal, weights } = options;
    const previewDecoder = options.previewDecoder instanceof URL ? options.previewDecoder.href : options.previewDecoder;
    const id = this.nextId; // the id call() is about to use
    if (fetch) this.userFetch.set(id, fetch);
    this.onCache = onCache ?? null;
    const onAbort = () => this.worker.postMessage({ type: 'signal', id });
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await this.call(
        'load',
        { source, weights, previewDecoder, onProgress: !!onProgress, proxyFetch: !!fetch, signal: !!signal, signalAborted: !!signal?.aborted },
        [],
        { onProgress },
      );
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.userFetch.delete(id);
    }
  }

  async generate(options) {
    const { onStep, ...rest } = options;
    // A URL object does not cross postMessage; its text does (a Float32Array is copied).
    if (rest.momentData instanceof URL) rest.momentData = rest.momentData.href;
    return this.call('generate', { ...rest, onStep: !!onStep }, [], { onStep });
  }

  setCanvas(canvas) {
    const c = canvas ? offscreen(canvas) : null;
    // Fire and forget like the contract's synchronous setCanvas; errors surface as a
    // rejected promise the caller may await through `engine.ready`.
    return this.call('setCanvas', { canvas: c }, c ? [c] : []);
  }

  abort() {
    if (!this.dead) this.worker.postMessage({ type: 'abort' });
  }

  dispose() {
    if (this.dead) return;
    this.dead = disposed();
    // Calls still running reject now, not when the worker gets round to it.
    for (const p of this.pending.values()) p.reject(this.dead);
    this.pending.clear();
    // Id 0 is the dispose answer: the worker frees the GPU memory and finishes writing the
    // weight cache, then it is stopped (a worker that hangs is stopped after a minute).
    this.worker.postMessage({ id: 0, op: 'dispose' });
    this.disposeTimer = setTimeout(() => this.worker.terminate(), 60_000);
  }

  purgeCache() {
    return this.call('purge', {});
  }

  terminate(error) {
    this.dead ??= error;
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }
}

/** A WebGPU diffusion engine (see index.d.ts for every option). */
export class Engine {
  #backend;
  #local;
  #capabilities;
  #solvers;
  #disposed = false;

  constructor(token) {
    if (token !== CREATE) throw new TypeError('use `await Engine.create(options)`, not `new Engine()`');
  }

  /**
   * Request a WebGPU adapter and device (in a worker unless `worker: false`).
   * Rejects with a WebDiffusionError (code NO_WEBGPU or NO_ADAPTER, …) saying what to do.
   */
  static async create(options = {}) {
    const engine = new Engine(CREATE);
    const { worker = true, ...rest } = options;
    if (worker) {
      if (typeof Worker === 'undefined') {
        throw new WebDiffusionError('BAD_OPTION', 'Web Workers are not available here; pass { worker: false }');
      }
      const backend = await WorkerBackend.create(rest);
      engine.#backend = backend;
      engine.#capabilities = backend.capabilities;
      engine.#solvers = backend.solvers;
    } else {
      const { LocalEngine } = await importLocal();
      const local = await LocalEngine.create(rest);
      engine.#local = local;
      engine.#capabilities = local.capabilities();
      engine.#solvers = LocalEngine.solvers();
    }
    return engine;
  }

  /** The solver menu: every name `generate({ solver })` accepts. Loads the wasm when needed. */
  static async solvers() {
    const { initWasm, LocalEngine } = await importLocal();
    await initWasm();
    return LocalEngine.solvers();
  }

  /** Delete every cached weight file of this origin (optionally of one cache name). */
  static purgeCache(cacheName) {
    return purgeStoredWeights(cacheName);
  }

  /** Whether this engine runs in a Web Worker. */
  get inWorker() {
    return !!this.#backend;
  }

  #check() {
    if (this.#disposed) throw disposed();
  }

  capabilities() {
    this.#check();
    return structuredClone(this.#capabilities);
  }

  /** The solver menu of this engine (synchronous; `Engine.solvers()` needs no engine). */
  solvers() {
    return structuredClone(this.#solvers);
  }

  setCanvas(canvas) {
    this.#check();
    if (this.#local) {
      this.#local.setCanvas(canvas);
      return;
    }
    this.#backend.setCanvas(canvas).catch((e) => console.error('webdiffusion: setCanvas failed:', e));
  }

  /**
   * Load a model: a folder URL, an array of file URLs, or File/Blob objects (an array or a
   * FileList; a picked folder's files keep their paths, so a Stable Diffusion repository
   * folder picked with `<input type="file" webkitdirectory>` loads whole).
   * Weights are streamed to the GPU as they arrive and cached (see `cache` in create()).
   */
  async load(source, options = {}) {
    this.#check();
    const resolved = resolveSource(source);
    if (this.#local) return this.#local.load(resolved, options);
    return this.#backend.load(resolved, options);
  }

  /** Sample an image; the canvas (if any) shows every step. */
  async generate(options = {}) {
    this.#check();
    if (this.#local) return this.#local.generate(options);
    return this.#backend.generate(options);
  }

  /** Stop the running load or generate between steps; it rejects with code ABORTED. */
  abort() {
    if (this.#disposed) return;
    if (this.#local) this.#local.abort();
    else this.#backend.abort();
  }

  /** Free the GPU memory (and stop the worker); later calls reject with DISPOSED. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#local) {
      try {
        this.#local.dispose();
      } catch (e) {
        console.warn('webdiffusion: dispose:', toWebDiffusionError(e).message);
      }
    } else {
      this.#backend.dispose();
    }
  }

  /** Forget cached weights: this engine's in-memory copies and the origin's stored files. */
  async purgeCache() {
    if (this.#local) return this.#local.purgeCache();
    if (this.#backend && !this.#disposed) return this.#backend.purgeCache();
    return purgeStoredWeights();
  }
}

/** Delete every cached weight file of this origin. Same as `Engine.purgeCache()`. */
export function purgeCache(cacheName) {
  return purgeStoredWeights(cacheName);
}

export default Engine;
