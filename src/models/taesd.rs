//! The decoder of diffusers' `AutoencoderTiny` (TAESD, the tiny distilled autoencoder of
//! madebyollin/taesd; `src/diffusers/models/autoencoders/autoencoder_tiny.py` and
//! `DecoderTiny` in `vae.py` at 0.42.1): a cheap latent → image decoder for a live preview
//! every sampling step. Built from ops only, so it runs on both executors:
//! ```text
//! z = latents / scaling_factor + shift_factor
//! 3·tanh(z/3) → conv 3×3 + act → per stage i: num_decoder_blocks[i] × block,
//!     then (not the last stage) nearest ×upsampling_scaling_factor and a bias-free conv 3×3,
//!     (the last stage) conv 3×3 to out_channels with bias → ·2 − 1
//! block(x) = relu(conv(act(conv(act(conv(x))))) + x)
//! ```
//! Weights are diffusers' `nn.Sequential` names, `decoder.layers.{k}` (`k` counts the
//! activations and upsamplers too). The ReLUs are fused into the convolutions before them,
//! `relu(conv + x)` is one dispatch, and the final `·2 − 1` is the last conv's output scale
//! with `−1/2` folded into its bias, so a block costs three dispatches and nothing else.
//!
//! Only the decoder is loaded; the `encoder.*` tensors of a full TAESD folder are skipped.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::nn::layers::{take, take_weight};
use crate::ops::{Conv2d as Conv2dOp, ResizeNearest, SliceBatch, Unary, UnaryOp, Upsample2x};
use crate::tensor::Tensor;
use crate::weights::{LoadOptions, Weights};

/// The `_class_name` of a TAESD config.json.
pub const CLASS_NAME: &str = "AutoencoderTiny";

/// The activation between a block's convolutions (diffusers' `act_fn`; TAESD uses ReLU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyActivation {
    /// Fused into the convolution before it.
    Relu,
    /// `silu` / `swish`: one extra dispatch after the convolution.
    Silu,
    /// PyTorch's exact (erf) GELU: one extra dispatch.
    Gelu,
}

/// The keys of an `AutoencoderTiny` config.json that shape the decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct TaesdConfig {
    pub latent_channels: usize,
    pub out_channels: usize,
    /// `decoder_block_out_channels`: one entry per stage, all equal (see `from_json`).
    pub block_out_channels: Vec<usize>,
    /// `num_decoder_blocks`: blocks per stage (0 allowed).
    pub num_blocks: Vec<usize>,
    pub upsampling_scaling_factor: usize,
    pub act: TinyActivation,
    /// The pipelines decode `latents / scaling_factor + shift_factor` (1 and 0 for TAESD,
    /// whose latents are the UNet's).
    pub scaling_factor: f64,
    pub shift_factor: f64,
    /// Only for diffusers' byte storage of latents (`scale_latents`); not used by decoding.
    pub latent_magnitude: f64,
    pub latent_shift: f64,
}

fn config_err(key: &str, expected: &str, got: String, hint: &str) -> Error {
    super::config::config_error("taesd config.json", key, expected, got, hint)
}

impl Default for TaesdConfig {
    /// diffusers' defaults (madebyollin/taesd).
    fn default() -> Self {
        Self {
            latent_channels: 4,
            out_channels: 3,
            block_out_channels: vec![64; 4],
            num_blocks: vec![3, 3, 3, 1],
            upsampling_scaling_factor: 2,
            act: TinyActivation::Relu,
            scaling_factor: 1.0,
            shift_factor: 0.0,
            latent_magnitude: 3.0,
            latent_shift: 0.5,
        }
    }
}

impl TaesdConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            config_err(
                "(file)",
                "a readable config.json",
                format!("{}: {e}", path.display()),
                "point at a diffusers AutoencoderTiny folder (e.g. madebyollin/taesd)",
            )
        })?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| config_err("(file)", "a JSON object", e.to_string(), "re-save it"))?;
        let d = Self::default();
        if let Some(c) = v.get("_class_name") {
            if c.as_str() != Some(CLASS_NAME) {
                return Err(config_err(
                    "_class_name",
                    &format!("{CLASS_NAME:?}"),
                    c.to_string(),
                    "the preview decoder takes a tiny autoencoder (TAESD) folder",
                ));
            }
        }
        let size = |key: &str, default: usize, min: u64| -> Result<usize> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n >= min && n <= u32::MAX as u64)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        config_err(
                            key,
                            &format!("an integer ≥ {min}"),
                            x.to_string(),
                            "fix the config",
                        )
                    }),
            }
        };
        let list = |key: &str, default: &[usize], min: u64| -> Result<Vec<usize>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default.to_vec()),
                Some(x) => x
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|c| {
                                c.as_u64()
                                    .filter(|&n| n >= min && n <= u32::MAX as u64)
                                    .map(|n| n as usize)
                            })
                            .collect::<Option<Vec<_>>>()
                    })
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| {
                        config_err(
                            key,
                            &format!("a non-empty list of integers ≥ {min}"),
                            x.to_string(),
                            "fix the config",
                        )
                    }),
            }
        };
        let number = |key: &str, default: f64| -> Result<f64> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| config_err(key, "a number", x.to_string(), "fix the config")),
            }
        };
        let text_key = |key: &str, default: &str| -> Result<String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(x) => x
                    .as_str()
                    .map(str::to_lowercase)
                    .ok_or_else(|| config_err(key, "a string", x.to_string(), "fix the config")),
            }
        };
        let block_out_channels = list("decoder_block_out_channels", &d.block_out_channels, 1)?;
        let num_blocks = list("num_decoder_blocks", &d.num_blocks, 0)?;
        if num_blocks.len() != block_out_channels.len() {
            return Err(config_err(
                "num_decoder_blocks",
                &format!(
                    "{} entries (one per decoder_block_out_channels entry)",
                    block_out_channels.len()
                ),
                num_blocks.len().to_string(),
                "fix the config",
            ));
        }
        // DecoderTiny feeds stage i's output (C_i channels) into stage i + 1's blocks, built
        // for C_(i+1) in and out: PyTorch itself fails on any other model.
        if let Some(c) = block_out_channels
            .iter()
            .find(|&&c| c != block_out_channels[0])
        {
            return Err(config_err(
                "decoder_block_out_channels",
                "equal entries (diffusers' DecoderTiny cannot run with different ones)",
                format!("{} and {c}", block_out_channels[0]),
                "fix the config",
            ));
        }
        let act = match text_key("act_fn", "relu")?.as_str() {
            "relu" => TinyActivation::Relu,
            "silu" | "swish" => TinyActivation::Silu,
            "gelu" => TinyActivation::Gelu,
            other => {
                return Err(config_err(
                    "act_fn",
                    "\"relu\", \"silu\", \"swish\" or \"gelu\"",
                    format!("{other:?}"),
                    "this activation is not supported",
                ))
            }
        };
        let up = text_key("upsample_fn", "nearest")?;
        if up != "nearest" {
            return Err(config_err(
                "upsample_fn",
                "\"nearest\"",
                format!("{up:?}"),
                "only nearest upsampling is supported",
            ));
        }
        let scaling_factor = number("scaling_factor", d.scaling_factor)?;
        if scaling_factor == 0.0 {
            return Err(config_err(
                "scaling_factor",
                "a non-zero number",
                "0".into(),
                "fix the config",
            ));
        }
        Ok(Self {
            latent_channels: size("latent_channels", d.latent_channels, 1)?,
            out_channels: size("out_channels", d.out_channels, 1)?,
            block_out_channels,
            num_blocks,
            upsampling_scaling_factor: size(
                "upsampling_scaling_factor",
                d.upsampling_scaling_factor,
                1,
            )?,
            act,
            scaling_factor,
            shift_factor: number("shift_factor", d.shift_factor)?,
            latent_magnitude: number("latent_magnitude", d.latent_magnitude)?,
            latent_shift: number("latent_shift", d.latent_shift)?,
        })
    }

    /// The spatial factor between image and latent sizes.
    pub fn upscale(&self) -> usize {
        self.upsampling_scaling_factor
            .saturating_pow(self.block_out_channels.len() as u32 - 1)
    }
}

/// A 3×3 (padding 1) convolution of the decoder, with its fused epilogue.
struct TinyConv {
    op: Conv2dOp,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl TinyConv {
    fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        (cin, cout): (usize, usize),
        bias: bool,
    ) -> Result<Self> {
        let (weight, packed) =
            take_weight(exec, w, &format!("{prefix}.weight"), &[cout, cin, 3, 3])?;
        let mut op = Conv2dOp::new(1, 1).with_packed_weight(packed);
        let bias = match bias {
            true => {
                op = op.with_bias();
                Some(take(exec, w, &format!("{prefix}.bias"), &[cout])?)
            }
            false => None,
        };
        Ok(Self { op, weight, bias })
    }

    /// The output conv, `2·(conv(x) + b) − 1`, as `2·(conv(x) + (b − 1/2))`.
    fn load_output(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        (cin, cout): (usize, usize),
    ) -> Result<Self> {
        let (weight, packed) =
            take_weight(exec, w, &format!("{prefix}.weight"), &[cout, cin, 3, 3])?;
        let name = format!("{prefix}.bias");
        let b = w.take(&name, &[cout])?;
        let b = b.cpu_data().ok_or_else(|| {
            Error::invalid(
                "taesd",
                format!(
                    "weight `{name}` was uploaded while loading; the decoder needs it on the CPU"
                ),
            )
        })?;
        let shifted = Tensor::from_vec(&[cout], b.iter().map(|v| v - 0.5).collect())?;
        w.add_device_bytes(shifted.byte_len());
        Ok(Self {
            op: Conv2dOp::new(1, 1)
                .with_packed_weight(packed)
                .with_bias()
                .with_scale(2.0),
            weight,
            bias: Some(exec.upload(&shifted)?),
        })
    }

    /// conv(x) [+ residual], then ReLU when `relu`.
    fn forward(
        &self,
        exec: &mut Exec,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let mut op = self.op;
        op.relu = relu;
        let mut ins = vec![x, &self.weight];
        ins.extend(self.bias.as_ref());
        if let Some(r) = residual {
            op = op.with_residual();
            ins.push(r);
        }
        exec.run(&op, &ins)
    }

    /// conv(x), then the activation (fused when it is ReLU).
    fn forward_act(&self, exec: &mut Exec, x: &Tensor, act: TinyActivation) -> Result<Tensor> {
        let op = match act {
            TinyActivation::Relu => return self.forward(exec, x, None, true),
            TinyActivation::Silu => UnaryOp::Silu,
            TinyActivation::Gelu => UnaryOp::GeluErf,
        };
        let h = self.forward(exec, x, None, false)?;
        exec.run(&Unary::new(op), &[&h])
    }
}

/// diffusers' `AutoencoderTinyBlock` with equal in and out channels (an identity skip):
/// `relu(conv(act(conv(act(conv(x))))) + x)`.
struct TinyBlock {
    convs: [TinyConv; 3],
}

impl TinyBlock {
    fn forward(&self, exec: &mut Exec, x: &Tensor, act: TinyActivation) -> Result<Tensor> {
        let h = self.convs[0].forward_act(exec, x, act)?;
        let h = self.convs[1].forward_act(exec, &h, act)?;
        self.convs[2].forward(exec, &h, Some(x), true)
    }
}

struct TinyStage {
    blocks: Vec<TinyBlock>,
    /// Nearest upsampling before `conv` (all stages but the last).
    upsample: bool,
    conv: TinyConv,
}

/// The TAESD decoder: latents as the sampler leaves them → images in about [−1, 1],
/// (N, out_channels, H·f, W·f) with f = [`TaesdConfig::upscale`] (8 for TAESD). See the
/// module docs.
pub struct TinyDecoder {
    cfg: TaesdConfig,
    conv_in: TinyConv,
    stages: Vec<TinyStage>,
}

impl TinyDecoder {
    /// Loads the decoder of a diffusers `AutoencoderTiny` folder (`config.json` and
    /// `diffusion_pytorch_model.safetensors`, f16 or f32). The folder's `encoder.*` tensors
    /// are skipped; any other leftover is `Error::UnexpectedTensors`.
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = TaesdConfig::from_file(dir.join("config.json"))?;
        let mut weights = Weights::load_model_dir(dir, &LoadOptions::default(), |_| {})?;
        let dec = Self::from_weights(exec, &cfg, &mut weights)?;
        Self::finish(&weights)?;
        Ok(dec)
    }

    /// After [`from_weights`](Self::from_weights): an error naming the tensors left in `w`
    /// other than the encoder's.
    pub fn finish(w: &Weights) -> Result<()> {
        let left: Vec<String> = w
            .finish_unused(true)?
            .into_iter()
            .filter(|n| !n.starts_with("encoder."))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        Err(Error::UnexpectedTensors {
            file: w.source().to_string(),
            count: left.len(),
            names: left.into_iter().take(8).collect(),
            hint: "these are not AutoencoderTiny decoder or encoder weights; use the config.json that came with them",
        })
    }

    /// Builds the decoder from `w` (missing: `Error::MissingTensors`; wrong shape:
    /// `Error::WeightShape`, both naming the tensor). Leaves other tensors in `w`.
    pub fn from_weights(exec: &mut Exec, cfg: &TaesdConfig, w: &mut Weights) -> Result<Self> {
        let c = cfg.block_out_channels[0];
        let mut k = 0usize;
        let mut next = || {
            let p = format!("decoder.layers.{k}");
            k += 1;
            p
        };
        let conv_in = TinyConv::load(exec, w, &next(), (cfg.latent_channels, c), true)?;
        next(); // the activation
        let n = cfg.num_blocks.len();
        let mut stages = Vec::with_capacity(n);
        for (i, &nb) in cfg.num_blocks.iter().enumerate() {
            let mut blocks = Vec::with_capacity(nb);
            for _ in 0..nb {
                let p = next();
                let conv = |exec: &mut Exec, w: &mut Weights, j: usize| {
                    TinyConv::load(exec, w, &format!("{p}.conv.{j}"), (c, c), true)
                };
                blocks.push(TinyBlock {
                    convs: [conv(exec, w, 0)?, conv(exec, w, 2)?, conv(exec, w, 4)?],
                });
            }
            let last = i + 1 == n;
            if !last {
                next(); // the upsampler
            }
            let cout = if last { cfg.out_channels } else { c };
            // The last conv's 2·(conv + b) − 1 = 2·(conv + (b − 1/2)): diffusers' [0, 1] →
            // [−1, 1] as its output scale and a shifted bias.
            let conv = match last {
                true => TinyConv::load_output(exec, w, &next(), (c, cout))?,
                false => TinyConv::load(exec, w, &next(), (c, cout), false)?,
            };
            stages.push(TinyStage {
                blocks,
                upsample: !last && cfg.upsampling_scaling_factor > 1,
                conv,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            stages,
        })
    }

    pub fn config(&self) -> &TaesdConfig {
        &self.cfg
    }

    /// Latents (N, latent_channels, h, w) as the sampler leaves them → images
    /// (N, out_channels, h·f, w·f) in about [−1, 1] (diffusers' `AutoencoderTiny.decode` of
    /// `latents / scaling_factor + shift_factor`). Recorded only: nothing is submitted.
    pub fn decode(&self, exec: &mut Exec, latents: &Tensor) -> Result<Tensor> {
        let s = latents.shape();
        if s.len() != 4 || s[1] != self.cfg.latent_channels || s.contains(&0) {
            return Err(Error::shape(
                "taesd",
                "latents",
                format!("(N, {}, H, W)", self.cfg.latent_channels),
                s,
            ));
        }
        // 3·tanh(z/3) with z = latents/sf + shift.
        let (sf, shift) = (self.cfg.scaling_factor, self.cfg.shift_factor);
        let z = exec.run(
            &Unary::affine((1.0 / (3.0 * sf)) as f32, (shift / 3.0) as f32),
            &[latents],
        )?;
        let z = exec.run(
            &Unary {
                op: UnaryOp::Tanh,
                alpha: 3.0,
                beta: 0.0,
            },
            &[&z],
        )?;
        let act = self.cfg.act;
        let mut h = self.conv_in.forward_act(exec, &z, act)?;
        let f = self.cfg.upsampling_scaling_factor;
        for stage in &self.stages {
            for b in &stage.blocks {
                h = b.forward(exec, &h, act)?;
            }
            if stage.upsample {
                h = match f {
                    2 => exec.run(&Upsample2x, &[&h])?,
                    _ => {
                        let s = h.shape();
                        exec.run(&ResizeNearest::new(s[2] * f, s[3] * f), &[&h])?
                    }
                };
            }
            h = stage.conv.forward(exec, &h, None, false)?;
        }
        Ok(h)
    }

    /// [`decode`](Self::decode) of at most the first `max_images` samples (all when the
    /// batch is smaller): the image to hand to the preview (`preview::PreviewSink::show`, the
    /// browser canvas) after a sampling step, from the step's latents or its x̂₀ prediction.
    /// Recorded on `exec` without a submit or a readback, so the caller's per-step submit
    /// carries it.
    pub fn decode_preview(
        &self,
        exec: &mut Exec,
        latents: &Tensor,
        max_images: usize,
    ) -> Result<Tensor> {
        let n = latents.shape().first().copied().unwrap_or(0);
        if max_images == 0 {
            return Err(Error::invalid(
                "taesd",
                "decode_preview needs max_images ≥ 1",
            ));
        }
        if n > max_images {
            let first = exec.run(&SliceBatch::new(0, max_images), &[latents])?;
            return self.decode(exec, &first);
        }
        self.decode(exec, latents)
    }
}
