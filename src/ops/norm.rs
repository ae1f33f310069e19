//! What GroupNorm and LayerNorm share: both normalise contiguous rows of a tensor and differ
//! only in how a row element finds its affine weight (see `shaders/norm.wgsl`). This module
//! holds the row description, the CPU reference and the GPU recording for both.

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::GpuArg;
use crate::error::Result;
use crate::gpu::{BindingLayout, BufferSlice, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "norm";
/// Threads per workgroup (a `const` in the shader: the reduction arrays are sized by it).
const WG: u32 = 256;
/// Elements per workgroup in the split strategy: 16 per thread.
const CHUNK: u32 = 16 * WG;
/// Rows longer than this take the split strategy (partial stats, combine, apply).
const ROW_MAX: usize = 2 * CHUNK as usize;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct NormParams {
    pub rows: u32,
    pub row_len: u32,
    pub row0: u32,
    pub groups: u32,
    pub inner: u32,
    pub cpg: u32,
    pub chunks: u32,
    pub eps: f32,
    pub off: u32,
    pub _pad: [u32; 3],
}

/// `rows` rows of `row_len` contiguous elements, normalised independently. Row element `j`
/// of row `r` uses affine entry `(r % groups)·cpg + j / inner`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    pub rows: usize,
    pub row_len: usize,
    pub groups: usize,
    pub inner: usize,
    pub cpg: usize,
    pub eps: f32,
    pub silu: bool,
}

impl Rows {
    fn affine_index(&self, r: usize, j: usize) -> usize {
        (r % self.groups) * self.cpg + j / self.inner
    }

    /// The reference: two-pass mean and biased variance accumulated in f64, the output
    /// computed in f64 and rounded once.
    pub fn cpu(&self, x: &[f32], weight: Option<&[f32]>, bias: Option<&[f32]>, out: &mut [f32]) {
        if self.row_len == 0 {
            return;
        }
        let n = self.row_len as f64;
        for (r, (xr, or)) in x
            .chunks(self.row_len)
            .zip(out.chunks_mut(self.row_len))
            .enumerate()
        {
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (var + self.eps as f64).sqrt();
            for (j, (&v, o)) in xr.iter().zip(or.iter_mut()).enumerate() {
                let a = self.affine_index(r, j);
                let mut y = (v as f64 - mean) * rstd;
                if let Some(w) = weight {
                    y *= w[a] as f64;
                }
                if let Some(b) = bias {
                    y += b[a] as f64;
                }
                if self.silu {
                    y /= 1.0 + (-y).exp();
                }
                *o = y as f32;
            }
        }
    }

    /// Record the dispatches for `inputs = [x, weight?, bias?]`. Rows are split into parts
    /// when a binding would exceed `maxStorageBufferBindingSize`; each part runs either
    /// `norm_rows` alone, or `norm_partial` + `norm_combine` + `norm_apply` for long rows.
    pub fn record(
        &self,
        op: &'static str,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let x = inputs[0].buffer;
        let weight = inputs.get(1).map(|a| a.buffer);
        let bias = inputs.get(2).map(|a| a.buffer);
        let out = out.buffer;
        if self.rows == 0 || self.row_len == 0 {
            return Ok(());
        }
        let split = self.row_len > ROW_MAX;
        let chunks = if split {
            self.row_len.div_ceil(CHUNK as usize)
        } else {
            1
        };
        let scratch_row_bytes = (chunks as u64 + 1) * 16;
        let (x_rows, out_rows) = (
            Operand::items("x", self.row_len as u64 * 4),
            Operand::items("out", self.row_len as u64 * 4),
        );
        let affine = |name| Operand::shared(name, (self.groups * self.cpg) as u64 * 4);
        let mut operands = vec![x_rows, out_rows];
        operands.extend(weight.map(|_| affine("weight")));
        operands.extend(bias.map(|_| affine("bias")));
        // The scratch is bound from offset 0 for every part and holds far less per row
        // than x (≤ 16 bytes per 4096 elements), so it is left out of the plan.
        let (max_binding, align) = chunk::limits(ctx);
        let parts = chunk::plan(op, self.rows, 1, &operands, max_binding, align)?;
        let part_rows = parts.iter().map(|c| c.batches.len()).max().unwrap_or(0);
        // One scratch buffer serves every part: the parts run one after another. The
        // recording holds it until it is submitted, so no other recording can reuse it
        // while these dispatches are still pending.
        let scratch = ctx.pool.get(
            "norm scratch",
            if split {
                part_rows as u64 * scratch_row_bytes
            } else {
                4
            },
        );
        let key = |entry: &'static str| {
            PipelineKey::new(SHADER, entry)
                .with("CHUNK", CHUNK as f64)
                .with("HAS_WEIGHT", weight.is_some() as u32 as f64)
                .with("HAS_BIAS", bias.is_some() as u32 as f64)
                .with("SILU", self.silu as u32 as f64)
        };
        let layout = BindingLayout {
            inputs: 3,
            outputs: 2,
        };
        for part in &parts {
            let rows = part.batches.len();
            // x and out have the same layout, so their bindings have the same skip.
            let xb = part.binding(&x_rows, 1, align);
            let params = NormParams {
                rows: rows as u32,
                row_len: self.row_len as u32,
                row0: part.batches.start as u32,
                groups: self.groups as u32,
                inner: self.inner as u32,
                cpg: self.cpg as u32,
                chunks: chunks as u32,
                eps: self.eps,
                off: xb.skip,
                _pad: [0; 3],
            };
            // Absent affine inputs are bound to `x` (all read-only: aliasing is allowed);
            // the shader never reads them because HAS_WEIGHT / HAS_BIAS are false.
            let ab = part.binding(&affine("weight"), 1, align);
            let ins = [
                xb.of(x),
                weight.map_or(chunk::placeholder(x), |w| ab.of(w)),
                bias.map_or(chunk::placeholder(x), |b| ab.of(b)),
            ];
            let s = if split {
                BufferSlice {
                    buffer: scratch.buffer(),
                    offset: 0,
                    size: Some(rows as u64 * scratch_row_bytes),
                }
            } else {
                BufferSlice::whole(scratch.buffer())
            };
            let outs = [part.binding(&out_rows, 1, align).of(out), s];
            let max = ctx.caps.max_workgroups();
            let fold = |n: usize| crate::gpu::fold_workgroups(n as u32, max);
            let bytes = bytemuck::bytes_of(&params);
            if !split {
                let pl = ctx.pipeline(&key("norm_rows"), layout)?;
                rec.dispatch(ctx, &pl, bytes, &ins, &outs, fold(rows))?;
                continue;
            }
            let pl = ctx.pipeline(&key("norm_partial"), layout)?;
            rec.dispatch(ctx, &pl, bytes, &ins, &outs, fold(rows * chunks))?;
            let pl = ctx.pipeline(&key("norm_combine"), layout)?;
            rec.dispatch(ctx, &pl, bytes, &ins, &outs, fold(rows))?;
            let pl = ctx.pipeline(&key("norm_apply"), layout)?;
            let n = rows * self.row_len;
            rec.dispatch(ctx, &pl, bytes, &ins, &outs, fold(n.div_ceil(WG as usize)))?;
        }
        rec.hold(std::sync::Arc::new(scratch));
        Ok(())
    }
}
