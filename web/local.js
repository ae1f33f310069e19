// The engine in the current thread: the wasm-bindgen `Engine` plus the weight cache and
// error normalisation. index.js uses it directly for `{ worker: false }`; worker.js runs it
// inside the Web Worker.
import init, { Engine as WasmEngine } from './pkg/webdiffusion.js';
import { createCachingFetch, purgeCache, DEFAULT_CACHE_NAME } from './cache.js';
import { WebDiffusionError, toWebDiffusionError } from './errors.js';

let ready = null;

/** Fetch and instantiate the wasm once per thread. `wasmUrl` overrides where it lives. */
export function initWasm(wasmUrl) {
  ready ??= init(wasmUrl ? { module_or_path: wasmUrl } : undefined).catch((e) => {
    ready = null;
    throw new WebDiffusionError(
      'INTERNAL',
      `could not load the engine's WebAssembly${wasmUrl ? ` from ${wasmUrl}` : ''}: ${e?.message ?? e}`,
    );
  });
  return ready;
}

// The wasm side reads options with Reflect.get; absent keys are clearer than undefined ones.
function defined(o) {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}

async function call(f) {
  try {
    return await f();
  } catch (e) {
    throw toWebDiffusionError(e);
  }
}

export class LocalEngine {
  /** @param {{ canvas?: HTMLCanvasElement | OffscreenCanvas, powerPreference?: string,
   *            cache?: string, cacheName?: string, wasmUrl?: string }} options */
  static async create(options = {}) {
    await initWasm(options.wasmUrl);
    // The engine's device does not expose GPUAdapterInfo; it reads the browser's from here
    // for capabilities().adapter.vendor/architecture.
    try {
      const adapter = await navigator.gpu?.requestAdapter(options.powerPreference ? { powerPreference: options.powerPreference } : undefined);
      if (adapter?.info) globalThis.__webdiffusionAdapterInfo = adapter.info;
    } catch {
      // No adapter: create() below says so with its own error.
    }
    const wasm = await call(() =>
      WasmEngine.create(defined({ canvas: options.canvas ?? undefined, powerPreference: options.powerPreference })),
    );
    return new LocalEngine(wasm, options);
  }

  static solvers() {
    return WasmEngine.solvers();
  }

  constructor(wasm, options) {
    this.wasm = wasm;
    this.cacheName = options.cacheName ?? DEFAULT_CACHE_NAME;
    this.onCache = null;
    this.fetch = createCachingFetch({
      store: options.cache ?? 'cache-api',
      cacheName: this.cacheName,
      onEvent: (e) => this.onCache?.(e),
    });
  }

  capabilities() {
    return this.wasm.capabilities();
  }

  setCanvas(canvas) {
    try {
      this.wasm.setCanvas(canvas ?? null);
    } catch (e) {
      throw toWebDiffusionError(e);
    }
  }

  /** A caller's `options.fetch` does the downloading; the cache still sits in front of it.
   * Cache events go to the latest load's `onCache`, also after it resolved: storing a file
   * finishes after the engine has read it. */
  load(source, options = {}) {
    this.onCache = options.onCache ?? null;
    return call(() =>
      this.wasm.load(
        source,
        defined({
          onProgress: options.onProgress,
          fetch: options.fetch ? this.fetch.using(options.fetch) : this.fetch,
          signal: options.signal,
          weights: options.weights,
          previewDecoder: options.previewDecoder instanceof URL ? options.previewDecoder.href : options.previewDecoder,
        }),
      ),
    );
  }

  generate(options = {}) {
    return call(() => this.wasm.generate(defined({ ...options })));
  }

  abort() {
    this.wasm.abort();
  }

  dispose() {
    // A generate still running stops at its next step instead of running on unseen.
    this.wasm.abort();
    this.wasm.dispose();
  }

  /** Resolves when the weight cache has finished writing what was downloaded. */
  cacheSettled() {
    return this.fetch.settled();
  }

  async purgeCache() {
    this.fetch.clearMemory();
    return purgeCache(this.cacheName);
  }
}
