// Runs Engine.create(), capabilities() and selfCheck() and publishes the outcome both in the
// page and as `window.selfcheck` (read by tests/browser/selfcheck.test.mjs):
//   { state: 'running' | 'done' | 'error', adapterInfo, capabilities, lines, error, ms }
import init, { Engine } from '../web/pkg/webdiffusion.js';

const result = { state: 'running', adapterInfo: null, capabilities: null, lines: [], error: null, ms: {} };
window.selfcheck = result;
const $ = (id) => document.getElementById(id);

async function timed(name, f) {
  const t0 = performance.now();
  try {
    return await f();
  } finally {
    result.ms[name] = Math.round(performance.now() - t0);
  }
}

async function main() {
  await timed('init', () => init());
  // What the browser itself says about its adapter (the engine asks for its own below).
  if (navigator.gpu) {
    const adapter = await navigator.gpu.requestAdapter();
    if (adapter) {
      const i = adapter.info ?? {};
      result.adapterInfo = {
        vendor: i.vendor, architecture: i.architecture, device: i.device,
        description: i.description, isFallbackAdapter: i.isFallbackAdapter ?? adapter.isFallbackAdapter,
        features: [...adapter.features].sort(),
      };
    }
  }
  const engine = await timed('create', () => Engine.create());
  // The engine's capabilities() was text, then became an object with the same text in
  // `summary`; the page shows the text either way.
  const caps = engine.capabilities();
  result.capabilities = typeof caps === 'string' ? caps : caps.summary;
  $('capabilities').textContent = result.capabilities;
  const report = await timed('selfCheck', () => engine.selfCheck());
  result.lines = report.split('\n').filter((l) => l.length > 0);
  $('lines').textContent = report;
  engine.free();
}

main().then(
  () => {
    const failed = result.lines.filter((l) => !l.endsWith(' ok')).length;
    result.state = 'done';
    $('status').dataset.state = failed ? 'error' : 'done';
    $('status').textContent = failed ? `${failed} kernel(s) FAILED` : `all ${result.lines.length} kernels ok`;
  },
  (e) => {
    result.error = e instanceof Error ? e.message : String(e);
    result.state = 'error';
    $('status').dataset.state = 'error';
    $('status').textContent = `error: ${result.error}`;
  },
);
