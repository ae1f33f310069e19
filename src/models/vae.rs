//! diffusers' `AutoencoderKL` (the Stable Diffusion VAE, `src/diffusers/models/autoencoders/
//! autoencoder_kl.py` and `vae.py` at 0.42.1), built from ops only:
//! ```text
//! encode: conv_in → down blocks (resnets, stride-2 conv) → mid (resnet, attention, resnet)
//!         → group_norm + SiLU → conv_out (2·latent channels) → quant_conv → (mean, logvar)
//! decode: post_quant_conv → conv_in → mid → up blocks (resnets, nearest 2× + conv)
//!         → group_norm + SiLU → conv_out
//! ```
//! **Tiling** ([`VaeTiles`], diffusers' `enable_tiling`): an image too large for one pass
//! (at 512×512 SD's decoder holds a 256-channel 512×512 activation, 256 MiB, over WebGPU's
//! default 128 MiB per binding) is decoded as overlapping latent tiles of `tile/f` latent
//! pixels every `⌊0.75·tile/f⌋`; each tile's top and left `⌊0.25·tile⌋` pixels are
//! cross-faded with the (already blended) tile above and to the left, and the first
//! `tile − ⌊0.25·tile⌋` rows and columns of each are kept — diffusers' `tiled_decode`, step
//! for step, so its output (not the untiled one) is the reference. Encoding tiles the image
//! the same way and blends the posterior moments (`tiled_encode`).
//!
//! The latent scaling of the SD pipelines (`z = raw / scaling_factor + shift_factor` before
//! decoding, `(mean − shift_factor) · scaling_factor` after encoding) is folded into the 1×1
//! `post_quant_conv` and `quant_conv` weights at load time, so it costs no dispatch.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::nn::layers::place_weight;
use crate::nn::{AttentionBlock, Conv2d, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D};
use crate::ops::{Binary, BinaryOp, BlendEdge, Clamp, Concat, Crop2d, Unary, UnaryOp};
use crate::tensor::Tensor;
use crate::weights::{Dtype, LoadOptions, Weights};

/// diffusers' resnet and norm epsilon inside the VAE (not configurable there).
const EPS: f64 = 1e-6;

/// The keys of an `AutoencoderKL` config.json that shape the model.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: f64,
    pub mid_block_add_attention: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
}

fn config_err(key: &str, expected: &str, got: String, hint: &str) -> Error {
    super::config::config_error("vae/config.json", key, expected, got, hint)
}

impl VaeConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            config_err(
                "(file)",
                "a readable config.json",
                format!("{}: {e}", path.display()),
                "point at the VAE folder of a diffusers model",
            )
        })?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| config_err("(file)", "a JSON object", e.to_string(), "re-save it"))?;
        if let Some(c) = v.get("_class_name").and_then(Value::as_str) {
            if c != "AutoencoderKL" {
                return Err(config_err(
                    "_class_name",
                    "\"AutoencoderKL\"",
                    format!("{c:?}"),
                    "only the KL autoencoder of Stable Diffusion 1.x/2.x is supported",
                ));
            }
        }
        let size = |key: &str, default: usize| -> Result<usize> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        config_err(key, "a positive integer", x.to_string(), "fix the config")
                    }),
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(true),
                Some(x) => x.as_bool().ok_or_else(|| {
                    config_err(key, "true or false", x.to_string(), "fix the config")
                }),
            }
        };
        let block_out_channels: Vec<usize> = match v.get("block_out_channels") {
            None | Some(Value::Null) => vec![64],
            Some(x) => x
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|c| c.as_u64().filter(|&n| n > 0).map(|n| n as usize))
                        .collect::<Option<Vec<_>>>()
                })
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    config_err(
                        "block_out_channels",
                        "a non-empty list of positive integers",
                        x.to_string(),
                        "fix the config",
                    )
                })?,
        };
        let n = block_out_channels.len();
        for (key, want) in [
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ] {
            let list = match v.get(key) {
                None | Some(Value::Null) => vec![want.to_string(); n],
                Some(x) => x
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| t.as_str().unwrap_or("(not a string)").to_string())
                            .collect::<Vec<_>>()
                    })
                    .ok_or_else(|| {
                        config_err(
                            key,
                            "a list of block names",
                            x.to_string(),
                            "fix the config",
                        )
                    })?,
            };
            if list.len() != n {
                return Err(config_err(
                    key,
                    &format!("{n} entries (one per block_out_channels entry)"),
                    list.len().to_string(),
                    "fix the config",
                ));
            }
            if let Some(bad) = list.iter().find(|t| t.as_str() != want) {
                return Err(config_err(
                    key,
                    &format!("only \"{want}\""),
                    format!("{bad:?}"),
                    "this VAE variant is not supported",
                ));
            }
        }
        let norm_num_groups = size("norm_num_groups", 32)?;
        if let Some(c) = block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(norm_num_groups))
        {
            return Err(config_err(
                "norm_num_groups",
                &format!("a divisor of every block_out_channels entry ({c} is not)"),
                norm_num_groups.to_string(),
                "fix the config",
            ));
        }
        let number = |key: &str, default: f64| -> Result<f64> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| config_err(key, "a number", x.to_string(), "fix the config")),
            }
        };
        let scaling_factor = number("scaling_factor", 0.18215)?;
        if scaling_factor == 0.0 {
            return Err(config_err(
                "scaling_factor",
                "a non-zero number",
                "0".into(),
                "fix the config",
            ));
        }
        Ok(Self {
            in_channels: size("in_channels", 3)?,
            out_channels: size("out_channels", 3)?,
            layers_per_block: size("layers_per_block", 1)?,
            latent_channels: size("latent_channels", 4)?,
            norm_num_groups,
            scaling_factor,
            shift_factor: number("shift_factor", 0.0)?,
            mid_block_add_attention: flag("mid_block_add_attention")?,
            use_quant_conv: flag("use_quant_conv")?,
            use_post_quant_conv: flag("use_post_quant_conv")?,
            block_out_channels,
        })
    }
}

/// diffusers' `AutoencoderKL` tiling: square tiles of `tile` image pixels (its
/// `tile_sample_min_size`; `tile / f` latent pixels, its `tile_latent_min_size`) that overlap
/// by a quarter (`tile_overlap_factor = 0.25`). See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeTiles {
    pub tile: usize,
}

/// diffusers' `tile_overlap_factor`.
const TILE_OVERLAP: f64 = 0.25;

impl VaeTiles {
    /// Tiles of `tile` pixels for a VAE with downsampling factor `factor`: a multiple of
    /// 4·factor, so that the quarter overlap is whole latent pixels and the kept parts of the
    /// tiles add up to the image (otherwise diffusers' own arithmetic would not).
    pub fn new(tile: usize, factor: usize) -> Result<Self> {
        if tile == 0 || !tile.is_multiple_of(4 * factor) {
            return Err(Error::invalid(
                "vae tiling",
                format!(
                    "the tile size {tile} is not a positive multiple of {} (4 × the VAE's factor {factor}); use e.g. {}",
                    4 * factor,
                    (tile / (4 * factor)).max(1) * 4 * factor
                ),
            ));
        }
        Ok(Self { tile })
    }

    /// (tile size, stride) on the input side and (blend extent, kept size) on the output
    /// side, for an input `scale_in` times the output's resolution (decode: latents in,
    /// `1/f`; encode: pixels in, `f`), as diffusers computes them (`int` truncation).
    pub(crate) fn geometry(&self, factor: usize, decode: bool) -> (usize, usize, usize, usize) {
        let (tile_in, tile_out) = match decode {
            true => (self.tile / factor, self.tile),
            false => (self.tile, self.tile / factor),
        };
        let stride = (tile_in as f64 * (1.0 - TILE_OVERLAP)) as usize;
        let blend = (tile_out as f64 * TILE_OVERLAP) as usize;
        (tile_in, stride.max(1), blend, tile_out - blend)
    }
}

/// Runs `f` on overlapping `tile × tile` crops of `x` (N, C, H, W) every `stride` and
/// stitches the outputs: each blended with the finished output above (`blend_v`) and to the
/// left (`blend_h`) over `blend` rows/columns, its first `keep` rows and columns kept.
fn tiled(
    exec: &mut Exec,
    x: &Tensor,
    (tile, stride, blend, keep): (usize, usize, usize, usize),
    f: &mut dyn FnMut(&mut Exec, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let s = x.shape();
    let (h, w) = (s[2], s[3]);
    let mut above: Vec<Tensor> = Vec::new();
    let mut strips = Vec::new();
    for i in (0..h).step_by(stride) {
        let mut row: Vec<Tensor> = Vec::new();
        for j in (0..w).step_by(stride) {
            let crop = Crop2d::new(i, j, tile.min(h - i), tile.min(w - j));
            let piece = exec.run(&crop, &[x])?;
            let mut out = f(exec, &piece)?;
            if let Some(a) = above.get(row.len()) {
                out = exec.run(&BlendEdge::top(blend), &[a, &out])?;
            }
            if let Some(l) = row.last() {
                out = exec.run(&BlendEdge::left(blend), &[l, &out])?;
            }
            row.push(out);
            // Each tile is a whole network pass: submit it so one recording never holds
            // them all.
            exec.submit()?;
        }
        let kept = row
            .iter()
            .map(|t| {
                let o = t.shape();
                exec.run(&Crop2d::new(0, 0, keep.min(o[2]), keep.min(o[3])), &[t])
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = kept.iter().collect();
        strips.push(exec.run(&Concat::new(3), &refs)?);
        above = row;
    }
    let refs: Vec<&Tensor> = strips.iter().collect();
    exec.run(&Concat::new(2), &refs)
}

/// `UNetMidBlock2D` with no time embedding: resnet, optional single-head attention, resnet.
struct MidBlock {
    resnet0: ResnetBlock2D,
    attention: Option<AttentionBlock>,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    fn load(exec: &mut Exec, w: &mut Weights, prefix: &str, cfg: &VaeConfig) -> Result<Self> {
        let c = *cfg.block_out_channels.last().unwrap_or(&1);
        let g = (cfg.norm_num_groups, EPS);
        let resnet0 = ResnetBlock2D::load_without_temb(
            exec,
            w,
            &format!("{prefix}.resnets.0"),
            (c, c),
            g,
            1.0,
        )?;
        // diffusers builds the VAE attention with `attention_head_dim = C`: one head of C.
        let attention = match cfg.mid_block_add_attention {
            true => Some(AttentionBlock::load(
                exec,
                w,
                &format!("{prefix}.attentions.0"),
                c,
                (1, c),
                Some(g),
                1.0,
            )?),
            false => None,
        };
        let resnet1 = ResnetBlock2D::load_without_temb(
            exec,
            w,
            &format!("{prefix}.resnets.1"),
            (c, c),
            g,
            1.0,
        )?;
        Ok(Self {
            resnet0,
            attention,
            resnet1,
        })
    }

    fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnet0.forward_without_temb(exec, x)?;
        if let Some(a) = &self.attention {
            h = a.forward(exec, &h)?;
        }
        self.resnet1.forward_without_temb(exec, &h)
    }
}

struct Stage {
    resnets: Vec<ResnetBlock2D>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

/// A weight as host data, for folding constants into it.
fn host_weight(w: &mut Weights, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = w.take(name, shape)?;
    t.cpu_data().map(<[f32]>::to_vec).ok_or_else(|| {
        Error::invalid(
            "vae",
            format!("weight `{name}` was uploaded while loading; the VAE needs it on the CPU"),
        )
    })
}

/// A 1×1 conv from a matrix and bias with constants folded in: its values are no longer the
/// stored ones, so it stays f32 unless the weight storage forces f16 (see `place_weight`).
fn folded_pointwise(
    exec: &mut Exec,
    w: &mut Weights,
    name: &str,
    shape: &[usize],
    matrix: Vec<f32>,
    bias: Vec<f32>,
) -> Result<Conv2d> {
    let weight = place_weight(
        exec,
        w,
        name,
        Tensor::from_vec(shape, matrix)?,
        Dtype::F32,
        false,
    )?;
    Conv2d::pointwise_from(exec, w, weight, Tensor::from_vec(&[shape[0]], bias)?)
}

/// A 1×1 conv `name` (cout × cin) as a host matrix and bias, or the identity when absent.
fn pointwise_or_identity(
    w: &mut Weights,
    name: &str,
    present: bool,
    c: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if present {
        let m = host_weight(w, &format!("{name}.weight"), &[c, c, 1, 1])?;
        let b = host_weight(w, &format!("{name}.bias"), &[c])?;
        Ok((m, b))
    } else {
        let mut m = vec![0.0; c * c];
        for i in 0..c {
            m[i * c + i] = 1.0;
        }
        Ok((m, vec![0.0; c]))
    }
}

/// diffusers' `AutoencoderKL`; see the module docs. Images are (N, in_channels, H, W) in
/// [−1, 1] with H, W multiples of 2^(blocks − 1); latents are (N, latent_channels, H/f, W/f)
/// as the sampler uses them (already multiplied by `scaling_factor`).
pub struct AutoencoderKl {
    cfg: VaeConfig,
    enc_conv_in: Conv2d,
    enc_stages: Vec<Stage>,
    enc_mid: MidBlock,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    /// `quant_conv`'s mean rows, scaled by `scaling_factor` (shift folded in).
    quant_mean: Conv2d,
    /// `quant_conv`'s log-variance rows, halved: their output is log σ.
    quant_half_logvar: Conv2d,
    /// `post_quant_conv` with `1/scaling_factor` and the shift folded in.
    post_quant: Conv2d,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_stages: Vec<Stage>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
}

impl AutoencoderKl {
    /// Loads a diffusers `AutoencoderKL` folder (`config.json` and the safetensors weights).
    /// Every tensor must be used: leftovers are `Error::UnexpectedTensors`.
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = VaeConfig::from_file(dir.join("config.json"))?;
        let mut weights = Weights::load_model_dir(dir, &LoadOptions::default(), |_| {})?;
        let vae = Self::from_weights(exec, &cfg, &mut weights)?;
        weights.finish_unused(false)?;
        Ok(vae)
    }

    /// Builds the model, taking its tensors from `w` (missing: `Error::MissingTensors`; wrong
    /// shape: `Error::WeightShape`). Leaves other tensors in `w` (check with
    /// `finish_unused`).
    pub fn from_weights(exec: &mut Exec, cfg: &VaeConfig, w: &mut Weights) -> Result<Self> {
        let boc = &cfg.block_out_channels;
        let (c0, clast) = (boc[0], boc[boc.len() - 1]);
        let g = (cfg.norm_num_groups, EPS);
        let l = cfg.latent_channels;
        let nb = boc.len();

        let enc_conv_in = Conv2d::load(exec, w, "encoder.conv_in", cfg.in_channels, c0, 3, 1, 1)?;
        let mut enc_stages = Vec::with_capacity(nb);
        let mut cin = c0;
        for (i, &cout) in boc.iter().enumerate() {
            let p = format!("encoder.down_blocks.{i}");
            let mut resnets = Vec::new();
            for j in 0..cfg.layers_per_block {
                let ci = if j == 0 { cin } else { cout };
                resnets.push(ResnetBlock2D::load_without_temb(
                    exec,
                    w,
                    &format!("{p}.resnets.{j}"),
                    (ci, cout),
                    g,
                    1.0,
                )?);
            }
            let down = match i + 1 < nb {
                true => Some(Downsample2D::load(
                    exec,
                    w,
                    &format!("{p}.downsamplers.0"),
                    cout,
                    0,
                )?),
                false => None,
            };
            enc_stages.push(Stage {
                resnets,
                down,
                up: None,
            });
            cin = cout;
        }
        let enc_mid = MidBlock::load(exec, w, "encoder.mid_block", cfg)?;
        let enc_norm_out = GroupNorm::load(exec, w, "encoder.conv_norm_out", clast, g.0, EPS)?;
        let enc_conv_out = Conv2d::load(exec, w, "encoder.conv_out", clast, 2 * l, 3, 1, 1)?;

        // (mean − shift)·sf = (W_m·h + b_m − shift)·sf; log σ = (W_v·h + b_v)/2.
        let (qm, qb) = pointwise_or_identity(w, "quant_conv", cfg.use_quant_conv, 2 * l)?;
        let sf = cfg.scaling_factor as f32;
        let shift = cfg.shift_factor as f32;
        let half = l * 2 * l;
        let quant_mean = folded_pointwise(
            exec,
            w,
            "quant_conv.weight",
            &[l, 2 * l, 1, 1],
            qm[..half].iter().map(|x| x * sf).collect(),
            qb[..l].iter().map(|b| (b - shift) * sf).collect(),
        )?;
        let quant_half_logvar = folded_pointwise(
            exec,
            w,
            "quant_conv.weight",
            &[l, 2 * l, 1, 1],
            qm[half..].iter().map(|x| x * 0.5).collect(),
            qb[l..].iter().map(|b| b * 0.5).collect(),
        )?;

        // P·(raw/sf + shift) + b = (P/sf)·raw + (b + shift·Σ_j P_ij).
        let (pm, pb) = pointwise_or_identity(w, "post_quant_conv", cfg.use_post_quant_conv, l)?;
        let pbias: Vec<f32> = (0..l)
            .map(|i| pb[i] + shift * pm[i * l..(i + 1) * l].iter().sum::<f32>())
            .collect();
        let post_quant = folded_pointwise(
            exec,
            w,
            "post_quant_conv.weight",
            &[l, l, 1, 1],
            pm.iter().map(|x| x / sf).collect(),
            pbias,
        )?;

        let dec_conv_in = Conv2d::load(exec, w, "decoder.conv_in", l, clast, 3, 1, 1)?;
        let dec_mid = MidBlock::load(exec, w, "decoder.mid_block", cfg)?;
        let mut dec_stages = Vec::with_capacity(nb);
        let mut cin = clast;
        for (i, &cout) in boc.iter().rev().enumerate() {
            let p = format!("decoder.up_blocks.{i}");
            let mut resnets = Vec::new();
            for j in 0..cfg.layers_per_block + 1 {
                let ci = if j == 0 { cin } else { cout };
                resnets.push(ResnetBlock2D::load_without_temb(
                    exec,
                    w,
                    &format!("{p}.resnets.{j}"),
                    (ci, cout),
                    g,
                    1.0,
                )?);
            }
            let up = match i + 1 < nb {
                true => Some(Upsample2D::load(
                    exec,
                    w,
                    &format!("{p}.upsamplers.0"),
                    cout,
                )?),
                false => None,
            };
            dec_stages.push(Stage {
                resnets,
                down: None,
                up,
            });
            cin = cout;
        }
        let dec_norm_out = GroupNorm::load(exec, w, "decoder.conv_norm_out", c0, g.0, EPS)?;
        let dec_conv_out =
            Conv2d::load(exec, w, "decoder.conv_out", c0, cfg.out_channels, 3, 1, 1)?;
        Ok(Self {
            cfg: cfg.clone(),
            enc_conv_in,
            enc_stages,
            enc_mid,
            enc_norm_out,
            enc_conv_out,
            quant_mean,
            quant_half_logvar,
            post_quant,
            dec_conv_in,
            dec_mid,
            dec_stages,
            dec_norm_out,
            dec_conv_out,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// The spatial factor between image and latent sizes.
    pub fn downscale(&self) -> usize {
        1 << (self.cfg.block_out_channels.len() - 1)
    }

    fn check(&self, what: &str, x: &Tensor, channels: usize, multiple: usize) -> Result<()> {
        let s = x.shape();
        if s.len() != 4
            || s[1] != channels
            || !s[2].is_multiple_of(multiple)
            || !s[3].is_multiple_of(multiple)
        {
            return Err(Error::shape(
                "vae",
                what,
                format!("(N, {channels}, H, W) with H and W multiples of {multiple}"),
                s,
            ));
        }
        Ok(())
    }

    /// Latents as the sampler leaves them (scaled by `scaling_factor`) → images in about
    /// [−1, 1], (N, out_channels, H·f, W·f).
    pub fn decode(&self, exec: &mut Exec, latents: &Tensor) -> Result<Tensor> {
        self.decode_tiled(exec, latents, None)
    }

    /// [`Self::decode`], in overlapping tiles when `tiles` is set and the latents are larger
    /// than one tile in either dimension (as diffusers' `decode` with tiling enabled).
    pub fn decode_tiled(
        &self,
        exec: &mut Exec,
        latents: &Tensor,
        tiles: Option<VaeTiles>,
    ) -> Result<Tensor> {
        self.check("latents", latents, self.cfg.latent_channels, 1)?;
        let s = latents.shape();
        match tiles {
            Some(t) if s[2].max(s[3]) > t.tile / self.downscale() => {
                let g = t.geometry(self.downscale(), true);
                tiled(exec, latents, g, &mut |e, z| self.decode_whole(e, z))
            }
            _ => self.decode_whole(exec, latents),
        }
    }

    fn decode_whole(&self, exec: &mut Exec, latents: &Tensor) -> Result<Tensor> {
        let z = self.post_quant.forward(exec, latents)?;
        let mut h = self.dec_conv_in.forward(exec, &z)?;
        h = self.dec_mid.forward(exec, &h)?;
        for stage in &self.dec_stages {
            for r in &stage.resnets {
                h = r.forward_without_temb(exec, &h)?;
            }
            if let Some(up) = &stage.up {
                h = up.forward(exec, &h)?;
            }
        }
        let h = self.dec_norm_out.forward(exec, &h, true)?;
        self.dec_conv_out.forward(exec, &h)
    }

    /// The encoder up to `conv_out`: the posterior moments (N, 2·latent, H/f, W/f), in
    /// tiles when `tiles` is set and the image is larger than one tile (diffusers'
    /// `tiled_encode`; our `quant_conv` comes after the blend, which it commutes with).
    fn moments(&self, exec: &mut Exec, image: &Tensor, tiles: Option<VaeTiles>) -> Result<Tensor> {
        self.check("image", image, self.cfg.in_channels, self.downscale())?;
        let s = image.shape();
        match tiles {
            Some(t) if s[2].max(s[3]) > t.tile => {
                let g = t.geometry(self.downscale(), false);
                tiled(exec, image, g, &mut |e, x| self.moments_whole(e, x))
            }
            _ => self.moments_whole(exec, image),
        }
    }

    fn moments_whole(&self, exec: &mut Exec, image: &Tensor) -> Result<Tensor> {
        let mut h = self.enc_conv_in.forward(exec, image)?;
        for stage in &self.enc_stages {
            for r in &stage.resnets {
                h = r.forward_without_temb(exec, &h)?;
            }
            if let Some(down) = &stage.down {
                h = down.forward(exec, &h)?;
            }
        }
        h = self.enc_mid.forward(exec, &h)?;
        let h = self.enc_norm_out.forward(exec, &h, true)?;
        self.enc_conv_out.forward(exec, &h)
    }

    /// Image (N, in_channels, H, W) in [−1, 1] → the posterior mean as sampler latents
    /// (`(mean − shift_factor) · scaling_factor`).
    pub fn encode(&self, exec: &mut Exec, image: &Tensor) -> Result<Tensor> {
        self.encode_tiled(exec, image, None)
    }

    /// [`Self::encode`], in tiles when `tiles` is set (see [`Self::moments`]).
    pub fn encode_tiled(
        &self,
        exec: &mut Exec,
        image: &Tensor,
        tiles: Option<VaeTiles>,
    ) -> Result<Tensor> {
        let m = self.moments(exec, image, tiles)?;
        self.quant_mean.forward(exec, &m)
    }

    /// A posterior sample as sampler latents: `(mean + σ·noise − shift)·scaling_factor` with
    /// σ = exp(logvar/2) and logvar clamped to [−30, 20] as diffusers does; `noise` has the
    /// latents' shape.
    pub fn encode_sample(&self, exec: &mut Exec, image: &Tensor, noise: &Tensor) -> Result<Tensor> {
        self.encode_sample_tiled(exec, image, noise, None)
    }

    /// [`Self::encode_sample`], in tiles when `tiles` is set (see [`Self::moments`]).
    pub fn encode_sample_tiled(
        &self,
        exec: &mut Exec,
        image: &Tensor,
        noise: &Tensor,
        tiles: Option<VaeTiles>,
    ) -> Result<Tensor> {
        let m = self.moments(exec, image, tiles)?;
        let mean = self.quant_mean.forward(exec, &m)?;
        if noise.shape() != mean.shape() {
            return Err(Error::shape(
                "vae",
                "noise",
                format!("{:?}", mean.shape()),
                noise.shape(),
            ));
        }
        let log_sigma = self.quant_half_logvar.forward(exec, &m)?;
        let log_sigma = exec.run(
            &Clamp {
                lo: -15.0,
                hi: 10.0,
            },
            &[&log_sigma],
        )?;
        let sigma = exec.run(
            &Unary {
                op: UnaryOp::Exp,
                alpha: self.cfg.scaling_factor as f32,
                beta: 0.0,
            },
            &[&log_sigma],
        )?;
        let e = exec.run(&Binary::new(BinaryOp::Mul), &[&sigma, noise])?;
        exec.run(&Binary::new(BinaryOp::Add), &[&mean, &e])
    }
}
