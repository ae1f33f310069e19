//! Stable Diffusion repositories in the browser: `load(url)` of a folder whose root holds
//! `model_index.json` (diffusers' pipeline layout, [`crate::pipeline::repo`]) fetches the
//! component configs and tokenizer files, streams the text encoder, UNet and VAE weights
//! (each tensor to the GPU as it arrives, through the same `fetch` hook and weight cache as
//! any model), and `generate({ prompt, … })` runs text → CLIP → the solver loop with
//! classifier-free guidance (for an LCM-distilled UNet instead its guidance embedding, set
//! before the steps: one UNet pass per step) → VAE decode, drawing a linear latent → RGB
//! preview on the canvas after every step and the decoded image at the end; `initImage` +
//! `strength` is image-to-image.
//!
//! The model is the native [`SdPipeline`] (built from the streamed weights; its prompt
//! encoding, memory check, image-to-image noising, latent preview and VAE decode). Only the
//! step loop is written out here, the same `Solver::step` per step as
//! [`SdPipeline::generate`], with an await after each step so the page, `onStep` and
//! `abort()` get their turns (that method's callback is synchronous).

use std::collections::HashMap;
use std::sync::Arc;

use js_sys::{Float32Array, Object};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js::{self, Code, WdError, WdResult};
use super::load::{self, Item, LoadCtx, RepoRoot};
use super::{work_done, Inner, Preview, MAX_STEPS};
use crate::exec::Exec;
use crate::gpu::GpuContext;
use crate::models::{TaesdConfig, TinyDecoder, UNet};
use crate::pipeline::repo::{weight_candidates, Needed, SdRepo};
use crate::pipeline::sd::{Overrides, SdConfigs};
use crate::pipeline::sd_run::{GivenNoise, InitImage, LatentPreview, Request, SdPipeline};
use crate::pipeline::VaeTiling;
use crate::sampling::solvers::ALIASES;
use crate::sampling::solvers::{Denoiser, Noise, Solver, StepContext, StepInfo};
use crate::sampling::{FiniteWatch, Guided};
use crate::tensor::Tensor;
use crate::tokenizer::{pad_token_of, ClipTokenizer};

/// A loaded pipeline.
pub struct SdModel {
    pipe: SdPipeline,
    /// The per-step linear preview (none for latents other than 4 channels).
    preview: Option<LatentPreview>,
    /// The tiny autoencoder that replaces the linear preview (`load`'s `previewDecoder`).
    taesd: Option<TinyDecoder>,
    pub load_ms: f64,
}

/// The tensors the SD components rearrange on the host: the UNet's and VAE attention's
/// q/k/v and time projections (see [`load::keep_on_host`]) and the VAE's 1×1
/// `quant_conv` / `post_quant_conv`, folded with the scaling factor.
fn keep_on_host(name: &str) -> bool {
    load::keep_on_host(name) || name.contains("quant_conv.")
}

fn missing(root: RepoRoot<'_>, component: &str, file: &str) -> WdError {
    match root {
        RepoRoot::Url(_) => WdError::new(
            Code::Http,
            format!(
                "{}: HTTP 404: the `{component}` component's file is missing from this Stable Diffusion repository; serve the whole repository (every component folder model_index.json names: unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                root.label(file)
            ),
        ),
        RepoRoot::Local(_) => WdError::bad_option(format!(
            "{}: the `{component}` component's file is not among the picked files; pick the repository's folder itself (the one holding model_index.json, with unet/, vae/, text_encoder/, tokenizer/, scheduler/ inside) so every file keeps its path",
            root.label(file)
        )),
    }
}

/// Loads the repository at `root` (a folder URL with a trailing `/`, or a picked folder)
/// whose `model_index.json` reads `index`. Returns the model, its parameter count and
/// weight bytes.
pub async fn load(
    lctx: &LoadCtx,
    root: RepoRoot<'_>,
    index: &str,
) -> WdResult<(SdModel, u64, u64)> {
    let repo = SdRepo::from_model_index(root.name().trim_end_matches('/'), index)?;
    // Every small file first, so a missing one fails before the weights download.
    let mut texts: HashMap<String, String> = HashMap::new();
    for (component, needed) in repo.files() {
        if let Needed::File(f) = needed {
            match root.read_text_or_404(lctx, &f).await? {
                Ok(t) => {
                    texts.insert(f, t);
                }
                Err(_) => return Err(missing(root, component, &f)),
            }
        }
    }
    let mut read = |f: &str| {
        texts.get(f).cloned().ok_or_else(|| crate::Error::Io {
            file: root.label(f),
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
        let rel = format!("tokenizer/{name}");
        if let Ok(text) = root.read_text_or_404(lctx, &rel).await? {
            if let Some(pad) = pad_token_of(&root.label(&rel), text.as_bytes())? {
                tokenizer = tokenizer.with_pad_token(&pad)?;
                break;
            }
        }
    }
    let mut parameters = 0;
    let mut bytes = 0;
    lctx.keep_on_host.set(keep_on_host);
    let mut files = Vec::with_capacity(3);
    for component in ["text_encoder", "unet", "vae"] {
        let candidates: Vec<String> = weight_candidates(component)
            .iter()
            .map(|f| format!("{component}/{f}"))
            .collect();
        let w = load::read_first_weights(lctx, root, &candidates)
            .await?
            .map(|(_, w)| w)
            .ok_or_else(|| missing(root, component, &candidates.join(" or ")))?;
        lctx.check()?;
        parameters += w.numel();
        bytes += w.byte_len();
        files.push(w);
    }
    let [mut te, mut unet, mut vae] = <[_; 3]>::try_from(files)
        .map_err(|_| WdError::new(Code::Internal, "three weight files expected"))?;
    let preview = LatentPreview::new(&mut lctx.exec.borrow_mut(), configs.vae.latent_channels)?;
    let pipe = SdPipeline::from_weights(
        &mut lctx.exec.borrow_mut(),
        configs,
        tokenizer,
        &mut te,
        &mut unet,
        &mut vae,
    )?;
    let taesd = match lctx.preview_decoder.borrow().clone() {
        Some(url) => {
            Some(load_preview_decoder(lctx, &url, pipe.configs().vae.latent_channels).await?)
        }
        None => None,
    };
    let model = SdModel {
        pipe,
        preview,
        taesd,
        load_ms: 0.0,
    };
    Ok((model, parameters, bytes))
}

/// TAESD's output conv bias is folded on the host; the rest streams to the GPU.
fn taesd_keep_on_host(name: &str) -> bool {
    name.ends_with(".bias")
}

/// The tiny autoencoder's decoder (a diffusers `AutoencoderTiny` folder: `config.json` and
/// its safetensors, e.g. madebyollin/taesd) at the folder URL `url`, for latents of
/// `latent_channels` channels.
async fn load_preview_decoder(
    lctx: &LoadCtx,
    url: &str,
    latent_channels: usize,
) -> WdResult<TinyDecoder> {
    let base = if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    };
    let what = "load(options.previewDecoder)";
    let hint = "give the folder URL of a diffusers AutoencoderTiny (config.json and diffusion_pytorch_model.safetensors, e.g. madebyollin/taesd for SD 1.x/2.x)";
    let config_url = format!("{base}config.json");
    let text = match load::read_text_or_404(lctx, &Item::Url(config_url.clone())).await? {
        Ok(t) => t,
        Err(e) => {
            return Err(WdError::new(
                e.code,
                format!("{what}: {}; {hint}", e.message),
            ))
        }
    };
    let cfg = TaesdConfig::from_json(&text).map_err(|e| {
        WdError::new(
            Code::BadModel,
            format!("{what}: {config_url}: {}", WdError::from(e).message),
        )
    })?;
    if cfg.latent_channels != latent_channels {
        return Err(WdError::new(
            Code::BadModel,
            format!(
                "{what}: {config_url}: the tiny autoencoder takes {}-channel latents but this repository's VAE makes {latent_channels}; use the one trained for this model family (TAESD for SD 1.x/2.x)",
                cfg.latent_channels
            ),
        ));
    }
    lctx.keep_on_host.set(taesd_keep_on_host);
    let candidates: Vec<String> = weight_candidates("vae")
        .iter()
        .map(|f| f.to_string())
        .collect();
    let mut w = load::read_first_weights(lctx, RepoRoot::Url(&base), &candidates)
        .await?
        .map(|(_, w)| w)
        .ok_or_else(|| {
            WdError::new(
                Code::Http,
                format!("{what}: {base}{}: HTTP 404; {hint}", candidates[0]),
            )
        })?;
    lctx.check()?;
    let dec = TinyDecoder::from_weights(&mut lctx.exec.borrow_mut(), &cfg, &mut w)?;
    TinyDecoder::finish(&w)?;
    Ok(dec)
}

/// What draws the per-step preview: the tiny autoencoder when loaded, else the linear map.
#[derive(Clone, Copy)]
struct Previewer<'a> {
    linear: Option<&'a LatentPreview>,
    taesd: Option<&'a TinyDecoder>,
}

impl Previewer<'_> {
    fn name(&self) -> &'static str {
        match (self.taesd, self.linear) {
            (Some(_), _) => "taesd",
            (None, Some(_)) => "linear",
            (None, None) => "none",
        }
    }

    /// The preview of `latents` (1, C, h, w) in about [−1, 1]: (1, 3, H, W) from the tiny
    /// autoencoder, (1, 3, h, w) from the linear map.
    fn rgb(&self, exec: &mut Exec, latents: &Tensor) -> crate::Result<Option<Tensor>> {
        match (self.taesd, self.linear) {
            (Some(d), _) => d.decode_preview(exec, latents, 1).map(Some),
            (None, Some(l)) => l.rgb(exec, latents).map(Some),
            (None, None) => Ok(None),
        }
    }
}

impl SdModel {
    fn configs(&self) -> &SdConfigs {
        self.pipe.configs()
    }

    /// The repository's scheduler as a solver name of the menu (`PNDMScheduler` → `pndm`).
    fn default_solver(&self) -> &str {
        let class = self.configs().solver_name(None);
        ALIASES
            .iter()
            .find(|(alias, _)| *alias == class)
            .map_or(class, |(_, name)| *name)
    }

    /// `ModelInfo` of the pipeline.
    pub fn info(&self, parameters: u64, weight_bytes: u64) -> Object {
        let o = Object::new();
        let repo = &self.configs().repo;
        js::set(&o, "className", repo.pipeline_class.as_str());
        js::set(&o, "kind", "stable-diffusion");
        let (w, h) = self.pipe.default_size();
        js::set(&o, "width", w as f64);
        js::set(&o, "height", h as f64);
        js::set(&o, "channels", 3.0);
        js::set(
            &o,
            "latentChannels",
            self.configs().vae.latent_channels as f64,
        );
        js::set(&o, "numClassEmbeds", JsValue::NULL);
        js::set(&o, "nullClass", JsValue::NULL);
        js::set(&o, "parameters", parameters as f64);
        js::set(&o, "weightBytes", weight_bytes as f64);
        js::set(&o, "gpuWeightBytes", self.pipe.weight_bytes() as f64);
        let prediction = self
            .configs()
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
        js::set(
            &o,
            "previewDecoder",
            if self.taesd.is_some() {
                "taesd"
            } else if self.preview.is_some() {
                "linear"
            } else {
                "none"
            },
        );
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
    /// Image-to-image: the start image at the run's size, and strength.
    init: Option<InitImage>,
    raw: bool,
    preview: Preview,
    on_step: Option<js_sys::Function>,
    vae_tiling: VaeTiling,
    /// Images from the one prompt (diffusers' `num_images_per_prompt`).
    batch: usize,
}

/// The most images in one Stable Diffusion run (the memory plan refuses what the adapter
/// cannot hold before this).
const MAX_SD_BATCH: f64 = 16.0;

/// Options a Stable Diffusion run does not take (they belong to the other model kinds).
const NOT_SD: &[&str] = &[
    "classLabel",
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
                "option `{k}` does not apply to a Stable Diffusion pipeline: it samples with prompt, negativePrompt, steps, guidance, seed, width, height, solver, initImage, strength and vaeTiling"
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
    let batch = js::opt_uint(options, "batch", MAX_SD_BATCH)?.unwrap_or(1) as usize;
    if batch == 0 {
        return Err(WdError::bad_option("option `batch` must be at least 1"));
    }
    let seed = match js::opt_uint(options, "seed", 9_007_199_254_740_991.0)? {
        Some(s) => s,
        None => (js_sys::Math::random() * 1e9).floor() as u64,
    };
    // Image-to-image: an ImageData (or { width, height, data } of RGBA bytes); the run's
    // size is the image's unless given.
    let image = js::get(options, "initImage");
    let strength = js::opt_f64(options, "strength")?;
    let pixels = if js::is_absent(&image) {
        if strength.is_some() {
            return Err(WdError::bad_option(
                "option `strength` only applies to image-to-image: give initImage too",
            ));
        }
        None
    } else {
        let dim = |k: &str| {
            js::get(&image, k)
                .as_f64()
                .filter(|v| *v >= 1.0 && v.fract() == 0.0)
        };
        let data = js::get(&image, "data");
        match (dim("width"), dim("height"), data.dyn_ref::<js_sys::Uint8ClampedArray>()) {
            (Some(w), Some(h), Some(d)) => Some((w as usize, h as usize, d.to_vec())),
            _ => {
                return Err(WdError::bad_option(format!(
                    "option `initImage` must be an ImageData (or {{ width, height, data: Uint8ClampedArray of RGBA bytes }}), got {}",
                    js::describe(&image)
                )))
            }
        }
    };
    let (dw, dh) = match &pixels {
        Some((w, h, _)) => (*w, *h),
        None => model.pipe.default_size(),
    };
    let width = js::opt_uint(options, "width", 8192.0)?.map_or(dw, |v| v as usize);
    let height = js::opt_uint(options, "height", 8192.0)?.map_or(dh, |v| v as usize);
    let init_image = match pixels {
        Some((w, h, data)) => {
            if (w, h) != (width, height) {
                return Err(WdError::bad_option(format!(
                    "option `initImage` is {w}×{h} but the run is {width}×{height}; resize the image (or leave out width and height)"
                )));
            }
            if data.len() != w * h * 4 {
                return Err(WdError::bad_option(format!(
                    "option `initImage`: {} bytes of data for {w}×{h} RGBA pixels ({} expected)",
                    data.len(),
                    w * h * 4
                )));
            }
            // diffusers' img2img default.
            Some(InitImage::from_pixels(
                w,
                h,
                4,
                &data,
                strength.unwrap_or(0.8),
            )?)
        }
        None => None,
    };
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
    let tiling = js::get(options, "vaeTiling");
    let vae_tiling = if js::is_absent(&tiling) {
        VaeTiling::Auto
    } else if let Some(s) = tiling.as_string() {
        VaeTiling::parse(&s).map_err(|e| WdError::bad_option(format!("option `vaeTiling`: {e}")))?
    } else {
        match js::opt_uint(options, "vaeTiling", 65536.0)? {
            Some(t) => VaeTiling::Tile(t as usize),
            None => VaeTiling::Auto,
        }
    };
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
        init: init_image,
        raw,
        preview,
        on_step: js::opt_function(options, "onStep")?,
        vae_tiling,
        batch,
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

/// The UNet by reference as a denoiser (guidance wraps it without taking it).
struct UNetRef<'a>(&'a mut UNet);

impl Denoiser for UNetRef<'_> {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> crate::Result<Tensor> {
        self.0.denoise(exec, x, timestep)
    }
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
    let mut req = Request::new(o.prompt.clone());
    req.negative_prompt = o.negative.clone();
    req.steps = o.steps;
    req.guidance_scale = o.guidance;
    req.seed = o.seed;
    req.width = Some(o.width);
    req.height = Some(o.height);
    req.solver = o.solver.clone();
    req.scheduler_overrides = o.overrides.clone();
    req.vae_tiling = o.vae_tiling;
    req.batch = o.batch;
    // For the memory check (the VAE encoder) and the img2img schedule.
    req.init = o.init.clone();
    let pipe = &mut model.pipe;
    let rgb = Previewer {
        linear: model.preview.as_ref(),
        taesd: model.taesd.as_ref(),
    };
    // Size, memory (the adapter's limits) and solver problems fail before any model runs.
    let tiles = pipe.check_memory(exec, &req)?.vae_tiles();
    let f = pipe.vae_factor();
    let shape = [
        o.batch,
        pipe.configs().vae.latent_channels,
        o.height / f,
        o.width / f,
    ];
    // The same schedule and start as the native pipeline (image-to-image: a fresh solver
    // state at the first step run).
    let (mut solver, range) = pipe.solver_and_range(&req)?;

    // Diffusers' initial latents in place of the seed's draw (tests compare with its goldens).
    match (&o.init, &o.init_latents) {
        (Some(_), Some(_)) => {
            return Err(WdError::bad_option(
                "option `initLatents` is for text-to-image; image-to-image starts from initImage",
            ))
        }
        (None, Some(v)) => {
            let n: usize = shape.iter().product();
            if v.len() != n {
                return Err(WdError::bad_option(format!(
                    "option `initLatents` holds {} values but {} image(s) of {}×{} need latents {shape:?} ({n} values)",
                    v.len(),
                    o.batch,
                    o.width,
                    o.height
                )));
            }
            req.given_noise = Some(GivenNoise {
                init_latents: Some(Tensor::from_vec(&shape, v.clone())?),
                ..GivenNoise::default()
            });
        }
        _ => {}
    }

    // Text → encoder hidden states and the UNet's conditioning, as natively (the negative
    // prompt is the unconditional pass; no CFG for an LCM-distilled UNet, which takes the
    // scale as an embedding).
    let t_text = js::now_ms();
    let guided = pipe.guided(&req);
    for w in &pipe.condition_for(exec, &req)? {
        web_sys::console::warn_1(&w.into());
    }
    exec.submit()?;
    let text_ms = js::now_ms() - t_text;
    inner.check_running("generate")?;

    // The starting latents: given, drawn from the seed, or the noised init image (the
    // native pipeline's own).
    let x_t = pipe.start_latents(exec, &req, solver.as_ref(), range.0, tiles)?;

    let mut steps_ms = Vec::with_capacity(range.1 - range.0);
    let r = if guided {
        let mut g = Guided::new(UNetRef(pipe.unet_mut()), o.guidance)?;
        steps(
            inner,
            ctx,
            exec,
            rgb,
            solver.as_mut(),
            &mut g,
            x_t,
            range,
            &o,
            &mut steps_ms,
        )
        .await
    } else {
        let mut u = UNetRef(pipe.unet_mut());
        steps(
            inner,
            ctx,
            exec,
            rgb,
            solver.as_mut(),
            &mut u,
            x_t,
            range,
            &o,
            &mut steps_ms,
        )
        .await
    };
    let _ = pipe.condition_unet(exec, None, o.guidance);
    let latents = r?;

    inner.check_running("generate")?;
    let t_dec = js::now_ms();
    let image = pipe.decode_each(exec, &latents, tiles)?;
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
    js::set(&out, "batch", o.batch as f64);
    js::set(&out, "solver", solver.name());
    js::set(&out, "steps", (range.1 - range.0) as f64);
    js::set(&out, "prompt", o.prompt.as_str());
    js::set(
        &out,
        "previewDecoder",
        match o.preview {
            Preview::None => "none",
            _ => rgb.name(),
        },
    );
    match tiles {
        Some(t) => js::set(&out, "vaeTile", t.tile as f64),
        None => js::set(&out, "vaeTile", JsValue::NULL),
    }
    Ok(out.into())
}

/// The solver loop over `range` (as [`SdPipeline::generate`], one submit per step) with the
/// preview and `onStep` after each step. Returns the final latents.
#[allow(clippy::too_many_arguments)]
async fn steps(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    exec: &mut Exec,
    rgb: Previewer<'_>,
    solver: &mut dyn Solver,
    denoiser: &mut dyn Denoiser,
    x_t: Tensor,
    range: (usize, usize),
    o: &SdOptions,
    steps_ms: &mut Vec<f64>,
) -> WdResult<Tensor> {
    let mut noise = Noise::Philox { seed: o.seed };
    let mut watch = FiniteWatch::new();
    let total = range.1 - range.0;
    let mut x = x_t;
    exec.submit()?;
    for i in range.0..range.1 {
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
            index: i - range.0,
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
            Some(t) if has_canvas => rgb.rgb(exec, t)?,
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
            js::set(&s, "step", (i - range.0 + 1) as f64);
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
