//! The diffusers UNets, wired from a validated [`UNetArch`] by one shared core, [`UNet`]:
//! `UNet2DModel` (`src/diffusers/models/unets/unet_2d.py` at 0.42.1: DDPM-style pixel-space
//! UNets, optionally class-conditional) and `UNet2DConditionModel` (`unet_2d_condition.py`:
//! latent UNets with cross-attention on encoder hidden states, Stable Diffusion 1.x/2.x).
//! Both run the same skeleton:
//! ```text
//! x = 2x − 1 if center_input_sample
//! emb = time_embedding(time_proj(t) [+ cond_proj(timestep_cond)]) [+ class_embedding(labels)]
//! h = conv_in(x); skips = [h]
//! down blocks: per layer h = attn(resnet(h, emb)); skips += h; then h = downsample(h); skips += h
//! mid: h = resnet(h); per attention h = resnet(attn(h))
//! up blocks: per layer h = attn(resnet(cat(h, skips.pop()), emb)); then h = upsample(h)
//! out = conv_out(silu(conv_norm_out(h)))
//! ```
//! where `attn` is the spatial self-attention of `Attn*Block2D` / `UNetMidBlock2D`, or a
//! [`Transformer2D`] attending to the encoder hidden states in `CrossAttn*Block2D` /
//! `UNetMidBlock2DCrossAttn`.
//! Shapes: sample (N, in_channels, H, W) (for `UNet2DModel` H and W multiples of 2^(number
//! of upsamplers)), timesteps one for the batch or one per sample (integer or fractional),
//! class labels (N), encoder_hidden_states (N, L, cross_attention_dim), timestep_cond (N or
//! 1, time_cond_proj_dim) → (N, out_channels, H, W).
//!
//! `timestep_cond` is what LCM-distilled UNets (`time_cond_proj_dim` set) take as their
//! guidance: the pipeline's embedding of w = guidance_scale − 1
//! ([`guidance_scale_embedding`](crate::pipeline::sd_run::guidance_scale_embedding)), projected
//! by `time_embedding.cond_proj` and added to the sinusoidal features. As in diffusers, such a
//! model also runs without one (the term is skipped).
//!
//! `UNet2DConditionModel` also takes sizes that are not such multiples: as in diffusers, each
//! upsampler then resizes (nearest) to the size of the skip it will be concatenated with.

use std::path::Path;

use super::config::{
    AttentionSpec, ModelConfig, ResnetSpec, TimeScaleShift, TransformerSpec, UNetArch, UNetClass,
};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::nn::{
    AttentionBlock, Conv2d, Downsample2D, Embedding, GroupNorm, ResnetBlock2D, TimeEmbedding,
    Transformer2D, Transformer2DConfig, Upsample2D,
};
use crate::ops::{Concat, TimestepEmbedding, Unary, UnaryOp};
use crate::sampling::solvers::Denoiser;
use crate::tensor::Tensor;
use crate::weights::{LoadOptions, WeightDtype, Weights};

/// The attention after a resnet: spatial self-attention or a cross-attention transformer.
enum Attn {
    Spatial(AttentionBlock),
    Transformer(Transformer2D),
}

impl Attn {
    fn forward(&self, exec: &mut Exec, h: &Tensor, ctx: Option<&Tensor>) -> Result<Tensor> {
        match (self, ctx) {
            (Attn::Spatial(a), _) => a.forward(exec, h),
            (Attn::Transformer(t), Some(c)) => t.forward(exec, h, c),
            (Attn::Transformer(_), None) => Err(missing_ehs()),
        }
    }
}

fn missing_ehs() -> Error {
    Error::invalid(
        "unet2d_condition",
        "encoder_hidden_states are required: the model has cross-attention blocks",
    )
}

struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attn>,
    downsample: Option<Downsample2D>,
}

struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attn>,
}

struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attn>,
    upsample: Option<Upsample2D>,
}

/// What a forward pass is conditioned on besides the timestep.
#[derive(Clone, Copy, Default)]
pub struct Conditioning<'a> {
    /// One per sample; required iff the model has a class embedding (`num_class_embeds`).
    pub class_labels: Option<&'a [usize]>,
    /// (N, L, cross_attention_dim); required iff the model has cross-attention blocks.
    pub encoder_hidden_states: Option<&'a Tensor>,
    /// (N, time_cond_proj_dim), or one row for the whole batch: diffusers' `timestep_cond`,
    /// only for models with `time_cond_proj_dim`; optional there.
    pub timestep_cond: Option<&'a Tensor>,
}

/// A loaded diffusers UNet of either class; see the module docs. [`UNet2DModel`] and
/// [`UNet2DConditionModel`](super::UNet2DConditionModel) are this with the class checked.
pub struct UNet {
    arch: UNetArch,
    time_proj: TimestepEmbedding,
    time_embedding: TimeEmbedding,
    class_embedding: Option<Embedding>,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Class labels used by the [`Denoiser`] implementation.
    class_labels: Option<Vec<usize>>,
    /// Encoder hidden states used by the [`Denoiser`] implementation.
    encoder_hidden_states: Option<Tensor>,
    /// The timestep condition used by the [`Denoiser`] implementation.
    timestep_cond: Option<Tensor>,
}

impl UNet {
    /// Loads a diffusers model folder (`config.json` with `_class_name` `UNet2DModel` or
    /// `UNet2DConditionModel`, and the safetensors weights, single or sharded). Every tensor
    /// must be used: leftovers are `Error::UnexpectedTensors`.
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::load_dir_with(exec, dir, WeightDtype::F32)?.0)
    }

    /// [`load_dir`](Self::load_dir) with the Linear and Conv2d weights stored as `dtype`;
    /// also returns the bytes the weights occupy on the executor.
    pub fn load_dir_with(
        exec: &mut Exec,
        dir: impl AsRef<Path>,
        dtype: WeightDtype,
    ) -> Result<(Self, u64)> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let mut weights = Weights::load_model_dir(dir, &LoadOptions::default(), |_| {})?;
        weights.set_weight_dtype(dtype);
        let model = Self::from_weights(exec, &config.arch, &mut weights, false)?;
        Ok((model, weights.device_bytes()))
    }

    /// Builds the model from an architecture and its weights, taking every tensor it needs
    /// (missing: `Error::MissingTensors`; wrong shape: `Error::WeightShape`); tensors left
    /// over are `Error::UnexpectedTensors` unless `allow_extra`.
    pub fn from_weights(
        exec: &mut Exec,
        arch: &UNetArch,
        w: &mut Weights,
        allow_extra: bool,
    ) -> Result<Self> {
        let (groups, eps, shift) = (
            arch.norm_num_groups,
            arch.norm_eps,
            arch.resnet_time_scale_shift,
        );
        let temb = arch.time_embed_dim;
        let scale_shift = shift == TimeScaleShift::ScaleShift;
        let resnet = |exec: &mut Exec, w: &mut Weights, p: &str, r: &ResnetSpec| {
            ResnetBlock2D::load(
                exec,
                w,
                p,
                (r.in_channels, r.out_channels),
                temb,
                (groups, eps),
                scale_shift,
                r.output_scale_factor,
            )
        };
        let resnets = |exec: &mut Exec, w: &mut Weights, p: &str, specs: &[ResnetSpec]| {
            let mut v = Vec::with_capacity(specs.len());
            for (j, r) in specs.iter().enumerate() {
                v.push(resnet(exec, w, &format!("{p}.resnets.{j}"), r)?);
            }
            Ok::<_, Error>(v)
        };
        let attentions = |exec: &mut Exec,
                          w: &mut Weights,
                          p: &str,
                          spatial: &[AttentionSpec],
                          cross: &[TransformerSpec]| {
            let mut v = Vec::with_capacity(spatial.len() + cross.len());
            for (j, a) in spatial.iter().enumerate() {
                v.push(Attn::Spatial(attention(
                    exec,
                    w,
                    &format!("{p}.attentions.{j}"),
                    a,
                )?));
            }
            for (j, t) in cross.iter().enumerate() {
                v.push(Attn::Transformer(transformer(
                    exec,
                    w,
                    &format!("{p}.attentions.{j}"),
                    t,
                )?));
            }
            Ok::<_, Error>(v)
        };
        let c0 = arch.block_out_channels.first().copied().unwrap_or(0);

        let time_embedding = TimeEmbedding::load_with_cond(
            exec,
            w,
            "time_embedding",
            arch.time_proj_dim,
            temb,
            arch.time_cond_proj_dim,
        )?;
        let class_embedding = match arch.num_class_embeds {
            Some(n) => Some(Embedding::load(exec, w, "class_embedding", n, temb)?),
            None => None,
        };
        let k = arch.conv_in_kernel;
        let conv_in = Conv2d::load(exec, w, "conv_in", arch.in_channels, c0, k, 1, (k - 1) / 2)?;

        let mut down = Vec::with_capacity(arch.down_blocks.len());
        for (i, spec) in arch.down_blocks.iter().enumerate() {
            let p = format!("down_blocks.{i}");
            let downsample = match spec.downsample_padding {
                Some(pad) => Some(Downsample2D::load(
                    exec,
                    w,
                    &format!("{p}.downsamplers.0"),
                    spec.out_channels,
                    pad,
                )?),
                None => None,
            };
            down.push(DownBlock {
                resnets: resnets(exec, w, &p, &spec.resnets)?,
                attentions: attentions(exec, w, &p, &spec.attentions, &spec.transformers)?,
                downsample,
            });
        }

        let mid = match &arch.mid_block {
            None => None,
            Some(spec) => Some(MidBlock {
                resnets: resnets(exec, w, "mid_block", &spec.resnets)?,
                attentions: attentions(exec, w, "mid_block", &spec.attentions, &spec.transformers)?,
            }),
        };

        let mut up = Vec::with_capacity(arch.up_blocks.len());
        for (i, spec) in arch.up_blocks.iter().enumerate() {
            let p = format!("up_blocks.{i}");
            let upsample = if spec.upsample {
                Some(Upsample2D::load(
                    exec,
                    w,
                    &format!("{p}.upsamplers.0"),
                    spec.out_channels,
                )?)
            } else {
                None
            };
            up.push(UpBlock {
                resnets: resnets(exec, w, &p, &spec.resnets)?,
                attentions: attentions(exec, w, &p, &spec.attentions, &spec.transformers)?,
                upsample,
            });
        }

        let conv_norm_out = GroupNorm::load(exec, w, "conv_norm_out", c0, groups, eps)?;
        let k = arch.conv_out_kernel;
        let conv_out = Conv2d::load(
            exec,
            w,
            "conv_out",
            c0,
            arch.out_channels,
            k,
            1,
            (k - 1) / 2,
        )?;
        w.finish_unused(allow_extra)?;
        Ok(Self {
            arch: arch.clone(),
            time_proj: TimestepEmbedding::diffusers(
                arch.time_proj_dim,
                arch.flip_sin_to_cos,
                arch.freq_shift,
            ),
            time_embedding,
            class_embedding,
            conv_in,
            down,
            mid,
            up,
            conv_norm_out,
            conv_out,
            class_labels: None,
            encoder_hidden_states: None,
            timestep_cond: None,
        })
    }

    pub fn arch(&self) -> &UNetArch {
        &self.arch
    }

    fn op(&self) -> &'static str {
        match self.arch.class {
            UNetClass::UNet2DModel => "unet2d",
            UNetClass::UNet2DConditionModel => "unet2d_condition",
        }
    }

    /// Class labels for [`Denoiser::denoise`] (required by class-conditional models).
    pub fn set_class_labels(&mut self, labels: Option<Vec<usize>>) {
        self.class_labels = labels;
    }

    /// Encoder hidden states (N, L, cross_attention_dim) for [`Denoiser::denoise`] (required
    /// by models with cross-attention), moved to the executor's backend; checked here and at
    /// each forward.
    pub fn set_encoder_hidden_states(
        &mut self,
        exec: &mut Exec,
        states: Option<&Tensor>,
    ) -> Result<()> {
        self.encoder_hidden_states = match states {
            Some(t) => {
                self.check_ehs(None, t)?;
                Some(exec.upload(t)?)
            }
            None => None,
        };
        Ok(())
    }

    /// The timestep condition (N or 1, time_cond_proj_dim) for [`Denoiser::denoise`]: LCM's
    /// guidance-scale embedding, for models with `time_cond_proj_dim` (`None`: run without
    /// it, as diffusers does); moved to the executor's backend and checked here.
    pub fn set_timestep_cond(&mut self, exec: &mut Exec, cond: Option<&Tensor>) -> Result<()> {
        self.timestep_cond = match cond {
            Some(t) => {
                self.check_timestep_cond(None, t)?;
                Some(exec.upload(t)?)
            }
            None => None,
        };
        Ok(())
    }

    /// The conditioning set by [`set_class_labels`](Self::set_class_labels),
    /// [`set_encoder_hidden_states`](Self::set_encoder_hidden_states) and
    /// [`set_timestep_cond`](Self::set_timestep_cond).
    pub fn conditioning(&self) -> Conditioning<'_> {
        Conditioning {
            class_labels: self.class_labels.as_deref(),
            encoder_hidden_states: self.encoder_hidden_states.as_ref(),
            timestep_cond: self.timestep_cond.as_ref(),
        }
    }

    /// `(N, time_cond_proj_dim)` or `(1, time_cond_proj_dim)`, with N checked when given.
    fn check_timestep_cond(&self, n: Option<usize>, t: &Tensor) -> Result<()> {
        let op = self.op();
        let Some(dim) = self.arch.time_cond_proj_dim else {
            return Err(Error::invalid(
                op,
                "a timestep condition (guidance embedding) was given but the model has none: its config's time_cond_proj_dim is null (only LCM-distilled UNets take one)",
            ));
        };
        let s = t.shape();
        let batch_ok = n.is_none_or(|n| s.first() == Some(&n) || s.first() == Some(&1));
        if s.len() != 2 || s[0] == 0 || s[1] != dim || !batch_ok {
            let n = n.map_or("N".to_string(), |n| n.to_string());
            return Err(Error::shape(
                op,
                "timestep_cond",
                format!("({n}, {dim}) or (1, {dim}): one guidance embedding of the model's time_cond_proj_dim {dim} per sample, or one for all"),
                s,
            ));
        }
        Ok(())
    }

    /// `(N, L, cross_attention_dim)`, with N checked when given.
    fn check_ehs(&self, n: Option<usize>, t: &Tensor) -> Result<()> {
        let op = self.op();
        let Some(dim) = self.arch.cross_attention_dim else {
            if self.arch.class == UNetClass::UNet2DModel {
                return Err(Error::invalid(
                    op,
                    "encoder_hidden_states were given but a UNet2DModel takes none",
                ));
            }
            // diffusers takes (and ignores) them when no block attends to them.
            return Ok(());
        };
        let s = t.shape();
        let batch_ok = n.is_none_or(|n| s.first() == Some(&n));
        if s.len() != 3 || s[1] == 0 || s[2] != dim || !batch_ok {
            let n = n.map_or("N".to_string(), |n| n.to_string());
            return Err(Error::shape(
                op,
                "encoder_hidden_states",
                format!("({n}, L, {dim}): L tokens of the model's cross_attention_dim {dim}, one sequence per sample"),
                s,
            ));
        }
        Ok(())
    }

    /// Runs the network once. `timesteps`: one for the whole batch or one per sample.
    pub fn run(
        &self,
        exec: &mut Exec,
        sample: &Tensor,
        timesteps: &[f64],
        cond: Conditioning<'_>,
    ) -> Result<Tensor> {
        self.run_traced(exec, sample, timesteps, cond, &mut |_, _| {})
    }

    /// [`run`](Self::run), handing intermediates to `trace`: `emb` (N, time_embed_dim),
    /// `down.<i>` (each down block's output), `mid`, `up.<i>`.
    pub fn run_traced(
        &self,
        exec: &mut Exec,
        sample: &Tensor,
        timesteps: &[f64],
        cond: Conditioning<'_>,
        trace: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor> {
        let a = &self.arch;
        let op = self.op();
        let s = sample.shape();
        if s.len() != 4 || s[1] != a.in_channels || s.contains(&0) {
            return Err(Error::shape(
                op,
                "sample",
                format!("(N, {}, H, W)", a.in_channels),
                s,
            ));
        }
        let upsamplers = self.up.iter().filter(|b| b.upsample.is_some()).count();
        let multiple = 1usize << upsamplers.min(30);
        // UNet2DConditionModel upsamples to each skip's size when the input is not a multiple
        // of the total upsampling (`forward_upsample_size`); UNet2DModel has no such path
        // (diffusers fails at the skip concatenation), so it is an error here.
        let misfit = !s[2].is_multiple_of(multiple) || !s[3].is_multiple_of(multiple);
        let resize_to_skips = misfit && a.class == UNetClass::UNet2DConditionModel;
        if misfit && !resize_to_skips {
            return Err(Error::shape(
                op,
                "sample",
                format!(
                    "height and width multiples of {multiple} (a UNet2DModel upsamples {upsamplers} time(s))"
                ),
                s,
            ));
        }
        let n = s[0];
        // diffusers broadcasts a single timestep to the batch and casts to float32.
        let t: Vec<f32> = match timesteps.len() {
            1 => vec![timesteps[0] as f32; n],
            len if len == n => timesteps.iter().map(|&t| t as f32).collect(),
            len => {
                return Err(Error::invalid(
                    op,
                    format!("got {len} timesteps for a batch of {n}: give one, or one per sample"),
                ))
            }
        };
        if let Some(bad) = t.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid(op, format!("timestep {bad} is not finite")));
        }
        let ctx = match cond.encoder_hidden_states {
            Some(e) => {
                self.check_ehs(Some(n), e)?;
                Some(exec.upload(e)?)
            }
            None if a.cross_attention_dim.is_some() => return Err(missing_ehs()),
            None => None,
        };
        let ctx = ctx.as_ref();
        let t_cond = match cond.timestep_cond {
            Some(c) => {
                self.check_timestep_cond(Some(n), c)?;
                let c = exec.upload(c)?;
                // diffusers broadcasts one row over the batch.
                Some(if c.shape()[0] == n {
                    c
                } else {
                    exec.run(&Concat::new(0), &vec![&c; n])?
                })
            }
            None => None,
        };

        let t = exec.tensor_staged(&[n], &t)?;
        let t_emb = exec.run(&self.time_proj, &[&t])?;
        let mut emb = self
            .time_embedding
            .forward_with_cond(exec, &t_emb, t_cond.as_ref())?;
        match (&self.class_embedding, cond.class_labels) {
            (Some(ce), Some(labels)) => {
                if labels.len() != n {
                    return Err(Error::invalid(
                        op,
                        format!("got {} class labels for a batch of {n}", labels.len()),
                    ));
                }
                emb = ce.forward_add(exec, labels, &emb)?;
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    op,
                    "class labels are required: the model has a class embedding (num_class_embeds)",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    op,
                    "class labels were given but the model has no class embedding",
                ))
            }
            (None, None) => {}
        }
        trace("emb", &emb);
        let temb_act = exec.run(&Unary::new(UnaryOp::Silu), &[&emb])?;

        let x = if a.center_input_sample {
            exec.run(&Unary::affine(2.0, -1.0), &[sample])?
        } else {
            sample.clone()
        };
        let mut h = self.conv_in.forward(exec, &x)?;
        let mut skips = vec![h.clone()];
        for (i, b) in self.down.iter().enumerate() {
            for (j, r) in b.resnets.iter().enumerate() {
                h = r.forward(exec, &h, &temb_act)?;
                if let Some(at) = b.attentions.get(j) {
                    h = at.forward(exec, &h, ctx)?;
                }
                skips.push(h.clone());
            }
            if let Some(ds) = &b.downsample {
                h = ds.forward(exec, &h)?;
                skips.push(h.clone());
            }
            trace(&format!("down.{i}"), &h);
        }
        if let Some(m) = &self.mid {
            for (j, r) in m.resnets.iter().enumerate() {
                if j > 0 {
                    if let Some(at) = m.attentions.get(j - 1) {
                        h = at.forward(exec, &h, ctx)?;
                    }
                }
                h = r.forward(exec, &h, &temb_act)?;
            }
            trace("mid", &h);
        }
        for (i, b) in self.up.iter().enumerate() {
            for (j, r) in b.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    Error::invalid(op, "the up blocks use more skips than the down blocks make")
                })?;
                h = exec.run(&Concat::channels(), &[&h, &skip])?;
                h = r.forward(exec, &h, &temb_act)?;
                if let Some(at) = b.attentions.get(j) {
                    h = at.forward(exec, &h, ctx)?;
                }
            }
            if let Some(us) = &b.upsample {
                let size = skips
                    .last()
                    .filter(|_| resize_to_skips)
                    .map(|t| (t.shape()[2], t.shape()[3]));
                h = us.forward_to(exec, &h, size)?;
            }
            trace(&format!("up.{i}"), &h);
        }
        let h = self.conv_norm_out.forward(exec, &h, true)?;
        self.conv_out.forward(exec, &h)
    }
}

impl Denoiser for UNet {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        self.run(exec, x, &[timestep], self.conditioning())
    }
}

/// A loaded `UNet2DModel` ([`UNet`] with the class checked).
pub struct UNet2DModel(UNet);

impl UNet2DModel {
    /// Loads a diffusers `UNet2DModel` folder; see [`UNet::load_dir`].
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        check_class(&config.arch, UNetClass::UNet2DModel)?;
        let mut weights = Weights::load_model_dir(dir, &LoadOptions::default(), |_| {})?;
        Self::from_weights(exec, &config.arch, &mut weights, false)
    }

    /// See [`UNet::from_weights`].
    pub fn from_weights(
        exec: &mut Exec,
        arch: &UNetArch,
        w: &mut Weights,
        allow_extra: bool,
    ) -> Result<Self> {
        check_class(arch, UNetClass::UNet2DModel)?;
        Ok(Self(UNet::from_weights(exec, arch, w, allow_extra)?))
    }

    pub fn arch(&self) -> &UNetArch {
        self.0.arch()
    }

    /// Class labels for [`Denoiser::denoise`] (required by class-conditional models).
    pub fn set_class_labels(&mut self, labels: Option<Vec<usize>>) {
        self.0.set_class_labels(labels);
    }

    /// Runs the network once. `timesteps`: one for the whole batch or one per sample.
    pub fn forward(
        &self,
        exec: &mut Exec,
        sample: &Tensor,
        timesteps: &[f64],
        class_labels: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.forward_traced(exec, sample, timesteps, class_labels, &mut |_, _| {})
    }

    /// See [`UNet::run_traced`].
    pub fn forward_traced(
        &self,
        exec: &mut Exec,
        sample: &Tensor,
        timesteps: &[f64],
        class_labels: Option<&[usize]>,
        trace: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor> {
        let cond = Conditioning {
            class_labels,
            encoder_hidden_states: None,
            timestep_cond: None,
        };
        self.0.run_traced(exec, sample, timesteps, cond, trace)
    }

    pub fn into_inner(self) -> UNet {
        self.0
    }
}

impl Denoiser for UNet2DModel {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        self.0.denoise(exec, x, timestep)
    }
}

pub(crate) fn check_class(arch: &UNetArch, want: UNetClass) -> Result<()> {
    if arch.class != want {
        return Err(Error::invalid(
            "unet",
            format!(
                "the config describes a {}, not a {}",
                arch.class.name(),
                want.name()
            ),
        ));
    }
    Ok(())
}

fn attention(
    exec: &mut Exec,
    w: &mut Weights,
    prefix: &str,
    a: &AttentionSpec,
) -> Result<AttentionBlock> {
    AttentionBlock::load(
        exec,
        w,
        prefix,
        a.channels,
        (a.heads, a.head_dim),
        a.norm_groups.map(|g| (g, a.eps)),
        a.rescale_output_factor,
    )
}

fn transformer(
    exec: &mut Exec,
    w: &mut Weights,
    prefix: &str,
    t: &TransformerSpec,
) -> Result<Transformer2D> {
    Transformer2D::load(
        exec,
        w,
        prefix,
        &Transformer2DConfig {
            channels: t.channels,
            heads: t.heads,
            head_dim: t.head_dim,
            depth: t.depth,
            cross_attention_dim: t.cross_attention_dim,
            norm_groups: t.norm_groups,
            use_linear_projection: t.use_linear_projection,
        },
    )
}
