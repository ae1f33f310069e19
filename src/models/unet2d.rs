//! diffusers' `UNet2DModel` (`src/diffusers/models/unets/unet_2d.py` at 0.42.1: DDPM-style
//! pixel-space UNets, optionally class-conditional), wired from a validated [`UNetArch`]:
//! ```text
//! x = 2x − 1 if center_input_sample
//! emb = time_embedding(time_proj(t)) [+ class_embedding(labels)]
//! h = conv_in(x); skips = [h]
//! down blocks: per layer h = attn(resnet(h, emb)); skips += h; then h = downsample(h); skips += h
//! mid: h = resnet(h); per attention h = resnet(attn(h))
//! up blocks: per layer h = attn(resnet(cat(h, skips.pop()), emb)); then h = upsample(h)
//! out = conv_out(silu(conv_norm_out(h)))
//! ```
//! Shapes: sample (N, in_channels, H, W), timesteps one for the batch or one per sample
//! (integer or fractional), class labels (N) → (N, out_channels, H, W).

use std::path::Path;

use super::config::{
    AttentionSpec, DownKind, ModelConfig, ResnetSpec, TimeScaleShift, UNetArch, UNetClass, UpKind,
};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::nn::{
    AttentionBlock, Conv2d, Downsample2D, Embedding, GroupNorm, ResnetBlock2D, TimeEmbedding,
    Upsample2D,
};
use crate::ops::{Concat, TimestepEmbedding, Unary, UnaryOp};
use crate::sampling::solvers::Denoiser;
use crate::tensor::Tensor;
use crate::weights::{LoadOptions, Weights};

struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<AttentionBlock>,
    downsample: Option<Downsample2D>,
}

struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<AttentionBlock>,
}

struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<AttentionBlock>,
    upsample: Option<Upsample2D>,
}

/// A loaded `UNet2DModel`; see the module docs.
pub struct UNet2DModel {
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
}

impl UNet2DModel {
    /// Loads a diffusers model folder (`config.json` and the safetensors weights, single or
    /// sharded). Every tensor must be used: leftovers are `Error::UnexpectedTensors`.
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let mut weights = Weights::load_model_dir(dir, &LoadOptions::default(), |_| {})?;
        Self::from_weights(exec, &config.arch, &mut weights, false)
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
        if arch.class != UNetClass::UNet2DModel {
            return Err(Error::invalid(
                "unet2d",
                format!(
                    "the config describes a {}, not a UNet2DModel",
                    arch.class.name()
                ),
            ));
        }
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
        let c0 = arch.block_out_channels.first().copied().unwrap_or(0);

        let time_embedding =
            TimeEmbedding::load(exec, w, "time_embedding", arch.time_proj_dim, temb)?;
        let class_embedding = match arch.num_class_embeds {
            Some(n) => Some(Embedding::load(exec, w, "class_embedding", n, temb)?),
            None => None,
        };
        let k = arch.conv_in_kernel;
        let conv_in = Conv2d::load(exec, w, "conv_in", arch.in_channels, c0, k, 1, (k - 1) / 2)?;

        let mut down = Vec::with_capacity(arch.down_blocks.len());
        for (i, spec) in arch.down_blocks.iter().enumerate() {
            if spec.kind == DownKind::CrossAttnDownBlock2D {
                return Err(unsupported("CrossAttnDownBlock2D"));
            }
            let p = format!("down_blocks.{i}");
            let mut resnets = Vec::new();
            for (j, r) in spec.resnets.iter().enumerate() {
                resnets.push(resnet(exec, w, &format!("{p}.resnets.{j}"), r)?);
            }
            let mut attentions = Vec::new();
            for (j, a) in spec.attentions.iter().enumerate() {
                attentions.push(attention(exec, w, &format!("{p}.attentions.{j}"), a)?);
            }
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
                resnets,
                attentions,
                downsample,
            });
        }

        let mid = match &arch.mid_block {
            None => None,
            Some(spec) => {
                if !spec.transformers.is_empty() {
                    return Err(unsupported("UNetMidBlock2DCrossAttn"));
                }
                let mut resnets = Vec::new();
                for (j, r) in spec.resnets.iter().enumerate() {
                    resnets.push(resnet(exec, w, &format!("mid_block.resnets.{j}"), r)?);
                }
                let mut attentions = Vec::new();
                for (j, a) in spec.attentions.iter().enumerate() {
                    attentions.push(attention(exec, w, &format!("mid_block.attentions.{j}"), a)?);
                }
                Some(MidBlock {
                    resnets,
                    attentions,
                })
            }
        };

        let mut up = Vec::with_capacity(arch.up_blocks.len());
        for (i, spec) in arch.up_blocks.iter().enumerate() {
            if spec.kind == UpKind::CrossAttnUpBlock2D {
                return Err(unsupported("CrossAttnUpBlock2D"));
            }
            let p = format!("up_blocks.{i}");
            let mut resnets = Vec::new();
            for (j, r) in spec.resnets.iter().enumerate() {
                resnets.push(resnet(exec, w, &format!("{p}.resnets.{j}"), r)?);
            }
            let mut attentions = Vec::new();
            for (j, a) in spec.attentions.iter().enumerate() {
                attentions.push(attention(exec, w, &format!("{p}.attentions.{j}"), a)?);
            }
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
                resnets,
                attentions,
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
        })
    }

    pub fn arch(&self) -> &UNetArch {
        &self.arch
    }

    /// Class labels for [`Denoiser::denoise`] (required by class-conditional models).
    pub fn set_class_labels(&mut self, labels: Option<Vec<usize>>) {
        self.class_labels = labels;
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

    /// [`forward`](Self::forward), handing intermediates to `trace`: `emb` (N, time_embed_dim),
    /// `down.<i>` (each down block's output), `mid`, `up.<i>`.
    pub fn forward_traced(
        &self,
        exec: &mut Exec,
        sample: &Tensor,
        timesteps: &[f64],
        class_labels: Option<&[usize]>,
        trace: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor> {
        let a = &self.arch;
        let s = sample.shape();
        if s.len() != 4 || s[1] != a.in_channels || s.contains(&0) {
            return Err(Error::shape(
                "unet2d",
                "sample",
                format!("(N, {}, H, W)", a.in_channels),
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
                    "unet2d",
                    format!("got {len} timesteps for a batch of {n}: give one, or one per sample"),
                ))
            }
        };
        if let Some(bad) = t.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "unet2d",
                format!("timestep {bad} is not finite"),
            ));
        }

        let t = exec.tensor(&[n], &t)?;
        let t_emb = exec.run(&self.time_proj, &[&t])?;
        let mut emb = self.time_embedding.forward(exec, &t_emb)?;
        match (&self.class_embedding, class_labels) {
            (Some(ce), Some(labels)) => {
                if labels.len() != n {
                    return Err(Error::invalid(
                        "unet2d",
                        format!("got {} class labels for a batch of {n}", labels.len()),
                    ));
                }
                emb = ce.forward_add(exec, labels, &emb)?;
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    "unet2d",
                    "class labels are required: the model has a class embedding (num_class_embeds)",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "unet2d",
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
                    h = at.forward(exec, &h)?;
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
                        h = at.forward(exec, &h)?;
                    }
                }
                h = r.forward(exec, &h, &temb_act)?;
            }
            trace("mid", &h);
        }
        for (i, b) in self.up.iter().enumerate() {
            for (j, r) in b.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    Error::invalid(
                        "unet2d",
                        "the up blocks use more skips than the down blocks make",
                    )
                })?;
                h = exec.run(&Concat::channels(), &[&h, &skip])?;
                h = r.forward(exec, &h, &temb_act)?;
                if let Some(at) = b.attentions.get(j) {
                    h = at.forward(exec, &h)?;
                }
            }
            if let Some(us) = &b.upsample {
                h = us.forward(exec, &h)?;
            }
            trace(&format!("up.{i}"), &h);
        }
        let h = self.conv_norm_out.forward(exec, &h, true)?;
        self.conv_out.forward(exec, &h)
    }
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

fn unsupported(block: &str) -> Error {
    Error::invalid(
        "unet2d",
        format!("{block} is not supported by UNet2DModel (it needs encoder hidden states)"),
    )
}

impl Denoiser for UNet2DModel {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        self.forward(exec, x, &[timestep], self.class_labels.as_deref())
    }
}
