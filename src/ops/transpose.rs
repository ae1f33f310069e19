//! Batched transpose of the last two dimensions: x (B, R, C) → (B, C, R) (`x.transpose(1, 2)`
//! made contiguous). diffusers' `Transformer2DModel` runs its blocks on tokens, (N, H·W, C),
//! between a channel-first group norm and the residual add: two of these per transformer.
//! Batch items too large for one storage binding are split over dispatches (see `chunk`).

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::{expect_inputs, expect_rank, grid_1d, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "transpose";
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct TransposeParams {
    pub total: u32,
    pub rows: u32,
    pub cols: u32,
    pub x_off: u32,
    pub out_off: u32,
    pub _pad: [u32; 3],
}

/// (B, R, C) → (B, C, R).
#[derive(Clone, Copy, Debug, Default)]
pub struct Transpose;

impl Op for Transpose {
    fn name(&self) -> &'static str {
        "transpose"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        expect_inputs(op, inputs, 1)?;
        let x = inputs[0];
        expect_rank(op, "input", x, 3, "(B, R, C)")?;
        if x.contains(&0) {
            return Err(Error::shape(op, "input", "no zero-sized dimension", x));
        }
        super::elementwise::check_u32(op, x)?;
        Ok(vec![x[0], x[2], x[1]])
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let (r, c) = (shapes[0][1], shapes[0][2]);
        for (xs, os) in inputs[0].chunks(r * c).zip(out.chunks_mut(r * c)) {
            for (ri, row) in xs.chunks(c).enumerate() {
                for (ci, &v) in row.iter().enumerate() {
                    os[ci * r + ri] = v;
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
        let s = inputs[0].shape;
        let (b, r, c) = (s[0], s[1], s[2]);
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, "transpose").with("WG", WG as f64),
            BindingLayout {
                inputs: 1,
                outputs: 1,
            },
        )?;
        let item = (r * c) as u64 * 4;
        let (xs, ys) = (Operand::items("x", item), Operand::items("out", item));
        let (max_binding, align) = chunk::limits(ctx);
        for part in chunk::plan(self.name(), b, 1, &[xs, ys], max_binding, align)? {
            let total = part.batches.len() * r * c;
            let (xb, ob) = (part.binding(&xs, 1, align), part.binding(&ys, 1, align));
            let params = TransposeParams {
                total: total as u32,
                rows: r as u32,
                cols: c as u32,
                x_off: xb.skip,
                out_off: ob.skip,
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
