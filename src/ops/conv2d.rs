//! 2-D convolution as in PyTorch's `nn.Conv2d` with `groups = 1` and zero padding, with an
//! optional bias and an optional residual added after it (UNet resnet blocks end in
//! `conv(h) + skip`, fused here to save a pass over the activation).
//!
//! Shapes (PyTorch layouts):
//! - `x`: (N, Cin, H, W)
//! - `weight`: (Cout, Cin, kh, kw)
//! - `bias` (if `has_bias`): (Cout)
//! - `residual` (if `has_residual`): (N, Cout, Ho, Wo)
//! - output: (N, Cout, Ho, Wo) with `Ho = (H + 2·ph − kh) / sh + 1`, `Wo` likewise.
//!
//! Inputs are passed in that order: `[x, weight]`, then `bias` if `has_bias`, then `residual`
//! if `has_residual`.
//!
//! The GPU kernel is a direct, register-blocked convolution (see `shaders/conv2d.wgsl`) whose
//! workgroup size and channel block the autotuner picks per adapter and shape bucket
//! (`tune`); a plain 16×16 workgroup-memory implicit GEMM is kept as `Kernel::Baseline` for
//! comparison. The epilogue also multiplies by `scale` (diffusers' resnet
//! `1 / output_scale_factor`), so a whole `(conv(h) + bias + skip) / factor` is one dispatch. When
//! the input or output of the whole batch exceeds `maxStorageBufferBindingSize`, the batch is
//! split into several dispatches over per-sample ranges (see `chunk`); if one sample alone
//! does not fit, `record` returns `Error::Limit` naming that limit. The CPU reference (`cpu`) sums in f64
//! and is written to be usable as a fallback backend, not only as a test oracle.

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::tune::{self, Kernel};
use super::{expect_inputs, expect_rank, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "conv2d";
/// The register-blocked `conv2d` kernel reading packed-f16 weights as `f16`
/// (`enable f16;`), chosen when the device has `shader-f16`.
pub const SHADER_F16: &str = "conv2d_f16";
/// Invocations per workgroup, in both convolution shaders.
pub(crate) const WG: u32 = 64;
/// Output pixels along a row per invocation (a `vec4` in the shader).
const TP: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Conv2dParams {
    pub n: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub ho: u32,
    pub wo: u32,
    pub kh: u32,
    pub kw: u32,
    pub sh: u32,
    pub sw: u32,
    pub ph: u32,
    pub pw: u32,
    pub tiles_x: u32,
    pub pix_wgs: u32,
    pub x_off: u32,
    pub out_off: u32,
    pub res_off: u32,
    pub scale: f32,
    pub _pad: u32,
}

/// Register-blocked candidates, (WG, TC), before the adapter's limits filter them.
const CANDIDATES: [(u32, u32); 5] = [(64, 8), (64, 4), (32, 8), (128, 8), (128, 4)];

/// `out = scale · (conv2d(x, weight) [+ bias] [+ residual])`, then `max(out, 0)` if `relu`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv2d {
    /// (sh, sw).
    pub stride: [usize; 2],
    /// (ph, pw): zeros added on each side, as PyTorch's `padding`.
    pub padding: [usize; 2],
    /// A third input, the bias (Cout).
    pub has_bias: bool,
    /// A last input of the output's shape, added after the bias.
    pub has_residual: bool,
    /// Multiplies the sum of convolution, bias and residual (1 in a plain convolution).
    pub scale: f32,
    /// Which kernel variant to record (`Kernel::Tuned` in normal use).
    pub kernel: Kernel,
    /// On the GPU the weight buffer holds f16 pairs packed in u32 words
    /// ([`crate::weights::pack_f16`]); the CPU reference reads f32 values already rounded
    /// through f16, so both backends compute the same thing.
    pub packed_weight: bool,
    /// `max(·, 0)` on the result, after the scale (a conv followed by ReLU, or TAESD's
    /// `relu(conv(h) + skip)`, in one pass).
    pub relu: bool,
}

impl Conv2d {
    /// Square stride and padding, no bias, no residual.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride: [stride; 2],
            padding: [padding; 2],
            has_bias: false,
            has_residual: false,
            scale: 1.0,
            kernel: Kernel::Tuned,
            packed_weight: false,
            relu: false,
        }
    }

    /// Apply ReLU to the result (see `relu`).
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }

    /// The weight is packed f16 on the GPU (see `packed_weight`).
    pub fn with_packed_weight(mut self, packed: bool) -> Self {
        self.packed_weight = packed;
        self
    }

    /// Multiply the result (after bias and residual) by `scale`.
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    /// The same convolution recorded with a given kernel variant.
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    pub fn with_bias(mut self) -> Self {
        self.has_bias = true;
        self
    }

    pub fn with_residual(mut self) -> Self {
        self.has_residual = true;
        self
    }

    /// How many input tensors the op takes.
    pub fn num_inputs(&self) -> usize {
        2 + self.has_bias as usize + self.has_residual as usize
    }

    fn geom(&self, inputs: &[&[usize]]) -> Result<Geom> {
        let op = self.name();
        expect_inputs(op, inputs, self.num_inputs())?;
        let (x, wt) = (inputs[0], inputs[1]);
        expect_rank(op, "input", x, 4, "(N, Cin, H, W)")?;
        expect_rank(op, "weight", wt, 4, "(Cout, Cin, kh, kw)")?;
        if x.contains(&0) {
            return Err(Error::shape(op, "input", "no zero dimension", x));
        }
        if wt[1] != x[1] || wt.contains(&0) {
            return Err(Error::shape(
                op,
                "weight",
                format!("(Cout, {}, kh, kw) with Cin = {} from the input and Cout, kh, kw ≥ 1 (groups = 1 only)", x[1], x[1]),
                wt,
            ));
        }
        let [sh, sw] = self.stride;
        let [ph, pw] = self.padding;
        if sh == 0 || sw == 0 {
            return Err(Error::invalid(
                op,
                format!("stride must be at least 1, got {:?}", self.stride),
            ));
        }
        let (n, cin, h, w) = (x[0], x[1], x[2], x[3]);
        let (cout, kh, kw) = (wt[0], wt[2], wt[3]);
        // The shader indexes rows and columns with i32, up to 4 strides past the last window.
        let fits = |size: usize, pad: usize, stride: usize| {
            size as u128 + 2 * pad as u128 + 4 * stride as u128 <= i32::MAX as u128
        };
        if !fits(h, ph, sh) || !fits(w, pw, sw) {
            return Err(Error::invalid(
                op,
                format!(
                    "padding {:?} and stride {:?} are too large for an input of {h}×{w}",
                    self.padding, self.stride
                ),
            ));
        }
        if h + 2 * ph < kh || w + 2 * pw < kw {
            return Err(Error::shape(
                op,
                "weight",
                format!(
                    "a kernel no larger than the padded input ({}×{})",
                    h + 2 * ph,
                    w + 2 * pw
                ),
                wt,
            ));
        }
        let ho = (h + 2 * ph - kh) / sh + 1;
        let wo = (w + 2 * pw - kw) / sw + 1;
        Ok(Geom {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            ho,
            wo,
        })
    }
}

/// The sizes of one validated convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    ho: usize,
    wo: usize,
}

impl Op for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        let g = self.geom(inputs)?;
        let out = vec![g.n, g.cout, g.ho, g.wo];
        if self.has_bias && inputs[2] != [g.cout] {
            return Err(Error::shape(
                op,
                "bias",
                format!("({},)", g.cout),
                inputs[2],
            ));
        }
        if self.has_residual {
            let r = inputs[self.num_inputs() - 1];
            if r != out.as_slice() {
                return Err(Error::shape(
                    op,
                    "residual",
                    format!("the output shape {}", crate::error::ShapeText(out.clone())),
                    r,
                ));
            }
        }
        for s in [inputs[0], inputs[1], &out] {
            super::elementwise::check_u32(op, s)?;
        }
        Ok(out)
    }

    /// Direct convolution, one output row of up to `CB` channels at a time: the row
    /// accumulators (f64, so the reference is exact to f32 rounding whatever the order of
    /// the GPU's f32 sum) stay in L1, each input row is streamed once per kernel tap and
    /// channel block, and the innermost loop is a branch-free, contiguous (for stride 1)
    /// multiply-add over the output columns whose window is inside the image — the
    /// padding is handled by clipping that column range, never per element.
    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let Ok(g) = self.geom(shapes) else {
            return;
        };
        let (x, wt) = (inputs[0], inputs[1]);
        let bias = self.has_bias.then(|| inputs[2]);
        let res = self.has_residual.then(|| inputs[self.num_inputs() - 1]);
        const CB: usize = 8;
        let mut acc = vec![0f64; CB * g.wo];
        // Output columns [lo, hi) whose tap kx reads inside the row: 0 ≤ ox·sw + kx − pw < W.
        let cols: Vec<(usize, usize)> = (0..g.kw)
            .map(|kx| {
                let lo = g.pw.saturating_sub(kx).div_ceil(g.sw);
                let hi = (g.w + g.pw)
                    .checked_sub(kx)
                    .map_or(0, |e| e.div_ceil(g.sw))
                    .min(g.wo);
                (lo, hi.max(lo))
            })
            .collect();
        for n in 0..g.n {
            for co0 in (0..g.cout).step_by(CB) {
                let cb = CB.min(g.cout - co0);
                for oy in 0..g.ho {
                    acc.fill(0.0);
                    for ci in 0..g.cin {
                        for ky in 0..g.kh {
                            let Some(iy) = (oy * g.sh + ky).checked_sub(g.ph) else {
                                continue;
                            };
                            if iy >= g.h {
                                continue;
                            }
                            let xrow = &x[((n * g.cin + ci) * g.h + iy) * g.w..][..g.w];
                            for (kx, &(lo, hi)) in cols.iter().enumerate() {
                                if lo == hi {
                                    continue;
                                }
                                // First input column read: lo·sw + kx − pw ≥ 0 by choice of lo.
                                let ix0 = lo * g.sw + kx - g.pw;
                                for c in 0..cb {
                                    let wv = wt[(((co0 + c) * g.cin + ci) * g.kh + ky) * g.kw + kx]
                                        as f64;
                                    let a = &mut acc[c * g.wo + lo..c * g.wo + hi];
                                    if g.sw == 1 {
                                        for (a, &xv) in a.iter_mut().zip(&xrow[ix0..]) {
                                            *a += wv * xv as f64;
                                        }
                                    } else {
                                        for (a, &xv) in
                                            a.iter_mut().zip(xrow[ix0..].iter().step_by(g.sw))
                                        {
                                            *a += wv * xv as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    for c in 0..cb {
                        let co = co0 + c;
                        let b = bias.map_or(0.0, |b| b[co] as f64);
                        let o = ((n * g.cout + co) * g.ho + oy) * g.wo;
                        let a = &acc[c * g.wo..(c + 1) * g.wo];
                        for (ox, &v) in a.iter().enumerate() {
                            let r = res.map_or(0.0, |r| r[o + ox] as f64);
                            let y = ((v + b + r) * self.scale as f64) as f32;
                            out[o + ox] = if self.relu { y.max(0.0) } else { y };
                        }
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
        let g = self.geom(&shapes)?;
        let kernel = match self.kernel {
            Kernel::Tuned => {
                let (wg, tc) = self.tune(ctx, &g, inputs, out);
                Kernel::Tiles(wg, tc)
            }
            k => k,
        };
        self.record_kernel(ctx, rec, inputs, out, g, kernel)
    }
}

/// The default (WG, TC) when tuning is off.
fn default_tiles(cout: usize) -> (u32, u32) {
    (WG, tile_channels(cout) as u32)
}

impl Conv2d {
    /// The autotuner's (WG, TC) for this convolution's shape bucket on this adapter.
    fn tune(
        &self,
        ctx: &GpuContext,
        g: &Geom,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> (u32, u32) {
        let max_inv = ctx.caps.limits.max_compute_invocations_per_workgroup;
        let max_x = ctx.caps.limits.max_compute_workgroup_size_x;
        let cands: Vec<(u32, u32)> = CANDIDATES
            .into_iter()
            .filter(|&(wg, tc)| wg <= max_inv && wg <= max_x && (tc == 4 || g.cout > 4))
            .collect();
        let bucket = format!(
            "cin{} cout{} k{}x{} s{}x{} px{} p{}",
            tune::bucket(g.cin),
            tune::bucket(g.cout),
            g.kh,
            g.kw,
            g.sh,
            g.sw,
            tune::bucket(g.n * g.ho * g.wo),
            // 0 f32, 1 packed f16 unpacked, 2 packed f16 read natively (conv2d_f16.wgsl).
            self.packed_weight as u8 * (1 + ctx.caps.shader_f16 as u8)
        );
        let key = tune::key(ctx, "conv2d", &bucket);
        let mut scratch: Option<Vec<wgpu::Buffer>> = None;
        tune::choose(key, &cands, default_tiles(g.cout), |(wg, tc)| {
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
            self.record_kernel(ctx, &mut r, &ins, &o, *g, Kernel::Tiles(wg, tc))?;
            tune::time_submit(ctx, r)
        })
    }

    fn record_kernel(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
        g: Geom,
        kernel: Kernel,
    ) -> Result<()> {
        let op = self.name();
        let (wg, tc) = match kernel {
            Kernel::Tiles(wg, tc) => (wg, tc as usize),
            Kernel::Baseline => (256, 16),
            Kernel::Tuned => {
                let (wg, tc) = default_tiles(g.cout);
                (wg, tc as usize)
            }
        };
        let baseline = kernel == Kernel::Baseline;
        // A pointwise convolution (a GEMM) sees a 1 × (H·W) image: its pixel tiles then run
        // across rows, and no tile is partial except the last of each plane.
        let mut k = g;
        let pointwise = !baseline
            && [g.kh, g.kw, g.sh, g.sw] == [1; 4]
            && g.ph == 0
            && g.pw == 0
            && g.h * g.w + 4 <= i32::MAX as usize;
        if pointwise {
            (k.h, k.w, k.ho, k.wo) = (1, g.h * g.w, 1, g.h * g.w);
        }
        // Packed-f16 weights are read natively where the device has `shader-f16`
        // (conv2d_f16.wgsl, no PACKED_W there), through `unpack2x16float` otherwise.
        let native_f16 = !baseline && self.packed_weight && ctx.caps.shader_f16;
        let key = if baseline {
            PipelineKey::new(SHADER, "conv2d_tiled16")
        } else {
            PipelineKey::new(if native_f16 { SHADER_F16 } else { SHADER }, "conv2d")
                .with("WG", wg as f64)
                .with("TC", tc as f64)
                .with("UNIT_SW", (g.sw == 1) as u32 as f64)
                .with("POINTWISE", pointwise as u32 as f64)
        };
        let key = match native_f16 {
            true => key,
            false => key.with("PACKED_W", self.packed_weight as u32 as f64),
        };
        let pipeline = ctx.pipeline(
            &key.with("HAS_BIAS", self.has_bias as u32 as f64)
                .with("HAS_RESIDUAL", self.has_residual as u32 as f64)
                .with("RELU", self.relu as u32 as f64),
            // Always x, weight, bias, residual: unused slots are bound to another input.
            BindingLayout {
                inputs: 4,
                outputs: 1,
            },
        )?;
        // In input order, then out (like the buffers).
        let y = Operand::items("out", (g.cout * g.ho * g.wo) as u64 * 4);
        let bias = Operand::shared("bias", g.cout as u64 * 4);
        let residual = Operand {
            name: "residual",
            ..y
        };
        let mut operands = vec![
            Operand::items("x", (g.cin * g.h * g.w) as u64 * 4),
            Operand::shared(
                "weight",
                weight_bytes(g.cout * g.cin * g.kh * g.kw, self.packed_weight),
            ),
        ];
        operands.extend(self.has_bias.then_some(bias));
        operands.extend(self.has_residual.then_some(residual));
        operands.push(y);
        let buffers: Vec<_> = inputs.iter().chain([out]).map(|a| a.buffer).collect();
        let (max_binding, align) = chunk::limits(ctx);
        let tiles_x = k.wo.div_ceil(TP);
        let base_tiles = |count: usize| (count * g.ho * g.wo).div_ceil(16);
        for c in chunk::plan(op, g.n, 1, &operands, max_binding, align)? {
            let count = c.batches.len();
            let b = c.slices(&operands, &buffers, 1, align);
            let (x, weight, y) = (b[0], b[1], b[b.len() - 1]);
            // Absent inputs' slots are bound to the weight and x (never read).
            let bias = if self.has_bias { b[2] } else { weight };
            let res = if self.has_residual {
                b[b.len() - 2]
            } else {
                (x.0, 0)
            };
            // The baseline's grid: 16-pixel tiles × 16-channel tiles, one workgroup each.
            let (tiles_x, (pix_wgs, grid)) = if baseline {
                let t = base_tiles(count);
                (t, grid_wg(ctx, op, t, g.cout.div_ceil(16), 1)?)
            } else {
                (
                    tiles_x,
                    grid_wg(ctx, op, count * k.ho * tiles_x, g.cout.div_ceil(tc), wg)?,
                )
            };
            let params = Conv2dParams {
                n: count as u32,
                cin: g.cin as u32,
                h: k.h as u32,
                w: k.w as u32,
                cout: g.cout as u32,
                ho: k.ho as u32,
                wo: k.wo as u32,
                kh: g.kh as u32,
                kw: g.kw as u32,
                sh: g.sh as u32,
                sw: g.sw as u32,
                ph: g.ph as u32,
                pw: g.pw as u32,
                tiles_x: tiles_x as u32,
                pix_wgs,
                x_off: x.1,
                out_off: y.1,
                res_off: res.1,
                scale: self.scale,
                _pad: 0,
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[x.0, weight.0, bias.0, res.0],
                &[y.0],
                grid,
            )?;
        }
        Ok(())
    }
}

/// Output channels per invocation (`TC` in the shaders): 8, or 4 for the 3- and 4-channel
/// convolutions at the ends of a UNet, where a block of 8 would be half idle.
pub(crate) fn tile_channels(cout: usize) -> usize {
    if cout <= 4 {
        4
    } else {
        8
    }
}

/// Workgroups for `tiles` pixel tiles of `WG` invocations times `blocks` channel blocks,
/// flattened and folded into (x, y). Returns the pixel workgroups per channel block too.
pub(crate) fn grid(
    ctx: &GpuContext,
    op: &'static str,
    tiles: usize,
    blocks: usize,
) -> Result<(u32, [u32; 3])> {
    grid_wg(ctx, op, tiles, blocks, WG)
}

/// `grid` for workgroups of `wg` invocations.
fn grid_wg(
    ctx: &GpuContext,
    op: &'static str,
    tiles: usize,
    blocks: usize,
    wg: u32,
) -> Result<(u32, [u32; 3])> {
    let pix_wgs = (tiles as u64).div_ceil(wg as u64);
    let total = pix_wgs * blocks as u64;
    let max = ctx.caps.max_workgroups() as u64;
    if total > (max * max).min(u32::MAX as u64) {
        return Err(Error::Limit {
            op,
            what: format!("a grid of {total} workgroups"),
            limit: "maxComputeWorkgroupsPerDimension",
            value: max,
            needed: total.div_ceil(max),
            hint: "use a smaller batch or resolution",
        });
    }
    Ok((
        pix_wgs as u32,
        crate::gpu::fold_workgroups(total as u32, max as u32),
    ))
}

/// Bytes of a weight of `n` elements as f32, or as f16 pairs in u32 words (odd `n` padded).
pub(crate) fn weight_bytes(n: usize, packed: bool) -> u64 {
    if packed {
        n.div_ceil(2) as u64 * 4
    } else {
        n as u64 * 4
    }
}
