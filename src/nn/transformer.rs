//! diffusers' `Transformer2DModel` with `BasicTransformerBlock`s, as the cross-attention
//! blocks of `UNet2DConditionModel` build them (`src/diffusers/models/transformers/
//! transformer_2d.py`, `attention.py`, `attention_processor.py` at 0.42.1), composed of ops
//! only. Shapes: x (N, C, H, W), encoder_hidden_states (N, L, cross_attention_dim).
//! ```text
//! h = group_norm(x)                          (eps 1e-6, groups = norm_num_groups)
//! h = proj_in(h) as tokens (N, H·W, inner)   (1×1 conv or linear: the same product)
//! per block:  h = attn1(norm1(h)) + h        self-attention
//!             h = attn2(norm2(h), ehs) + h   cross-attention on encoder_hidden_states
//!             h = ff(norm3(h)) + h           linear(inner → 2·4·inner), GEGLU, linear
//! out = proj_out(h) as (N, C, H, W) + x
//! ```
//! `inner = heads · head_dim`, with q/k/v linears without bias, out projections with bias,
//! LayerNorms with eps 1e-5 and affine weights, GELU exact (erf), softmax scale 1/√head_dim.
//!
//! Tokens are laid out (N, T, C) between one transpose after the group norm and one before
//! `proj_out`, so every linear is a plain row-major product. `proj_out` runs as a 1×1
//! convolution on the channel-first map whichever way the checkpoint stores it, which fuses
//! the residual add. Self-attention stacks `to_q`, `to_k`, `to_v` into one linear whose
//! output is the attention op's `Fused` layout; cross-attention keeps them separate
//! (`Separate` layout, Nq = H·W queries against Nk = L keys).

use super::layers::{joint_dtype, place_weight, take_weight, Conv2d, GroupNorm, LayerNorm, Linear};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::attention::MAX_HEAD_DIM;
use crate::ops::{Attention, Geglu, QkvLayout, Transpose};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// The `Attention` of a `BasicTransformerBlock`: `to_out.0(attention(to_q(h), to_k(c),
/// to_v(c)))` plus the block's residual, where c is h (self) or the encoder states (cross).
struct TokenAttention {
    /// Self-attention: q, k, v stacked (3·inner, dim).
    qkv: Option<Linear>,
    /// Cross-attention: separate projections.
    q_k_v: Option<(Linear, Linear, Linear)>,
    out: Linear,
    heads: usize,
}

impl TokenAttention {
    fn load_self(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        dim: usize,
        heads: usize,
    ) -> Result<Self> {
        let mut stacked = Vec::with_capacity(3 * dim * dim);
        let mut dtypes = Vec::with_capacity(3);
        for name in ["to_q", "to_k", "to_v"] {
            let (t, dtype) = w.take_with_dtype(&format!("{prefix}.{name}.weight"), &[dim, dim])?;
            stacked.extend_from_slice(host(&t)?);
            dtypes.push(dtype);
        }
        let weight = place_weight(
            exec,
            w,
            &format!("{prefix}.to_qkv.weight"),
            Tensor::from_vec(&[3 * dim, dim], stacked)?,
            joint_dtype(dtypes),
            true,
        )?;
        let qkv = Linear::from_parts(exec, w, weight, None)?;
        Ok(Self {
            qkv: Some(qkv),
            q_k_v: None,
            out: Linear::load(exec, w, &format!("{prefix}.to_out.0"), dim, dim, true)?,
            heads,
        })
    }

    fn load_cross(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        dim: usize,
        cross_dim: usize,
        heads: usize,
    ) -> Result<Self> {
        let p = |s: &str| format!("{prefix}.{s}");
        Ok(Self {
            qkv: None,
            q_k_v: Some((
                Linear::load(exec, w, &p("to_q"), dim, dim, false)?,
                Linear::load(exec, w, &p("to_k"), cross_dim, dim, false)?,
                Linear::load(exec, w, &p("to_v"), cross_dim, dim, false)?,
            )),
            out: Linear::load(exec, w, &p("to_out.0"), dim, dim, true)?,
            heads,
        })
    }

    /// `residual + to_out(attention)`; `h` (N, T, dim) normalised, `ctx` (N, L, cross_dim).
    fn forward(
        &self,
        exec: &mut Exec,
        h: &Tensor,
        ctx: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let o = match (&self.qkv, &self.q_k_v, ctx) {
            (Some(qkv), _, _) => {
                let qkv = qkv.forward(exec, h)?;
                exec.run(
                    &Attention::new(self.heads).with_layout(QkvLayout::Fused),
                    &[&qkv],
                )?
            }
            (None, Some((q, k, v)), Some(c)) => {
                let q = q.forward(exec, h)?;
                let k = k.forward(exec, c)?;
                let v = v.forward(exec, c)?;
                exec.run(&Attention::new(self.heads), &[&q, &k, &v])?
            }
            _ => {
                return Err(Error::invalid(
                    "transformer",
                    "cross-attention needs encoder_hidden_states",
                ))
            }
        };
        self.out.forward_residual(exec, &o, residual)
    }
}

/// diffusers' `BasicTransformerBlock` (norm_type "layer_norm", GEGLU feed-forward).
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: TokenAttention,
    norm2: LayerNorm,
    attn2: TokenAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        dim: usize,
        heads: usize,
        cross_dim: usize,
    ) -> Result<Self> {
        let p = |s: &str| format!("{prefix}.{s}");
        // FeedForward's default inner width: mult = 4.
        let ff = 4 * dim;
        Ok(Self {
            norm1: LayerNorm::load(exec, w, &p("norm1"), dim, 1e-5)?,
            attn1: TokenAttention::load_self(exec, w, &p("attn1"), dim, heads)?,
            norm2: LayerNorm::load(exec, w, &p("norm2"), dim, 1e-5)?,
            attn2: TokenAttention::load_cross(exec, w, &p("attn2"), dim, cross_dim, heads)?,
            norm3: LayerNorm::load(exec, w, &p("norm3"), dim, 1e-5)?,
            ff_in: Linear::load(exec, w, &p("ff.net.0.proj"), dim, 2 * ff, true)?,
            ff_out: Linear::load(exec, w, &p("ff.net.2"), ff, dim, true)?,
        })
    }

    fn forward(&self, exec: &mut Exec, h: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let n = self.norm1.forward(exec, h)?;
        let h = self.attn1.forward(exec, &n, None, h)?;
        let n = self.norm2.forward(exec, &h)?;
        let h = self.attn2.forward(exec, &n, Some(ctx), &h)?;
        let n = self.norm3.forward(exec, &h)?;
        let f = self.ff_in.forward(exec, &n)?;
        let f = exec.run(&Geglu, &[&f])?;
        self.ff_out.forward_residual(exec, &f, &h)
    }
}

/// Shape and options of one [`Transformer2D`].
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    pub channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub depth: usize,
    pub cross_attention_dim: usize,
    pub norm_groups: usize,
    pub use_linear_projection: bool,
}

/// diffusers' `Transformer2DModel` (continuous input); see the module docs.
/// x (N, C, H, W), encoder_hidden_states (N, L, cross_attention_dim) → (N, C, H, W).
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Conv2d,
    inner: usize,
    cross_attention_dim: usize,
}

impl Transformer2D {
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        cfg: &Transformer2DConfig,
    ) -> Result<Self> {
        let (c, heads, d) = (cfg.channels, cfg.heads, cfg.head_dim);
        // Fail at load time rather than at the first forward.
        if d == 0 || d > MAX_HEAD_DIM || heads == 0 {
            return Err(Error::invalid(
                "transformer",
                format!(
                    "`{prefix}` has {heads} head(s) of {d} channels; the attention kernel \
                     supports 1 to {MAX_HEAD_DIM} channels per head (in UNet2DConditionModel \
                     configs `attention_head_dim` is the head count: heads = channels / it)"
                ),
            ));
        }
        let inner = heads * d;
        let p = |s: &str| format!("{prefix}.{s}");
        let norm = GroupNorm::load(exec, w, &p("norm"), c, cfg.norm_groups, 1e-6)?;
        // A 1×1 conv and a linear are the same product; only the stored shape differs.
        let (in_shape, out_shape) = if cfg.use_linear_projection {
            (vec![inner, c], vec![c, inner])
        } else {
            (vec![inner, c, 1, 1], vec![c, inner, 1, 1])
        };
        let (wi, packed) = take_weight(exec, w, &p("proj_in.weight"), &in_shape)?;
        let bi = w.take(&p("proj_in.bias"), &[inner])?;
        let proj_in = Linear::from_parts(exec, w, (wi.reshape(&[inner, c])?, packed), Some(bi))?;
        let mut blocks = Vec::with_capacity(cfg.depth);
        for k in 0..cfg.depth {
            blocks.push(BasicTransformerBlock::load(
                exec,
                w,
                &p(&format!("transformer_blocks.{k}")),
                inner,
                heads,
                cfg.cross_attention_dim,
            )?);
        }
        let (wo, packed) = take_weight(exec, w, &p("proj_out.weight"), &out_shape)?;
        let bo = w.take(&p("proj_out.bias"), &[c])?;
        let proj_out =
            Conv2d::pointwise_from(exec, w, (wo.reshape(&[c, inner, 1, 1])?, packed), bo)?;
        Ok(Self {
            norm,
            proj_in,
            blocks,
            proj_out,
            inner,
            cross_attention_dim: cfg.cross_attention_dim,
        })
    }

    pub fn forward(&self, exec: &mut Exec, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        if s.len() != 4 {
            return Err(Error::shape("transformer", "input", "(N, C, H, W)", s));
        }
        let (n, c, hh, ww) = (s[0], s[1], s[2], s[3]);
        let cs = ctx.shape();
        if cs.len() != 3 || cs[0] != n || cs[2] != self.cross_attention_dim || cs[1] == 0 {
            return Err(Error::shape(
                "transformer",
                "encoder_hidden_states",
                format!(
                    "({n}, L, {}) (cross_attention_dim)",
                    self.cross_attention_dim
                ),
                cs,
            ));
        }
        let h = self.norm.forward(exec, x, false)?;
        let h = exec.run(&Transpose, &[&h.reshape(&[n, c, hh * ww])?])?;
        let mut h = self.proj_in.forward(exec, &h)?;
        for b in &self.blocks {
            h = b.forward(exec, &h, ctx)?;
        }
        let h = exec.run(&Transpose, &[&h])?;
        self.proj_out
            .forward_residual(exec, &h.reshape(&[n, self.inner, hh, ww])?, x)
    }
}

fn host(t: &Tensor) -> Result<&[f32]> {
    t.cpu_data()
        .ok_or_else(|| Error::invalid("weights", "a freshly taken weight is not on the CPU"))
}
