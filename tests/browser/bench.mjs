// The browser benchmark: our wasm engine vs onnxruntime-web (WebGPU EP) on the same exported
// UNet, in the headless Chromium of the e2e tests (WebGPU on SwiftShader unless
// WEBDIFFUSION_CHROMIUM_FLAGS says otherwise). Not a test: scripts/bench.sh runs it.
//
//   node bench.mjs [--quick] [--json out.json] [--onnx DIR] [--ort-dist DIR] [--no-ort] [--ort-ep wasm]
//                [--repeats N] [--sample-repeats N]   (medians of N after a warm-up; ORT Web's
//                sampling reuses the warm batch-1 session and takes no warm-up run)
//
// Needs web/pkg (scripts/build-wasm.sh), the ONNX graphs (scripts/export_unet_onnx.py, default
// .cache/onnx) and onnxruntime-web's dist (default .cache/bench-web/node_modules/
// onnxruntime-web/dist: scripts/bench.sh installs the version pinned in
// scripts/bench-web/package.json). Everything is served from 127.0.0.1; nothing is fetched
// from outside.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from './server.mjs';
import { launch } from './web-helpers.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const value = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1] : fallback;
};
const quick = flag('--quick');
const useOrt = !flag('--no-ort');
const onnxDir = path.resolve(value('--onnx', path.join(ROOT, '.cache/onnx')));
const ortDist = path.resolve(value('--ort-dist', path.join(ROOT, '.cache/bench-web/node_modules/onnxruntime-web/dist')));
const jsonOut = value('--json', null);
// `--ort-ep wasm`: onnxruntime-web's CPU (wasm) EP instead, as a control.
const ortEp = value('--ort-ep', 'webgpu');
const TIMEOUT_MS = Number(process.env.WEBDIFFUSION_BENCH_TIMEOUT_MS ?? 1_800_000);

function fail(message) {
  console.error(`bench.mjs: ${message}`);
  process.exit(1);
}
if (!fs.existsSync(path.join(ROOT, 'web/pkg/webdiffusion.js'))) fail('web/pkg is missing: run scripts/build-wasm.sh');
if (useOrt) {
  if (!fs.existsSync(path.join(onnxDir, 'export.json'))) fail(`${onnxDir}/export.json is missing: run scripts/export_unet_onnx.py --out ${onnxDir}`);
  if (!fs.existsSync(path.join(ortDist, 'ort.webgpu.min.mjs'))) fail(`${ortDist}/ort.webgpu.min.mjs is missing: npm ci in a copy of scripts/bench-web (scripts/bench.sh does it)`);
}

const TYPES = { '.mjs': 'text/javascript', '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json', '.onnx': 'application/octet-stream' };
// /ort/* and /onnx/* from their folders; everything else as the e2e tests serve it.
function handle(req, res) {
  const url = decodeURIComponent((req.url ?? '/').split('?')[0]);
  for (const [prefix, dir] of [['/ort/', ortDist], ['/onnx/', onnxDir]]) {
    if (!url.startsWith(prefix)) continue;
    const file = path.resolve(dir, url.slice(prefix.length));
    if (!file.startsWith(dir + path.sep) || !fs.existsSync(file)) {
      res.writeHead(404).end('not found');
      return true;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(fs.readFileSync(file));
    return true;
  }
  return false;
}

const options = quick
  ? { batches: [1], repeats: 1, solvers: ['ddim'], steps: 4, sampleRepeats: 1, ort: useOrt, ortEp } // 4 steps as `webdiffusion bench --quick`
  : { ort: useOrt, ortEp, repeats: Number(value('--repeats', 5)), sampleRepeats: Number(value('--sample-repeats', 2)) };
const server = await startServer({ handle });
const extraFlags = (process.env.WEBDIFFUSION_CHROMIUM_FLAGS ?? '').split(' ').filter(Boolean);
const chrome = await launch({ extraFlags });
let report;
try {
  const page = await chrome.open(`${server.url}/tests/browser/pages/bench.html`);
  await page.waitForFunction(() => window.benchReady === true, null, { timeout: 60_000 });
  page.on('console', (m) => process.stderr.write(`  [page] ${m.text()}\n`));
  report = await page.evaluate((o) => window.runBench(o), options, { timeout: TIMEOUT_MS });
  report.chromium = chrome.browser.version();
  // Which onnxruntime-web build ran (its .mjs/.wasm pair tells the WebGPU backend apart).
  report.ort_files = [...new Set(server.requests.filter((r) => r.startsWith('/ort/')))];
  report.flags = extraFlags;
  report.browser_log = chrome.log.filter((l) => !l.startsWith('console.log'));
} catch (e) {
  console.error(chrome.log.join('\n'));
  fail(`the bench page failed: ${e.message}`);
} finally {
  await chrome.close();
  await server.close();
}

const f1 = (v) => (v == null ? 'n/a' : v.toFixed(1));
const f2 = (v) => (v == null ? 'n/a' : v.toFixed(2));
console.log(`\nbrowser: Chromium ${report.chromium}; adapter: ${report.adapter}` +
  (report.adapter_info ? ` (${report.adapter_info.description || report.adapter_info.vendor}${report.adapter_info.isFallbackAdapter ? ', fallback adapter' : ''})` : ''));
if (report.ort_version) console.log(`onnxruntime-web ${report.ort_version}, ${report.ort_ep} EP, 1 wasm thread`);
console.log('\n| UNet forward | ours ms (median) | ours GPU sum ms | ORT Web ms (median) | ours / ORT Web | max abs diff ours vs ORT Web |');
console.log('|---|---:|---:|---:|---:|---:|');
for (const r of report.unet_forward) {
  const parity = r.parity ? `${r.parity.max_abs_diff.toExponential(2)} (${r.parity.rel.toExponential(2)} rel)` : 'n/a';
  console.log(`| batch ${r.batch} | ${f1(r.ours_ms_median)} | ${f1(r.ours_gpu_ms_sum_of_kernels)} | ${f1(r.ort_ms_median)} | ${f2(r.ratio_ours_over_ort)} | ${parity} |`);
}
console.log(`\n| sampling, batch 1, ${report.sampling[0]?.steps ?? '-'} steps | ours ms/image | ORT Web ms/image | ours / ORT Web |`);
console.log('|---|---:|---:|---:|');
for (const s of report.sampling) {
  console.log(`| ${s.solver} | ${f1(s.ours_ms_per_image_median)} | ${f1(s.ort_ms_per_image_median)} | ${f2(s.ratio_ours_over_ort)} |`);
}
if (jsonOut) fs.writeFileSync(jsonOut, `${JSON.stringify(report, null, 2)}\n`);
// Parity: the same weights and input must give the same output, or the timing compares
// different computations.
const bad = report.unet_forward.filter((r) => r.parity && !(r.parity.rel <= 1e-3));
if (bad.length) fail(`ours and ORT Web disagree: ${bad.map((r) => `batch ${r.batch}: ${r.parity.rel.toExponential(2)} rel`).join(', ')}`);
