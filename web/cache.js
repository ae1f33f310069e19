// The weight cache: a `fetch` with the same signature as the global one, handed to the
// engine's `load(…, { fetch })` hook. A model file is downloaded once and served from the
// Cache API (or OPFS) afterwards, keyed by its absolute URL. Bytes reach the engine while
// they download: the body is teed, one branch to the engine, one to storage, so caching
// never holds a whole file back. Failed or cut-off downloads are never stored (the storage
// branch errors with the download, and both Cache.put and an OPFS writable then discard
// what they had).

const DEFAULT_CACHE_NAME = 'webdiffusion-weights-v1';

/** @typedef {'cache-api' | 'opfs' | 'memory' | 'none'} CacheStore */

function isQuotaError(e) {
  return e?.name === 'QuotaExceededError' || /quota/i.test(String(e?.message ?? ''));
}

/** Counts the bytes of a stream and errors at the end if they disagree with Content-Length,
 * so a response a server closed early is not stored as if it were the whole file. */
function lengthChecked(stream, expected) {
  if (!(expected >= 0)) return stream;
  let seen = 0;
  return stream.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        seen += chunk.byteLength;
        controller.enqueue(chunk);
      },
      flush(controller) {
        if (seen !== expected) controller.error(new Error(`got ${seen} of ${expected} bytes`));
      },
    }),
  );
}

function contentLength(response) {
  const v = response.headers.get('content-length');
  return v === null || v === '' ? NaN : Number(v);
}

// OPFS file names: the URL, made safe (a readable prefix plus a hash of the whole URL).
async function opfsName(url) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
  const tail = url.split('/').filter(Boolean).pop() ?? 'file';
  return `${hex.slice(0, 24)}-${tail.replace(/[^A-Za-z0-9._-]/g, '_').slice(-64)}`;
}

async function opfsDir(cacheName, create) {
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle(cacheName, { create });
}

/**
 * Create a caching fetch.
 * @param {{ store?: CacheStore, cacheName?: string, fetch?: typeof fetch,
 *           onEvent?: (e: { url: string, status: string, store: string, bytes?: number, message?: string }) => void }} [options]
 *   `onEvent` hears one event per file: `hit` (served from storage), `miss` (downloading),
 *   `stored` (written to storage), `memory` (kept in memory only), and `warning` (storage
 *   refused, e.g. its quota; the file is then kept in memory for this session).
 */
export function createCachingFetch(options = {}) {
  let store = options.store ?? 'cache-api';
  const cacheName = options.cacheName ?? DEFAULT_CACHE_NAME;
  const baseFetch = options.fetch ?? ((url, init) => globalThis.fetch(url, init));
  const emit = (e) => {
    try {
      options.onEvent?.(e);
    } catch {
      // A throwing listener must not break a download.
    }
  };
  /** @type {Map<string, { blob: Blob, headers: [string, string][] }>} */
  const memory = new Map();
  /** Writes still under way (settled() waits for them). */
  const writing = new Set();

  if (store === 'cache-api' && typeof caches === 'undefined') store = 'memory';
  if (store === 'opfs' && !navigator.storage?.getDirectory) store = 'memory';
  // Where files were stored before any fallback: still read after one.
  const persistent = store === 'cache-api' || store === 'opfs' ? store : null;

  function fallBackToMemory(url, why) {
    if (store !== 'memory') {
      emit({
        url,
        status: 'warning',
        store,
        message: `the weight cache (${store}) refused to store ${url}: ${why}; from now on downloaded weights are kept in memory for this session only (that file is downloaded once more when loaded again) and will be downloaded again on the next visit`,
      });
      store = 'memory';
    }
  }

  async function lookup(url) {
    if (memory.has(url)) {
      const m = memory.get(url);
      return new Response(m.blob.stream(), { status: 200, headers: m.headers });
    }
    if (persistent === 'cache-api') {
      const cache = await caches.open(cacheName);
      return (await cache.match(url)) ?? null;
    }
    if (persistent === 'opfs') {
      try {
        const dir = await opfsDir(cacheName, false);
        const handle = await dir.getFileHandle(await opfsName(url));
        const file = await handle.getFile();
        return new Response(file.stream(), {
          status: 200,
          headers: { 'content-length': String(file.size), 'x-webdiffusion-cache': 'opfs' },
        });
      } catch {
        return null;
      }
    }
    return null;
  }

  // Writes one branch of a teed body to storage; resolves when stored or given up.
  async function save(url, response, body) {
    const length = contentLength(response);
    const checked = lengthChecked(body, length);
    let mode = store;
    // A file that cannot fit in what is left of the quota goes to memory before a byte is
    // written, so this one is kept too (a write refused midway loses the file).
    if (mode !== 'memory' && length >= 0) {
      const estimate = await navigator.storage?.estimate?.().catch(() => null);
      const left = estimate ? (estimate.quota ?? Infinity) - (estimate.usage ?? 0) : Infinity;
      if (length > left) {
        fallBackToMemory(url, `QuotaExceededError: ${length} bytes needed, ${Math.max(0, left)} bytes of storage quota left`);
        mode = 'memory';
      }
    }
    try {
      if (mode === 'cache-api') {
        const headers = new Headers();
        for (const h of ['content-type', 'content-length', 'etag', 'last-modified']) {
          const v = response.headers.get(h);
          if (v !== null) headers.set(h, v);
        }
        const cache = await caches.open(cacheName);
        await cache.put(url, new Response(checked, { status: 200, headers }));
      } else if (mode === 'opfs') {
        const dir = await opfsDir(cacheName, true);
        const name = await opfsName(url);
        // Written under a temporary name and renamed when complete: a lookup must never
        // find a half-written file (getFileHandle creates the file before any byte).
        const part = `${name}.part-${crypto.randomUUID()}`;
        const handle = await dir.getFileHandle(part, { create: true });
        try {
          const writable = await handle.createWritable();
          // pipeTo closes (commits) the writable on success and aborts it on error.
          await checked.pipeTo(writable);
          await handle.move(name);
        } catch (e) {
          await dir.removeEntry(part).catch(() => {});
          throw e;
        }
      } else {
        const blob = await new Response(checked).blob();
        memory.set(url, { blob, headers: [['content-length', String(blob.size)]] });
        emit({ url, status: 'memory', store: 'memory', bytes: blob.size });
        return;
      }
      emit({ url, status: 'stored', store: mode, bytes: length >= 0 ? length : undefined });
    } catch (e) {
      if (isQuotaError(e)) {
        fallBackToMemory(url, `${e.name}: ${e.message}`);
      }
      // Anything else (the download failed or was aborted) is the engine's error to
      // report; storage just keeps nothing.
    }
  }

  async function cachedFetch(base, input, init) {
    const url = new URL(String(input), globalThis.location?.href).href;
    if (store !== 'none') {
      let hit = null;
      try {
        hit = await lookup(url);
      } catch (e) {
        fallBackToMemory(url, e?.message ?? String(e));
      }
      if (hit) {
        emit({ url, status: 'hit', store: memory.has(url) ? 'memory' : persistent, bytes: contentLength(hit) || undefined });
        return hit;
      }
    }
    const response = await base(url, init);
    if (store === 'none' || !response.ok || !response.body || response.status !== 200) return response;
    emit({ url, status: 'miss', store, bytes: contentLength(response) || undefined });
    const [forEngine, forStore] = response.body.tee();
    // Not awaited: storage runs alongside the engine reading its branch.
    const saving = save(url, response, forStore);
    writing.add(saving);
    saving.finally(() => writing.delete(saving));
    return new Response(forEngine, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  }

  /** @type {((input: string | URL, init?: RequestInit) => Promise<Response>) & { using: Function, clearMemory: Function }} */
  const cachingFetch = (input, init) => cachedFetch(baseFetch, input, init);
  // The same storage in front of another fetch (e.g. one a caller passed to load()).
  cachingFetch.using = (base) => (input, init) => cachedFetch(base, input, init);
  cachingFetch.clearMemory = () => memory.clear();
  // Resolves when every file being stored is written (or given up); a worker waits for this
  // before it is stopped, or the write would be lost with it.
  cachingFetch.settled = () => Promise.allSettled([...writing]).then(() => undefined);
  return cachingFetch;
}

/**
 * Delete every cached weight file (Cache API and OPFS) of this origin's cache `cacheName`.
 * Resolves to true when something was deleted.
 */
export async function purgeCache(cacheName = DEFAULT_CACHE_NAME) {
  let deleted = false;
  if (typeof caches !== 'undefined') deleted = (await caches.delete(cacheName)) || deleted;
  if (navigator.storage?.getDirectory) {
    try {
      const root = await navigator.storage.getDirectory();
      await root.removeEntry(cacheName, { recursive: true });
      deleted = true;
    } catch {
      // No such directory: nothing was cached there.
    }
  }
  return deleted;
}

export { DEFAULT_CACHE_NAME };
