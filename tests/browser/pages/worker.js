// The worker half of worker.html: create the Engine on the OffscreenCanvas, load the bundled
// model and generate, then report back (no window, no document: js_sys::global() only).
import init, { Engine } from '../../../web/pkg/webdiffusion.js';

self.onmessage = async ({ data }) => {
  try {
    await init();
    const engine = await Engine.create({ canvas: data.canvas });
    const info = await engine.load(data.url);
    const steps = [];
    const r = await engine.generate({ steps: 3, seed: 11, classLabel: 7, onStep: (s) => steps.push(s.step) });
    let min = 255, max = 0;
    for (let i = 0; i < r.pixels.length; i += 4) {
      min = Math.min(min, r.pixels[i]);
      max = Math.max(max, r.pixels[i]);
    }
    self.postMessage({ value: { width: info.width, steps, min, max, totalMs: r.timings.totalMs } });
  } catch (e) {
    self.postMessage({ error: { code: e.code, message: e.message ?? String(e) } });
  }
};
