// Takes docs/demo.png: the demo page in headless Chromium (WebGPU on SwiftShader) after it
// loaded the bundled model and sampled a digit. Needs web/pkg (scripts/build-wasm.sh).
//   node tests/browser/demo-screenshot.mjs [out.png]    (STEPS=, SEED=, LABEL=, SOLVER= tune it)
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDemoServer } from '../../scripts/demo-server.mjs';
import { launch } from './web-helpers.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const out = path.resolve(process.argv[2] ?? path.join(ROOT, 'docs/demo.png'));
const env = process.env;
const server = await startDemoServer();
const chrome = await launch();
try {
  const page = await chrome.open(`${server.url}/`, { viewport: { width: 1200, height: 860 } });
  const wait = async (states, ms) => {
    await page.waitForFunction((s) => s.includes(window.demo?.state), states, { timeout: ms, polling: 200 });
    const d = await page.evaluate(() => ({ state: window.demo.state, error: window.demo.error }));
    if (d.state === 'error' || d.state === 'nowebgpu') throw new Error(`the demo failed: ${d.error}\n${chrome.log.join('\n')}`);
  };
  await wait(['ready', 'error', 'nowebgpu'], 120_000);
  await page.click('#load');
  await wait(['loaded', 'error'], 180_000);
  if (env.SOLVER) await page.selectOption('#solver', env.SOLVER);
  await page.fill('#steps', env.STEPS ?? '12');
  await page.fill('#seed', env.SEED ?? '3');
  await page.selectOption('#class-label', env.LABEL ?? '3');
  await page.click('#generate');
  await wait(['done', 'error'], 600_000);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  await chrome.close();
  await server.close();
}
