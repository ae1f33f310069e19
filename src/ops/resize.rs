//! Nearest-neighbour resize to a given size, x (N, C, H, W) → (N, C, Ho, Wo), as
//! `F.interpolate(x, size=(Ho, Wo), mode="nearest")`: source index `min(⌊d · (in/out)⌋,
//! in − 1)` with the scale and the product in f32, like PyTorch's CPU kernel. diffusers'
//! `Upsample2D` takes this path (`output_size`) when a `UNet2DConditionModel` input is not a
//! multiple of the model's total downsampling, so each upsampled map matches its skip.

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::{expect_inputs, expect_rank, grid_1d, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "resize";
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ResizeParams {
    pub total: u32,
    pub h: u32,
    pub w: u32,
    pub ho: u32,
    pub wo: u32,
    pub x_off: u32,
    pub out_off: u32,
    pub scale_h: f32,
    pub scale_w: f32,
    pub _pad: [u32; 3],
}

/// (N, C, H, W) → (N, C, height, width), nearest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeNearest {
    pub height: usize,
    pub width: usize,
}

impl ResizeNearest {
    pub fn new(height: usize, width: usize) -> Self {
        Self { height, width }
    }
}

fn source(d: usize, scale: f32, n: usize) -> usize {
    ((d as f32 * scale).floor() as usize).min(n - 1)
}

impl Op for ResizeNearest {
    fn name(&self) -> &'static str {
        "resize_nearest"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        expect_inputs(op, inputs, 1)?;
        let x = inputs[0];
        expect_rank(op, "input", x, 4, "(N, C, H, W)")?;
        if x.contains(&0) || self.height == 0 || self.width == 0 {
            return Err(Error::shape(
                op,
                "input",
                format!(
                    "non-empty (N, C, H, W) and a non-empty target size ({}, {})",
                    self.height, self.width
                ),
                x,
            ));
        }
        let out = vec![x[0], x[1], self.height, self.width];
        super::elementwise::check_u32(op, &out)?;
        Ok(out)
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let (h, w) = (shapes[0][2], shapes[0][3]);
        let (ho, wo) = (self.height, self.width);
        let (sh, sw) = (h as f32 / ho as f32, w as f32 / wo as f32);
        for (xp, op) in inputs[0].chunks(h * w).zip(out.chunks_mut(ho * wo)) {
            for (oy, row) in op.chunks_mut(wo).enumerate() {
                let sy = source(oy, sh, h);
                for (ox, o) in row.iter_mut().enumerate() {
                    *o = xp[sy * w + source(ox, sw, w)];
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
        let i = inputs[0].shape;
        let (h, w, ho, wo) = (i[2], i[3], self.height, self.width);
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, "resize_nearest").with("WG", WG as f64),
            BindingLayout {
                inputs: 1,
                outputs: 1,
            },
        )?;
        let xs = Operand::items("x", (h * w) as u64 * 4);
        let ys = Operand::items("out", (ho * wo) as u64 * 4);
        let (max_binding, align) = chunk::limits(ctx);
        for part in chunk::plan(self.name(), i[0] * i[1], 1, &[xs, ys], max_binding, align)? {
            let total = part.batches.len() * ho * wo;
            let (xb, ob) = (part.binding(&xs, 1, align), part.binding(&ys, 1, align));
            let params = ResizeParams {
                total: total as u32,
                h: h as u32,
                w: w as u32,
                ho: ho as u32,
                wo: wo as u32,
                x_off: xb.skip,
                out_off: ob.skip,
                scale_h: h as f32 / ho as f32,
                scale_w: w as f32 / wo as f32,
                _pad: [0; 3],
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[xb.of(inputs[0].buffer)],
                &[ob.of(out.buffer)],
                grid_1d(ctx, total, WG),
            )?;
        }
        Ok(())
    }
}
