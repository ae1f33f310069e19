// One error type on both sides of the worker boundary: the engine's errors keep their
// `name` ("WebDiffusionError"), `code` and message when they are re-thrown on the main thread.

/** Every `code` a WebDiffusionError can carry (the contract of src/wasm.rs). */
export const ERROR_CODES = Object.freeze([
  'NO_WEBGPU', 'NO_ADAPTER', 'HTTP', 'NETWORK', 'TRUNCATED', 'BAD_MODEL', 'UNSUPPORTED_CONFIG',
  'LIMIT', 'OUT_OF_MEMORY', 'ABORTED', 'BAD_OPTION', 'NOT_LOADED', 'DISPOSED', 'INTERNAL',
]);

export class WebDiffusionError extends Error {
  /** @param {string} code one of ERROR_CODES  @param {string} message */
  constructor(code, message, options) {
    super(message, options);
    this.name = 'WebDiffusionError';
    this.code = ERROR_CODES.includes(code) ? code : 'INTERNAL';
  }
}

/** Any thrown value as a WebDiffusionError, keeping an engine error's code and message. */
export function toWebDiffusionError(e) {
  if (e instanceof WebDiffusionError) return e;
  if (e && typeof e === 'object' && typeof e.code === 'string' && ERROR_CODES.includes(e.code)) {
    const err = new WebDiffusionError(e.code, String(e.message ?? e.code));
    if (e.stack) err.stack = e.stack;
    return err;
  }
  if (e && typeof e === 'object' && e.name === 'AbortError') {
    return new WebDiffusionError('ABORTED', e.message || 'aborted');
  }
  const message = e instanceof Error ? e.message : String(e);
  // An engine built before the error codes existed still says which of these it was.
  const code = /WebGPU is not available/.test(message) ? 'NO_WEBGPU'
    : /no GPU adapter/.test(message) ? 'NO_ADAPTER' : 'INTERNAL';
  const err = new WebDiffusionError(code, message);
  if (e instanceof Error && e.stack) err.stack = e.stack;
  return err;
}

/** A structured-clone-safe copy for postMessage. */
export function serializeError(e) {
  const err = toWebDiffusionError(e);
  return { name: err.name, code: err.code, message: err.message, stack: err.stack };
}

export function deserializeError(o) {
  const err = new WebDiffusionError(o?.code ?? 'INTERNAL', o?.message ?? 'unknown error in the engine worker');
  if (o?.stack) err.stack = `${err.name}: ${err.message}\n    (in the engine worker)\n${String(o.stack).split('\n').slice(1).join('\n')}`;
  return err;
}
