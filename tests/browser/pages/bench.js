// The browser benchmark page's logic (see bench.html). window.runBench(options) resolves to
// a JSON-able report; every time is a wall time from performance.now() around an awaited
// call that ends with the output on the CPU (record + submit + GPU + readback), the median of
// `repeats` after one warm-up call, as `webdiffusion bench` measures natively.
import init, { UnetBench } from '../../../web/pkg/webdiffusion.js';

const MODEL = '../../../models/mnist/';
const out = document.getElementById('out');
const say = (line) => { out.textContent += `\n${line}`; };

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

async function timeIt(fn, repeats, warmUp = true) {
  if (warmUp) await fn(); // pipelines compiled, buffers allocated
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  return { median: median(times), times };
}

/** Standard normal values from a fixed seed (xorshift32 + Box–Muller). */
function normal(n, seed) {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const v = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u()));
    const a = 2 * Math.PI * u();
    v[i] = r * Math.cos(a);
    if (i + 1 < n) v[i + 1] = r * Math.sin(a);
  }
  return v;
}

async function fetchOk(url, what) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${what}: GET ${url} answered ${r.status}`);
  return r;
}

/** diffusers' DDIMScheduler (eta 0, epsilon prediction, set_alpha_to_one) for the ORT Web
 * sampling loop: the scheduler maths on the CPU, the UNet through onnxruntime-web. */
function ddim(cfg, steps) {
  const T = cfg.num_train_timesteps ?? 1000;
  if ((cfg.beta_schedule ?? 'linear') !== 'linear') throw new Error(`ddim: only the linear beta schedule is implemented, not ${cfg.beta_schedule}`);
  if ((cfg.prediction_type ?? 'epsilon') !== 'epsilon') throw new Error(`ddim: only epsilon prediction is implemented, not ${cfg.prediction_type}`);
  const b0 = cfg.beta_start ?? 0.0001;
  const b1 = cfg.beta_end ?? 0.02;
  const ac = new Float64Array(T);
  let p = 1;
  for (let i = 0; i < T; i++) {
    // float32 betas and cumulative product, as torch computes them
    p = Math.fround(p * Math.fround(1 - Math.fround(b0 + ((b1 - b0) * i) / (T - 1))));
    ac[i] = p;
  }
  const spacing = cfg.timestep_spacing ?? 'leading';
  let ts;
  if (spacing === 'trailing') {
    ts = [];
    for (let t = T; t > 0; t -= T / steps) ts.push(Math.round(t) - 1);
  } else if (spacing === 'leading') {
    const ratio = Math.floor(T / steps);
    ts = Array.from({ length: steps }, (_, i) => (steps - 1 - i) * ratio + (cfg.steps_offset ?? 0));
  } else throw new Error(`ddim: timestep_spacing ${spacing} is not implemented`);
  const ratio = Math.floor(T / steps);
  function step(eps, t, x, per) {
    const prev = t - ratio;
    const a = ac[t];
    const ap = prev >= 0 ? ac[prev] : 1;
    const x0 = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) x0[i] = (x[i] - Math.sqrt(1 - a) * eps[i]) / Math.sqrt(a);
    if (cfg.thresholding) {
      for (let o = 0; o < x.length; o += per) {
        const abs = Array.from(x0.subarray(o, o + per), Math.abs).sort((u, v) => u - v);
        const q = (cfg.dynamic_thresholding_ratio ?? 0.995) * (per - 1);
        const lo = Math.floor(q);
        let s = abs[lo] + (abs[Math.min(lo + 1, per - 1)] - abs[lo]) * (q - lo);
        s = Math.min(Math.max(s, 1), cfg.sample_max_value ?? 1);
        for (let i = o; i < o + per; i++) x0[i] = Math.min(Math.max(x0[i], -s), s) / s;
      }
    } else if (cfg.clip_sample ?? true) {
      const r = cfg.clip_sample_range ?? 1;
      for (let i = 0; i < x.length; i++) x0[i] = Math.min(Math.max(x0[i], -r), r);
    }
    const y = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) y[i] = Math.sqrt(ap) * x0[i] + Math.sqrt(1 - ap) * eps[i];
    return y;
  }
  return { timesteps: ts, step };
}

window.runBench = async function runBench(options = {}) {
  const o = {
    batches: [1, 4], repeats: 5, solvers: ['dpmpp_2m', 'ddim', 'unipc'], steps: 20,
    sampleRepeats: 2, ort: true, ortEp: 'webgpu', timestep: 500, label: 3, ...options,
  };
  out.textContent = 'running…';
  await init();
  const [configText, schedText, weights] = await Promise.all([
    fetchOk(`${MODEL}config.json`, 'model config').then((r) => r.text()),
    fetchOk(`${MODEL}scheduler_config.json`, 'scheduler config').then((r) => r.text()),
    fetchOk(`${MODEL}diffusion_pytorch_model.safetensors`, 'weights').then((r) => r.arrayBuffer()),
  ]);
  const sched = JSON.parse(schedText);
  let t0 = performance.now();
  const ours = await UnetBench.create(configText, schedText, new Uint8Array(weights));
  const report = {
    userAgent: navigator.userAgent,
    adapter: ours.adapter(),
    timestamp_query: ours.timestampQuery(),
    ours_load_ms: performance.now() - t0,
    options: o,
    unet_forward: [],
    sampling: [],
  };
  const gpuAdapter = await navigator.gpu?.requestAdapter();
  if (gpuAdapter?.info) {
    const i = gpuAdapter.info;
    report.adapter_info = { vendor: i.vendor, architecture: i.architecture, description: i.description, isFallbackAdapter: i.isFallbackAdapter };
  }
  const [C, H, W] = Array.from(ours.shape());
  say(`ours: ${report.adapter}`);

  let ort = null;
  if (o.ort) {
    ort = await import('/ort/ort.webgpu.min.mjs');
    ort.env.wasm.wasmPaths = '/ort/';
    ort.env.wasm.numThreads = 1;
    ort.env.logLevel = 'warning';
    report.ort_version = ort.env.versions?.web ?? ort.env.versions?.common ?? null;
    report.ort_ep = o.ortEp;
    report.onnx_export = await fetchOk('/onnx/export.json', 'ONNX export metadata').then((r) => r.json());
  }
  const sessions = {};
  async function session(b) {
    if (!sessions[b]) {
      const t = performance.now();
      sessions[b] = await ort.InferenceSession.create(`/onnx/unet_b${b}.onnx`, {
        executionProviders: [o.ortEp], graphOptimizationLevel: 'all',
      });
      sessions[b].loadMs = performance.now() - t;
    }
    return sessions[b];
  }
  function feeds(b, x, t, label) {
    const f = {
      sample: new ort.Tensor('float32', x, [b, C, H, W]),
      timestep: new ort.Tensor('float32', new Float32Array(b).fill(t), [b]),
    };
    if (report.onnx_export.num_class_embeds != null) {
      f.class_labels = new ort.Tensor('int64', new BigInt64Array(b).fill(BigInt(label)), [b]);
    }
    return f;
  }

  for (const b of o.batches) {
    const x = normal(b * C * H * W, 1234 + b);
    ours.setInput(b, x, o.timestep, o.label);
    let ourOut = null;
    const f = await timeIt(async () => { ourOut = await ours.forward(); }, o.repeats);
    const gpuSum = await ours.gpuSumMs();
    const row = {
      batch: b, ours_ms_median: f.median, ours_ms: f.times, ours_gpu_ms_sum_of_kernels: gpuSum ?? null,
      ours_out_len: ourOut.length, ours_out_finite: ourOut.every(Number.isFinite),
      ours_out_max_abs: ourOut.reduce((m, v) => Math.max(m, Math.abs(v)), 0),
    };
    say(`ours forward batch ${b}: ${f.median.toFixed(1)} ms (GPU sum ${gpuSum == null ? 'n/a' : gpuSum.toFixed(1)})`);
    if (ort) {
      const s = await session(b);
      const fd = feeds(b, x, o.timestep, o.label);
      let ortOut = null;
      const g = await timeIt(async () => {
        const r = await s.run(fd);
        ortOut = await r.out.getData();
      }, o.repeats);
      let maxDiff = 0;
      let maxRef = 0;
      for (let i = 0; i < ourOut.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(ourOut[i] - ortOut[i]));
        maxRef = Math.max(maxRef, Math.abs(ourOut[i]));
      }
      Object.assign(row, {
        ort_ms_median: g.median, ort_ms: g.times, ort_session_ms: s.loadMs,
        ratio_ours_over_ort: f.median / g.median,
        parity: { max_abs_diff: maxDiff, max_abs_ours: maxRef, rel: maxDiff / maxRef, n: ourOut.length },
      });
      say(`ORT Web forward batch ${b}: ${g.median.toFixed(1)} ms; ours/ORT ${(f.median / g.median).toFixed(2)}; max|Δ| ${maxDiff.toExponential(2)} (${(maxDiff / maxRef).toExponential(2)} rel)`);
    }
    report.unet_forward.push(row);
  }

  const per = C * H * W;
  for (const name of o.solvers) {
    let seed = 0;
    const f = await timeIt(async () => { await ours.sample(name, o.steps, seed++, o.label); }, o.sampleRepeats);
    const row = { solver: name, steps: o.steps, ours_ms_per_image_median: f.median, ours_ms: f.times };
    if (ort && name === 'ddim') {
      const s = await session(1);
      const d = ddim(sched, o.steps);
      let n = 0;
      const g = await timeIt(async () => {
        let x = normal(per, 99 + n++);
        for (const t of d.timesteps) {
          const r = await s.run(feeds(1, x, t, o.label));
          x = d.step(await r.out.getData(), t, x, per);
        }
      }, o.sampleRepeats, false); // the batch-1 session is warm from the forward timing
      Object.assign(row, { ort_ms_per_image_median: g.median, ort_ms: g.times, ratio_ours_over_ort: f.median / g.median });
    }
    report.sampling.push(row);
    say(`sampling ${name}, ${o.steps} steps: ours ${f.median.toFixed(1)} ms/image` +
      (row.ort_ms_per_image_median ? `, ORT Web ${row.ort_ms_per_image_median.toFixed(1)} ms` : ''));
  }
  for (const s of Object.values(sessions)) await s.release();
  ours.dispose();
  say('done');
  return report;
};
window.benchReady = true;
