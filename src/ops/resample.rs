//! 2× resampling of NCHW feature maps between UNet resolutions.
//!
//! - `Upsample2x`: nearest-neighbour, x (N, C, H, W) → (N, C, 2H, 2W), as
//!   `F.interpolate(x, scale_factor=2.0, mode="nearest")` in diffusers' `Upsample2D` and
//!   guided-diffusion's `Upsample` (the conv that follows is a separate op).
//! - `AvgPool2x`: `nn.AvgPool2d(kernel_size=2, stride=2)`, x (N, C, H, W) →
//!   (N, C, ⌊H/2⌋, ⌊W/2⌋) (PyTorch's floor mode drops an odd last row or column), as in
//!   `Downsample2D(use_conv=False)` and guided-diffusion's `Downsample(use_conv=False)`.

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::{expect_inputs, expect_rank, grid_1d, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "resample";
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ResampleParams {
    pub total: u32,
    pub h: u32,
    pub w: u32,
    pub ho: u32,
    pub wo: u32,
    pub x_off: u32,
    pub out_off: u32,
    pub _pad: u32,
}

/// Nearest-neighbour 2× upsampling, (N, C, H, W) → (N, C, 2H, 2W).
#[derive(Clone, Copy, Debug, Default)]
pub struct Upsample2x;

/// 2×2 average pooling with stride 2, (N, C, H, W) → (N, C, ⌊H/2⌋, ⌊W/2⌋).
#[derive(Clone, Copy, Debug, Default)]
pub struct AvgPool2x;

fn check_nchw(op: &'static str, inputs: &[&[usize]]) -> Result<()> {
    expect_inputs(op, inputs, 1)?;
    expect_rank(op, "input", inputs[0], 4, "(N, C, H, W)")
}

/// Record one pass over `planes = N·C` image planes, split into parts when a binding would
/// exceed the adapter's limit.
fn record_planes(
    op: &'static str,
    entry: &'static str,
    ctx: &GpuContext,
    rec: &mut Recorder,
    input: &GpuArg<'_>,
    out: &GpuArg<'_>,
) -> Result<()> {
    let (i, o) = (input.shape, out.shape);
    let planes = i[0] * i[1];
    let (in_plane, out_plane) = (i[2] * i[3], o[2] * o[3]);
    if planes * out_plane == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline(
        &PipelineKey::new(SHADER, entry).with("WG", WG as f64),
        BindingLayout {
            inputs: 1,
            outputs: 1,
        },
    )?;
    let x = Operand::items("x", in_plane as u64 * 4);
    let y = Operand::items("out", out_plane as u64 * 4);
    let (max_binding, align) = chunk::limits(ctx);
    for part in chunk::plan(op, planes, 1, &[x, y], max_binding, align)? {
        let total = part.batches.len() * out_plane;
        let (xb, ob) = (part.binding(&x, 1, align), part.binding(&y, 1, align));
        let params = ResampleParams {
            total: total as u32,
            h: i[2] as u32,
            w: i[3] as u32,
            ho: o[2] as u32,
            wo: o[3] as u32,
            x_off: xb.skip,
            out_off: ob.skip,
            _pad: 0,
        };
        rec.dispatch(
            ctx,
            &pipeline,
            bytemuck::bytes_of(&params),
            &[xb.of(input.buffer)],
            &[ob.of(out.buffer)],
            grid_1d(ctx, total, WG),
        )?;
    }
    Ok(())
}

impl Op for Upsample2x {
    fn name(&self) -> &'static str {
        "upsample2x"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        check_nchw(self.name(), inputs)?;
        let x = inputs[0];
        let out = vec![x[0], x[1], 2 * x[2], 2 * x[3]];
        super::elementwise::check_u32(self.name(), &out)?;
        Ok(out)
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let (h, w) = (shapes[0][2], shapes[0][3]);
        if h * w == 0 {
            return;
        }
        for (xp, op) in inputs[0].chunks(h * w).zip(out.chunks_mut(4 * h * w)) {
            for (oy, orow) in op.chunks_mut(2 * w).enumerate() {
                for (ox, o) in orow.iter_mut().enumerate() {
                    *o = xp[(oy / 2) * w + ox / 2];
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
        record_planes(self.name(), "upsample2x", ctx, rec, &inputs[0], out)
    }
}

impl Op for AvgPool2x {
    fn name(&self) -> &'static str {
        "avg_pool2x"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        check_nchw(self.name(), inputs)?;
        let x = inputs[0];
        if x[2] < 2 || x[3] < 2 {
            return Err(Error::shape(
                self.name(),
                "input",
                "(N, C, H, W) with H >= 2 and W >= 2",
                x,
            ));
        }
        super::elementwise::check_u32(self.name(), x)?;
        Ok(vec![x[0], x[1], x[2] / 2, x[3] / 2])
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let (h, w) = (shapes[0][2], shapes[0][3]);
        let (ho, wo) = (h / 2, w / 2);
        if ho * wo == 0 {
            return;
        }
        for (xp, op) in inputs[0].chunks(h * w).zip(out.chunks_mut(ho * wo)) {
            for oy in 0..ho {
                for ox in 0..wo {
                    let b = 2 * oy * w + 2 * ox;
                    // PyTorch's summation order; * 0.25 equals / 4 exactly.
                    op[oy * wo + ox] = (((xp[b] + xp[b + 1]) + xp[b + w]) + xp[b + w + 1]) * 0.25;
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
        record_planes(self.name(), "avg_pool2x", ctx, rec, &inputs[0], out)
    }
}
