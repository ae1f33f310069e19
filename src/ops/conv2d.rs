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
//! The GPU kernel is a direct, register-blocked convolution (see `shaders/conv2d.wgsl`). When
//! the input or output of the whole batch exceeds `maxStorageBufferBindingSize`, the batch is
//! split into several dispatches over per-sample ranges; if one sample alone does not fit,
//! `record` returns `Error::Limit` naming that limit. The CPU reference (`cpu`) sums in f64
//! and is written to be usable as a fallback backend, not only as a test oracle.

use bytemuck::{Pod, Zeroable};

use super::{expect_inputs, expect_rank, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, BufferSlice, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "conv2d";
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
    pub _pad: [u32; 2],
}

/// `out = conv2d(x, weight) [+ bias] [+ residual]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// (sh, sw).
    pub stride: [usize; 2],
    /// (ph, pw): zeros added on each side, as PyTorch's `padding`.
    pub padding: [usize; 2],
    /// A third input, the bias (Cout).
    pub has_bias: bool,
    /// A last input of the output's shape, added after the bias.
    pub has_residual: bool,
}

impl Conv2d {
    /// Square stride and padding, no bias, no residual.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride: [stride; 2],
            padding: [padding; 2],
            has_bias: false,
            has_residual: false,
        }
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
                            out[o + ox] = (v + b + r) as f32;
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
        let op = self.name();
        let shapes: Vec<&[usize]> = inputs.iter().map(|a| a.shape).collect();
        let g = self.geom(&shapes)?;
        let tc = tile_channels(g.cout);
        // A pointwise convolution (a GEMM) sees a 1 × (H·W) image: its pixel tiles then run
        // across rows, and no tile is partial except the last of each plane.
        let mut k = g;
        let pointwise = [g.kh, g.kw, g.sh, g.sw] == [1; 4]
            && g.ph == 0
            && g.pw == 0
            && g.h * g.w + 4 <= i32::MAX as usize;
        if pointwise {
            (k.h, k.w, k.ho, k.wo) = (1, g.h * g.w, 1, g.h * g.w);
        }
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, "conv2d")
                .with("WG", WG as f64)
                .with("TC", tc as f64)
                .with("HAS_BIAS", self.has_bias as u32 as f64)
                .with("HAS_RESIDUAL", self.has_residual as u32 as f64)
                .with("UNIT_SW", (g.sw == 1) as u32 as f64)
                .with("POINTWISE", pointwise as u32 as f64),
            // Always x, weight, bias, residual: unused slots are bound to another input.
            BindingLayout {
                inputs: 4,
                outputs: 1,
            },
        )?;
        let x_per = g.cin * g.h * g.w;
        let out_per = g.cout * g.ho * g.wo;
        let chunk = samples_per_dispatch(
            ctx,
            op,
            g.n,
            &[("the input", x_per), ("the output", out_per)],
        )?;
        let weight = whole(inputs[1].buffer, g.cout * g.cin * g.kh * g.kw);
        let bias = if self.has_bias {
            whole(inputs[2].buffer, g.cout)
        } else {
            weight
        };
        let tiles_x = k.wo.div_ceil(TP);
        for n0 in (0..g.n).step_by(chunk) {
            let count = chunk.min(g.n - n0);
            let (xs, x_off) = batch_slice(ctx, inputs[0].buffer, x_per, g.n, n0, count);
            let (os, out_off) = batch_slice(ctx, out.buffer, out_per, g.n, n0, count);
            let (rs, res_off) = if self.has_residual {
                let r = inputs[self.num_inputs() - 1].buffer;
                batch_slice(ctx, r, out_per, g.n, n0, count)
            } else {
                (xs, 0)
            };
            let (pix_wgs, grid) = grid(ctx, op, count * k.ho * tiles_x, g.cout.div_ceil(tc))?;
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
                x_off,
                out_off,
                res_off,
                _pad: [0; 2],
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[xs, weight, bias, rs],
                &[os],
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

/// A binding of the first `elems` f32 of `buffer` (pooled buffers may be larger than the
/// tensor, and only the tensor has to fit the binding limit).
pub(crate) fn whole(buffer: &wgpu::Buffer, elems: usize) -> BufferSlice<'_> {
    BufferSlice {
        buffer,
        offset: 0,
        size: Some((elems as u64 * 4).max(4)),
    }
}

/// How many samples one dispatch may cover so that every batch-major tensor's binding
/// (`(what, elements per sample)`) fits `maxStorageBufferBindingSize`. A tensor that fits
/// whole is bound whole; one that does not is bound per range of samples, starting at the
/// offset-alignment boundary below the range (see `batch_slice`), which costs up to
/// `alignment − 4` bytes of slack.
pub(crate) fn samples_per_dispatch(
    ctx: &GpuContext,
    op: &'static str,
    n: usize,
    tensors: &[(&str, usize)],
) -> Result<usize> {
    let max = ctx.caps.max_binding();
    let slack = offset_alignment(ctx) - 4;
    let mut chunk = n.max(1);
    for &(what, per) in tensors {
        let per_bytes = per as u64 * 4;
        if per_bytes * n as u64 <= max {
            continue;
        }
        let fit = max.saturating_sub(slack) / per_bytes;
        if fit == 0 {
            return Err(Error::Limit {
                op,
                what: format!(
                    "one sample of {what} ({per_bytes} bytes, plus up to {slack} bytes for offset alignment)"
                ),
                limit: "maxStorageBufferBindingSize",
                value: max,
                needed: per_bytes + slack,
                hint: "use a smaller resolution, or an adapter with larger storage bindings",
            });
        }
        chunk = chunk.min(fit as usize);
    }
    Ok(chunk)
}

fn offset_alignment(ctx: &GpuContext) -> u64 {
    (ctx.caps.limits.min_storage_buffer_offset_alignment as u64).max(4)
}

/// The binding for samples `[n0, n0 + count)` of a batch-major tensor of `per` elements per
/// sample and `n` samples, and the element offset of sample `n0` within that binding.
pub(crate) fn batch_slice<'a>(
    ctx: &GpuContext,
    buffer: &'a wgpu::Buffer,
    per: usize,
    n: usize,
    n0: usize,
    count: usize,
) -> (BufferSlice<'a>, u32) {
    let total = (per * n) as u64 * 4;
    if total <= ctx.caps.max_binding() {
        return (whole(buffer, per * n), (per * n0) as u32);
    }
    let align = offset_alignment(ctx);
    let start = (per * n0) as u64 * 4;
    let offset = start - start % align;
    let end = (per * (n0 + count)) as u64 * 4;
    let slice = BufferSlice {
        buffer,
        offset,
        size: Some(end - offset),
    };
    (slice, ((start - offset) / 4) as u32)
}

/// Workgroups for `tiles` pixel tiles of `WG` invocations times `blocks` channel blocks,
/// flattened and folded into (x, y). Returns the pixel workgroups per channel block too.
pub(crate) fn grid(
    ctx: &GpuContext,
    op: &'static str,
    tiles: usize,
    blocks: usize,
) -> Result<(u32, [u32; 3])> {
    let pix_wgs = (tiles as u64).div_ceil(WG as u64);
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
