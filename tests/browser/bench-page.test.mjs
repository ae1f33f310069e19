// The browser bench page (pages/bench.html, driven by bench.mjs for scripts/bench.sh) must not
// rot: a quick run of our side (one UNet forward at batch 1, one 4-step DDIM sample) in
// headless Chromium, with a finite output and timings. The ONNX Runtime Web side needs the
// exported graph and onnxruntime-web in .cache/ (scripts/bench.sh installs both, with torch);
// when both are there it runs too, and its output must match ours.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const haveOrt = fs.existsSync(path.join(ROOT, '.cache/onnx/export.json')) &&
  fs.existsSync(path.join(ROOT, '.cache/bench-web/node_modules/onnxruntime-web/dist/ort.webgpu.min.mjs'));

test(`bench page: a quick run of ours${haveOrt ? ' and ORT Web' : ''}`, { timeout: 240_000 }, () => {
  const json = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wd-bench-')), 'browser.json');
  const r = spawnSync(process.execPath, [path.join(HERE, 'bench.mjs'), '--quick', '--json', json, ...(haveOrt ? [] : ['--no-ort'])],
    { encoding: 'utf8', timeout: 230_000 });
  assert.equal(r.status, 0, `bench.mjs failed:\n${r.stdout}\n${r.stderr}`);
  const report = JSON.parse(fs.readFileSync(json, 'utf8'));
  const [fwd] = report.unet_forward;
  assert.equal(fwd.batch, 1);
  assert.ok(fwd.ours_ms_median > 0 && Number.isFinite(fwd.ours_ms_median), `forward time ${fwd.ours_ms_median}`);
  assert.equal(fwd.ours_out_len, 32 * 32, 'one 1×32×32 noise prediction');
  assert.ok(fwd.ours_out_finite && fwd.ours_out_max_abs > 0.1 && fwd.ours_out_max_abs < 100,
    `the forward's output is not a plausible noise prediction (finite ${fwd.ours_out_finite}, max |out| ${fwd.ours_out_max_abs})`);
  assert.equal(report.sampling.length, 1);
  assert.ok(report.sampling[0].ours_ms_per_image_median > 0);
  if (haveOrt) {
    assert.ok(fwd.ort_ms_median > 0, `ORT Web forward time ${fwd.ort_ms_median}`);
    assert.ok(fwd.parity.rel <= 1e-3, `ours vs ORT Web: ${fwd.parity.rel} relative`);
  }
  assert.match(r.stdout, /\| batch 1 \|/);
});
