//! Stable Diffusion repositories in the browser: `load(url)` of a folder whose root holds
//! `model_index.json` (diffusers' pipeline layout, [`crate::pipeline::repo`]) fetches the
//! component configs and tokenizer files, streams the text encoder, UNet and VAE weights
//! (each tensor to the GPU as it arrives, through the same `fetch` hook and weight cache as
//! any model), and `generate({ prompt, … })` runs text → CLIP → the solver loop with
//! classifier-free guidance → VAE decode, drawing a linear latent → RGB preview on the
//! canvas after every step and the decoded image at the end.
//!
//! The sampling loop is the library's (`Solver::step` per step, `Guided` for CFG, the same
//! scheduler configs and `initial_noise` as `webdiffusion sample`), written out here with an
//! await per step so the page, `onStep` and `abort()` get their turns.

use std::collections::HashMap;
use std::sync::Arc;

use js_sys::{Float32Array, Object};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js::{self, Code, WdError, WdResult};
use super::load::{self, Item, LoadCtx};
use super::{work_done, Inner, Preview, MAX_STEPS};
use crate::exec::Exec;
use crate::gpu::GpuContext;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::{AutoencoderKl, Conditioning, UNet, VaeConfig};
use crate::ops::Conv2d;
use crate::pipeline::plan::PlanLimits;
use crate::pipeline::repo::{weight_candidates, Needed, SdRepo};
use crate::pipeline::sd::{Overrides, SdConfigs};
use crate::sampling::solvers::{
    initial_noise, scale_initial_noise, Denoiser, Noise, StepContext, StepInfo, ALIASES,
};
use crate::sampling::{FiniteWatch, Guided};
use crate::tensor::Tensor;
use crate::tokenizer::{pad_token_of, ClipTokenizer};
use crate::weights::Weights;

/// A loaded pipeline.
pub struct SdModel {
    pub configs: SdConfigs,
    tokenizer: ClipTokenizer,
    clip: ClipTextModel,
    /// Moved into the denoiser for a run and back after it.
    unet: Option<UNet>,
    vae: AutoencoderKl,
    /// (3, C, 1, 1) weights and (3) bias of the latent → RGB preview.
    preview: (Tensor, Tensor),
    pub load_ms: f64,
}

/// Latent → RGB factors for 4-channel SD 1.x/2.x latents (rows: latent channels; columns:
/// R, G, B), the community's least-squares fit of decoded colours on latents, used for a
/// cheap preview only (the final image always goes through the VAE).
const SD_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.5177],
];

/// The tensors the SD components rearrange on the host: the UNet's and VAE attention's
/// q/k/v and time projections (see [`load::keep_on_host`]) and the VAE's 1×1
/// `quant_conv` / `post_quant_conv`, folded with the scaling factor.
fn keep_on_host(name: &str) -> bool {
    load::keep_on_host(name) || name.contains("quant_conv.")
}

/// transformers 5 saves a `CLIPTextModel` without the `text_model.` prefix that SD
/// checkpoints (and [`ClipTextModel::from_weights`]) use.
fn clip_prefix(name: &str) -> Option<String> {
    (!name.starts_with("text_model.")).then(|| format!("text_model.{name}"))
}

fn missing(base: &str, component: &str, file: &str) -> WdError {
    WdError::new(
        Code::Http,
        format!(
            "{base}{file}: HTTP 404: the `{component}` component's file is missing from this Stable Diffusion repository; serve the whole repository (every component folder model_index.json names: unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        ),
    )
}

/// Loads the repository at the folder URL `base` (with a trailing `/`) whose
/// `model_index.json` reads `index`. Returns the model, its parameter count and weight bytes.
pub async fn load(lctx: &LoadCtx, base: &str, index: &str) -> WdResult<(SdModel, u64, u64)> {
    let repo = SdRepo::from_model_index(base.trim_end_matches('/'), index)?;
    // Every small file first, so a missing one fails before the weights download.
    let mut texts: HashMap<String, String> = HashMap::new();
    for (component, needed) in repo.files() {
        if let Needed::File(f) = needed {
            let item = Item::Url(format!("{base}{f}"));
            match load::read_text_or_404(lctx, &item).await? {
                Ok(t) => {
                    texts.insert(f, t);
                }
                Err(_) => return Err(missing(base, component, &f)),
            }
        }
    }
    let mut read = |f: &str| {
        texts.get(f).cloned().ok_or_else(|| crate::Error::Io {
            file: format!("{base}{f}"),
            message: "not fetched".into(),
            hint: "a Stable Diffusion repository has it",
        })
    };
    let configs = SdConfigs::parse(repo, &mut read)?;
    let vocab = read("tokenizer/vocab.json")?;
    let merges = read("tokenizer/merges.txt")?;
    let mut tokenizer = ClipTokenizer::from_files(vocab.as_bytes(), merges.as_bytes())?;
    // The pad token as ClipTokenizer::load_dir picks it (absent files are fine).
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let url = format!("{base}tokenizer/{name}");
        if let Ok(text) = load::read_text_or_404(lctx, &Item::Url(url.clone())).await? {
            if let Some(pad) = pad_token_of(&url, text.as_bytes())? {
                tokenizer = tokenizer.with_pad_token(&pad)?;
                break;
            }
        }
    }
    let clip_cfg = ClipTextConfig::from_json(&configs.clip_json).map_err(|e| {
        WdError::new(
            Code::UnsupportedConfig,
            format!("{base}text_encoder/config.json: {e}"),
        )
    })?;
    let vae_cfg = VaeConfig::from_json(&configs.vae_json).map_err(|e| {
        WdError::new(
            Code::UnsupportedConfig,
            format!("{base}vae/config.json: {e}"),
        )
    })?;

    let mut parameters = 0;
    let mut bytes = 0;
    lctx.keep_on_host.set(keep_on_host);
    let weights = |component: &'static str| {
        let candidates: Vec<String> = weight_candidates(component)
            .iter()
            .map(|f| format!("{component}/{f}"))
            .collect();
        async move {
            let got = load::read_first_weights(lctx, base, &candidates).await?;
            lctx.check()?;
            got.map(|(_, w)| w)
                .ok_or_else(|| missing(base, component, &candidates.join(" or ")))
        }
    };

    lctx.rename.set(clip_prefix);
    let mut w: Weights = weights("text_encoder").await?;
    lctx.rename.set(load::no_rename);
    parameters += w.numel();
    bytes += w.byte_len();
    let clip = ClipTextModel::from_weights(&mut lctx.exec.borrow_mut(), &clip_cfg, &mut w)?;
    // transformers 4 keeps the constant position_ids buffer; not needed.
    let _ = w.take(
        "text_model.embeddings.position_ids",
        &[1, clip_cfg.max_position_embeddings],
    );
    w.finish_unused(false)?;
    drop(w);

    let mut w = weights("unet").await?;
    parameters += w.numel();
    bytes += w.byte_len();
    let unet = UNet::from_weights(
        &mut lctx.exec.borrow_mut(),
        &configs.unet.arch,
        &mut w,
        false,
    )?;
    drop(w);

    let mut w = weights("vae").await?;
    parameters += w.numel();
    bytes += w.byte_len();
    let vae = AutoencoderKl::from_weights(&mut lctx.exec.borrow_mut(), &vae_cfg, &mut w)?;
    w.finish_unused(false)?;
    drop(w);

    let preview = preview_weights(&mut lctx.exec.borrow_mut(), vae_cfg.latent_channels)?;
    Ok((
        SdModel {
            configs,
            tokenizer,
            clip,
            unet: Some(unet),
            vae,
            preview,
            load_ms: 0.0,
        },
        parameters,
        bytes,
    ))
}

/// The preview's 1×1 convolution: [`SD_LATENT_RGB`] for 4 latent channels, else the first
/// three channels as they are.
fn preview_weights(exec: &mut Exec, channels: usize) -> crate::Result<(Tensor, Tensor)> {
    let mut w = vec![0.0f32; 3 * channels];
    for rgb in 0..3 {
        for c in 0..channels {
            w[rgb * channels + c] = if channels == 4 {
                SD_LATENT_RGB[c][rgb]
            } else if c == rgb {
                1.0
            } else {
                0.0
            };
        }
    }
    Ok((
        exec.upload(&Tensor::from_vec(&[3, channels, 1, 1], w)?)?,
        exec.upload(&Tensor::from_vec(&[3], vec![0.0; 3])?)?,
    ))
}

impl SdModel {
    /// The image size the UNet was trained at.
    fn default_size(&self) -> (usize, usize) {
        let f = self.vae.downscale();
        let (h, w) = self.configs.unet.sample_size().unwrap_or((64, 64));
        (h * f, w * f)
    }

    /// The repository's scheduler as a solver name of the menu (`PNDMScheduler` → `pndm`).
    fn default_solver(&self) -> &str {
        let class = self.configs.solver_name(None);
        ALIASES
            .iter()
            .find(|(alias, _)| *alias == class)
            .map_or(class, |(_, name)| *name)
    }

    /// `ModelInfo` of the pipeline.
    pub fn info(&self, parameters: u64, weight_bytes: u64) -> Object {
        let o = Object::new();
        let repo = &self.configs.repo;
        js::set(&o, "className", repo.pipeline_class.as_str());
        js::set(&o, "kind", "stable-diffusion");
        let (h, w) = self.default_size();
        js::set(&o, "width", w as f64);
        js::set(&o, "height", h as f64);
        js::set(&o, "channels", 3.0);
        js::set(
            &o,
            "latentChannels",
            self.vae.config().latent_channels as f64,
        );
        js::set(&o, "numClassEmbeds", JsValue::NULL);
        js::set(&o, "nullClass", JsValue::NULL);
        js::set(&o, "parameters", parameters as f64);
        js::set(&o, "weightBytes", weight_bytes as f64);
        let prediction = self
            .configs
            .scheduler_config(None, &Overrides::new())
            .ok()
            .map(|c| c.prediction_type.name());
        js::set(
            &o,
            "predictionType",
            prediction.map_or(JsValue::NULL, JsValue::from_str),
        );
        // diffusers' `from_pretrained` runs the repository's scheduler class.
        js::set(&o, "defaultSolver", self.default_solver());
        js::set(&o, "defaultGuidance", 7.5);
        js::set(&o, "defaultSteps", 20.0);
        let c = Object::new();
        for comp in [
            &repo.unet,
            &repo.vae,
            &repo.text_encoder,
            &repo.tokenizer,
            &repo.scheduler,
        ] {
            js::set(&c, comp.name, comp.class.as_str());
        }
        js::set(&o, "components", c);
        o
    }
}

/// The options of one SD run, checked.
struct SdOptions {
    prompt: String,
    negative: String,
    solver: Option<String>,
    steps: usize,
    guidance: f64,
    seed: u64,
    width: usize,
    height: usize,
    overrides: Overrides,
    init_latents: Option<Vec<f32>>,
    raw: bool,
    preview: Preview,
    on_step: Option<js_sys::Function>,
}

/// Options a Stable Diffusion run does not take (they belong to the other model kinds).
const NOT_SD: &[&str] = &[
    "classLabel",
    "batch",
    "momentData",
    "momentSamples",
    "rtol",
    "atol",
    "sigmas",
    "difficulty",
];

fn sd_options(model: &SdModel, options: &JsValue) -> WdResult<SdOptions> {
    for k in NOT_SD {
        if !js::is_absent(&js::get(options, k)) {
            return Err(WdError::bad_option(format!(
                "option `{k}` does not apply to a Stable Diffusion pipeline: it samples with prompt, negativePrompt, steps, guidance, seed, width, height and solver"
            )));
        }
    }
    for k in ["initImage", "strength"] {
        if !js::is_absent(&js::get(options, k)) {
            return Err(WdError::bad_option(format!(
                "option `{k}`: image-to-image is not in the browser engine yet (the native CLI has it); leave out initImage and strength"
            )));
        }
    }
    let prompt = js::opt_string(options, "prompt")?.ok_or_else(|| {
        WdError::bad_option(
            "option `prompt` is required for a Stable Diffusion pipeline (a string; \"\" for an unconditional image)",
        )
    })?;
    let negative = js::opt_string(options, "negativePrompt")?.unwrap_or_default();
    let steps = js::opt_uint(options, "steps", MAX_STEPS)?.unwrap_or(20) as usize;
    if steps == 0 {
        return Err(WdError::bad_option("option `steps` must be at least 1"));
    }
    let guidance = js::opt_f64(options, "guidance")?.unwrap_or(7.5);
    let seed = match js::opt_uint(options, "seed", 9_007_199_254_740_991.0)? {
        Some(s) => s,
        None => (js_sys::Math::random() * 1e9).floor() as u64,
    };
    let (dh, dw) = model.default_size();
    let width = js::opt_uint(options, "width", 8192.0)?.map_or(dw, |v| v as usize);
    let height = js::opt_uint(options, "height", 8192.0)?.map_or(dh, |v| v as usize);
    let mut overrides = Overrides::new();
    if let Some(s) = js::opt_string(options, "timestepSpacing")? {
        if !["leading", "trailing", "linspace"].contains(&s.as_str()) {
            return Err(WdError::bad_option(format!(
                "option `timestepSpacing` must be \"leading\", \"trailing\" or \"linspace\", got {s:?}"
            )));
        }
        overrides.insert("timestep_spacing".into(), s.into());
    }
    let init = js::get(options, "initLatents");
    let init_latents = if js::is_absent(&init) {
        None
    } else if let Some(a) = init.dyn_ref::<Float32Array>() {
        Some(a.to_vec())
    } else {
        return Err(WdError::bad_option(format!(
            "option `initLatents` must be a Float32Array of unit-variance latents (1, C, height/f, width/f), got {}",
            js::describe(&init)
        )));
    };
    let raw = js::get(options, "raw").as_bool().unwrap_or(false);
    let preview = match js::opt_string(options, "preview")?.as_deref() {
        None | Some("x0") => Preview::X0,
        Some("xt") => Preview::Xt,
        Some("none") => Preview::None,
        Some(other) => {
            return Err(WdError::bad_option(format!(
                "option `preview` must be \"x0\", \"xt\" or \"none\", got {other:?}"
            )))
        }
    };
    Ok(SdOptions {
        prompt,
        negative,
        solver: js::opt_string(options, "solver")?,
        steps,
        guidance,
        seed,
        width,
        height,
        overrides,
        init_latents,
        raw,
        preview,
        on_step: js::opt_function(options, "onStep")?,
    })
}

/// One `generate` on the loaded pipeline: the model and executor are taken out for the run
/// and put back after it, as for a UNet.
pub async fn generate(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    options: &JsValue,
    t_start: f64,
) -> WdResult<JsValue> {
    let mut model = inner
        .sd
        .borrow_mut()
        .take()
        .ok_or_else(|| WdError::new(Code::NotLoaded, "generate(): no model is loaded"))?;
    let mut exec = inner
        .exec
        .borrow_mut()
        .take()
        .ok_or_else(|| WdError::new(Code::Disposed, "the engine was disposed"))?;
    let vscope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let r = run(inner, ctx, &mut exec, &mut model, options, t_start).await;
    let oom = scope.pop().await;
    let invalid = vscope.pop().await;
    let r = match (oom, invalid, r) {
        (Some(e), _, _) => Err(WdError::new(
            Code::OutOfMemory,
            format!("the GPU ran out of memory while sampling ({e}); use a smaller width and height. The engine is still usable."),
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
    if r.is_err() {
        exec.discard_pending();
        ctx.pool.trim();
    }
    if !inner.disposed.get() {
        *inner.sd.borrow_mut() = Some(model);
        *inner.exec.borrow_mut() = Some(exec);
    }
    r
}

async fn run(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    exec: &mut Exec,
    model: &mut SdModel,
    options: &JsValue,
    t_start: f64,
) -> WdResult<JsValue> {
    let o = sd_options(model, options)?;
    let guided = o.guidance > 1.0;
    // Sizes and memory checked against this adapter before anything runs.
    let plan = model
        .configs
        .plan_inputs()
        .plan(o.width, o.height, 1, guided, false)?;
    plan.check(&PlanLimits::from_caps(&ctx.caps), false)?;
    let f = model.vae.downscale();
    let shape = [
        1,
        model.configs.unet.arch.in_channels,
        o.height / f,
        o.width / f,
    ];
    let mut solver = model
        .configs
        .solver(o.solver.as_deref(), &o.overrides, o.steps)?;
    let x_t = match &o.init_latents {
        Some(v) => {
            let n: usize = shape.iter().product();
            if v.len() != n {
                return Err(WdError::bad_option(format!(
                    "option `initLatents` holds {} values but a {}×{} image needs latents {shape:?} ({n} values)",
                    v.len(),
                    o.width,
                    o.height
                )));
            }
            scale_initial_noise(exec, solver.as_ref(), &Tensor::from_vec(&shape, v.clone())?)?
        }
        None => initial_noise(exec, solver.as_ref(), &shape, o.seed)?,
    };

    // Text → encoder hidden states (the negative prompt is the unconditional pass).
    let t_text = js::now_ms();
    let cond_ids = model.tokenizer.encode(&o.prompt).ids;
    let cond = model.clip.encode(exec, &cond_ids, 1, 0)?;
    let uncond = if guided {
        let ids = model.tokenizer.encode(&o.negative).ids;
        Some(model.clip.encode(exec, &ids, 1, 0)?)
    } else {
        None
    };
    exec.submit()?;
    let text_ms = js::now_ms() - t_text;
    inner.check_running("generate")?;

    let unet = model
        .unet
        .take()
        .ok_or_else(|| WdError::new(Code::Internal, "the UNet is missing from the pipeline"))?;
    let mut steps_ms = Vec::with_capacity(o.steps);
    let r = match uncond {
        Some(u) => {
            let none = Conditioning {
                class_labels: None,
                encoder_hidden_states: Some(&u),
            };
            let c = Conditioning {
                class_labels: None,
                encoder_hidden_states: Some(&cond),
            };
            match Guided::for_unet(exec, unet, c, none, o.guidance) {
                Ok(mut g) => {
                    let r = steps(
                        inner,
                        ctx,
                        exec,
                        model,
                        solver.as_mut(),
                        &mut g,
                        x_t,
                        &o,
                        &mut steps_ms,
                    )
                    .await;
                    model.unet = Some(g.into_inner());
                    r
                }
                // The UNet went into for_unet; a failure there is a bug, not bad input.
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            let mut unet = unet;
            let r = match unet.set_encoder_hidden_states(exec, Some(&cond)) {
                Ok(()) => {
                    steps(
                        inner,
                        ctx,
                        exec,
                        model,
                        solver.as_mut(),
                        &mut unet,
                        x_t,
                        &o,
                        &mut steps_ms,
                    )
                    .await
                }
                Err(e) => Err(e.into()),
            };
            model.unet = Some(unet);
            r
        }
    };
    if let Some(unet) = model.unet.as_mut() {
        let _ = unet.set_encoder_hidden_states(exec, None);
    }
    let latents = r?;

    inner.check_running("generate")?;
    let t_dec = js::now_ms();
    let image = model.vae.decode(exec, &latents)?;
    exec.submit()?;
    if let Some(c) = inner.canvas.borrow_mut().as_mut() {
        c.draw(ctx, &[&image])?;
    }
    let data = exec.read(&image).await?;
    let decode_ms = js::now_ms() - t_dec;
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(crate::Error::invalid(
            "vae decode",
            format!("the decoded image has non-finite values (first at element {i})"),
        )
        .into());
    }
    let ishape = image.shape();
    let ishape = [ishape[0], ishape[1], ishape[2], ishape[3]];
    let (width, height, pixels) = super::to_rgba_grid(&ishape, &data);
    let out = Object::new();
    js::set(&out, "width", width as f64);
    js::set(&out, "height", height as f64);
    let arr = js_sys::Uint8ClampedArray::new_with_length(pixels.len() as u32);
    arr.copy_from(&pixels);
    js::set(&out, "pixels", arr);
    if o.raw {
        let lat = exec.read(&latents).await?;
        js::set(&out, "latents", Float32Array::from(lat.as_slice()));
        js::set(&out, "image", Float32Array::from(data.as_slice()));
    }
    let timings = Object::new();
    js::set(&timings, "totalMs", js::now_ms() - t_start);
    js::set(&timings, "textMs", text_ms);
    js::set(&timings, "decodeMs", decode_ms);
    let sms: js_sys::Array = steps_ms.iter().map(|&m| JsValue::from_f64(m)).collect();
    js::set(&timings, "stepsMs", sms);
    js::set(&timings, "loadMs", model.load_ms);
    js::set(&out, "timings", timings);
    js::set(&out, "seed", o.seed as f64);
    js::set(&out, "solver", solver.name());
    js::set(&out, "steps", solver.num_steps() as f64);
    js::set(&out, "prompt", o.prompt.as_str());
    Ok(out.into())
}

/// The solver loop (as `sampling::solvers::sample`, one submit per step) with the preview
/// and `onStep` after each step. Returns the final latents.
#[allow(clippy::too_many_arguments)]
async fn steps(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    exec: &mut Exec,
    model: &SdModel,
    solver: &mut dyn crate::sampling::solvers::Solver,
    denoiser: &mut dyn Denoiser,
    x_t: Tensor,
    o: &SdOptions,
    steps_ms: &mut Vec<f64>,
) -> WdResult<Tensor> {
    let mut noise = Noise::Philox { seed: o.seed };
    let mut watch = FiniteWatch::new();
    let total = solver.num_steps();
    let mut x = x_t;
    exec.submit()?;
    let rgb = Conv2d::new(1, 0).with_bias();
    for i in 0..total {
        inner.check_running("generate")?;
        let t0 = js::now_ms();
        let mut sctx = StepContext {
            exec,
            noise: &mut noise,
            step: i as u32,
        };
        let out = solver.step(&mut sctx, denoiser, i, &x)?;
        x = out.prev_sample;
        let info = StepInfo {
            index: i,
            total,
            timestep: solver.timestep(i),
            x: &x,
            x0: &out.x0,
        };
        watch.record(exec, &info)?;
        let shown = match o.preview {
            Preview::X0 => Some(&out.x0),
            Preview::Xt => Some(&x),
            Preview::None => None,
        };
        let has_canvas = inner.canvas.borrow().is_some();
        let preview = match shown {
            Some(t) if has_canvas => {
                Some(exec.run(&rgb, &[t, &model.preview.0, &model.preview.1])?)
            }
            _ => None,
        };
        exec.submit()?;
        if let Some(p) = &preview {
            if let Some(c) = inner.canvas.borrow_mut().as_mut() {
                c.draw(ctx, &[p])?;
            }
        }
        work_done(ctx).await;
        let ms = js::now_ms() - t0;
        steps_ms.push(ms);
        if let Some(f) = &o.on_step {
            let s = Object::new();
            js::set(&s, "step", (i + 1) as f64);
            js::set(&s, "total", total as f64);
            js::set(&s, "ms", ms);
            js::set(&s, "timestep", solver.timestep(i));
            super::call_on_step(f, &s).await;
        }
        js::yield_to_event_loop().await;
    }
    inner.check_running("generate")?;
    watch.check(exec).await?;
    Ok(x)
}
