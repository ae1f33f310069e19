//! Multi-head scaled dot-product attention, `softmax(scale · q·kᵀ) · v` per head, with the
//! softmax accumulated online in f32 (flash-style) so no Nq×Nk score matrix is stored.
//!
//! Layouts ([`QkvLayout`]); `H` heads of `D` channels (q, k) and `Dv` channels (v, out):
//! - `Separate`: q (B, Nq, H·D), k (B, Nk, H·D), v (B, Nk, H·Dv) → out (B, Nq, H·Dv), as
//!   diffusers' `Attention` produces them with `to_q`/`to_k`/`to_v` (heads interleaved in
//!   the last dim: head h is columns h·D .. (h+1)·D). Self-attention (Nq = Nk) and
//!   cross-attention (e.g. Nk = 77 text tokens, Dv = D) alike.
//! - `Fused`: one input (B, N, 3·H·D) = `cat([q, k, v], -1)`, a fused QKV projection's
//!   output (diffusers `fuse_projections`, CLIP/ViT-style `qkv` Linear) → out (B, N, H·D).
//! - `GuidedDiffusion` / `GuidedDiffusionLegacy`: OpenAI guided-diffusion's `AttentionBlock`
//!   (guided_diffusion/unet.py at commit 18ff408c), one channel-first input
//!   qkv (B, 3·H·D, T) from a 1×1 `conv1d`, out (B, H·D, T) (what the module returns,
//!   ready for its `proj_out` conv). The two differ in how the 3·H·D channels split:
//!   - `QKVAttention` (`use_new_attention_order=True`) does `qkv.chunk(3, dim=1)` first, then
//!     views each part as (B·H, D, T): channel = s·H·D + h·D + d for s ∈ {q=0, k=1, v=2},
//!     i.e. qkv is (B, 3, H, D, T).
//!   - `QKVAttentionLegacy` (the default) does `qkv.reshape(B·H, 3·D, T).split(D, dim=1)`:
//!     channel = h·3·D + s·D + d, i.e. qkv is (B, H, 3, D, T) — heads outermost.
//!
//!   Both scale q and k by D^(-1/4) each, which is the default scale 1/√D here.
//!
//! The kernel is `shaders/attention.wgsl`; its header explains the design (one invocation
//! per (batch, query row, head), no barriers). Tensors too large for one storage binding
//! are split over batch items, then over query rows (see `chunk`).

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Chunk, Operand};
use super::{expect_inputs, expect_rank, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{fold_workgroups, BindingLayout, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "attention";
/// The largest head dim (`D` and `Dv`) the kernels' private arrays hold (`attention_wide`'s).
pub const MAX_HEAD_DIM: usize = 512;
/// Head dims above this use the `attention_wide` entry point (must match the shader's MAX_D).
const FAST_MAX_HEAD_DIM: usize = 256;
const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct AttentionParams {
    /// (offset, batch, token, head) element strides of q, k, v, out.
    pub q: [u32; 4],
    pub k: [u32; 4],
    pub v: [u32; 4],
    pub o: [u32; 4],
    /// Channel strides of q, k, v, out.
    pub sd: [u32; 4],
    pub rows: u32,
    pub nk: u32,
    pub heads: u32,
    pub batches: u32,
    pub row_tiles: u32,
    pub scale_log2: f32,
    /// Global index of the dispatch's first query row (the causal mask needs it).
    pub row0: u32,
    pub _pad: u32,
}

/// How q, k and v are laid out in the inputs; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvLayout {
    /// q (B, Nq, H·D), k (B, Nk, H·D), v (B, Nk, H·Dv) → (B, Nq, H·Dv).
    Separate,
    /// qkv (B, N, 3·H·D), last dim `[q | k | v]` → (B, N, H·D).
    Fused,
    /// qkv (B, 3·H·D, T) as (B, 3, H, D, T) (guided-diffusion `QKVAttention`) → (B, H·D, T).
    GuidedDiffusion,
    /// qkv (B, H·3·D, T) as (B, H, 3, D, T) (guided-diffusion `QKVAttentionLegacy`)
    /// → (B, H·D, T).
    GuidedDiffusionLegacy,
}

/// Which kernel of `shaders/attention.wgsl` runs (both stream keys with an online softmax,
/// neither stores scores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// `Tiled` on hardware GPUs, `Stream` on CPU (software) adapters: measured in
    /// BENCHMARKS.md ("fused norms, attention, CFG").
    #[default]
    Auto,
    /// No barriers, no workgroup memory: each invocation reads K/V rows from global memory.
    Stream,
    /// K/V tiles staged in workgroup memory, shared by the workgroup's query rows.
    Tiled,
}

/// Attention over `heads` heads; see the module docs for shapes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    pub heads: usize,
    /// Multiplies q·k; `None` is 1/√D.
    pub scale: Option<f32>,
    pub layout: QkvLayout,
    /// Query i sees keys j ≤ i only (PyTorch's `is_causal`, top-left aligned), as CLIP's
    /// text encoder needs.
    pub causal: bool,
    pub kernel: AttentionKernel,
    /// Testing: plan chunks as if `maxStorageBufferBindingSize` were this many bytes, to
    /// exercise the multi-dispatch path on small tensors. `None` in normal use.
    pub binding_cap: Option<u64>,
}

/// Where one tensor's elements are: element (b, token, head, channel) is at
/// `off + b·sb + token·st + head·sh + channel·sd` of input `input` (or of the output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    input: usize,
    off: usize,
    sb: usize,
    st: usize,
    sh: usize,
    sd: usize,
}

impl View {
    fn at(&self, b: usize, t: usize, h: usize) -> usize {
        self.off + b * self.sb + t * self.st + h * self.sh
    }
}

#[derive(Debug, Clone)]
struct Geometry {
    batches: usize,
    nq: usize,
    nk: usize,
    d: usize,
    dv: usize,
    /// q, k, v, out.
    views: [View; 4],
    /// q, k, v, out, for chunk planning.
    operands: [Operand; 4],
    out_shape: Vec<usize>,
}

/// Token-major (B, N, C) tensor with heads of `d` channels at column `col0`.
fn token_major(input: usize, n: usize, c: usize, d: usize, col0: usize) -> View {
    View {
        input,
        off: col0,
        sb: n * c,
        st: c,
        sh: d,
        sd: 1,
    }
}

fn operand(name: &'static str, item: usize, row: Option<usize>) -> Operand {
    Operand {
        name,
        item_bytes: item as u64 * 4,
        batched: true,
        row_bytes: row.map(|r| r as u64 * 4),
    }
}

impl Attention {
    /// Separate q, k, v with `heads` heads and scale 1/√D.
    pub fn new(heads: usize) -> Self {
        Self {
            heads,
            scale: None,
            layout: QkvLayout::Separate,
            causal: false,
            kernel: AttentionKernel::Auto,
            binding_cap: None,
        }
    }

    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    pub fn with_kernel(mut self, kernel: AttentionKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Keys per workgroup-memory tile of the tiled kernel (`TILE` floats in the shader).
    fn tile_keys(d: usize, dv: usize) -> usize {
        (2048 / d.max(dv)).min(64)
    }

    pub fn with_layout(mut self, layout: QkvLayout) -> Self {
        self.layout = layout;
        self
    }

    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }

    fn scale_for(&self, d: usize) -> f64 {
        self.scale
            .map(|s| s as f64)
            .unwrap_or(1.0 / (d as f64).sqrt())
    }

    /// Channels per head of a `c`-channel tensor.
    fn per_head(&self, what: &str, s: &[usize], c: usize, parts: usize) -> Result<usize> {
        let hp = self.heads * parts;
        if c == 0 || !c.is_multiple_of(hp) {
            let layout = match self.layout {
                QkvLayout::Separate => {
                    format!("(B, N, H·D) with H·D divisible by heads = {}", self.heads)
                }
                QkvLayout::Fused => format!("(B, N, 3·H·D) with heads = {}", self.heads),
                _ => format!("(B, 3·H·D, T) with heads = {}", self.heads),
            };
            return Err(Error::shape(self.name(), what, layout, s));
        }
        Ok(c / hp)
    }

    fn geometry(&self, inputs: &[&[usize]]) -> Result<Geometry> {
        let op = self.name();
        if self.heads == 0 {
            return Err(Error::invalid(op, "heads must be at least 1"));
        }
        let n_in = if self.layout == QkvLayout::Separate {
            3
        } else {
            1
        };
        expect_inputs(op, inputs, n_in)?;
        let layout_text = match self.layout {
            QkvLayout::Separate => "(B, N, H·D)",
            QkvLayout::Fused => "(B, N, 3·H·D)",
            _ => "(B, 3·H·D, T)",
        };
        let names = ["q", "k", "v"];
        for (i, s) in inputs.iter().enumerate() {
            let what = if n_in == 1 { "qkv" } else { names[i] };
            expect_rank(op, what, s, 3, layout_text)?;
            if s.contains(&0) {
                return Err(Error::shape(op, what, "no zero-sized dimension", s));
            }
        }
        let h = self.heads;
        let g = match self.layout {
            QkvLayout::Separate => {
                let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
                let (b, nq, nk) = (q[0], q[1], k[1]);
                if k[0] != b || k[2] != q[2] {
                    return Err(Error::shape(
                        op,
                        "k",
                        format!("({b}, Nk, {}) like q {q:?}", q[2]),
                        k,
                    ));
                }
                if v[0] != b || v[1] != nk {
                    return Err(Error::shape(
                        op,
                        "v",
                        format!("({b}, {nk}, H·Dv) like k {k:?}"),
                        v,
                    ));
                }
                let d = self.per_head("q", q, q[2], 1)?;
                let dv = self.per_head("v", v, v[2], 1)?;
                Geometry {
                    batches: b,
                    nq,
                    nk,
                    d,
                    dv,
                    views: [
                        token_major(0, nq, h * d, d, 0),
                        token_major(1, nk, h * d, d, 0),
                        token_major(2, nk, h * dv, dv, 0),
                        token_major(3, nq, h * dv, dv, 0),
                    ],
                    operands: [
                        operand("q", nq * h * d, Some(h * d)),
                        operand("k", nk * h * d, None),
                        operand("v", nk * h * dv, None),
                        operand("out", nq * h * dv, Some(h * dv)),
                    ],
                    out_shape: vec![b, nq, h * dv],
                }
            }
            QkvLayout::Fused => {
                let s = inputs[0];
                let (b, n) = (s[0], s[1]);
                let d = self.per_head("qkv", s, s[2], 3)?;
                let c = 3 * h * d;
                Geometry {
                    batches: b,
                    nq: n,
                    nk: n,
                    d,
                    dv: d,
                    views: [
                        token_major(0, n, c, d, 0),
                        token_major(0, n, c, d, h * d),
                        token_major(0, n, c, d, 2 * h * d),
                        token_major(3, n, h * d, d, 0),
                    ],
                    operands: [
                        operand("qkv (as q)", n * c, Some(c)),
                        operand("qkv (as k)", n * c, None),
                        operand("qkv (as v)", n * c, None),
                        operand("out", n * h * d, Some(h * d)),
                    ],
                    out_shape: vec![b, n, h * d],
                }
            }
            QkvLayout::GuidedDiffusion | QkvLayout::GuidedDiffusionLegacy => {
                let s = inputs[0];
                let (b, t) = (s[0], s[2]);
                let d = self.per_head("qkv", s, s[1], 3)?;
                let c = 3 * h * d;
                // Channel of (part, head, d): new order (3, H, D), legacy (H, 3, D).
                let (part, head) = if self.layout == QkvLayout::GuidedDiffusion {
                    (h * d, d)
                } else {
                    (d, 3 * d)
                };
                let view = |input, part_index: usize| View {
                    input,
                    off: part_index * part * t,
                    sb: c * t,
                    st: 1,
                    sh: head * t,
                    sd: t,
                };
                Geometry {
                    batches: b,
                    nq: t,
                    nk: t,
                    d,
                    dv: d,
                    views: [
                        view(0, 0),
                        view(0, 1),
                        view(0, 2),
                        View {
                            input: 3,
                            off: 0,
                            sb: h * d * t,
                            st: 1,
                            sh: d * t,
                            sd: t,
                        },
                    ],
                    // Channel-first: a subset of tokens is never a contiguous range.
                    operands: [
                        operand("qkv (as q)", c * t, None),
                        operand("qkv (as k)", c * t, None),
                        operand("qkv (as v)", c * t, None),
                        operand("out", h * d * t, None),
                    ],
                    out_shape: vec![b, h * d, t],
                }
            }
        };
        for (what, x) in [
            ("D (q/k channels per head)", g.d),
            ("Dv (v channels per head)", g.dv),
        ] {
            if x > MAX_HEAD_DIM {
                return Err(Error::invalid(
                    op,
                    format!("{what} is {x}; the kernel supports at most {MAX_HEAD_DIM} (use more heads)"),
                ));
            }
        }
        for s in inputs.iter().chain([&g.out_shape.as_slice()]) {
            super::elementwise::check_u32(op, s)?;
        }
        Ok(g)
    }

    /// The dispatches `record` would issue for these input shapes if no storage binding
    /// could exceed `limit` bytes, with offsets aligned to `align` bytes. Public so that tests
    /// can check the planning with a limit of a few KB.
    pub fn plan_chunks(&self, inputs: &[&[usize]], limit: u64, align: u64) -> Result<Vec<Chunk>> {
        let g = self.geometry(inputs)?;
        chunk::plan(self.name(), g.batches, g.nq, &g.operands, limit, align)
    }
}

impl Op for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Ok(self.geometry(inputs)?.out_shape)
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let Ok(g) = self.geometry(shapes) else {
            return;
        };
        let [qv, kv, vv, ov] = g.views;
        let (q, k, v) = (inputs[qv.input], inputs[kv.input], inputs[vv.input]);
        let scale = self.scale_for(g.d);
        let mut scores = vec![0f64; g.nk];
        let mut acc = vec![0f64; g.dv];
        for b in 0..g.batches {
            for h in 0..self.heads {
                for i in 0..g.nq {
                    let qi = qv.at(b, i, h);
                    let nk = if self.causal { g.nk.min(i + 1) } else { g.nk };
                    for (j, s) in scores[..nk].iter_mut().enumerate() {
                        let kj = kv.at(b, j, h);
                        let dot: f64 = (0..g.d)
                            .map(|d| q[qi + d * qv.sd] as f64 * k[kj + d * kv.sd] as f64)
                            .sum();
                        *s = scale * dot;
                    }
                    let max = scores[..nk]
                        .iter()
                        .cloned()
                        .fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0f64;
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    for (j, &s) in scores[..nk].iter().enumerate() {
                        let w = (s - max).exp();
                        sum += w;
                        let vj = vv.at(b, j, h);
                        for (d, a) in acc.iter_mut().enumerate() {
                            *a += w * v[vj + d * vv.sd] as f64;
                        }
                    }
                    let oi = ov.at(b, i, h);
                    for (d, a) in acc.iter().enumerate() {
                        out[oi + d * ov.sd] = (a / sum) as f32;
                    }
                }
            }
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|a| a.shape).collect();
        let g = self.geometry(&shapes)?;
        let (max_binding, align) = chunk::limits(ctx);
        let limit = chunk::binding_limit(max_binding, self.binding_cap);
        let chunks = self.plan_chunks(&shapes, limit, align)?;
        let tiled = match self.kernel {
            AttentionKernel::Stream => false,
            AttentionKernel::Tiled => true,
            AttentionKernel::Auto => ctx.caps.device_type != "Cpu",
        };
        let entry = if g.d.max(g.dv) > FAST_MAX_HEAD_DIM {
            "attention_wide"
        } else if tiled {
            "attention_tiled"
        } else {
            "attention"
        };
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, entry)
                .with("WG", WG as f64)
                .with("D", g.d as f64)
                .with("DV", g.dv as f64)
                .with("CAUSAL", self.causal as u32 as f64)
                .with("TK", Self::tile_keys(g.d, g.dv) as f64),
            BindingLayout {
                inputs: 3,
                outputs: 1,
            },
        )?;
        let buffer = |v: &View| {
            if v.input == 3 {
                out.buffer
            } else {
                inputs[v.input].buffer
            }
        };
        let u = |x: usize| x as u32;
        for c in &chunks {
            let rows = c.rows.end - c.rows.start;
            let nb = c.batches.end - c.batches.start;
            let mut slices = Vec::with_capacity(4);
            let mut strides = [[0u32; 4]; 4];
            for (i, (view, op)) in g.views.iter().zip(&g.operands).enumerate() {
                let bind = c.binding(op, g.nq, align);
                slices.push(bind.of(buffer(view)));
                // q and out are indexed by the chunk-local row; where their binding holds
                // whole items it starts at row 0, so skip to the chunk's first row.
                let is_rows = i == 0 || i == 3;
                let first_row = if is_rows && c.binds_whole_items(op, g.nq) {
                    c.rows.start * view.st
                } else {
                    0
                };
                strides[i] = [
                    bind.skip + u(view.off + first_row),
                    u(view.sb),
                    u(view.st),
                    u(view.sh),
                ];
            }
            let row_tiles = rows.div_ceil(WG as usize);
            let workgroups = row_tiles as u64 * self.heads as u64 * nb as u64;
            let workgroups = u32::try_from(workgroups).map_err(|_| Error::Limit {
                op: self.name(),
                what: format!("a dispatch of {workgroups} workgroups"),
                limit: "u32 workgroup count",
                value: u32::MAX as u64,
                needed: workgroups,
                hint: "use a smaller batch or resolution",
            })?;
            let [qv, kv, vv, ov] = g.views;
            let params = AttentionParams {
                q: strides[0],
                k: strides[1],
                v: strides[2],
                o: strides[3],
                sd: [u(qv.sd), u(kv.sd), u(vv.sd), u(ov.sd)],
                rows: u(rows),
                nk: u(g.nk),
                heads: u(self.heads),
                batches: u(nb),
                row_tiles: u(row_tiles),
                scale_log2: (self.scale_for(g.d) * std::f64::consts::LOG2_E) as f32,
                row0: u(c.rows.start),
                _pad: 0,
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &slices[..3],
                &slices[3..],
                fold_workgroups(workgroups, ctx.caps.max_workgroups()),
            )?;
        }
        Ok(())
    }
}
