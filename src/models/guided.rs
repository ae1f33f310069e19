//! OpenAI guided-diffusion / consistency-models `UNetModel` (guided_diffusion/unet.py,
//! consistency_models/cm/unet.py), under its own parameter names, with the EDM wrapper of
//! Karras et al. (2022, arXiv:2206.00364, Table 1) as consistency models use it (Song et al.
//! 2023, arXiv:2303.01469, Appendix C).
//!
//! ```text
//! emb = time_embed(timestep_embedding(t)) [+ label_emb(cond)]     (both Linear–SiLU–Linear)
//! h = input_blocks(x) pushing every block's output; middle_block(h);
//! output_blocks pop: h = block(cat([h, skip]))
//! out = conv(silu(group_norm(h)))
//! ResBlock: h = in_conv(updown(silu(norm(x)))); s, b = emb_layers(silu(emb));
//!           h = out_conv(silu(out_norm(h)·(1 + s) + b)); out = skip(updown(x)) + h
//! AttentionBlock: x + proj_out(attention(qkv(norm(x))))       (1×1 convs, T = H·W tokens)
//! ```
//! `updown` is `AvgPool2d(2)` (down) or nearest 2× (up) with `resblock_updown`.
//!
//! The configuration is ours (`config.json` with `_class_name: "GuidedUNetModel"`, written by
//! `scripts/convert_terrain.py`): guided-diffusion's constructor arguments plus the EDM
//! constants. With `edm` present, [`GuidedUNet::denoise_sigma`] is EDM's
//! D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ)), optionally clipped.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::nn::blocks::split_scale_shift;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::ops::attention::MAX_HEAD_DIM;
use crate::ops::{
    Attention, AvgPool2x, Binary, BinaryOp, Clamp, Concat, QkvLayout, TimestepEmbedding, Unary,
    UnaryOp, Upsample2x,
};
use crate::sampling::edm::SigmaDenoiser;
use crate::tensor::Tensor;
use crate::weights::{LoadOptions, Weights};

/// The class name our config carries.
pub const CLASS_NAME: &str = "GuidedUNetModel";
/// The weights file next to `config.json`.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A scalar condition (e.g. the terrain model's `difficulty`) and its valid range.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ConditionSpec {
    pub name: String,
    pub min: f64,
    pub max: f64,
}

/// EDM preconditioning constants.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct EdmSpec {
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub sigma_data: f64,
    /// c_noise = c_noise_scale · ln σ (250 for consistency models: EDM's ¼ ln σ × 1000).
    pub c_noise_scale: f64,
    /// Clamp of the denoised output, if any.
    #[serde(default)]
    pub clip: Option<[f32; 2]>,
}

/// guided-diffusion `UNetModel` arguments (`attention_resolutions` as downsampling rates,
/// as guided-diffusion's constructor takes them) plus what the wrapper needs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GuidedConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    pub channel_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub attention_resolutions: Vec<usize>,
    pub time_embed_dim: usize,
    /// Width of the continuous condition vector fed to `label_emb` (0: none).
    #[serde(default)]
    pub label_dim: usize,
    pub num_head_channels: usize,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_new_attention_order: bool,
    pub norm_groups: usize,
    pub norm_eps: f64,
    pub sample_size: usize,
    #[serde(default)]
    pub condition: Option<ConditionSpec>,
    #[serde(default)]
    pub edm: Option<EdmSpec>,
    /// How a PNG shows a sample by default: `"relief"` (shaded relief) or `"image"`.
    #[serde(default)]
    pub render: Option<String>,
}

impl GuidedConfig {
    /// How a sample is shown by default (the CLI's PNG and the browser's canvas alike): the
    /// config's `render` (`"relief"`), else grey.
    pub fn render_mode(&self) -> crate::render::RenderMode {
        match self.render.as_deref() {
            Some("relief") => crate::render::RenderMode::Relief,
            _ => crate::render::RenderMode::Image,
        }
    }
}

fn bad(file: &str, key: &str, expected: &str, got: impl std::fmt::Display) -> Error {
    Error::Config {
        file: file.to_string(),
        key: key.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
        hint: "regenerate it with scripts/setup-terrain.sh (scripts/convert_terrain.py)".into(),
    }
}

impl GuidedConfig {
    pub fn from_json(file: &str, text: &str) -> Result<Self> {
        let c: GuidedConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            file: file.to_string(),
            key: String::new(),
            expected: "a GuidedUNetModel config".into(),
            got: e.to_string(),
            hint: "regenerate it with scripts/setup-terrain.sh (scripts/convert_terrain.py)".into(),
        })?;
        c.validate(file)?;
        Ok(c)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            file: file.clone(),
            message: e.to_string(),
            hint: "run scripts/setup-terrain.sh to fetch and convert the terrain model",
        })?;
        Self::from_json(&file, &text)
    }

    fn validate(&self, file: &str) -> Result<()> {
        if self.class_name != CLASS_NAME {
            return Err(bad(file, "_class_name", CLASS_NAME, &self.class_name));
        }
        if !self.use_scale_shift_norm {
            return Err(bad(file, "use_scale_shift_norm", "true", "false"));
        }
        if !self.resblock_updown {
            return Err(bad(file, "resblock_updown", "true", "false"));
        }
        let g = self.norm_groups;
        let widths = self.channel_mult.iter().map(|m| m * self.model_channels);
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return Err(bad(
                file,
                "channel_mult",
                "a non-empty list of positive integers",
                format!("{:?}", self.channel_mult),
            ));
        }
        if g == 0
            || widths
                .clone()
                .chain([self.model_channels])
                .any(|w| w % g != 0)
        {
            return Err(bad(
                file,
                "norm_groups",
                "a divisor of every level's channel count",
                g,
            ));
        }
        let d = self.num_head_channels;
        if d == 0 || d > MAX_HEAD_DIM || widths.clone().any(|w| w % d != 0) {
            return Err(bad(
                file,
                "num_head_channels",
                &format!("1 to {MAX_HEAD_DIM}, dividing every level's channel count"),
                d,
            ));
        }
        let levels = self.channel_mult.len();
        if !self.sample_size.is_multiple_of(1 << (levels - 1)) {
            return Err(bad(
                file,
                "sample_size",
                &format!("a multiple of 2^{} (the down-sampling levels)", levels - 1),
                self.sample_size,
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.num_res_blocks == 0 {
            return Err(bad(
                file,
                "in_channels/out_channels/num_res_blocks",
                "positive",
                0,
            ));
        }
        if let Some(e) = &self.edm {
            if !(e.sigma_min > 0.0 && e.sigma_max > e.sigma_min && e.sigma_data > 0.0) {
                return Err(bad(
                    file,
                    "edm",
                    "0 < sigma_min < sigma_max and sigma_data > 0",
                    format!("{e:?}"),
                ));
            }
        }
        if self.condition.is_some() != (self.label_dim > 0) {
            return Err(bad(
                file,
                "condition",
                "present exactly when label_dim > 0",
                format!("label_dim {}", self.label_dim),
            ));
        }
        Ok(())
    }
}

fn silu(exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
    exec.run(&Unary::new(UnaryOp::Silu), &[x])
}

#[derive(Clone, Copy, PartialEq)]
enum UpDown {
    None,
    Up,
    Down,
}

/// guided-diffusion `ResBlock` with `use_scale_shift_norm`; `emb_layers.1` (2C rows) is split
/// into scale and shift halves at load time with the `1 +` folded into the scale bias.
struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    scale1: Linear,
    shift: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
    updown: UpDown,
    cout: usize,
}

impl ResBlock {
    fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        (cin, cout): (usize, usize),
        cfg: &GuidedConfig,
        updown: UpDown,
    ) -> Result<Self> {
        let p = |s: &str| format!("{prefix}.{s}");
        let (g, eps) = (cfg.norm_groups, cfg.norm_eps);
        let e = cfg.time_embed_dim;
        let (scale1, shift) = split_scale_shift(exec, w, &p("emb_layers.1"), cout, e)?;
        let skip = if cin != cout {
            Some(Conv2d::load(
                exec,
                w,
                &p("skip_connection"),
                cin,
                cout,
                1,
                1,
                0,
            )?)
        } else {
            None
        };
        Ok(Self {
            in_norm: GroupNorm::load(exec, w, &p("in_layers.0"), cin, g, eps)?,
            in_conv: Conv2d::load(exec, w, &p("in_layers.2"), cin, cout, 3, 1, 1)?,
            scale1,
            shift,
            out_norm: GroupNorm::load(exec, w, &p("out_layers.0"), cout, g, eps)?,
            out_conv: Conv2d::load(exec, w, &p("out_layers.3"), cout, cout, 3, 1, 1)?,
            skip,
            updown,
            cout,
        })
    }

    fn forward(&self, exec: &mut Exec, x: &Tensor, emb_act: &Tensor) -> Result<Tensor> {
        let n = x.shape()[0];
        let c = self.cout;
        let h = self.in_norm.forward(exec, x, true)?;
        let (h, x) = match self.updown {
            UpDown::None => (h, x.clone()),
            UpDown::Down => (exec.run(&AvgPool2x, &[&h])?, exec.run(&AvgPool2x, &[x])?),
            UpDown::Up => (exec.run(&Upsample2x, &[&h])?, exec.run(&Upsample2x, &[x])?),
        };
        let h = self.in_conv.forward(exec, &h)?;
        let s = self.scale1.forward(exec, emb_act)?.reshape(&[n, c, 1, 1])?;
        let b = self.shift.forward(exec, emb_act)?.reshape(&[n, c, 1, 1])?;
        let h = self.out_norm.forward(exec, &h, false)?;
        let h = exec.run(&Binary::new(BinaryOp::Mul), &[&h, &s])?;
        let h = exec.run(&Binary::new(BinaryOp::Add), &[&h, &b])?;
        let h = silu(exec, &h)?;
        let skip = match &self.skip {
            Some(conv) => conv.forward(exec, &x)?,
            None => x,
        };
        self.out_conv.forward_residual(exec, &h, &skip)
    }
}

/// guided-diffusion `AttentionBlock`: `x + proj_out(attn(qkv(norm(x))))`, qkv and proj_out
/// 1×1 convolutions, heads of `num_head_channels`.
struct AttnBlock {
    norm: GroupNorm,
    qkv: Conv2d,
    proj_out: Conv2d,
    heads: usize,
    layout: QkvLayout,
}

impl AttnBlock {
    fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        c: usize,
        cfg: &GuidedConfig,
    ) -> Result<Self> {
        let p = |s: &str| format!("{prefix}.{s}");
        Ok(Self {
            norm: GroupNorm::load(exec, w, &p("norm"), c, cfg.norm_groups, cfg.norm_eps)?,
            qkv: Conv2d::load(exec, w, &p("qkv"), c, 3 * c, 1, 1, 0)?,
            proj_out: Conv2d::load(exec, w, &p("proj_out"), c, c, 1, 1, 0)?,
            heads: c / cfg.num_head_channels,
            layout: if cfg.use_new_attention_order {
                QkvLayout::GuidedDiffusion
            } else {
                QkvLayout::GuidedDiffusionLegacy
            },
        })
    }

    fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        let (n, c, hh, ww) = (s[0], s[1], s[2], s[3]);
        let h = self.norm.forward(exec, x, false)?;
        let qkv = self.qkv.forward(exec, &h)?.reshape(&[n, 3 * c, hh * ww])?;
        let o = exec.run(
            &Attention::new(self.heads).with_layout(self.layout),
            &[&qkv],
        )?;
        let o = o.reshape(&[n, c, hh, ww])?;
        self.proj_out.forward_residual(exec, &o, x)
    }
}

enum Layer {
    Conv(Conv2d),
    Res(Box<ResBlock>),
    Attn(Box<AttnBlock>),
}

fn run_block(exec: &mut Exec, block: &[Layer], x: &Tensor, emb_act: &Tensor) -> Result<Tensor> {
    let mut h = x.clone();
    for layer in block {
        h = match layer {
            Layer::Conv(c) => c.forward(exec, &h)?,
            Layer::Res(r) => r.forward(exec, &h, emb_act)?,
            Layer::Attn(a) => a.forward(exec, &h)?,
        };
    }
    Ok(h)
}

/// A loaded guided-diffusion `UNetModel`.
pub struct GuidedUNet {
    pub config: GuidedConfig,
    time_proj: TimestepEmbedding,
    time_embed: (Linear, Linear),
    label_emb: Option<(Linear, Linear)>,
    input_blocks: Vec<Vec<Layer>>,
    middle_block: Vec<Layer>,
    output_blocks: Vec<Vec<Layer>>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    /// The condition value per sample used by [`SigmaDenoiser::denoise_sigma`].
    condition: Option<Vec<f32>>,
}

impl GuidedUNet {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = GuidedConfig::from_file(dir.join("config.json"))?;
        let file = dir.join(WEIGHTS_FILE);
        if !file.is_file() {
            return Err(Error::Io {
                file: file.display().to_string(),
                message: "not found".into(),
                hint: "run scripts/setup-terrain.sh to fetch and convert the terrain model",
            });
        }
        let mut weights = Weights::load_file(&file, &LoadOptions::default())?;
        Self::from_weights(exec, config, &mut weights)
    }

    /// Builds the model, taking every tensor it needs; leftovers are an error.
    pub fn from_weights(exec: &mut Exec, cfg: GuidedConfig, w: &mut Weights) -> Result<Self> {
        let mc = cfg.model_channels;
        let e = cfg.time_embed_dim;
        let time_embed = (
            Linear::load(exec, w, "time_embed.0", mc, e, true)?,
            Linear::load(exec, w, "time_embed.2", e, e, true)?,
        );
        let label_emb = if cfg.label_dim > 0 {
            Some((
                Linear::load(exec, w, "label_emb.0", cfg.label_dim, e, true)?,
                Linear::load(exec, w, "label_emb.2", e, e, true)?,
            ))
        } else {
            None
        };
        let mut input_blocks = vec![vec![Layer::Conv(Conv2d::load(
            exec,
            w,
            "input_blocks.0.0",
            cfg.in_channels,
            mc,
            3,
            1,
            1,
        )?)]];
        let mut chans = vec![mc];
        let mut ch = mc;
        let mut ds = 1;
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let p = format!("input_blocks.{}", input_blocks.len());
                let out = mult * mc;
                let mut block = vec![Layer::Res(Box::new(ResBlock::load(
                    exec,
                    w,
                    &format!("{p}.0"),
                    (ch, out),
                    &cfg,
                    UpDown::None,
                )?))];
                ch = out;
                if cfg.attention_resolutions.contains(&ds) {
                    block.push(Layer::Attn(Box::new(AttnBlock::load(
                        exec,
                        w,
                        &format!("{p}.1"),
                        ch,
                        &cfg,
                    )?)));
                }
                input_blocks.push(block);
                chans.push(ch);
            }
            if level + 1 != levels {
                let p = format!("input_blocks.{}.0", input_blocks.len());
                input_blocks.push(vec![Layer::Res(Box::new(ResBlock::load(
                    exec,
                    w,
                    &p,
                    (ch, ch),
                    &cfg,
                    UpDown::Down,
                )?))]);
                chans.push(ch);
                ds *= 2;
            }
        }
        let middle_block = vec![
            Layer::Res(Box::new(ResBlock::load(
                exec,
                w,
                "middle_block.0",
                (ch, ch),
                &cfg,
                UpDown::None,
            )?)),
            Layer::Attn(Box::new(AttnBlock::load(
                exec,
                w,
                "middle_block.1",
                ch,
                &cfg,
            )?)),
            Layer::Res(Box::new(ResBlock::load(
                exec,
                w,
                "middle_block.2",
                (ch, ch),
                &cfg,
                UpDown::None,
            )?)),
        ];
        let mut output_blocks = Vec::new();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            for i in 0..=cfg.num_res_blocks {
                let p = format!("output_blocks.{}", output_blocks.len());
                let skip = chans.pop().ok_or_else(|| {
                    Error::invalid("guided_unet", "skip channel bookkeeping ran out")
                })?;
                let out = mc * mult;
                let mut block = vec![Layer::Res(Box::new(ResBlock::load(
                    exec,
                    w,
                    &format!("{p}.0"),
                    (ch + skip, out),
                    &cfg,
                    UpDown::None,
                )?))];
                ch = out;
                let mut idx = 1;
                if cfg.attention_resolutions.contains(&ds) {
                    block.push(Layer::Attn(Box::new(AttnBlock::load(
                        exec,
                        w,
                        &format!("{p}.{idx}"),
                        ch,
                        &cfg,
                    )?)));
                    idx += 1;
                }
                if level > 0 && i == cfg.num_res_blocks {
                    block.push(Layer::Res(Box::new(ResBlock::load(
                        exec,
                        w,
                        &format!("{p}.{idx}"),
                        (ch, ch),
                        &cfg,
                        UpDown::Up,
                    )?)));
                    ds /= 2;
                }
                output_blocks.push(block);
            }
        }
        let out_norm = GroupNorm::load(exec, w, "out.0", ch, cfg.norm_groups, cfg.norm_eps)?;
        let out_conv = Conv2d::load(exec, w, "out.2", ch, cfg.out_channels, 3, 1, 1)?;
        w.finish_unused(false)?;
        Ok(Self {
            config: cfg,
            time_proj: TimestepEmbedding::guided_diffusion(mc),
            time_embed,
            label_emb,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
            condition: None,
        })
    }

    /// The raw network F(x, t, cond): x (N, in, H, W), `t` one model time per sample, `cond`
    /// (N·label_dim values) when the model has a condition.
    pub fn forward(
        &self,
        exec: &mut Exec,
        x: &Tensor,
        t: &[f32],
        cond: Option<&[f32]>,
    ) -> Result<Tensor> {
        let s = x.shape();
        let c = &self.config;
        let levels = c.channel_mult.len();
        let mult = 1usize << (levels - 1);
        if s.len() != 4
            || s[1] != c.in_channels
            || !s[2].is_multiple_of(mult)
            || !s[3].is_multiple_of(mult)
        {
            return Err(Error::shape(
                "guided_unet",
                "x",
                format!(
                    "(N, {}, H, W) with H and W multiples of {mult}",
                    c.in_channels
                ),
                s,
            ));
        }
        let n = s[0];
        if t.len() != n {
            return Err(Error::invalid(
                "guided_unet",
                format!("{} model times for a batch of {n}", t.len()),
            ));
        }
        let t = exec.tensor(&[n], t)?;
        let temb = exec.run(&self.time_proj, &[&t])?;
        let h = self.time_embed.0.forward(exec, &temb)?;
        let h = silu(exec, &h)?;
        let emb = match (&self.label_emb, cond) {
            (Some((l0, l2)), Some(cond)) => {
                let temb = self.time_embed.1.forward(exec, &h)?;
                if cond.len() != n * c.label_dim {
                    return Err(Error::invalid(
                        "guided_unet",
                        format!(
                            "{} condition values for a batch of {n} × label_dim {}",
                            cond.len(),
                            c.label_dim
                        ),
                    ));
                }
                let y = exec.tensor(&[n, c.label_dim], cond)?;
                let y = l0.forward(exec, &y)?;
                let y = silu(exec, &y)?;
                l2.forward_residual(exec, &y, &temb)?
            }
            (None, None) => self.time_embed.1.forward(exec, &h)?,
            (Some(_), None) => return Err(self.missing_condition()),
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "guided_unet",
                    "a condition was given but this model has none (no label_emb)",
                ))
            }
        };
        let emb_act = silu(exec, &emb)?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        let mut h = x.clone();
        for block in &self.input_blocks {
            h = run_block(exec, block, &h, &emb_act)?;
            skips.push(h.clone());
        }
        h = run_block(exec, &self.middle_block, &h, &emb_act)?;
        for block in &self.output_blocks {
            let skip = skips
                .pop()
                .ok_or_else(|| Error::invalid("guided_unet", "skip stack ran out"))?;
            let cat = exec.run(&Concat::new(1), &[&h, &skip])?;
            h = run_block(exec, block, &cat, &emb_act)?;
        }
        let h = self.out_norm.forward(exec, &h, true)?;
        self.out_conv.forward(exec, &h)
    }

    fn missing_condition(&self) -> Error {
        let name = self
            .config
            .condition
            .as_ref()
            .map(|c| c.name.as_str())
            .unwrap_or("condition");
        Error::invalid(
            "guided_unet",
            format!(
                "this model is conditioned on `{name}` but no value was given (CLI: --{name} VALUE)"
            ),
        )
    }

    /// Sets the condition value(s) used by [`SigmaDenoiser::denoise_sigma`]: one value for
    /// the whole batch or one per sample, each within the config's range.
    pub fn set_condition(&mut self, values: &[f32]) -> Result<()> {
        let Some(spec) = &self.config.condition else {
            return Err(Error::invalid(
                "guided_unet",
                "this model takes no condition",
            ));
        };
        if values.is_empty() {
            return Err(self.missing_condition());
        }
        for &v in values {
            if !(v as f64 >= spec.min && v as f64 <= spec.max) {
                return Err(Error::invalid(
                    "guided_unet",
                    format!(
                        "`{}` = {v} is outside the model's range [{}, {}]",
                        spec.name, spec.min, spec.max
                    ),
                ));
            }
        }
        self.condition = Some(values.to_vec());
        Ok(())
    }

    /// EDM's D(x, σ) with one σ per sample (see the module doc). Needs the config's `edm`.
    pub fn denoise_sigmas(
        &self,
        exec: &mut Exec,
        x: &Tensor,
        sigmas: &[f64],
        cond: Option<&[f32]>,
    ) -> Result<Tensor> {
        let Some(edm) = &self.config.edm else {
            return Err(Error::invalid(
                "guided_unet",
                "the config has no `edm` section: this model is not an EDM denoiser",
            ));
        };
        let s = x.shape();
        let n = s.first().copied().unwrap_or(0);
        if sigmas.len() != n {
            return Err(Error::invalid(
                "guided_unet",
                format!("{} sigmas for a batch of {n}", sigmas.len()),
            ));
        }
        let (sd, sm) = (edm.sigma_data, edm.sigma_min);
        let mut c_in = Vec::with_capacity(n);
        let mut c_skip = Vec::with_capacity(n);
        let mut c_out = Vec::with_capacity(n);
        let mut t = Vec::with_capacity(n);
        for &sigma in sigmas {
            if !(sigma.is_finite() && sigma > 0.0) {
                return Err(Error::invalid(
                    "guided_unet",
                    format!("sigma must be positive and finite, got {sigma}"),
                ));
            }
            // σ arrives as float32 in the reference graph; c_noise is computed from it there.
            let s32 = sigma as f32 as f64;
            let norm = (s32 * s32 + sd * sd).sqrt();
            c_in.push((1.0 / norm) as f32);
            c_skip.push((sd * sd / ((s32 - sm) * (s32 - sm) + sd * sd)) as f32);
            c_out.push(((s32 - sm) * sd / norm) as f32);
            t.push((edm.c_noise_scale as f32) * (s32 as f32).ln());
        }
        let per = |exec: &mut Exec, v: &[f32]| exec.tensor(&[n, 1, 1, 1], v);
        let c_in = per(exec, &c_in)?;
        let scaled = exec.run(&Binary::new(BinaryOp::Mul), &[x, &c_in])?;
        let f = self.forward(exec, &scaled, &t, cond)?;
        let c_out = per(exec, &c_out)?;
        let c_skip = per(exec, &c_skip)?;
        let a = exec.run(&Binary::new(BinaryOp::Mul), &[&f, &c_out])?;
        let b = exec.run(&Binary::new(BinaryOp::Mul), &[x, &c_skip])?;
        let d = exec.run(&Binary::new(BinaryOp::Add), &[&a, &b])?;
        match edm.clip {
            Some([lo, hi]) => exec.run(&Clamp { lo, hi }, &[&d]),
            None => Ok(d),
        }
    }

    fn batch_condition(&self, n: usize) -> Result<Option<Vec<f32>>> {
        match (&self.config.condition, &self.condition) {
            (None, _) => Ok(None),
            (Some(_), None) => Err(self.missing_condition()),
            (Some(_), Some(v)) if v.len() == 1 => Ok(Some(vec![v[0]; n])),
            (Some(_), Some(v)) if v.len() == n => Ok(Some(v.clone())),
            (Some(spec), Some(v)) => Err(Error::invalid(
                "guided_unet",
                format!(
                    "{} `{}` values for a batch of {n}: give one, or one per sample",
                    v.len(),
                    spec.name
                ),
            )),
        }
    }
}

impl SigmaDenoiser for GuidedUNet {
    fn denoise_sigma(&mut self, exec: &mut Exec, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let n = x.shape().first().copied().unwrap_or(0);
        let cond = self.batch_condition(n)?;
        self.denoise_sigmas(exec, x, &vec![sigma; n], cond.as_deref())
    }

    fn sigma_range(&self) -> Option<(f64, f64)> {
        self.config.edm.as_ref().map(|e| (e.sigma_min, e.sigma_max))
    }
}
