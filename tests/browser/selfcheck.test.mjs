// The engine in a real browser: headless Chromium (Tint + Dawn) with WebGPU on SwiftShader.
// Loads www/selfcheck.html, which runs every kernel on the GPU against the CPU reference,
// and checks a browser without WebGPU gets a clear rejection rather than a crash or a hang.
// Run by scripts/browser-test.sh after scripts/build-wasm.sh has filled web/pkg/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';

const CHROMIUM = process.env.WEBDIFFUSION_CHROMIUM ?? '/usr/bin/chromium';
const BASE_FLAGS = [
  '--headless=new', '--no-sandbox', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];
const WEBGPU_FLAGS = [
  '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-angle=swiftshader', '--use-webgpu-adapter=swiftshader',
];
// SwiftShader runs shaders on 1-2 CPU cores and compiles each pipeline on first use
// (seconds each), so the self-check is slow; the limits only turn a hang into a failure.
const SELFCHECK_MS = Number(process.env.WEBDIFFUSION_BROWSER_TIMEOUT_MS ?? 300_000);
const NEGATIVE_MS = 90_000;
const LAUNCH_MS = 60_000;
const MIN_KERNELS = 18;

let server;
before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found (scripts/browser-test.sh installs Debian's chromium)`);
  const pkg = new URL('../../web/pkg/webdiffusion.js', import.meta.url);
  assert.ok(fs.existsSync(pkg), 'web/pkg/webdiffusion.js is missing: run scripts/build-wasm.sh first');
  server = await startServer();
});
after(async () => {
  await server?.close();
});

/** Open the self-check page in a fresh Chromium and return window.selfcheck once settled. */
async function runPage(flags, waitMs) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-chromium-'));
  const log = [];
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    ignoreDefaultArgs: true,
    args: [...BASE_FLAGS, `--user-data-dir=${profile}`, ...flags, '--remote-debugging-pipe'],
    timeout: LAUNCH_MS,
  });
  try {
    const page = await browser.newPage();
    page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
    page.on('crash', () => log.push('page crashed'));
    page.on('requestfailed', (r) => log.push(`request failed: ${r.url()}`));
    await page.goto(`${server.url}/www/selfcheck.html`, { timeout: LAUNCH_MS });
    try {
      await page.waitForFunction(() => window.selfcheck && window.selfcheck.state !== 'running', null, {
        timeout: waitMs,
        polling: 500,
      });
    } catch (e) {
      const partial = await page.evaluate(() => window.selfcheck).catch(() => undefined);
      throw new Error(
        `the page did not finish within ${waitMs / 1000} s (${e.message.split('\n')[0]})\n` +
          `state: ${JSON.stringify(partial)}\nbrowser log:\n${log.join('\n')}`,
      );
    }
    return { result: await page.evaluate(() => window.selfcheck), log, version: browser.version() };
  } finally {
    await browser.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

test('every kernel agrees with the CPU reference in Chromium (WebGPU on SwiftShader)', { timeout: SELFCHECK_MS + 2 * LAUNCH_MS }, async (t) => {
  const { result, log, version } = await runPage(WEBGPU_FLAGS, SELFCHECK_MS);
  const context = `\nresult: ${JSON.stringify(result, null, 1)}\nbrowser log:\n${log.join('\n')}`;
  t.diagnostic(`chromium ${version}`);
  t.diagnostic(`navigator.gpu adapter: ${JSON.stringify(result.adapterInfo)}`);
  t.diagnostic(`timings (ms): ${JSON.stringify(result.ms)}`);
  // capabilities() is a plain object (its `summary` the text form); older pages showed text.
  const caps = result.capabilities;
  const summary = typeof caps === 'string' ? caps : caps?.summary ?? '';
  for (const line of summary.split('\n')) t.diagnostic(line);
  for (const line of result.lines) t.diagnostic(line);

  assert.ok(result.adapterInfo, `navigator.gpu.requestAdapter() found no adapter${context}`);
  assert.equal(result.state, 'done', `the self-check did not complete${context}`);
  assert.match(summary, /^adapter: /, `capabilities() has no adapter line${context}`);
  if (typeof caps !== 'string') assert.equal(caps.webgpu, true, context);
  assert.ok(result.lines.length >= MIN_KERNELS, `expected at least ${MIN_KERNELS} kernel lines, got ${result.lines.length}${context}`);
  const failed = result.lines.filter((l) => !/ ok$/.test(l));
  assert.deepEqual(failed, [], `kernels disagree with the CPU reference${context}`);
});

test('without --enable-unsafe-webgpu, Engine.create() rejects with a clear message', { timeout: NEGATIVE_MS + 2 * LAUNCH_MS }, async (t) => {
  const { result, log } = await runPage([], NEGATIVE_MS);
  const context = `\nresult: ${JSON.stringify(result, null, 1)}\nbrowser log:\n${log.join('\n')}`;
  t.diagnostic(`rejection: ${result.error}`);
  assert.equal(result.state, 'error', `Engine.create() should have rejected${context}`);
  assert.equal(result.capabilities, null, context);
  // Either message of src/wasm.rs, depending on whether this Chromium exposes navigator.gpu
  // at all without the flag; never a panic ("unreachable") or wgpu's raw error text alone.
  assert.match(
    result.error,
    /^(WebGPU is present but the browser offered no GPU adapter|WebGPU is not available in this browser)/,
    context,
  );
  assert.ok(!log.some((l) => l.startsWith('pageerror') || l === 'page crashed'), context);
});
