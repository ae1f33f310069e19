//! `UnetBench`: the browser side of the benchmark (`tests/browser/pages/bench.html`,
//! `scripts/bench.sh`). A bare UNet on the page's WebGPU device, driven call by call from
//! JavaScript, which takes the wall times with `performance.now()` around each awaited call,
//! as `webdiffusion bench` does natively: a forward is record + submit + GPU + the output read
//! back; a sampling run is `sample()` (one submit per step) + the final read. Kept apart from
//! the `Engine` API (which never exposes a bare forward) so the benchmark can compare the
//! UNet alone with ONNX Runtime Web on the same exported graph and the same input.

use std::cell::RefCell;
use std::sync::Arc;

use wasm_bindgen::prelude::*;

use crate::exec::Exec;
use crate::gpu::{GpuContext, GpuOptions};
use crate::models::{ModelConfig, UNet};
use crate::sampling::solvers::Denoiser;
use crate::sampling::solvers::{
    initial_noise, sample, solver_from_name, Control, Noise, SolverOptions,
};
use crate::sampling::SchedulerConfig;
use crate::tensor::Tensor;
use crate::weights::{LoadOptions, Weights};

fn js_err(what: &str, e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&format!("UnetBench.{what}: {e}")).into()
}

struct State {
    exec: Exec,
    unet: UNet,
    sched: SchedulerConfig,
    /// `[channels, height, width]` of one sample.
    chw: [usize; 3],
    /// The input of `forward()` and its batch size, set by `setInput()`.
    input: Option<(Tensor, usize)>,
    timestep: f64,
    label: usize,
}

impl State {
    /// The class labels of `forward()`'s batch (`sample()` sets its own).
    fn condition_input(&mut self) {
        let batch = self.input.as_ref().map_or(1, |i| i.1);
        let n = self.unet.arch().num_class_embeds;
        let label = self.label;
        self.unet.set_class_labels(n.map(|_| vec![label; batch]));
    }
}

/// A UNet2DModel on a WebGPU device, for timing one call at a time.
#[wasm_bindgen]
pub struct UnetBench {
    ctx: Arc<GpuContext>,
    state: RefCell<Option<State>>,
}

#[wasm_bindgen]
impl UnetBench {
    /// `UnetBench.create(configJson, schedulerConfigJson, safetensorsBytes)`: a device with
    /// timestamp queries when the adapter has them, and the model's weights on it (f32).
    pub async fn create(
        config_json: String,
        scheduler_json: String,
        weights: Vec<u8>,
    ) -> Result<UnetBench, JsValue> {
        let ctx = GpuContext::new(&GpuOptions::default())
            .await
            .map_err(|e| js_err("create", e))?;
        let config =
            ModelConfig::from_json("config.json", &config_json).map_err(|e| js_err("create", e))?;
        let (h, w) = config.sample_size().unwrap_or((64, 64));
        let sched = SchedulerConfig::from_json_str(&scheduler_json, "scheduler_config.json", None)
            .map_err(|e| js_err("create", e))?;
        let mut exec = Exec::gpu(ctx.clone());
        let mut wts = Weights::from_bytes(
            "diffusion_pytorch_model.safetensors",
            &weights,
            &LoadOptions::default(),
        )
        .map_err(|e| js_err("create", e))?;
        let unet = UNet::from_weights(&mut exec, &config.arch, &mut wts, false)
            .map_err(|e| js_err("create", e))?;
        let chw = [unet.arch().in_channels, h, w];
        Ok(UnetBench {
            ctx,
            state: RefCell::new(Some(State {
                exec,
                unet,
                sched,
                chw,
                input: None,
                timestep: 500.0,
                label: 0,
            })),
        })
    }

    /// The adapter as `webdiffusion bench` prints it.
    pub fn adapter(&self) -> String {
        self.ctx.caps.summary()
    }

    /// Whether the device has `TIMESTAMP_QUERY` (then `gpuSumMs` has a value).
    #[wasm_bindgen(js_name = timestampQuery)]
    pub fn timestamp_query(&self) -> bool {
        self.ctx.caps.timestamp_query
    }

    /// `[channels, height, width]` of one sample.
    pub fn shape(&self) -> Vec<u32> {
        let s = self.state.borrow();
        s.as_ref()
            .map(|s| s.chw.iter().map(|&v| v as u32).collect())
            .unwrap_or_default()
    }

    /// Sets `forward()`'s input: `batch` samples (NCHW, `batch·C·H·W` values), one timestep
    /// and one class label for every sample (ignored by a model without class labels).
    #[wasm_bindgen(js_name = setInput)]
    pub fn set_input(
        &self,
        batch: usize,
        data: Vec<f32>,
        timestep: f64,
        label: usize,
    ) -> Result<(), JsValue> {
        let mut guard = self
            .state
            .try_borrow_mut()
            .map_err(|_| js_err("setInput", "busy: await the running call first"))?;
        let s = guard
            .as_mut()
            .ok_or_else(|| js_err("setInput", "disposed"))?;
        let [c, h, w] = s.chw;
        let shape = [batch, c, h, w];
        if batch == 0 || data.len() != batch * c * h * w {
            return Err(js_err(
                "setInput",
                format!(
                    "batch {batch} of {c}×{h}×{w} needs {} values, got {}",
                    batch * c * h * w,
                    data.len()
                ),
            ));
        }
        let arch = s.unet.arch().clone();
        if let Some(n) = arch.num_class_embeds {
            if label >= n {
                return Err(js_err(
                    "setInput",
                    format!("label {label} is not below num_class_embeds {n}"),
                ));
            }
        }
        let x = s
            .exec
            .tensor(&shape, &data)
            .map_err(|e| js_err("setInput", e))?;
        s.input = Some((x, batch));
        s.timestep = timestep;
        s.label = label;
        Ok(())
    }

    /// One UNet forward of the input set by `setInput`, read back.
    // The borrow is held across the await on purpose: a second call meanwhile gets "busy".
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn forward(&self) -> Result<Vec<f32>, JsValue> {
        let mut guard = self
            .state
            .try_borrow_mut()
            .map_err(|_| js_err("forward", "busy: await the running call first"))?;
        let s = guard
            .as_mut()
            .ok_or_else(|| js_err("forward", "disposed"))?;
        s.condition_input();
        let (x, _) = s
            .input
            .as_ref()
            .ok_or_else(|| js_err("forward", "call setInput first"))?;
        let y = s
            .unet
            .denoise(&mut s.exec, x, s.timestep)
            .map_err(|e| js_err("forward", e))?;
        s.exec.read(&y).await.map_err(|e| js_err("forward", e))
    }

    /// The forward's GPU time from timestamp queries: the sum over its dispatches, each in its
    /// own compute pass (so it includes a pass boundary per dispatch). `undefined` without
    /// `TIMESTAMP_QUERY`.
    #[wasm_bindgen(js_name = gpuSumMs)]
    // The borrow is held across the await on purpose: a second call meanwhile gets "busy".
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn gpu_sum_ms(&self) -> Result<Option<f64>, JsValue> {
        let mut guard = self
            .state
            .try_borrow_mut()
            .map_err(|_| js_err("gpuSumMs", "busy: await the running call first"))?;
        let s = guard
            .as_mut()
            .ok_or_else(|| js_err("gpuSumMs", "disposed"))?;
        s.condition_input();
        let (x, _) = s
            .input
            .as_ref()
            .ok_or_else(|| js_err("gpuSumMs", "call setInput first"))?;
        let _ = s
            .unet
            .denoise(&mut s.exec, x, s.timestep)
            .map_err(|e| js_err("gpuSumMs", e))?;
        let timed = s
            .exec
            .submit_timed()
            .await
            .map_err(|e| js_err("gpuSumMs", e))?;
        Ok(timed.map(|t| t.iter().map(|o| o.nanos).sum::<f64>() / 1e6))
    }

    /// Draws one sample (batch 1, class `label`) with `solver` in `steps` steps from the noise
    /// of `seed`, as `webdiffusion sample` does, and reads it back.
    // The borrow is held across the await on purpose: a second call meanwhile gets "busy".
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn sample(
        &self,
        solver: String,
        steps: usize,
        seed: u32,
        label: usize,
    ) -> Result<Vec<f32>, JsValue> {
        let mut guard = self
            .state
            .try_borrow_mut()
            .map_err(|_| js_err("sample", "busy: await the running call first"))?;
        let s = guard.as_mut().ok_or_else(|| js_err("sample", "disposed"))?;
        if steps == 0 {
            return Err(js_err("sample", "steps must be at least 1"));
        }
        let arch = s.unet.arch().clone();
        s.unet
            .set_class_labels(arch.num_class_embeds.map(|_| vec![label; 1]));
        let [c, h, w] = s.chw;
        let mut solver = solver_from_name(&solver, &s.sched, steps, SolverOptions::default())
            .map_err(|e| js_err("sample", e))?;
        let x = initial_noise(&mut s.exec, solver.as_ref(), &[1, c, h, w], seed as u64)
            .map_err(|e| js_err("sample", e))?;
        let mut noise = Noise::Philox { seed: seed as u64 };
        let r = sample(
            &mut s.exec,
            solver.as_mut(),
            &mut s.unet,
            &x,
            &mut noise,
            |_, _| Control::Continue,
        )
        .map_err(|e| js_err("sample", e))?;
        s.exec
            .read(&r.sample)
            .await
            .map_err(|e| js_err("sample", e))
    }

    /// Frees the model's GPU buffers.
    pub fn dispose(&self) {
        if let Ok(mut s) = self.state.try_borrow_mut() {
            *s = None;
        }
    }
}
