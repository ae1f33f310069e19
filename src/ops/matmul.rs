//! Matrix products: batched matmul and PyTorch's `Linear`, with a fused epilogue
//! `out = alpha·(a·b) + bias + residual` (attention output projections and feed-forward
//! layers of diffusers' transformer blocks end with a residual add).
//!
//! Shapes (row-major, PyTorch layouts):
//! - matmul (`transpose_b = false`): a (…, M, K) × b (…, K, N) → (…, M, N), as `torch.matmul`.
//!   The batch dims of a and b are equal, or one side's are all 1 (or absent) and it is
//!   broadcast. A b of rank 2 (K, N) is shared: then a may have any rank ≥ 1 and all its
//!   leading dims are flattened into M (one large product instead of many small ones).
//! - linear (`transpose_b = true`): a (…, K) × W (N, K)ᵀ → (…, N) with W in `nn.Linear`
//!   layout (out_features, in_features); batched b (…, N, K) also works (q·kᵀ).
//! - optional inputs after a and b, in this order: bias (N), residual (the output shape).
//!
//! The kernel is `shaders/matmul.wgsl` (register-blocked, no workgroup memory), its
//! workgroup shape chosen per adapter and shape bucket by the autotuner (`tune`); the plain
//! 16×16 workgroup-memory kernel is kept as `Kernel::Baseline` for comparison. Operands
//! larger than `maxStorageBufferBindingSize` are split over batch items, then over rows of
//! a and out (see `chunk`); a single row of a or a single batch item of b that cannot be
//! bound is an `Error::Limit`.

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Chunk, Operand};
use super::tune::{self, Kernel};
use super::{expect_inputs, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{fold_workgroups, BindingLayout, GpuContext, PipelineKey, Recorder};
use crate::tensor::numel;

pub const SHADER: &str = "matmul";
/// The `matmul` kernel reading packed-f16 weights as `f16` (`enable f16;`), chosen when the
/// device has `shader-f16`.
pub const SHADER_F16: &str = "matmul_f16";
/// The default workgroup (WG_X invocations along N, WG_Y along M); each invocation computes
/// 4×4 outputs, so a workgroup covers a 64×64 output tile (measured at 2–4 GFLOP/s on
/// lavapipe, see TESTING.md). Used when tuning is off.
pub const DEFAULT_TILES: (u32, u32) = (16, 16);
/// What the autotuner tries, (WG_X, WG_Y), before the adapter's limits filter them.
const CANDIDATES: [(u32, u32); 5] = [(16, 16), (8, 8), (16, 8), (8, 16), (32, 4)];
/// Outputs per invocation along each axis of the register-blocked kernel.
const BLOCK: usize = 4;
/// Tile edge of the baseline kernel.
const BASE_TILE: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batches: u32,
    pub a_off: u32,
    pub a_batch: u32,
    pub b_off: u32,
    pub b_batch: u32,
    pub b_stride_k: u32,
    pub b_stride_n: u32,
    pub bias_off: u32,
    pub res_off: u32,
    pub out_off: u32,
    pub tiles_n: u32,
    pub tiles_m: u32,
    pub alpha: f32,
}

/// `out = alpha·(a·b) + bias + residual`; see the module docs for shapes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matmul {
    /// b is stored (…, N, K) (a Linear weight) instead of (…, K, N).
    pub transpose_b: bool,
    /// Scales the product only (not bias or residual).
    pub alpha: f32,
    /// A bias (N) is the next input.
    pub bias: bool,
    /// A residual of the output's shape is the last input.
    pub residual: bool,
    /// Testing: plan chunks as if `maxStorageBufferBindingSize` were this many bytes, to
    /// exercise the multi-dispatch path on small tensors. `None` in normal use.
    pub binding_cap: Option<u64>,
    /// Which kernel variant to record (`Kernel::Tuned` in normal use).
    pub kernel: Kernel,
    /// On the GPU b holds f16 pairs packed in u32 words ([`crate::weights::pack_f16`]); b
    /// must then be shared (a Linear weight). The CPU reference reads f32 values already
    /// rounded through f16, so both backends compute the same thing.
    pub packed_b: bool,
}

impl Default for Matmul {
    fn default() -> Self {
        Self::new()
    }
}

/// The product as the kernel sees it, after flattening and broadcasting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Geometry {
    batches: usize,
    m: usize,
    n: usize,
    k: usize,
    a_batched: bool,
    b_batched: bool,
    out_shape: Vec<usize>,
}

impl Matmul {
    /// a (…, M, K) × b (…, K, N).
    pub fn new() -> Self {
        Self {
            transpose_b: false,
            alpha: 1.0,
            bias: false,
            residual: false,
            binding_cap: None,
            kernel: Kernel::Tuned,
            packed_b: false,
        }
    }

    /// b is packed f16 on the GPU (see `packed_b`).
    pub fn with_packed_b(mut self, packed: bool) -> Self {
        self.packed_b = packed;
        self
    }

    /// The same product recorded with a given kernel variant.
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// `nn.Linear`: a (…, K) × W (N, K)ᵀ, plus a bias (N) input when `bias`.
    pub fn linear(bias: bool) -> Self {
        Self {
            transpose_b: true,
            bias,
            ..Self::new()
        }
    }

    pub fn with_alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    /// Add a residual input (the output's shape) after the product and bias.
    pub fn with_residual(mut self) -> Self {
        self.residual = true;
        self
    }

    fn num_inputs(&self) -> usize {
        2 + self.bias as usize + self.residual as usize
    }

    fn geometry(&self, inputs: &[&[usize]]) -> Result<Geometry> {
        let op = self.name();
        expect_inputs(op, inputs, self.num_inputs())?;
        let (a, b) = (inputs[0], inputs[1]);
        for (what, s) in [("a", a), ("b", b)] {
            if s.contains(&0) {
                return Err(Error::shape(op, what, "no zero-sized dimension", s));
            }
        }
        let b_layout = if self.transpose_b {
            "(…, N, K) (a Linear weight is (out_features, in_features))"
        } else {
            "(…, K, N)"
        };
        if b.len() < 2 {
            return Err(Error::shape(op, "b", format!("rank ≥ 2 {b_layout}"), b));
        }
        let (bk, n) = if self.transpose_b {
            (b[b.len() - 1], b[b.len() - 2])
        } else {
            (b[b.len() - 2], b[b.len() - 1])
        };
        let min_rank_a = if b.len() == 2 { 1 } else { 2 };
        if a.len() < min_rank_a {
            return Err(Error::shape(op, "a", "rank ≥ 2 (…, M, K)", a));
        }
        let k = a[a.len() - 1];
        if k != bk {
            return Err(Error::shape(
                op,
                "b",
                format!("{b_layout} with K = {k} (the last dimension of a {a:?})"),
                b,
            ));
        }
        let a_batch_dims = &a[..a.len().saturating_sub(2)];
        let b_batch = &b[..b.len() - 2];
        let (mut out_shape, batches, m, a_batched, b_batched);
        if numel(b_batch) == 1 {
            // b shared by every row of a: fold all of a's leading dims into M.
            m = numel(&a[..a.len() - 1]);
            batches = 1;
            a_batched = false;
            b_batched = false;
            let lead = &a[..a.len() - 1];
            let pad = b_batch.len().saturating_sub(a_batch_dims.len());
            out_shape = vec![1; if a.len() >= 2 { pad } else { 0 }];
            out_shape.extend_from_slice(lead);
        } else if a.len() >= 2 && numel(a_batch_dims) == 1 {
            // a shared by every batch item of b (e.g. a 1×1 convolution's weight × NCHW).
            m = a[a.len() - 2];
            batches = numel(b_batch);
            a_batched = false;
            b_batched = true;
            out_shape = vec![1; a_batch_dims.len().saturating_sub(b_batch.len())];
            out_shape.extend_from_slice(b_batch);
            out_shape.push(m);
        } else if a_batch_dims == b_batch {
            m = a[a.len() - 2];
            batches = numel(b_batch);
            a_batched = true;
            b_batched = true;
            out_shape = b_batch.to_vec();
            out_shape.push(m);
        } else {
            return Err(Error::shape(
                op,
                "b",
                format!("batch dimensions {a_batch_dims:?} like a {a:?}, or all 1 to broadcast"),
                b,
            ));
        }
        out_shape.push(n);
        if self.packed_b && b_batched {
            return Err(Error::shape(
                op,
                "b",
                "a shared (unbatched) b: packed f16 storage is for Linear weights",
                b,
            ));
        }
        let mut next = 2;
        if self.bias {
            let s = inputs[next];
            if s != [n] {
                return Err(Error::shape(op, "bias", format!("({n},)"), s));
            }
            next += 1;
        }
        if self.residual {
            let s = inputs[next];
            if s != out_shape.as_slice() {
                return Err(Error::shape(
                    op,
                    "residual",
                    format!("the output shape {out_shape:?}"),
                    s,
                ));
            }
        }
        for s in inputs.iter().chain([&out_shape.as_slice()]) {
            super::elementwise::check_u32(op, s)?;
        }
        Ok(Geometry {
            batches,
            m,
            n,
            k,
            a_batched,
            b_batched,
            out_shape,
        })
    }

    /// (elements between k steps, between n steps) of b.
    fn b_strides(&self, g: &Geometry) -> (usize, usize) {
        if self.transpose_b {
            (1, g.k)
        } else {
            (g.n, 1)
        }
    }

    fn operands(&self, g: &Geometry) -> Vec<Operand> {
        let rows = |name, cols: usize, batched| Operand {
            name,
            item_bytes: g.m as u64 * cols as u64 * 4,
            batched,
            row_bytes: Some(cols as u64 * 4),
        };
        let mut ops = vec![
            rows("a", g.k, g.a_batched),
            Operand {
                name: "b",
                item_bytes: super::conv2d::weight_bytes(g.k * g.n, self.packed_b),
                batched: g.b_batched,
                row_bytes: None,
            },
        ];
        if self.bias {
            ops.push(Operand::shared("bias", g.n as u64 * 4));
        }
        if self.residual {
            ops.push(rows("residual", g.n, true));
        }
        ops.push(rows("out", g.n, true));
        ops
    }

    /// The dispatches `record` would issue for these input shapes if no storage binding
    /// could exceed `limit` bytes, with offsets aligned to `align` bytes. Public so that tests
    /// can check the planning with a limit of a few KB.
    pub fn plan_chunks(&self, inputs: &[&[usize]], limit: u64, align: u64) -> Result<Vec<Chunk>> {
        let g = self.geometry(inputs)?;
        let ops = self.operands(&g);
        chunk::plan(self.name(), g.batches, g.m, &ops, limit, align)
    }
}

impl Op for Matmul {
    fn name(&self) -> &'static str {
        if self.transpose_b {
            "linear"
        } else {
            "matmul"
        }
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Ok(self.geometry(inputs)?.out_shape)
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let Ok(g) = self.geometry(shapes) else {
            return;
        };
        let (a, b) = (inputs[0], inputs[1]);
        let bias = self.bias.then(|| inputs[2]);
        let residual = self.residual.then(|| inputs[self.num_inputs() - 1]);
        let (sk, sn) = self.b_strides(&g);
        let a_batch = if g.a_batched { g.m * g.k } else { 0 };
        let b_batch = if g.b_batched { g.k * g.n } else { 0 };
        for bi in 0..g.batches {
            for i in 0..g.m {
                let arow = &a[bi * a_batch + i * g.k..][..g.k];
                for j in 0..g.n {
                    let bcol = bi * b_batch + j * sn;
                    let mut s = 0f64;
                    for (kk, &x) in arow.iter().enumerate() {
                        s += x as f64 * b[bcol + kk * sk] as f64;
                    }
                    let o = (bi * g.m + i) * g.n + j;
                    let mut v = self.alpha as f64 * s;
                    if let Some(bias) = bias {
                        v += bias[j] as f64;
                    }
                    if let Some(r) = residual {
                        v += r[o] as f64;
                    }
                    out[o] = v as f32;
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
        let kernel = match self.kernel {
            Kernel::Tuned => {
                let (wx, wy) = self.tune(ctx, &g, inputs, out);
                Kernel::Tiles(wx, wy)
            }
            k => k,
        };
        self.record_kernel(ctx, rec, inputs, out, &g, kernel)
    }
}

/// The register-blocked candidates this adapter can run.
fn candidates(ctx: &GpuContext) -> Vec<(u32, u32)> {
    let l = &ctx.caps.limits;
    CANDIDATES
        .into_iter()
        .filter(|&(x, y)| {
            x * y <= l.max_compute_invocations_per_workgroup
                && x <= l.max_compute_workgroup_size_x
                && y <= l.max_compute_workgroup_size_y
        })
        .collect()
}

impl Matmul {
    /// The autotuner's workgroup for this product's shape bucket on this adapter.
    fn tune(
        &self,
        ctx: &GpuContext,
        g: &Geometry,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> (u32, u32) {
        let cands = candidates(ctx);
        let bucket = format!(
            "m{} n{} k{} t{} p{}",
            tune::bucket(g.batches * g.m),
            tune::bucket(g.n),
            tune::bucket(g.k),
            self.transpose_b as u8,
            // 0 f32, 1 packed f16 unpacked, 2 packed f16 read natively (matmul_f16.wgsl).
            self.packed_b as u8 * (1 + ctx.caps.shader_f16 as u8)
        );
        let key = tune::key(ctx, "matmul", &bucket);
        let mut scratch: Option<Vec<wgpu::Buffer>> = None;
        tune::choose(key, &cands, DEFAULT_TILES, |(wx, wy)| {
            let bufs = scratch.get_or_insert_with(|| {
                inputs
                    .iter()
                    .chain([out])
                    .map(|a| tune::scratch(ctx, a.buffer.size()))
                    .collect()
            });
            let ins: Vec<GpuArg<'_>> = inputs
                .iter()
                .zip(bufs.iter())
                .map(|(a, b)| GpuArg {
                    shape: a.shape,
                    buffer: b,
                })
                .collect();
            let o = GpuArg {
                shape: out.shape,
                buffer: &bufs[bufs.len() - 1],
            };
            let mut r = Recorder::new();
            self.record_kernel(ctx, &mut r, &ins, &o, g, Kernel::Tiles(wx, wy))?;
            tune::time_submit(ctx, r)
        })
    }

    fn record_kernel(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
        g: &Geometry,
        kernel: Kernel,
    ) -> Result<()> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|a| a.shape).collect();
        let g = g.clone();
        let ops = self.operands(&g);
        let (max_binding, align) = chunk::limits(ctx);
        let limit = chunk::binding_limit(max_binding, self.binding_cap);
        let chunks = self.plan_chunks(&shapes, limit, align)?;
        let (key, tile_n, tile_m) = match kernel {
            Kernel::Baseline => (
                PipelineKey::new(SHADER, "matmul_tiled16")
                    .with("PACKED_B", self.packed_b as u32 as f64),
                BASE_TILE,
                BASE_TILE,
            ),
            // Packed-f16 weights read natively where the device has `shader-f16`.
            Kernel::Tiles(wx, wy) if self.packed_b && ctx.caps.shader_f16 => (
                PipelineKey::new(SHADER_F16, "matmul")
                    .with("WG_X", wx as f64)
                    .with("WG_Y", wy as f64),
                BLOCK * wx as usize,
                BLOCK * wy as usize,
            ),
            Kernel::Tiles(wx, wy) => (
                PipelineKey::new(SHADER, "matmul")
                    .with("WG_X", wx as f64)
                    .with("WG_Y", wy as f64)
                    .with("PACKED_B", self.packed_b as u32 as f64),
                BLOCK * wx as usize,
                BLOCK * wy as usize,
            ),
            Kernel::Tuned => {
                let (wx, wy) = DEFAULT_TILES;
                return self.record_kernel(ctx, rec, inputs, out, &g, Kernel::Tiles(wx, wy));
            }
        };
        let pipeline = ctx.pipeline(
            &key.with("HAS_BIAS", self.bias as u32 as f64)
                .with("HAS_RESIDUAL", self.residual as u32 as f64),
            BindingLayout {
                inputs: 4,
                outputs: 1,
            },
        )?;
        let (sk, sn) = self.b_strides(&g);
        // Buffers in operand order: a, b, [bias], [residual], out.
        let mut buffers: Vec<&wgpu::Buffer> = inputs.iter().map(|a| a.buffer).collect();
        buffers.push(out.buffer);
        // Absent optional inputs are bound to 4 bytes of `a` (read-only, never read).
        let dummy = chunk::placeholder(inputs[0].buffer);
        let u = |v: usize| v as u32;
        for c in &chunks {
            let binds = c.slices(&ops, &buffers, g.m, align);
            let mut next = 2;
            let (bias, bias_off) = if self.bias {
                next += 1;
                binds[2]
            } else {
                (dummy, 0)
            };
            let (residual, res_off) = if self.residual {
                binds[next]
            } else {
                (dummy, 0)
            };
            let o = ops.len() - 1;
            let rows = c.rows.end - c.rows.start;
            let nb = c.batches.end - c.batches.start;
            let tiles_n = g.n.div_ceil(tile_n);
            let tiles_m = rows.div_ceil(tile_m);
            let workgroups = tiles_n as u64 * tiles_m as u64 * nb as u64;
            let workgroups = u32::try_from(workgroups).map_err(|_| Error::Limit {
                op: self.name(),
                what: format!("a dispatch of {workgroups} workgroups"),
                limit: "u32 workgroup count",
                value: u32::MAX as u64,
                needed: workgroups,
                hint: "use a smaller batch or resolution",
            })?;
            let params = MatmulParams {
                m: u(rows),
                n: u(g.n),
                k: u(g.k),
                batches: u(nb),
                a_off: binds[0].1,
                a_batch: if g.a_batched { u(g.m * g.k) } else { 0 },
                b_off: binds[1].1,
                b_batch: if g.b_batched { u(g.k * g.n) } else { 0 },
                b_stride_k: u(sk),
                b_stride_n: u(sn),
                bias_off,
                res_off,
                out_off: binds[o].1,
                tiles_n: u(tiles_n),
                tiles_m: u(tiles_m),
                alpha: self.alpha,
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[binds[0].0, binds[1].0, bias, residual],
                &[binds[o].0],
                fold_workgroups(workgroups, ctx.caps.max_workgroups()),
            )?;
        }
        Ok(())
    }
}
