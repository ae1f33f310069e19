import path from 'node:path';
import { startDemoServer, DEFAULT_MOUNTS } from '/work/wt-web/scripts/demo-server.mjs';
import { launch } from './web-helpers.mjs';
const HERE='/work/wt-web/tests/browser';
const server = await startDemoServer({ mounts: { ...DEFAULT_MOUNTS, '/web/pkg/': path.join(HERE, 'fixtures/mock-pkg') } });
const chrome = await launch({ webgpu: process.argv[2] !== 'nogpu' });
const page = await chrome.open(`${server.url}/`, { viewport: { width: 1200, height: 900 } });
await page.waitForFunction(() => window.demo && window.demo.state !== 'init', null, {timeout: 30000});
const st = await page.evaluate(() => window.demo.state);
if (st === 'ready') {
  await page.click('#load');
  await page.waitForFunction(() => window.demo.state !== 'loading');
  await page.click('#generate');
  await page.waitForFunction(() => window.demo.state !== 'generating');
}
console.log(JSON.stringify(await page.evaluate(() => ({...window.demo, progress: window.demo.progress.length}))).slice(0, 1500));
await page.screenshot({ path: '/tmp/shot.png', fullPage: true });
await page.setViewportSize({ width: 400, height: 800 });
await page.screenshot({ path: '/tmp/shot-mobile.png', fullPage: true });
console.log(chrome.log.join('\n'));
await chrome.close(); await server.close();
