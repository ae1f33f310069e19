// Shared by the package and demo tests: launching headless Chromium with the flags of
// ../shared/TESTING.md, and collecting the browser's log for failure messages.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.WEBDIFFUSION_CHROMIUM ?? '/usr/bin/chromium';
export const BASE_FLAGS = [
  '--headless=new', '--no-sandbox', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];
export const WEBGPU_FLAGS = [
  '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-angle=swiftshader', '--use-webgpu-adapter=swiftshader',
];
export const LAUNCH_MS = 60_000;

/**
 * A fresh Chromium with its own profile (so its Cache API starts empty); `close()` removes
 * the profile. Pages opened with `open()` log console lines, page errors and crashes.
 */
export async function launch({ webgpu = true, extraFlags = [] } = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'webdiffusion-chromium-'));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    ignoreDefaultArgs: true,
    args: [...BASE_FLAGS, `--user-data-dir=${profile}`, ...(webgpu ? WEBGPU_FLAGS : []), ...extraFlags, '--remote-debugging-pipe'],
    timeout: LAUNCH_MS,
  });
  const log = [];
  // One context for the whole browser: pages share the origin's storage, like two visits.
  const context = browser.contexts()[0] ?? (await browser.newContext());
  return {
    browser,
    context,
    log,
    async open(url, { viewport } = {}) {
      const page = await context.newPage();
      if (viewport) await page.setViewportSize(viewport);
      page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
      page.on('crash', () => log.push('page crashed'));
      page.on('requestfailed', (r) => log.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
      await page.goto(url, { timeout: LAUNCH_MS });
      return page;
    },
    async close() {
      await browser.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Requests for files whose path ends with `suffix` in a demo-server log. */
export function requestsFor(log, suffix) {
  return log.filter((e) => e.method === 'GET' && e.path.split('?')[0].endsWith(suffix));
}

/** Decode a PNG screenshot (8-bit RGB/RGBA, non-interlaced, as Chromium writes them). */
export async function decodePng(buf) {
  const zlib = await import('node:zlib');
  let pos = 8;
  let width = 0;
  let height = 0;
  let colorType = 0;
  const idat = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('ascii', pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      if (data[8] !== 8 || data[12] !== 0) throw new Error('only 8-bit non-interlaced PNGs are supported');
      colorType = data[9];
    } else if (type === 'IDAT') idat.push(data);
    pos += 12 + len;
  }
  const bpp = { 2: 3, 6: 4, 0: 1, 4: 2 }[colorType];
  if (!bpp) throw new Error(`PNG color type ${colorType} is not supported`);
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const out = Buffer.alloc(width * height * 4);
  let prev = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? line[x - bpp] : 0;
      const b = prev[x];
      const c = x >= bpp ? prev[x - bpp] : 0;
      let p;
      switch (filter) {
        case 0: p = 0; break;
        case 1: p = a; break;
        case 2: p = b; break;
        case 3: p = (a + b) >> 1; break;
        case 4: {
          const q = a + b - c;
          const pa = Math.abs(q - a);
          const pb = Math.abs(q - b);
          const pc = Math.abs(q - c);
          p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default: throw new Error(`bad PNG filter ${filter}`);
      }
      line[x] = (line[x] + p) & 0xff;
    }
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 4;
      if (bpp >= 3) {
        out[o] = line[x * bpp];
        out[o + 1] = line[x * bpp + 1];
        out[o + 2] = line[x * bpp + 2];
        out[o + 3] = bpp === 4 ? line[x * bpp + 3] : 255;
      } else {
        out[o] = out[o + 1] = out[o + 2] = line[x * bpp];
        out[o + 3] = bpp === 2 ? line[x * bpp + 1] : 255;
      }
    }
    prev = line;
  }
  return { width, height, data: out };
}
