//! The galaxy score networks (`GalaxyScoreNet`, scripts/setup-galaxy.sh) and the terrain
//! consistency model (`GuidedUNetModel`, scripts/setup-terrain.sh) in the browser: built and
//! sampled by the same library code as `webdiffusion sample` (`MixerScoreNet::from_weights`
//! and its VP-SDE schedule with the solver menu; `GuidedUNet` with `consistency_sample`),
//! shown in the config's render mode on the canvas and in `pixels`.

use std::sync::Arc;

use js_sys::{Array, Object};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js::{self, Code, WdError, WdResult};
use super::{sample_loop, Inner, Plan, Preview, RunOptions, MAX_BATCH, MAX_STEPS};
use crate::exec::Exec;
use crate::gpu::GpuContext;
use crate::models::{guided, mixer, GuidedConfig, GuidedUNet, MixerConfig, MixerScoreNet};
use crate::render::RenderMode;
use crate::sampling::edm::consistency_sample;
use crate::sampling::solvers::{
    schedule_class_for, solver_from_name, AdaptiveOptions, Control, Noise, SolverOptions,
};
use crate::weights::Weights;

/// The weights file name these networks' converters write (not diffusers' name).
pub const WEIGHTS_FILE: &str = mixer::WEIGHTS_FILE;

pub enum Net {
    Galaxy(Box<MixerScoreNet>),
    Terrain(Box<GuidedUNet>),
}

pub struct NetModel {
    pub net: Net,
    pub load_ms: f64,
}

/// The tensors these builders rearrange on the host before uploading: galaxy's equinox
/// `conv_out.weight` (flipped into PyTorch's layout), terrain's scale-shift `emb_layers.1.*`
/// (split in two); every other tensor goes to the GPU as soon as it has arrived.
pub fn keep_on_host(name: &str) -> bool {
    name == "conv_out.weight" || name.contains("emb_layers.1.")
}

/// Whether a config's `_class_name` is one of these networks.
pub fn is_net_class(name: &str) -> bool {
    name == mixer::CLASS_NAME || name == guided::CLASS_NAME
}

/// Builds the network `config.json` names from the streamed weights.
pub fn build(exec: &mut Exec, file: &str, text: &str, weights: &mut Weights) -> WdResult<Net> {
    Ok(match crate::models::class_name_of(text).as_deref() {
        Some(mixer::CLASS_NAME) => {
            let cfg = MixerConfig::from_json(file, text)?;
            Net::Galaxy(Box::new(MixerScoreNet::from_weights(exec, cfg, weights)?))
        }
        _ => {
            let cfg = GuidedConfig::from_json(file, text)?;
            Net::Terrain(Box::new(GuidedUNet::from_weights(exec, cfg, weights)?))
        }
    })
}

impl Net {
    fn mode(&self) -> RenderMode {
        match self {
            Net::Galaxy(m) => m.config.render_mode(),
            Net::Terrain(m) => m.config.render_mode(),
        }
    }
}

fn mode_name(mode: RenderMode) -> &'static str {
    match mode {
        RenderMode::Image => "image",
        RenderMode::Relief => "relief",
        RenderMode::Asinh(_) => "asinh",
    }
}

/// The ModelInfo of a loaded network (the fields of a UNet's, plus `condition` and
/// `render`).
pub fn info(net: &Net, parameters: u64, weight_bytes: u64) -> Object {
    let o = Object::new();
    let (class, size, channels, solver) = match net {
        Net::Galaxy(m) => (
            mixer::CLASS_NAME,
            m.config.sample_size,
            m.config.in_channels,
            "dpmpp_2m",
        ),
        Net::Terrain(m) => (
            guided::CLASS_NAME,
            m.config.sample_size,
            m.config.in_channels,
            "consistency",
        ),
    };
    js::set(&o, "className", class);
    js::set(&o, "width", size as f64);
    js::set(&o, "height", size as f64);
    js::set(&o, "channels", channels as f64);
    js::set(&o, "numClassEmbeds", JsValue::NULL);
    js::set(&o, "nullClass", JsValue::NULL);
    js::set(&o, "parameters", parameters as f64);
    js::set(&o, "weightBytes", weight_bytes as f64);
    js::set(
        &o,
        "predictionType",
        match net {
            Net::Galaxy(_) => JsValue::from_str("epsilon"),
            Net::Terrain(_) => JsValue::NULL,
        },
    );
    js::set(&o, "defaultSolver", solver);
    js::set(&o, "defaultGuidance", 1.0);
    let condition = match net {
        Net::Terrain(m) => match &m.config.condition {
            Some(c) => {
                let s = Object::new();
                js::set(&s, "name", c.name.as_str());
                js::set(&s, "min", c.min);
                js::set(&s, "max", c.max);
                s.into()
            }
            None => JsValue::NULL,
        },
        Net::Galaxy(_) => JsValue::NULL,
    };
    js::set(&o, "condition", condition);
    js::set(&o, "render", mode_name(net.mode()));
    o
}

/// Rejects the options a network does not take, naming what it samples with instead.
fn reject(options: &JsValue, keys: &[&str], what: &str) -> WdResult<()> {
    for k in keys {
        if !js::is_absent(&js::get(options, k)) {
            return Err(WdError::bad_option(format!(
                "option `{k}` does not apply to {what}"
            )));
        }
    }
    Ok(())
}

fn preview(options: &JsValue) -> WdResult<Preview> {
    match js::opt_string(options, "preview")?.as_deref() {
        None | Some("x0") => Ok(Preview::X0),
        Some("xt") => Ok(Preview::Xt),
        Some("none") => Ok(Preview::None),
        Some(other) => Err(WdError::bad_option(format!(
            "option `preview` must be \"x0\", \"xt\" or \"none\", got {other:?}"
        ))),
    }
}

fn seed(options: &JsValue) -> WdResult<u64> {
    Ok(
        match js::opt_uint(options, "seed", 9_007_199_254_740_991.0)? {
            Some(s) => s,
            None => (js_sys::Math::random() * 1e9).floor() as u64,
        },
    )
}

fn run_options(
    options: &JsValue,
    solver: String,
    steps: usize,
    batch: usize,
    mode: RenderMode,
) -> WdResult<RunOptions> {
    let defaults = AdaptiveOptions::default();
    Ok(RunOptions {
        solver,
        steps,
        seed: seed(options)?,
        guidance: 1.0,
        labels: None,
        eta: js::opt_f64(options, "eta")?.unwrap_or(0.0),
        batch,
        preview: preview(options)?,
        on_step: js::opt_function(options, "onStep")?,
        rtol: defaults.rtol,
        atol: defaults.atol,
        moment_data: JsValue::UNDEFINED,
        moment_samples: 1,
        mode,
    })
}

fn batch(options: &JsValue) -> WdResult<Option<usize>> {
    let b = js::opt_uint(options, "batch", MAX_BATCH)?.map(|b| b as usize);
    if b == Some(0) {
        return Err(WdError::bad_option("option `batch` must be at least 1"));
    }
    Ok(b)
}

/// `difficulty` as one number or an array of numbers, each in the model's range; absent is
/// an error naming the option and its range (the model has no unconditional mode).
fn condition_values(options: &JsValue, spec: &guided::ConditionSpec) -> WdResult<Vec<f32>> {
    let key = spec.name.as_str();
    let v = js::get(options, key);
    let range = format!("[{}, {}]", spec.min, spec.max);
    if js::is_absent(&v) {
        return Err(WdError::bad_option(format!(
            "option `{key}` is required: this terrain model is conditioned on `{key}`, a number in {range} (one for the batch, or an array with one per sample), e.g. {{ {key}: 0.5 }}"
        )));
    }
    let items: Vec<JsValue> = if Array::is_array(&v) {
        v.unchecked_ref::<Array>().iter().collect()
    } else {
        vec![v]
    };
    if items.is_empty() {
        return Err(WdError::bad_option(format!(
            "option `{key}` is an empty array; give a number in {range}, or one per sample"
        )));
    }
    items
        .iter()
        .map(|x| match x.as_f64() {
            Some(f) if f >= spec.min && f <= spec.max => Ok(f as f32),
            _ => Err(WdError::bad_option(format!(
                "option `{key}` must be a number in {range}, got {}",
                js::describe(x)
            ))),
        })
        .collect()
}

fn sigmas(options: &JsValue, default: f64) -> WdResult<Vec<f64>> {
    let v = js::get(options, "sigmas");
    if js::is_absent(&v) {
        return Ok(vec![default]);
    }
    let bad = || {
        WdError::bad_option(format!(
            "option `sigmas` must be an array of decreasing positive numbers (e.g. [80] or [80, 2]), got {}",
            js::describe(&v)
        ))
    };
    if !Array::is_array(&v) {
        return Err(bad());
    }
    let s: Vec<f64> = v
        .unchecked_ref::<Array>()
        .iter()
        .map(|x| x.as_f64().filter(|f| f.is_finite() && *f > 0.0))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if s.is_empty() || s.len() > MAX_STEPS as usize {
        return Err(bad());
    }
    Ok(s)
}

/// One `generate` on a loaded network: the engine's model and executor are taken out for
/// the run and put back after it, as for a UNet.
pub async fn generate(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    options: &JsValue,
    t_start: f64,
) -> WdResult<JsValue> {
    let mut model = inner
        .net
        .borrow_mut()
        .take()
        .ok_or_else(|| WdError::new(Code::NotLoaded, "generate(): no model is loaded"))?;
    let mut exec = inner
        .exec
        .borrow_mut()
        .take()
        .ok_or_else(|| WdError::new(Code::Disposed, "the engine was disposed"))?;
    let mode = model.net.mode();
    if let Some(c) = inner.canvas.borrow_mut().as_mut() {
        c.set_mode(mode);
    }
    let vscope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let r = run(inner, ctx, &mut exec, &mut model, options, mode, t_start).await;
    let oom = scope.pop().await;
    let invalid = vscope.pop().await;
    let r = match (oom, invalid, r) {
        (Some(e), _, _) => Err(WdError::new(
            Code::OutOfMemory,
            format!("the GPU ran out of memory while sampling ({e}); use a smaller batch. The engine is still usable."),
        )),
        (None, Some(e), Ok(_)) => Err(WdError::from(crate::Error::Gpu {
            context: "sampling".into(),
            message: e.to_string(),
        })),
        (None, _, r) => r,
    };
    let r = match (r, ctx.take_error("sampling")) {
        (Ok(_), Err(e)) => Err(e.into()),
        (r, _) => r,
    };
    if let Some(c) = inner.canvas.borrow_mut().as_mut() {
        c.set_mode(RenderMode::Image);
    }
    if r.is_err() {
        exec.discard_pending();
        ctx.pool.trim();
    }
    if !inner.disposed.get() {
        *inner.net.borrow_mut() = Some(model);
        *inner.exec.borrow_mut() = Some(exec);
    }
    r
}

async fn run(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    exec: &mut Exec,
    model: &mut NetModel,
    options: &JsValue,
    mode: RenderMode,
    t_start: f64,
) -> WdResult<JsValue> {
    let load_ms = model.load_ms;
    let r = match &mut model.net {
        Net::Galaxy(net) => {
            let what = "a galaxy score network (GalaxyScoreNet): it is unconditional and samples with solver, steps, seed, batch and eta";
            reject(
                options,
                &[
                    "classLabel",
                    "difficulty",
                    "sigmas",
                    "momentData",
                    "rtol",
                    "atol",
                ],
                what,
            )?;
            if js::opt_f64(options, "guidance")?.is_some_and(|g| g != 1.0) {
                return Err(WdError::bad_option(format!(
                    "option `guidance` does not apply to {what}"
                )));
            }
            let name = js::opt_string(options, "solver")?.unwrap_or_else(|| "dpmpp_2m".into());
            let class = schedule_class_for(&name).ok_or_else(|| {
                WdError::bad_option(format!(
                    "solver {name}: the galaxy models take the fixed-step solvers of Engine.solvers() that have a diffusers class (ddim, dpmpp_2m, unipc, euler, …)"
                ))
            })?;
            let steps = js::opt_uint(options, "steps", MAX_STEPS)?.unwrap_or(20) as usize;
            if steps == 0 {
                return Err(WdError::bad_option("option `steps` must be at least 1"));
            }
            let batch = batch(options)?.unwrap_or(1);
            let opts = run_options(options, name, steps, batch, mode)?;
            let cfg = &net.config;
            let shape = [batch, cfg.in_channels, cfg.sample_size, cfg.sample_size];
            let solver = solver_from_name(
                &opts.solver,
                &net.scheduler_config(class),
                steps,
                SolverOptions { eta: opts.eta },
            )?;
            let mut plan = Plan::Solver(solver);
            sample_loop(
                inner,
                ctx,
                exec,
                &mut plan,
                net.as_mut(),
                &shape,
                &opts,
                t_start,
            )
            .await
        }
        Net::Terrain(net) => {
            let what = "the terrain consistency model (GuidedUNetModel): it samples with sigmas (default [σ_max], e.g. [80, 2] for two steps), its condition, seed and batch";
            reject(
                options,
                &[
                    "classLabel",
                    "guidance",
                    "steps",
                    "eta",
                    "momentData",
                    "rtol",
                    "atol",
                ],
                what,
            )?;
            if let Some(s) = js::opt_string(options, "solver")?.filter(|s| s != "consistency") {
                return Err(WdError::bad_option(format!(
                    "solver {s}: {what}; leave out solver or pass \"consistency\""
                )));
            }
            let cfg = net.config.clone();
            let edm = cfg.edm.clone().ok_or_else(|| {
                WdError::new(
                    Code::UnsupportedConfig,
                    "config.json has no `edm` section, so it is not a σ-space consistency model",
                )
            })?;
            let values = match &cfg.condition {
                Some(spec) => condition_values(options, spec)?,
                None => {
                    reject(options, &["difficulty"], "this model: it has no condition")?;
                    Vec::new()
                }
            };
            let batch = match (batch(options)?, values.len()) {
                (Some(b), k) if k > 1 && k != b => {
                    return Err(WdError::bad_option(format!(
                        "{k} difficulty values for a batch of {b}: give one, or one per sample"
                    )))
                }
                (Some(b), _) => b,
                (None, k) => k.max(1),
            };
            if !values.is_empty() {
                net.set_condition(&values)?;
            }
            let sig = sigmas(options, edm.sigma_max)?;
            let opts = run_options(options, "consistency".into(), sig.len(), batch, mode)?;
            let shape = [batch, cfg.in_channels, cfg.sample_size, cfg.sample_size];
            inner.check_running("generate")?;
            let t0 = js::now_ms();
            let sampled = consistency_sample(
                exec,
                net.as_mut(),
                &shape,
                &sig,
                &mut Noise::Philox { seed: opts.seed },
                |_, _| Control::Continue,
            )?;
            exec.submit()?;
            if let Some(c) = inner.canvas.borrow_mut().as_mut() {
                c.draw(ctx, &[&sampled.sample])?;
            }
            let data = exec.read(&sampled.sample).await?;
            let ms = js::now_ms() - t0;
            inner.check_running("generate")?;
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(crate::Error::invalid(
                    "sample",
                    format!("the sample contains non-finite values (first at element {i})"),
                )
                .into());
            }
            Ok(super::result(
                &shape,
                &data,
                t_start,
                &[ms],
                &opts,
                "consistency",
                sig.len(),
            ))
        }
    };
    if let Ok(v) = &r {
        if let Some(t) = js::get(v, "timings").dyn_ref::<Object>() {
            js::set(t, "loadMs", load_ms);
        }
    }
    r
}
