//! diffusers' UNet building blocks (`src/diffusers/models/resnet.py`, `attention_processor.py`,
//! `embeddings.py`, `downsampling.py`, `upsampling.py` at 0.42.1), each composed of ops only.

use super::layers::{joint_dtype, place_weight, take_weight, Conv2d, GroupNorm, Linear};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::attention::MAX_HEAD_DIM;
use crate::ops::{
    Attention, Binary, BinaryOp, Concat, QkvLayout, ResizeNearest, Unary, UnaryOp, Upsample2x,
};
use crate::tensor::Tensor;
use crate::weights::Weights;

fn silu(exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
    exec.run(&Unary::new(UnaryOp::Silu), &[x])
}

/// diffusers' `TimestepEmbedding` (the MLP after the sinusoidal projection):
/// `linear_2(silu(linear_1(t)))`, (N, in) → (N, dim). With `cond_proj_dim` (LCM-distilled
/// UNets' `time_cond_proj_dim`) it also owns `cond_proj`, a linear (cond_proj_dim → in, no
/// bias), and a condition c (N, cond_proj_dim) given to the forward pass is added first:
/// `t + cond_proj(c)`, one matmul with the sum fused. Without a condition it is skipped, as
/// in diffusers.
pub struct TimeEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    cond_proj: Option<Linear>,
}

impl TimeEmbedding {
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        input: usize,
        dim: usize,
    ) -> Result<Self> {
        Self::load_with_cond(exec, w, prefix, input, dim, None)
    }

    /// [`load`](Self::load) plus `<prefix>.cond_proj.weight` (input, cond_proj_dim) when
    /// `cond_proj_dim` is set.
    pub fn load_with_cond(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        input: usize,
        dim: usize,
        cond_proj_dim: Option<usize>,
    ) -> Result<Self> {
        let cond_proj = match cond_proj_dim {
            Some(c) => Some(Linear::load(
                exec,
                w,
                &format!("{prefix}.cond_proj"),
                c,
                input,
                false,
            )?),
            None => None,
        };
        Ok(Self {
            linear_1: Linear::load(exec, w, &format!("{prefix}.linear_1"), input, dim, true)?,
            linear_2: Linear::load(exec, w, &format!("{prefix}.linear_2"), dim, dim, true)?,
            cond_proj,
        })
    }

    pub fn forward(&self, exec: &mut Exec, t: &Tensor) -> Result<Tensor> {
        self.forward_with_cond(exec, t, None)
    }

    /// `t` (N, in) and the condition (N, cond_proj_dim), if any.
    pub fn forward_with_cond(
        &self,
        exec: &mut Exec,
        t: &Tensor,
        cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = match (&self.cond_proj, cond) {
            (Some(p), Some(c)) => p.forward_residual(exec, c, t)?,
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "time embedding",
                    "a timestep condition was given but this embedding has no cond_proj (the model's time_cond_proj_dim is null)",
                ))
            }
            (_, None) => t.clone(),
        };
        let h = self.linear_1.forward(exec, &t)?;
        let h = silu(exec, &h)?;
        self.linear_2.forward(exec, &h)
    }
}

/// How a resnet applies the time embedding.
enum TimeProj {
    /// `h + proj(temb)` before norm2.
    Add(Linear),
    /// `norm2(h) · scale1 + shift`; diffusers' single `time_emb_proj` (2C rows) is split into
    /// its scale and shift halves at load time, with the `1 +` of `1 + scale` folded into the
    /// scale bias, so no slicing op is needed.
    ScaleShift { scale1: Linear, shift: Linear },
    /// No time embedding (the VAE's resnets, `temb_channels=None`): `silu(norm2(h))`.
    Absent,
}

/// diffusers' `ResnetBlock2D` with SiLU, groups = groups_out, 3×3 convs, a time embedding, and
/// a 1×1 `conv_shortcut` iff the channel count changes:
/// ```text
/// h = conv1(silu(norm1(x)))
/// default:     h = silu(norm2(h + time_emb_proj(silu(temb))))
/// scale_shift: s, b = chunk(time_emb_proj(silu(temb)), 2); h = silu(norm2(h)·(1 + s) + b)
/// out = (shortcut(x) + conv2(h)) / output_scale_factor
/// ```
/// x (N, Cin, H, W), temb (N, temb_channels) → (N, Cout, H, W).
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time: TimeProj,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    out_channels: usize,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        (cin, cout): (usize, usize),
        temb_channels: usize,
        (groups, eps): (usize, f64),
        scale_shift: bool,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let p = |s: &str| format!("{prefix}.{s}");
        let time = match scale_shift {
            false => TimeProj::Add(Linear::load(
                exec,
                w,
                &p("time_emb_proj"),
                temb_channels,
                cout,
                true,
            )?),
            true => {
                let (scale1, shift) =
                    split_scale_shift(exec, w, &p("time_emb_proj"), cout, temb_channels)?;
                TimeProj::ScaleShift { scale1, shift }
            }
        };
        Self::load_around(
            exec,
            w,
            prefix,
            (cin, cout),
            (groups, eps),
            output_scale_factor,
            time,
        )
    }

    /// A resnet without a time embedding (diffusers' `temb_channels=None`, as in the VAE):
    /// no `time_emb_proj` weights; run it with [`Self::forward_without_temb`].
    pub fn load_without_temb(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        (cin, cout): (usize, usize),
        (groups, eps): (usize, f64),
        output_scale_factor: f64,
    ) -> Result<Self> {
        let time = TimeProj::Absent;
        Self::load_around(
            exec,
            w,
            prefix,
            (cin, cout),
            (groups, eps),
            output_scale_factor,
            time,
        )
    }

    /// The layers every variant has (norms, convs, shortcut), around the given `time` part.
    fn load_around(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        (cin, cout): (usize, usize),
        (groups, eps): (usize, f64),
        output_scale_factor: f64,
        time: TimeProj,
    ) -> Result<Self> {
        let p = |s: &str| format!("{prefix}.{s}");
        let norm1 = GroupNorm::load(exec, w, &p("norm1"), cin, groups, eps)?;
        let conv1 = Conv2d::load(exec, w, &p("conv1"), cin, cout, 3, 1, 1)?;
        let norm2 = GroupNorm::load(exec, w, &p("norm2"), cout, groups, eps)?;
        let conv2 = Conv2d::load(exec, w, &p("conv2"), cout, cout, 3, 1, 1)?;
        let shortcut = match cin != cout {
            true => Some(Conv2d::load(
                exec,
                w,
                &p("conv_shortcut"),
                cin,
                cout,
                1,
                1,
                0,
            )?),
            false => None,
        };
        Ok(Self {
            norm1,
            conv1,
            time,
            norm2,
            conv2,
            shortcut,
            out_channels: cout,
            output_scale_factor,
        })
    }

    /// `temb_act` is `silu(temb)` (N, temb_channels): every resnet of a UNet applies the same
    /// SiLU to the same embedding, so the model computes it once.
    pub fn forward(&self, exec: &mut Exec, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        self.forward_opt(exec, x, Some(temb_act))
    }

    /// For a block loaded with [`Self::load_without_temb`].
    pub fn forward_without_temb(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        self.forward_opt(exec, x, None)
    }

    fn forward_opt(
        &self,
        exec: &mut Exec,
        x: &Tensor,
        temb_act: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = x.shape()[0];
        let c = self.out_channels;
        let h = self.norm1.forward(exec, x, true)?;
        let h = self.conv1.forward(exec, &h)?;
        let need_temb = || {
            temb_act.ok_or_else(|| {
                Error::invalid(
                    "resnet_block",
                    "this resnet has a time-embedding projection but was run without an embedding",
                )
            })
        };
        let h = match &self.time {
            TimeProj::Absent => self.norm2.forward(exec, &h, true)?,
            TimeProj::Add(proj) => {
                let temb_act = need_temb()?;
                let t = proj.forward(exec, temb_act)?.reshape(&[n, c, 1, 1])?;
                let h = exec.run(&Binary::new(BinaryOp::Add), &[&h, &t])?;
                self.norm2.forward(exec, &h, true)?
            }
            TimeProj::ScaleShift { scale1, shift } => {
                let temb_act = need_temb()?;
                let s = scale1.forward(exec, temb_act)?.reshape(&[n, c, 1, 1])?;
                let b = shift.forward(exec, temb_act)?.reshape(&[n, c, 1, 1])?;
                let h = self.norm2.forward(exec, &h, false)?;
                let h = exec.run(&Binary::new(BinaryOp::Mul), &[&h, &s])?;
                let h = exec.run(&Binary::new(BinaryOp::Add), &[&h, &b])?;
                silu(exec, &h)?
            }
        };
        let skip = match &self.shortcut {
            Some(conv) => conv.forward(exec, x)?,
            None => x.clone(),
        };
        let scale = (1.0 / self.output_scale_factor) as f32;
        self.conv2.forward_residual_scaled(exec, &h, &skip, scale)
    }
}

/// A `Linear(e, 2·cout)` whose output is split into scale and shift halves
/// (`scale_shift` time embeddings), as two layers: `scale + 1` (the one folded into the
/// first bias) and `shift`. The weight halves keep the stored values, so they may stay
/// packed f16.
pub(crate) fn split_scale_shift(
    exec: &mut Exec,
    w: &mut Weights,
    prefix: &str,
    cout: usize,
    e: usize,
) -> Result<(Linear, Linear)> {
    let wname = format!("{prefix}.weight");
    let (wt, dtype) = w.take_with_dtype(&wname, &[2 * cout, e])?;
    let b = w.take(&format!("{prefix}.bias"), &[2 * cout])?;
    let (wt, b) = (host(&wt)?, host(&b)?);
    let half = cout * e;
    let scale_b: Vec<f32> = b[..cout].iter().map(|v| v + 1.0).collect();
    let mut layer = |rows: &[f32], bias: Vec<f32>| -> Result<Linear> {
        let weight = Tensor::from_vec(&[cout, e], rows.to_vec())?;
        let placed = place_weight(exec, w, &wname, weight, dtype, true)?;
        Linear::from_parts(exec, w, placed, Some(Tensor::from_vec(&[cout], bias)?))
    };
    let scale1 = layer(&wt[..half], scale_b)?;
    let shift = layer(&wt[half..], b[cout..].to_vec())?;
    Ok((scale1, shift))
}

fn host(t: &Tensor) -> Result<&[f32]> {
    t.cpu_data()
        .ok_or_else(|| Error::invalid("weights", "a freshly taken weight is not on the CPU"))
}

/// The spatial self-attention of `UNet2DModel` blocks: diffusers' `Attention` built with
/// `_from_deprecated_attn_block=True` and `AttnProcessor2_0`:
/// ```text
/// h = group_norm(x)                               (if the block has one)
/// q, k, v = to_q(h), to_k(h), to_v(h)             over the H·W tokens, with bias
/// o = softmax(q·kᵀ / √head_dim) · v               per head
/// out = (to_out.0(o) + x) / rescale_output_factor
/// ```
/// Token-wise linears over (N, C, H·W) are 1×1 convolutions, so nothing is transposed: q, k
/// and v are one 1×1 conv with the three weights stacked, whose (N, 3·H·D, T) output is the
/// channel-first `QkvLayout::GuidedDiffusion` layout of the attention op.
/// x (N, C, H, W) → (N, C, H, W).
pub struct AttentionBlock {
    norm: Option<GroupNorm>,
    qkv: Conv2d,
    out: Conv2d,
    heads: usize,
    inner: usize,
    rescale_output_factor: f64,
}

impl AttentionBlock {
    /// `heads · head_dim` may differ from `channels` (diffusers allows it); `norm` is the
    /// group count and eps of the group norm, if the block has one.
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        channels: usize,
        (heads, head_dim): (usize, usize),
        norm: Option<(usize, f64)>,
        rescale_output_factor: f64,
    ) -> Result<Self> {
        let c = channels;
        let inner = heads * head_dim;
        // Fail at load time rather than at the first forward.
        if head_dim > MAX_HEAD_DIM || heads == 0 {
            return Err(Error::invalid(
                "attention_block",
                format!(
                    "`{prefix}` has {heads} head(s) of {head_dim} channels; the attention kernel \
                     supports 1 to {MAX_HEAD_DIM} channels per head (with `attention_head_dim: \
                     null` diffusers uses one head over all channels)"
                ),
            ));
        }
        let p = |s: &str| format!("{prefix}.{s}");
        let norm = match norm {
            Some((g, eps)) => Some(GroupNorm::load(exec, w, &p("group_norm"), c, g, eps)?),
            None => None,
        };
        let mut qkv_w = Vec::with_capacity(3 * inner * c);
        let mut qkv_b = Vec::with_capacity(3 * inner);
        let mut dtypes = Vec::with_capacity(3);
        for name in ["to_q", "to_k", "to_v"] {
            let (wt, dtype) = w.take_with_dtype(&p(&format!("{name}.weight")), &[inner, c])?;
            let b = w.take(&p(&format!("{name}.bias")), &[inner])?;
            qkv_w.extend_from_slice(host(&wt)?);
            qkv_b.extend_from_slice(host(&b)?);
            dtypes.push(dtype);
        }
        let qkv_weight = place_weight(
            exec,
            w,
            &p("to_qkv.weight"),
            Tensor::from_vec(&[3 * inner, c, 1, 1], qkv_w)?,
            joint_dtype(dtypes),
            true,
        )?;
        let qkv =
            Conv2d::pointwise_from(exec, w, qkv_weight, Tensor::from_vec(&[3 * inner], qkv_b)?)?;
        let (ow, packed) = take_weight(exec, w, &p("to_out.0.weight"), &[c, inner])?;
        let ob = w.take(&p("to_out.0.bias"), &[c])?;
        let out = Conv2d::pointwise_from(exec, w, (ow.reshape(&[c, inner, 1, 1])?, packed), ob)?;
        Ok(Self {
            norm,
            qkv,
            out,
            heads,
            inner,
            rescale_output_factor,
        })
    }

    pub fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        if s.len() != 4 {
            return Err(Error::shape("attention_block", "input", "(N, C, H, W)", s));
        }
        let (n, hh, ww) = (s[0], s[2], s[3]);
        let h = match &self.norm {
            Some(norm) => norm.forward(exec, x, false)?,
            None => x.clone(),
        };
        let qkv = self.qkv.forward(exec, &h)?;
        let qkv = qkv.reshape(&[n, 3 * self.inner, hh * ww])?;
        let o = exec.run(
            &Attention::new(self.heads).with_layout(QkvLayout::GuidedDiffusion),
            &[&qkv],
        )?;
        let o = o.reshape(&[n, self.inner, hh, ww])?;
        let scale = (1.0 / self.rescale_output_factor) as f32;
        self.out.forward_residual_scaled(exec, &o, x, scale)
    }
}

/// diffusers' `Downsample2D(use_conv=True)`: a 3×3 conv with stride 2 named `conv`. With
/// `padding = 0` diffusers first pads one zero column on the right and one zero row at the
/// bottom (`F.pad(x, (0, 1, 0, 1))`), done here by concatenating zeros.
/// x (N, C, H, W) → (N, C, ⌊(H + 2p − 3)/2⌋ + 1, …) (p = 1, or the padded size with p = 0).
pub struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        channels: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(
                exec,
                w,
                &format!("{prefix}.conv"),
                channels,
                channels,
                3,
                2,
                padding,
            )?,
            pad_right_bottom: padding == 0,
        })
    }

    pub fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        if !self.pad_right_bottom {
            return self.conv.forward(exec, x);
        }
        let s = x.shape();
        if s.len() != 4 {
            return Err(Error::shape("downsample", "input", "(N, C, H, W)", s));
        }
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let col = exec.tensor(&[n, c, h, 1], &vec![0.0; n * c * h])?;
        let x = exec.run(&Concat::new(3), &[x, &col])?;
        let row = exec.tensor(&[n, c, 1, w + 1], &vec![0.0; n * c * (w + 1)])?;
        let x = exec.run(&Concat::new(2), &[&x, &row])?;
        self.conv.forward(exec, &x)
    }
}

/// diffusers' `Upsample2D(use_conv=True)`: nearest 2× then a 3×3 conv named `conv`.
/// x (N, C, H, W) → (N, C, 2H, 2W).
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(exec: &mut Exec, w: &mut Weights, prefix: &str, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(
                exec,
                w,
                &format!("{prefix}.conv"),
                channels,
                channels,
                3,
                1,
                1,
            )?,
        })
    }

    pub fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        self.forward_to(exec, x, None)
    }

    /// With `size = Some((h, w))`, nearest-resizes to that size instead of 2× (diffusers'
    /// `output_size`, which `UNet2DConditionModel` passes so the map matches its skip).
    pub fn forward_to(
        &self,
        exec: &mut Exec,
        x: &Tensor,
        size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let s = x.shape();
        let up = match size {
            Some((h, w)) if s.len() == 4 && (h, w) != (2 * s[2], 2 * s[3]) => {
                exec.run(&ResizeNearest::new(h, w), &[x])?
            }
            _ => exec.run(&Upsample2x, &[x])?,
        };
        self.conv.forward(exec, &up)
    }
}
