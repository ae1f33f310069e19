//! Transposed 2-D convolution (PyTorch's `nn.ConvTranspose2d`) for the one case diffusion
//! models use it for: stride equal to the kernel size and no padding, i.e. patch
//! un-embedding, where every input pixel writes its own kh × kw block of the output.
//! Upsampling in UNets is nearest-neighbour + conv, so the overlapping case is not needed.
//!
//! Shapes (PyTorch layouts):
//! - `x`: (N, Cin, H, W)
//! - `weight`: (Cin, Cout, kh, kw) (note: `in` first, unlike `Conv2d`)
//! - `bias` (if `has_bias`): (Cout)
//! - output: (N, Cout, H·kh, W·kw)
//!
//! The GPU kernel (`shaders/conv_transpose2d.wgsl`) is register-blocked like `Conv2d`, and
//! big batches are split over dispatches the same way.

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::conv2d::{grid, tile_channels};
use super::{expect_inputs, expect_rank, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "conv_transpose2d";
/// Input pixels along a row per invocation (a `vec4` in the shader).
const TP: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvTranspose2dParams {
    pub n: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub kh: u32,
    pub kw: u32,
    pub tiles_x: u32,
    pub pix_wgs: u32,
    pub x_off: u32,
    pub out_off: u32,
    pub _pad: u32,
}

/// `out = conv_transpose2d(x, weight, stride = kernel) [+ bias]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2d {
    /// (sh, sw); must equal the kernel size (kh, kw).
    pub stride: [usize; 2],
    /// Must be (0, 0).
    pub padding: [usize; 2],
    /// A third input, the bias (Cout).
    pub has_bias: bool,
}

impl ConvTranspose2d {
    /// Square stride (= kernel size), no padding, no bias.
    pub fn new(stride: usize) -> Self {
        Self {
            stride: [stride; 2],
            padding: [0; 2],
            has_bias: false,
        }
    }

    pub fn with_bias(mut self) -> Self {
        self.has_bias = true;
        self
    }

    /// `(n, cin, h, w, cout, kh, kw)`, validated.
    fn geom(&self, inputs: &[&[usize]]) -> Result<[usize; 7]> {
        let op = self.name();
        expect_inputs(op, inputs, 2 + self.has_bias as usize)?;
        let (x, wt) = (inputs[0], inputs[1]);
        expect_rank(op, "input", x, 4, "(N, Cin, H, W)")?;
        expect_rank(op, "weight", wt, 4, "(Cin, Cout, kh, kw)")?;
        if x.contains(&0) {
            return Err(Error::shape(op, "input", "no zero dimension", x));
        }
        if wt[0] != x[1] || wt.contains(&0) {
            return Err(Error::shape(
                op,
                "weight",
                format!(
                    "({}, Cout, kh, kw) with Cin = {} from the input and Cout, kh, kw ≥ 1 (ConvTranspose2d layout, groups = 1)",
                    x[1], x[1]
                ),
                wt,
            ));
        }
        if self.stride != [wt[2], wt[3]] {
            return Err(Error::invalid(
                op,
                format!(
                    "only stride == kernel size (non-overlapping patches) is supported; got stride {:?} for a {}×{} kernel",
                    self.stride, wt[2], wt[3]
                ),
            ));
        }
        if self.padding != [0, 0] {
            return Err(Error::invalid(
                op,
                format!(
                    "only padding 0 is supported (stride == kernel size), got {:?}",
                    self.padding
                ),
            ));
        }
        Ok([x[0], x[1], x[2], x[3], wt[1], wt[2], wt[3]])
    }
}

impl Op for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "conv_transpose2d"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        let [n, _, h, w, cout, kh, kw] = self.geom(inputs)?;
        if self.has_bias && inputs[2] != [cout] {
            return Err(Error::shape(op, "bias", format!("({cout},)"), inputs[2]));
        }
        let (ho, wo) = (h as u128 * kh as u128, w as u128 * kw as u128);
        let numel = n as u128 * cout as u128 * ho * wo;
        if numel > u32::MAX as u128 {
            return Err(Error::shape(
                op,
                "input",
                format!("an output of fewer than 2^32 elements (this one has {numel})"),
                inputs[0],
            ));
        }
        let out = vec![n, cout, h * kh, w * kw];
        for s in [inputs[0], inputs[1]] {
            super::elementwise::check_u32(op, s)?;
        }
        Ok(out)
    }

    /// For each (sample, input row): every input channel's row is multiplied into an f64
    /// band `acc[co][ky][kx][ix]` (contiguous in `ix`, so the inner loop is an axpy over the
    /// row), while the weight is streamed in its stored order; the band is then scattered
    /// into the kh output rows. f64 accumulation makes the reference exact to f32 rounding.
    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let Ok([n, cin, h, w, cout, kh, kw]) = self.geom(shapes) else {
            return;
        };
        let (x, wt) = (inputs[0], inputs[1]);
        let bias = self.has_bias.then(|| inputs[2]);
        let taps = cout * kh * kw;
        let (ho, wo) = (h * kh, w * kw);
        let mut acc = vec![0f64; taps * w];
        for s in 0..n {
            for iy in 0..h {
                acc.fill(0.0);
                for ci in 0..cin {
                    let xrow = &x[((s * cin + ci) * h + iy) * w..][..w];
                    let wrow = &wt[ci * taps..][..taps];
                    for (a, &wv) in acc.chunks_exact_mut(w).zip(wrow) {
                        let wv = wv as f64;
                        for (a, &xv) in a.iter_mut().zip(xrow) {
                            *a += wv * xv as f64;
                        }
                    }
                }
                for co in 0..cout {
                    let b = bias.map_or(0.0, |b| b[co] as f64);
                    for ky in 0..kh {
                        let orow = &mut out[((s * cout + co) * ho + iy * kh + ky) * wo..][..wo];
                        for kx in 0..kw {
                            let a = &acc[((co * kh + ky) * kw + kx) * w..][..w];
                            for (ix, &v) in a.iter().enumerate() {
                                orow[ix * kw + kx] = (v + b) as f32;
                            }
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
        let [n, cin, h, w, cout, kh, kw] = self.geom(&shapes)?;
        let tc = tile_channels(cout);
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, "conv_transpose2d")
                .with("WG", super::conv2d::WG as f64)
                .with("TC", tc as f64)
                .with("HAS_BIAS", self.has_bias as u32 as f64),
            // Always x, weight, bias: without a bias the weight fills the slot.
            BindingLayout {
                inputs: 3,
                outputs: 1,
            },
        )?;
        // In input order, then out (like the buffers).
        let bias = Operand::shared("bias", cout as u64 * 4);
        let mut operands = vec![
            Operand::items("x", (cin * h * w) as u64 * 4),
            Operand::shared("weight", (cin * cout * kh * kw) as u64 * 4),
        ];
        operands.extend(self.has_bias.then_some(bias));
        operands.push(Operand::items("out", (cout * h * kh * w * kw) as u64 * 4));
        let buffers: Vec<_> = inputs.iter().chain([out]).map(|a| a.buffer).collect();
        let (max_binding, align) = chunk::limits(ctx);
        let tiles_x = w.div_ceil(TP);
        for c in chunk::plan(op, n, 1, &operands, max_binding, align)? {
            let count = c.batches.len();
            let b = c.slices(&operands, &buffers, 1, align);
            let (x, weight, y) = (b[0], b[1], b[b.len() - 1]);
            let bias = if self.has_bias { b[2] } else { weight };
            let tiles = count * h * kh * tiles_x * kw;
            let (pix_wgs, grid) = grid(ctx, op, tiles, cout.div_ceil(tc))?;
            let params = ConvTranspose2dParams {
                n: count as u32,
                cin: cin as u32,
                h: h as u32,
                w: w as u32,
                cout: cout as u32,
                kh: kh as u32,
                kw: kw as u32,
                tiles_x: tiles_x as u32,
                pix_wgs,
                x_off: x.1,
                out_off: y.1,
                _pad: 0,
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[x.0, weight.0, bias.0],
                &[y.0],
                grid,
            )?;
        }
        Ok(())
    }
}
