//! The Stable Diffusion pipeline proper: prompt → CLIP states → the solver loop over the
//! UNet (with classifier-free guidance when the scale is above 1, as diffusers) → the VAE
//! decoder, and image-to-image through the VAE encoder. The components are loaded from
//! [`Weights`] (bytes fetched by the browser, or files read by [`SdPipeline::load_dir`]), so
//! the same code runs natively and on wasm32.
//!
//! What one run does, as diffusers' `StableDiffusionPipeline` / `…Img2ImgPipeline` (0.42.1):
//! ```text
//! ids      = tokenize(prompt), tokenize(negative)           77 tokens each (truncated, warned)
//! states   = clip(ids)                                        (1 or 2, 77, D); clip_skip k drops k layers
//! x_T      = init_noise_sigma · z                             z ~ Philox(seed, u32::MAX, stream 0)
//! img2img: e = vae.encode(2·image − 1) sample (ε₁: stream 1), first = steps − ⌊steps·strength⌋,
//!          x = √ᾱ_t·e + √(1 − ᾱ_t)·ε₂   (σ classes: e + σ·ε₂), t the first step's timestep
//! step i:  x = solver.step(guided(unet)(x, t_i))              CFG: one batched UNet pass on cat([x, x])
//! image    = vae.decode(x)                                    (1, 3, H, W) in about [−1, 1]
//! ```
//! An LCM-distilled UNet (`time_cond_proj_dim` set) takes the guidance scale as an input
//! instead, as diffusers' `LatentConsistencyModelPipeline` (and `StableDiffusionPipeline` with
//! such a UNet) does: no CFG and no negative prompt, one UNet pass per step, and
//! `timestep_cond = guidance_scale_embedding(w − 1)` ([`guidance_scale_embedding`]) for
//! every step.
//! Each step hands the callback the latents, the x₀ prediction and a cheap preview: the
//! x₀ latents mapped to RGB by a fixed 4×3 linear map ([`LATENT_RGB_FACTORS`]), one 1×1
//! convolution on the GPU, so a front end can draw every step without running the VAE.
//!
//! Noise comes from the engine's counter-based Philox generator keyed by the seed, so a seed
//! gives the same image on every backend; tests feed diffusers' own draws instead
//! ([`GivenNoise`]). Before anything runs, the memory plan ([`super::plan`]) is checked
//! against the adapter's limits (or ones set with [`SdPipeline::set_limits`]).

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::unet2d_condition::UNet2DConditionModel;
use crate::models::TinyDecoder;
use crate::models::{AutoencoderKl, UNet, VaeConfig, VaeTiles};
use crate::nn::Conv2d;
use crate::ops::{Concat, SliceBatch, SolverUpdate, Unary};
use crate::sampling::guidance::Guided;
use crate::sampling::schedule::Schedule;
use crate::sampling::solvers::{
    initial_noise, scale_initial_noise, schedule_class_for, Control, Denoiser, Noise, Solver,
    StepContext,
};
use crate::tensor::Tensor;
use crate::tokenizer::ClipTokenizer;
#[cfg(not(target_arch = "wasm32"))]
use crate::weights::WeightDtype;
use crate::weights::Weights;

use super::plan::{MemoryPlan, PlanInputs, PlanLimits, VaeTiling};
use super::sd::{img2img_steps, Overrides, SdConfigs};

/// The linear latent → RGB approximation of Stable Diffusion 1.x/2.x latents (the 4×3 fit
/// front ends commonly use for step previews): `rgb[c] = Σ_k z[k]·F[k][c] + B[c]`, with z
/// the sampler's (scaled) latents and the result in about [−1, 1]. Rows: latent channels;
/// columns: R, G, B.
pub const LATENT_RGB_FACTORS: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];
/// The bias of [`LATENT_RGB_FACTORS`].
pub const LATENT_RGB_BIAS: [f32; 3] = [0.0, 0.0, 0.0];

/// diffusers' `get_guidance_scale_embedding(w, embedding_dim)` (after VDM's timestep
/// embedding) for one sample, as the LCM pipeline calls it with `w = guidance_scale − 1`:
/// ```text
/// w' = 1000·w,  h = ⌊d/2⌋,  f_k = exp(−k·ln(10⁴)/(h − 1)), k < h
/// e  = [sin(w'·f_0 … w'·f_{h−1}), cos(w'·f_0 … w'·f_{h−1})] (+ one 0 when d is odd)
/// ```
/// Every operation rounds to f32 as torch's float32 tensors do (`ln 10⁴`, the division, the
/// product by k, the exponential, the product by w'); the exponential, sin and cos are taken
/// in f64 and rounded (torch's vectorised float32 exp is within one ulp of that, so a
/// frequency may differ by one ulp and an element by |w'·f_k|·2⁻²⁴). Returns (1, d).
/// d = 2 or 3 (h − 1 = 0) is an error: diffusers divides by zero there and the embedding is
/// NaN.
pub fn guidance_scale_embedding(guidance_scale: f64, dim: usize) -> Result<Tensor> {
    let op = "guidance embedding";
    if !guidance_scale.is_finite() {
        return Err(Error::invalid(
            op,
            format!("the guidance scale must be finite, got {guidance_scale}"),
        ));
    }
    let half = dim / 2;
    if half == 1 {
        return Err(Error::invalid(
            op,
            format!(
                "time_cond_proj_dim {dim}: diffusers' guidance embedding divides by ⌊d/2⌋ − 1 = 0 and gives NaN; an LCM-distilled UNet needs time_cond_proj_dim 1 or at least 4"
            ),
        ));
    }
    let w = (guidance_scale - 1.0) as f32 * 1000.0;
    let mut e = vec![0f32; dim];
    if half > 1 {
        let base = 10000f32.ln() / (half - 1) as f32;
        for k in 0..half {
            let f = ((k as f32 * -base) as f64).exp() as f32;
            let arg = (w * f) as f64;
            e[k] = arg.sin() as f32;
            e[half + k] = arg.cos() as f32;
        }
    }
    Tensor::from_vec(&[1, dim], e)
}

/// Solvers that image-to-image can start part-way down the schedule, as diffusers'
/// `StableDiffusionImg2ImgPipeline` runs them: history-free ones as they are, multistep ones
/// (PNDM, DPM-Solver, UniPC, DEIS, LMS, …) with a fresh history from the first step run
/// ([`Solver::begin`]). Not here: `ddim_inverse` (it runs up the schedule) and
/// `consistency` (consistency-model networks, not Stable Diffusion's).
pub const IMG2IMG_SOLVERS: &[&str] = &[
    "ddim",
    "ddpm",
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_multistep",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "unipc",
    "unipc_bh1",
    "unipc_bh2",
    "pndm",
    "plms",
    "lms",
    "dpm2",
    "dpm2_ancestral",
    "dpm_singlestep",
    "dpmpp_2s",
    "dpmpp_3s",
    "deis",
    "lcm",
];

/// The solver steps an image-to-image run with `strength` over `steps` takes, as
/// `(first, end)` indices into the solver's own steps, with `solver` prepared to start at
/// `first` ([`Solver::begin`]). diffusers' `get_timesteps`: t_start = steps − ⌊steps·s⌋,
/// the loop runs `scheduler.timesteps[t_start·order:]` to the end from a fresh scheduler
/// state. One step here is one of diffusers' `order` calls (Heun, KDPM2: 2), so `first` is
/// t_start for every solver; the end is the solver's last step (PNDM's list holds its
/// PLMS warm-up call too, so it runs one more step than ⌊steps·s⌋, as diffusers does).
pub fn img2img_range(
    solver: &mut dyn Solver,
    steps: usize,
    strength: f64,
) -> Result<(usize, usize)> {
    let name = solver.name();
    if !IMG2IMG_SOLVERS.contains(&name) {
        return Err(Error::invalid(
            "img2img",
            format!(
                "image-to-image starts part-way down the schedule, which the {name} solver does not do; pick one of {}",
                IMG2IMG_SOLVERS.join(", ")
            ),
        ));
    }
    let (first, _) = img2img_steps(steps, strength)?;
    solver.begin(first)?;
    Ok((first, solver.num_steps()))
}

/// The linear latent preview: one 1×1 convolution with [`LATENT_RGB_FACTORS`].
pub struct LatentPreview {
    conv: Conv2d,
}

impl LatentPreview {
    /// The preview for 4-channel latents (`None` for other latent spaces).
    pub fn new(exec: &mut Exec, latent_channels: usize) -> Result<Option<Self>> {
        if latent_channels != 4 {
            return Ok(None);
        }
        let mut w = vec![0f32; 12];
        for (k, row) in LATENT_RGB_FACTORS.iter().enumerate() {
            for (c, f) in row.iter().enumerate() {
                w[c * 4 + k] = *f;
            }
        }
        let weight = Tensor::from_vec(&[3, 4, 1, 1], w)?;
        let bias = Tensor::from_vec(&[3], LATENT_RGB_BIAS.to_vec())?;
        Ok(Some(Self {
            conv: Conv2d::pointwise_f32(exec, weight, bias)?,
        }))
    }

    /// Latents (N, 4, h, w) → RGB (N, 3, h, w) in about [−1, 1], on the executor's backend.
    pub fn rgb(&self, exec: &mut Exec, latents: &Tensor) -> Result<Tensor> {
        let s = latents.shape();
        if s.len() != 4 || s[1] != 4 {
            return Err(Error::shape("latent preview", "latents", "(N, 4, h, w)", s));
        }
        self.conv.forward(exec, latents)
    }
}

/// [`LATENT_RGB_FACTORS`] applied on the host (the reference the GPU preview is tested
/// against): latents (N, 4, h, w) → (N, 3, h, w).
pub fn latent_rgb_cpu(shape: &[usize], data: &[f32]) -> Result<Vec<f32>> {
    if shape.len() != 4 || shape[1] != 4 || shape.iter().product::<usize>() != data.len() {
        return Err(Error::shape(
            "latent preview",
            "latents",
            "(N, 4, h, w)",
            shape,
        ));
    }
    let (n, plane) = (shape[0], shape[2] * shape[3]);
    let mut out = vec![0f32; n * 3 * plane];
    for b in 0..n {
        for c in 0..3 {
            for p in 0..plane {
                let mut v = LATENT_RGB_BIAS[c];
                for (k, row) in LATENT_RGB_FACTORS.iter().enumerate() {
                    v += data[(b * 4 + k) * plane + p] * row[c];
                }
                out[(b * 3 + c) * plane + p] = v;
            }
        }
    }
    Ok(out)
}

/// The text conditioning of one run.
pub struct PromptEmbeddings {
    /// The prompt's states (1, 77, D).
    pub cond: Tensor,
    /// The negative prompt's states (1, 77, D), present when guidance is on.
    pub uncond: Option<Tensor>,
    /// Messages for the user (a prompt cut at 77 tokens).
    pub warnings: Vec<String>,
}

/// An image to start from (image-to-image).
#[derive(Clone)]
pub struct InitImage {
    /// (1, 3, H, W) with values in [0, 1] (diffusers' image processor input), H × W the
    /// request's size.
    pub image: Tensor,
    /// How much to change it: 1 starts from pure noise, near 0 keeps it.
    pub strength: f64,
}

impl InitImage {
    /// From 8-bit pixels, row-major and interleaved: `channels` 1 (grey), 3 (RGB) or 4
    /// (RGBA: alpha is dropped), e.g. a decoded PNG or a canvas' `ImageData`.
    pub fn from_pixels(
        width: usize,
        height: usize,
        channels: usize,
        pixels: &[u8],
        strength: f64,
    ) -> Result<Self> {
        let (w, h, c) = (width, height, channels);
        if ![1, 3, 4].contains(&c) || pixels.len() != w * h * c || w == 0 || h == 0 {
            return Err(Error::invalid(
                "img2img",
                format!(
                    "the init image: {} bytes for {w}×{h} pixels of {c} channels (1, 3 or 4 channels, w·h·c bytes)",
                    pixels.len()
                ),
            ));
        }
        let mut data = vec![0f32; 3 * w * h];
        for p in 0..w * h {
            for ch in 0..3 {
                let src = if c >= 3 { ch } else { 0 };
                data[ch * w * h + p] = pixels[p * c + src] as f32 / 255.0;
            }
        }
        Ok(Self {
            image: Tensor::from_vec(&[1, 3, h, w], data)?,
            strength,
        })
    }
}

/// Noise given instead of drawn (tests comparing with diffusers' torch draws). Each part
/// left out is drawn from Philox as usual.
#[derive(Clone, Default)]
pub struct GivenNoise {
    /// Unit-variance initial latents (batch, C, h, w), scaled by `init_noise_sigma` here.
    pub init_latents: Option<Tensor>,
    /// The solver's own draws, in the order it draws them.
    pub solver: Vec<Tensor>,
    /// img2img: the posterior sample's unit normal (1, C, h, w: the one image is encoded
    /// once, as diffusers), then the forward-noising one (batch, C, h, w).
    pub posterior: Option<Tensor>,
    pub forward: Option<Tensor>,
}

/// One generation.
#[derive(Clone)]
pub struct Request {
    pub prompt: String,
    /// Used only with guidance (scale > 1); empty means the empty prompt, as diffusers.
    pub negative_prompt: String,
    pub steps: usize,
    /// Classifier-free guidance scale w; guidance runs only when w > 1, as diffusers. An
    /// LCM-distilled UNet takes it as its guidance embedding instead (any value; no CFG).
    pub guidance_scale: f64,
    pub seed: u64,
    /// Image size in pixels; `None`: the UNet's `sample_size` × the VAE factor.
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// A solver name (`webdiffusion solvers`); `None`: the repository's scheduler.
    pub solver: Option<String>,
    /// Scheduler config keys replacing the repository's (e.g. `timestep_spacing: trailing`).
    pub scheduler_overrides: Overrides,
    /// diffusers' `clip_skip`: leave out the last k encoder layers.
    pub clip_skip: usize,
    pub init: Option<InitImage>,
    pub given_noise: Option<GivenNoise>,
    /// Whole or tiled VAE passes (default: tiles only when the whole pass would not fit).
    pub vae_tiling: VaeTiling,
    /// Images per run (diffusers' `num_images_per_prompt`): one batched UNet pass per step
    /// (2·batch with CFG), the VAE decoding one image at a time. Default 1.
    pub batch: usize,
}

impl Request {
    /// Defaults: 25 steps, guidance 7.5, seed 0, the model's size, its scheduler.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            steps: 25,
            guidance_scale: 7.5,
            seed: 0,
            width: None,
            height: None,
            solver: None,
            scheduler_overrides: Overrides::new(),
            clip_skip: 0,
            init: None,
            given_noise: None,
            vae_tiling: VaeTiling::Auto,
            batch: 1,
        }
    }

    /// Whether the scale asks for classifier-free guidance (scale > 1); whether it runs also
    /// depends on the UNet: [`SdPipeline::guided`].
    pub fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// What the step callback sees.
pub struct SdStep<'a> {
    /// The step just taken, 0-based among the steps this run takes.
    pub index: usize,
    /// Steps this run takes (fewer than `Request::steps` for image-to-image).
    pub total: usize,
    /// The step's model time.
    pub timestep: f64,
    /// The latents after the step and the step's x₀ prediction, (1, C, h, w), on the
    /// executor's backend (not read back).
    pub latents: &'a Tensor,
    pub x0: &'a Tensor,
    preview: Option<&'a LatentPreview>,
    decoder: Option<&'a TinyDecoder>,
}

impl SdStep<'_> {
    /// The preview of the x₀ prediction in about [−1, 1], recorded on `exec` (submitted with
    /// the step): the tiny autoencoder's decode, (1, 3, H, W) at full size, when one was set
    /// with [`SdPipeline::set_preview_decoder`], else the linear RGB approximation,
    /// (1, 3, h, w) at latent size (one small dispatch).
    pub fn preview(&self, exec: &mut Exec) -> Result<Tensor> {
        if let Some(d) = self.decoder {
            return d.decode_preview(exec, self.x0, 1);
        }
        match self.preview {
            Some(p) => p.rgb(exec, self.x0),
            None => Err(Error::invalid(
                "sd preview",
                format!(
                    "no linear preview for {}-channel latents (it is defined for 4)",
                    self.x0.shape().get(1).copied().unwrap_or(0)
                ),
            )),
        }
    }
}

/// What a run returns.
pub struct SdOutput {
    /// The final latents (1, C, h, w) (the last taken when stopped).
    pub latents: Tensor,
    /// The decoded image (1, 3, H, W) in about [−1, 1]; `None` when the callback stopped.
    pub image: Option<Tensor>,
    pub steps_run: usize,
    pub stopped: bool,
    /// The solver used (its `webdiffusion solvers` name).
    pub solver: &'static str,
    pub warnings: Vec<String>,
    /// The VAE ran in tiles of this many pixels (see [`VaeTiling`]).
    pub vae_tile: Option<usize>,
}

/// The loaded pipeline; see the module docs.
pub struct SdPipeline {
    configs: SdConfigs,
    plan_inputs: PlanInputs,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    unet: UNet,
    vae: AutoencoderKl,
    preview: Option<LatentPreview>,
    /// A tiny autoencoder (TAESD) that replaces the linear preview when the user supplies it.
    preview_decoder: Option<TinyDecoder>,
    limits: Option<PlanLimits>,
    /// Bytes of the three components' weights on the executor, as stored there (see
    /// [`Weights::device_bytes`]); 0 when built by [`new`](Self::new) from loaded parts.
    weight_bytes: u64,
}

/// The UNet by reference as a [`Denoiser`] (so guidance can wrap it without taking it).
struct UNetRef<'a>(&'a mut UNet);

impl Denoiser for UNetRef<'_> {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        self.0.denoise(exec, x, timestep)
    }
}

impl SdPipeline {
    /// From loaded components, checked against the configs.
    pub fn new(
        exec: &mut Exec,
        configs: SdConfigs,
        tokenizer: ClipTokenizer,
        text_encoder: ClipTextModel,
        unet: UNet2DConditionModel,
        vae: AutoencoderKl,
    ) -> Result<Self> {
        let tc = text_encoder.config();
        if tokenizer.vocab_size() > tc.vocab_size {
            return Err(Error::invalid(
                "stable diffusion",
                format!(
                    "the tokenizer has {} tokens but the text encoder embeds {} (vocab_size): they come from different models",
                    tokenizer.vocab_size(),
                    tc.vocab_size
                ),
            ));
        }
        let preview = LatentPreview::new(exec, vae.config().latent_channels)?;
        Ok(Self {
            plan_inputs: configs.plan_inputs(),
            configs,
            tokenizer,
            text_encoder,
            unet: unet.into_inner(),
            vae,
            preview,
            preview_decoder: None,
            limits: None,
            weight_bytes: 0,
        })
    }

    /// From the components' weights (each [`Weights`] as read from the repository's file:
    /// `text_encoder/model.safetensors`, `unet/…`, `vae/…`). Every tensor must be used.
    pub fn from_weights(
        exec: &mut Exec,
        configs: SdConfigs,
        tokenizer: ClipTokenizer,
        text_encoder: &mut Weights,
        unet: &mut Weights,
        vae: &mut Weights,
    ) -> Result<Self> {
        let src = configs.repo.source.trim_end_matches('/').to_string();
        let clip_cfg = ClipTextConfig::from_json(&configs.clip_json)
            .map_err(|e| with_file(e, &format!("{src}/text_encoder/config.json")))?;
        let te = ClipTextModel::from_weights(exec, &clip_cfg, text_encoder)?;
        let _ = text_encoder.take(
            "text_model.embeddings.position_ids",
            &[1, clip_cfg.max_position_embeddings],
        );
        text_encoder.finish_unused(false)?;
        let u = UNet2DConditionModel::from_weights(exec, &configs.unet.arch, unet, false)?;
        let vae_cfg = VaeConfig::from_json(&configs.vae_json)?;
        let v = AutoencoderKl::from_weights(exec, &vae_cfg, vae)?;
        vae.finish_unused(false)?;
        let mut pipe = Self::new(exec, configs, tokenizer, te, u, v)?;
        pipe.weight_bytes = text_encoder.device_bytes() + unet.device_bytes() + vae.device_bytes();
        Ok(pipe)
    }

    /// Bytes the weights of the text encoder, UNet and VAE take on the executor (packed f16
    /// weights count 2 bytes a value, f32 ones 4).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Loads a local diffusers repository (the folder holding `model_index.json`); a missing
    /// component or file is named.
    /// Linear and Conv2d weights stored in f16 stay packed f16 on the GPU
    /// ([`WeightDtype::Auto`]); see [`load_dir_with`](Self::load_dir_with).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir(exec: &mut Exec, dir: &std::path::Path) -> Result<Self> {
        Self::load_dir_with(exec, dir, WeightDtype::Auto)
    }

    /// [`load_dir`](Self::load_dir) with the weight storage chosen: `Auto`, `F16Packed`
    /// (every Linear/Conv2d weight packed, f16's precision for f32 checkpoints) or `F32`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir_with(
        exec: &mut Exec,
        dir: &std::path::Path,
        dtype: WeightDtype,
    ) -> Result<Self> {
        use crate::weights::LoadOptions;
        let (configs, files) = SdConfigs::open_dir(dir)?;
        let tokenizer = ClipTokenizer::load_dir(dir.join("tokenizer"))?;
        let load = |f: &str| -> Result<Weights> {
            let p = dir.join(f);
            let mut w = if f.ends_with(".index.json") {
                Weights::load_sharded(&p, &LoadOptions::default(), |_| {})?
            } else {
                Weights::load_file(&p, &LoadOptions::default())?
            };
            w.set_weight_dtype(dtype);
            Ok(w)
        };
        let mut te = load(&files.text_encoder)?;
        let mut unet = load(&files.unet)?;
        let mut vae = load(&files.vae)?;
        Self::from_weights(exec, configs, tokenizer, &mut te, &mut unet, &mut vae)
    }

    /// Uses a tiny autoencoder (TAESD, [`TinyDecoder`]) for the per-step previews instead of
    /// the linear approximation (`None`: back to linear). Its latent space must be the VAE's.
    pub fn set_preview_decoder(&mut self, decoder: Option<TinyDecoder>) -> Result<()> {
        if let Some(d) = &decoder {
            let (got, want) = (
                d.config().latent_channels,
                self.vae.config().latent_channels,
            );
            if got != want {
                return Err(Error::invalid(
                    "stable diffusion",
                    format!(
                        "the preview decoder takes {got}-channel latents but this repository's VAE makes {want}: use the tiny autoencoder trained for this model family (TAESD for SD 1.x/2.x)"
                    ),
                ));
            }
        }
        self.preview_decoder = decoder;
        Ok(())
    }

    pub fn configs(&self) -> &SdConfigs {
        &self.configs
    }

    /// Whether `req` runs classifier-free guidance (diffusers' `do_classifier_free_guidance`):
    /// a scale above 1 and a UNet without a guidance embedding (`time_cond_proj_dim`).
    pub fn guided(&self, req: &Request) -> bool {
        req.guided() && self.unet.arch().time_cond_proj_dim.is_none()
    }

    /// The guidance embedding an LCM-distilled UNet takes for `guidance_scale` (1,
    /// time_cond_proj_dim), see [`guidance_scale_embedding`]; `None` for other UNets.
    pub fn guidance_embedding(&self, guidance_scale: f64) -> Result<Option<Tensor>> {
        self.unet
            .arch()
            .time_cond_proj_dim
            .map(|d| guidance_scale_embedding(guidance_scale, d))
            .transpose()
    }

    /// Conditions the UNet for a run: the text states (`cat([uncond, cond])` with CFG) and,
    /// for an LCM-distilled UNet, the guidance embedding of `guidance_scale`. `None` clears
    /// both.
    pub fn condition_unet(
        &mut self,
        exec: &mut Exec,
        states: Option<&Tensor>,
        guidance_scale: f64,
    ) -> Result<()> {
        let t_cond = match states {
            Some(_) => self.guidance_embedding(guidance_scale)?,
            None => None,
        };
        self.unet.set_encoder_hidden_states(exec, states)?;
        self.unet.set_timestep_cond(exec, t_cond.as_ref())
    }

    /// Warnings for options that `req` sets but this pipeline does not use.
    pub fn unused_options(&self, req: &Request) -> Vec<String> {
        let mut v = Vec::new();
        if self.unet.arch().time_cond_proj_dim.is_some() && !req.negative_prompt.is_empty() {
            v.push(
                "the negative prompt is not used: this UNet is LCM-distilled (the guidance scale goes in as an embedding, without classifier-free guidance), as in diffusers".to_string(),
            );
        }
        v
    }

    /// The UNet, for a front end that runs the step loop itself (the browser awaits between
    /// steps, which [`Self::generate`]'s synchronous callback cannot).
    pub fn unet_mut(&mut self) -> &mut UNet {
        &mut self.unet
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Image pixels per latent pixel.
    pub fn vae_factor(&self) -> usize {
        self.vae.downscale()
    }

    /// The default image size (width, height): the UNet's `sample_size` × the VAE factor.
    pub fn default_size(&self) -> (usize, usize) {
        // SD 1.x's sample_size 64 → 512 pixels; 64 when the config has none, as diffusers.
        let (h, w) = self.configs.unet.sample_size().unwrap_or((64, 64));
        (w * self.vae_factor(), h * self.vae_factor())
    }

    /// The limits runs are checked against (default: the GPU adapter's, no budget; on the
    /// CPU backend nothing is checked unless set here).
    pub fn set_limits(&mut self, limits: Option<PlanLimits>) {
        self.limits = limits;
    }

    /// The memory plan of `req` (size, guidance, img2img, VAE tiling), checked against the
    /// limits: an error names the tensor or stage, the limit and both numbers. Its
    /// [`MemoryPlan::vae_tiles`] is what [`Self::decode`] and [`Self::encode_image`] take.
    pub fn check_memory(&self, exec: &Exec, req: &Request) -> Result<MemoryPlan> {
        let (w, h) = self.size(req);
        let limits = self.limits.or_else(|| {
            exec.gpu_context()
                .map(|ctx| PlanLimits::from_caps(&ctx.caps))
        });
        self.plan_inputs.plan_checked(
            w,
            h,
            req.batch.max(1),
            self.guided(req),
            req.init.is_some(),
            req.vae_tiling,
            limits.as_ref(),
        )
    }

    fn size(&self, req: &Request) -> (usize, usize) {
        let (dw, dh) = self.default_size();
        (req.width.unwrap_or(dw), req.height.unwrap_or(dh))
    }

    /// The CLIP states of the prompt and, with `negative` (guidance on), of the negative
    /// prompt: (1, 77, D) each. A prompt longer than 75 tokens is cut, with a warning in
    /// the result (and the log), as diffusers does.
    pub fn encode_prompt(
        &self,
        exec: &mut Exec,
        prompt: &str,
        negative: Option<&str>,
        clip_skip: usize,
    ) -> Result<PromptEmbeddings> {
        let mut warnings = Vec::new();
        let mut encode = |text: &str, what: &str| -> Result<Tensor> {
            let e = self.tokenizer.encode(text);
            if e.truncated {
                let n = self.tokenizer.tokenize(text).len();
                let msg =
                    format!("the {what} has {n} tokens; CLIP reads 75, so the rest was dropped");
                log::warn!("{msg}");
                warnings.push(msg);
            }
            self.text_encoder.encode(exec, &e.ids, 1, clip_skip)
        };
        let cond = encode(prompt, "prompt")?;
        let uncond = match negative {
            Some(n) => Some(encode(n, "negative prompt")?),
            None => None,
        };
        Ok(PromptEmbeddings {
            cond,
            uncond,
            warnings,
        })
    }

    /// The VAE decoder: latents (N, C, h, w) → images (N, 3, H, W) in about [−1, 1]; in
    /// tiles when `tiles` is set (the plan's [`MemoryPlan::vae_tiles`]).
    pub fn decode(
        &self,
        exec: &mut Exec,
        latents: &Tensor,
        tiles: Option<VaeTiles>,
    ) -> Result<Tensor> {
        self.vae.decode_tiled(exec, latents, tiles)
    }

    /// [`Self::decode`] one image at a time (the memory plan's VAE stage is one image), the
    /// images stacked on the batch axis.
    pub fn decode_each(
        &self,
        exec: &mut Exec,
        latents: &Tensor,
        tiles: Option<VaeTiles>,
    ) -> Result<Tensor> {
        let n = latents.shape().first().copied().unwrap_or(0);
        if n <= 1 {
            return self.decode(exec, latents, tiles);
        }
        let mut images = Vec::with_capacity(n);
        for i in 0..n {
            let one = exec.run(&SliceBatch::new(i, 1), &[latents])?;
            images.push(self.decode(exec, &one, tiles)?);
        }
        let refs: Vec<&Tensor> = images.iter().collect();
        exec.run(&Concat::new(0), &refs)
    }

    /// An image (N, 3, H, W) in [0, 1] → sampler latents: a sample of the VAE posterior,
    /// `mean + σ·noise` (noise (N, C, h, w) unit normal), as diffusers' img2img draws it.
    /// In tiles when `tiles` is set, as [`Self::decode`].
    pub fn encode_image(
        &self,
        exec: &mut Exec,
        image: &Tensor,
        noise: &Tensor,
        tiles: Option<VaeTiles>,
    ) -> Result<Tensor> {
        let image = exec.upload(image)?;
        let image = exec.run(&Unary::affine(2.0, -1.0), &[&image])?;
        let noise = exec.upload(noise)?;
        self.vae.encode_sample_tiled(exec, &image, &noise, tiles)
    }

    /// The linear RGB preview of latents (see [`LATENT_RGB_FACTORS`]).
    pub fn preview_rgb(&self, exec: &mut Exec, latents: &Tensor) -> Result<Tensor> {
        match &self.preview {
            Some(p) => p.rgb(exec, latents),
            None => Err(Error::invalid(
                "sd preview",
                "no linear preview for this VAE's latent channels (it is defined for 4)",
            )),
        }
    }

    /// The solver `req` asks for, for `req.steps` steps.
    pub fn solver(&self, req: &Request) -> Result<Box<dyn Solver>> {
        self.configs
            .solver(req.solver.as_deref(), &req.scheduler_overrides, req.steps)
    }

    /// The solver for `req` and the `(first, end)` of its steps to run: all of them for
    /// text-to-image; for image-to-image the tail [`img2img_range`] gives, or, for an
    /// LCM-distilled repository's LCM solver, all steps of the schedule `strength` cuts
    /// ([`SdConfigs::lcm_img2img`]).
    pub fn solver_and_range(&self, req: &Request) -> Result<(Box<dyn Solver>, (usize, usize))> {
        match &req.init {
            None => {
                let solver = self.solver(req)?;
                let n = solver.num_steps();
                Ok((solver, (0, n)))
            }
            Some(init) if self.configs.lcm_img2img(req.solver.as_deref()) => {
                let solver = self.configs.lcm_img2img_solver(
                    req.solver.as_deref(),
                    &req.scheduler_overrides,
                    req.steps,
                    init.strength,
                )?;
                let n = solver.num_steps();
                Ok((solver, (0, n)))
            }
            Some(init) => {
                let mut solver = self.solver(req)?;
                let range = img2img_range(solver.as_mut(), req.steps, init.strength)?;
                Ok((solver, range))
            }
        }
    }

    /// Text-to-image, or image-to-image when `req.init` is set; see the module docs.
    /// `on_step` runs after every step (on the GPU, before the step is submitted, so what
    /// it records goes with it); returning [`Control::Stop`] ends the loop there.
    pub fn generate(
        &mut self,
        exec: &mut Exec,
        req: &Request,
        on_step: &mut dyn FnMut(&mut Exec, &SdStep<'_>) -> Result<Control>,
    ) -> Result<SdOutput> {
        let op = "stable diffusion";
        if req.steps == 0 {
            return Err(Error::invalid(op, "steps must be at least 1"));
        }
        if req.batch == 0 {
            return Err(Error::invalid(op, "the batch must be at least 1 image"));
        }
        if !req.guidance_scale.is_finite() {
            return Err(Error::invalid(
                op,
                format!(
                    "the guidance scale must be finite, got {}",
                    req.guidance_scale
                ),
            ));
        }
        let (width, height) = self.size(req);
        // Size, memory and solver problems fail before any model runs.
        let tiles = self.check_memory(exec, req)?.vae_tiles();
        let f = self.vae_factor();
        let lc = self.vae.config().latent_channels;
        let batch = req.batch;
        let shape = [batch, lc, height / f, width / f];
        let one = [1, lc, height / f, width / f];
        if let Some(init) = &req.init {
            let s = init.image.shape();
            if s != [1, 3, height, width] {
                return Err(Error::shape(
                    op,
                    "init image",
                    format!("(1, 3, {height}, {width}): the requested size"),
                    s,
                ));
            }
        }
        let (mut solver, range) = self.solver_and_range(req)?;
        // An LCM-distilled UNet's guidance embedding (its width may be one diffusers cannot
        // embed), before any model runs too.
        self.guidance_embedding(req.guidance_scale)?;
        let given = req.given_noise.as_ref();
        if let Some(g) = given {
            for (what, t, want) in [
                ("init_latents", &g.init_latents, &shape),
                ("posterior noise", &g.posterior, &one),
                ("forward noise", &g.forward, &shape),
            ] {
                if let Some(t) = t {
                    if t.shape() != want {
                        return Err(Error::shape(op, what, format!("{want:?}"), t.shape()));
                    }
                }
            }
        }

        // The text conditioning (and an LCM-distilled UNet's guidance embedding), then the
        // starting latents.
        let warnings = self.condition_for(exec, req)?;
        let guided = self.guided(req);
        let x = self.start_latents(exec, req, solver.as_ref(), range.0, tiles)?;

        let mut noise = match given {
            Some(g) if !g.solver.is_empty() => {
                Noise::Given(g.solver.iter().cloned().collect::<VecDeque<_>>())
            }
            _ => Noise::Philox { seed: req.seed },
        };
        let mut guided_model;
        let mut plain_model;
        let model: &mut dyn Denoiser = if guided {
            guided_model = Guided::new(UNetRef(&mut self.unet), req.guidance_scale)?;
            &mut guided_model
        } else {
            plain_model = UNetRef(&mut self.unet);
            &mut plain_model
        };
        let total = range.1 - range.0;
        let mut x = x;
        let mut stopped = false;
        let mut steps_run = 0;
        for i in range.0..range.1 {
            let mut ctx = StepContext {
                exec,
                noise: &mut noise,
                step: i as u32,
            };
            let out = solver.step(&mut ctx, model, i, &x)?;
            x = out.prev_sample;
            steps_run += 1;
            let info = SdStep {
                index: i - range.0,
                total,
                timestep: solver.timestep(i),
                latents: &x,
                x0: &out.x0,
                preview: self.preview.as_ref(),
                decoder: self.preview_decoder.as_ref(),
            };
            let control = on_step(exec, &info);
            exec.submit()?;
            if control? == Control::Stop {
                stopped = true;
                break;
            }
        }
        let image = if stopped {
            None
        } else {
            Some(self.decode_each(exec, &x, tiles)?)
        };
        exec.submit()?;
        Ok(SdOutput {
            latents: x,
            image,
            steps_run,
            stopped,
            solver: solver.name(),
            warnings,
            vae_tile: tiles.map(|t| t.tile),
        })
    }

    /// Encodes `req`'s prompt (and negative prompt when [`Self::guided`]) and conditions the
    /// UNet for the run: the states repeated over the batch, `cat([uncond × B, cond × B])`
    /// with CFG, and an LCM-distilled UNet's guidance embedding ([`Self::condition_unet`]).
    /// Returns the warnings for the user (a prompt cut at 77 tokens, unused options).
    pub fn condition_for(&mut self, exec: &mut Exec, req: &Request) -> Result<Vec<String>> {
        let guided = self.guided(req);
        let mut emb = self.encode_prompt(
            exec,
            &req.prompt,
            guided.then_some(req.negative_prompt.as_str()),
            req.clip_skip,
        )?;
        for w in self.unused_options(req) {
            log::warn!("{w}");
            emb.warnings.push(w);
        }
        let cond = repeat_batch(exec, &emb.cond, req.batch)?;
        let states = match &emb.uncond {
            Some(u) => {
                let u = repeat_batch(exec, u, req.batch)?;
                exec.run(&Concat::new(0), &[&u, &cond])?
            }
            None => cond,
        };
        self.condition_unet(exec, Some(&states), req.guidance_scale)?;
        Ok(emb.warnings)
    }

    /// The latents a run starts from, (batch, C, h, w): `init_noise_sigma · z` (z given or
    /// drawn from the seed, stream 0), or for image-to-image the VAE posterior sample of the
    /// image (encoded once, stream 1, repeated over the batch) noised to step `first`'s
    /// level (stream 2) by the solver's `add_noise` rule ([`Self::add_noise_coefficients`]).
    pub fn start_latents(
        &self,
        exec: &mut Exec,
        req: &Request,
        solver: &dyn Solver,
        first: usize,
        tiles: Option<VaeTiles>,
    ) -> Result<Tensor> {
        let (width, height) = self.size(req);
        let f = self.vae_factor();
        let lc = self.vae.config().latent_channels;
        let shape = [req.batch, lc, height / f, width / f];
        let one = [1, lc, height / f, width / f];
        let given = req.given_noise.as_ref();
        match &req.init {
            None => match given.and_then(|g| g.init_latents.as_ref()) {
                Some(z) => scale_initial_noise(exec, solver, z),
                None => initial_noise(exec, solver, &shape, req.seed),
            },
            Some(init) => {
                let e1 = match given.and_then(|g| g.posterior.as_ref()) {
                    Some(t) => exec.upload(t)?,
                    None => {
                        exec.run(&SolverUpdate::noise(&one, 1.0, req.seed, u32::MAX, 1), &[])?
                    }
                };
                let encoded = self.encode_image(exec, &init.image, &e1, tiles)?;
                let encoded = repeat_batch(exec, &encoded, req.batch)?;
                let e2 = match given.and_then(|g| g.forward.as_ref()) {
                    Some(t) => exec.upload(t)?,
                    None => exec.run(
                        &SolverUpdate::noise(&shape, 1.0, req.seed, u32::MAX, 2),
                        &[],
                    )?,
                };
                let (a, b) = self.add_noise_coefficients(req, solver, first)?;
                exec.run(&SolverUpdate::linear(&[a, b]), &[&encoded, &e2])
            }
        }
    }

    /// diffusers' `scheduler.add_noise(x0, ε, t)` at step `first` as `(a, b)` of `a·x0 + b·ε`:
    /// the solver's own when it has them ([`Solver::add_noise_coefficients`]: (α_t, σ_t) of
    /// the DPM-Solver family's σ, σ of Heun, KDPM2, LMS), else
    /// (√ᾱ_t, √(1 − ᾱ_t)) for the ᾱ schedulers, (1, σ) for the σ ones (Euler family).
    pub fn add_noise_coefficients(
        &self,
        req: &Request,
        solver: &dyn Solver,
        first: usize,
    ) -> Result<(f64, f64)> {
        if let Some(ab) = solver.add_noise_coefficients(first) {
            return Ok(ab);
        }
        let name = solver.name();
        let class = schedule_class_for(name)
            .ok_or_else(|| Error::invalid("img2img", format!("no schedule for solver {name}")))?;
        let mut cfg = self
            .configs
            .scheduler_config(req.solver.as_deref(), &req.scheduler_overrides)?;
        cfg.class = class;
        let schedule = Schedule::new(&cfg)?;
        let ts = schedule.set_timesteps(req.steps)?;
        if let Some(sigmas) = &ts.sigmas {
            let sigma = *sigmas
                .get(first)
                .ok_or_else(|| Error::invalid("img2img", format!("no σ for step {first}")))?
                as f64;
            return Ok((1.0, sigma));
        }
        let t = solver.timestep(first);
        if t.fract() != 0.0 || t < 0.0 {
            return Err(Error::invalid(
                "img2img",
                format!("the {name} schedule's timestep {t} is not a training step"),
            ));
        }
        let a = *schedule.alphas_cumprod.get(t as usize).ok_or_else(|| {
            Error::invalid(
                "img2img",
                format!("timestep {t} is past the training schedule"),
            )
        })? as f64;
        Ok((a.sqrt(), (1.0 - a).sqrt()))
    }
}

/// `t` (1, …) repeated `n` times along the batch axis (itself when `n` is 1).
pub fn repeat_batch(exec: &mut Exec, t: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(t.clone());
    }
    let copies: Vec<&Tensor> = std::iter::repeat_n(t, n).collect();
    exec.run(&Concat::new(0), &copies)
}

fn with_file(e: Error, file: &str) -> Error {
    match e {
        Error::Config {
            key,
            expected,
            got,
            hint,
            ..
        } => Error::Config {
            file: file.to_string(),
            key,
            expected,
            got,
            hint,
        },
        other => other,
    }
}
