//! Concatenation along one axis (`torch.cat(tensors, dim)`), e.g. the UNet skip connection
//! `cat([h, skip], dim=1)` of (N, C1, H, W) and (N, C2, H, W) → (N, C1 + C2, H, W).
//!
//! Shapes: any number ≥ 1 of inputs of equal rank, equal in every dimension but `dim`
//! (negative `dim` counts from the end, as in PyTorch). Every input's share of the output
//! is `outer = Π shape[..dim]` contiguous blocks; with few blocks (channel concat of a
//! small batch) they are recorded as buffer-to-buffer copies, which need no kernel and no
//! storage binding; otherwise one `concat` dispatch per input scatters its blocks.

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::{grid_1d, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, GpuContext, PipelineKey, Recorder};
use crate::tensor::numel;

pub const SHADER: &str = "concat";
const WG: u32 = 256;
/// At most this many blocks per input are copied with `copy_buffer_to_buffer`.
const MAX_COPIES: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConcatParams {
    pub total: u32,
    pub block: u32,
    pub out_block: u32,
    pub offset: u32,
    pub x_off: u32,
    pub out_off: u32,
    pub _pad: [u32; 2],
}

#[derive(Clone, Copy, Debug)]
pub struct Concat {
    /// The axis; negative counts from the end.
    pub dim: isize,
}

impl Concat {
    pub fn new(dim: isize) -> Self {
        Self { dim }
    }

    /// Along channels of NCHW / NCL tensors (`dim = 1`).
    pub fn channels() -> Self {
        Self { dim: 1 }
    }

    fn axis(&self, rank: usize) -> Option<usize> {
        let d = if self.dim < 0 {
            self.dim + rank as isize
        } else {
            self.dim
        };
        (0..rank as isize).contains(&d).then_some(d as usize)
    }
}

impl Op for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        let Some(first) = inputs.first() else {
            return Err(Error::invalid(op, "needs at least one input"));
        };
        let Some(d) = self.axis(first.len()) else {
            return Err(Error::invalid(
                op,
                format!(
                    "dim {} is out of range for rank-{} inputs",
                    self.dim,
                    first.len()
                ),
            ));
        };
        let mut out = first.to_vec();
        for (i, s) in inputs.iter().enumerate().skip(1) {
            let same = s.len() == first.len()
                && s.iter()
                    .zip(first.iter())
                    .enumerate()
                    .all(|(k, (a, b))| k == d || a == b);
            if !same {
                let mut want: Vec<String> = first.iter().map(|v| v.to_string()).collect();
                want[d] = "*".into();
                return Err(Error::shape(
                    op,
                    format!("input {i}"),
                    format!("({}) like input 0 except along dim {d}", want.join(", ")),
                    s,
                ));
            }
            out[d] += s[d];
        }
        super::elementwise::check_u32(op, &out)?;
        Ok(out)
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let Some(d) = self.axis(shapes[0].len()) else {
            return;
        };
        let outer = numel(&shapes[0][..d]);
        let inner = numel(&shapes[0][d + 1..]);
        let out_block: usize = shapes.iter().map(|s| s[d]).sum::<usize>() * inner;
        let mut offset = 0;
        for (s, x) in shapes.iter().zip(inputs) {
            let block = s[d] * inner;
            for o in 0..outer {
                let at = o * out_block + offset;
                out[at..at + block].copy_from_slice(&x[o * block..(o + 1) * block]);
            }
            offset += block;
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
        let d = self.axis(out.shape.len()).unwrap_or(0);
        let outer = numel(&out.shape[..d]);
        let inner = numel(&out.shape[d + 1..]);
        let out_block = out.shape[d] * inner;
        let mut offset = 0;
        for x in inputs {
            let block = x.shape[d] * inner;
            if outer == 0 || block == 0 {
                continue;
            }
            if outer <= MAX_COPIES {
                for o in 0..outer {
                    rec.copy(
                        x.buffer,
                        (o * block) as u64 * 4,
                        out.buffer,
                        (o * out_block + offset) as u64 * 4,
                        block as u64 * 4,
                    );
                }
            } else {
                let pipeline = ctx.pipeline(
                    &PipelineKey::new(SHADER, "concat").with("WG", WG as f64),
                    BindingLayout {
                        inputs: 1,
                        outputs: 1,
                    },
                )?;
                let xs = Operand::items("x", block as u64 * 4);
                let ys = Operand::items("out", out_block as u64 * 4);
                let (max_binding, align) = chunk::limits(ctx);
                for part in chunk::plan(op, outer, 1, &[xs, ys], max_binding, align)? {
                    let total = part.batches.len() * block;
                    let (xb, ob) = (part.binding(&xs, 1, align), part.binding(&ys, 1, align));
                    let params = ConcatParams {
                        total: total as u32,
                        block: block as u32,
                        out_block: out_block as u32,
                        offset: offset as u32,
                        x_off: xb.skip,
                        out_off: ob.skip,
                        _pad: [0; 2],
                    };
                    rec.dispatch(
                        ctx,
                        &pipeline,
                        bytemuck::bytes_of(&params),
                        &[xb.of(x.buffer)],
                        &[ob.of(out.buffer)],
                        grid_1d(ctx, total, WG),
                    )?;
                }
            }
            offset += block;
        }
        Ok(())
    }
}
