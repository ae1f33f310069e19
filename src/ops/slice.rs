//! Items `start .. start + len` of the first axis, `x[start:start + len]`: x (N, …) →
//! (len, …). The items are one contiguous byte range, so the GPU side is a single
//! buffer-to-buffer copy (no kernel, no storage binding). Classifier-free guidance splits the
//! batched (uncond, cond) model output with it.

use super::{expect_inputs, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Recorder};
use crate::tensor::numel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceBatch {
    pub start: usize,
    pub len: usize,
}

impl SliceBatch {
    pub fn new(start: usize, len: usize) -> Self {
        Self { start, len }
    }
}

impl Op for SliceBatch {
    fn name(&self) -> &'static str {
        "slice_batch"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        expect_inputs(op, inputs, 1)?;
        let x = inputs[0];
        let end = self.start.checked_add(self.len);
        match (x.first(), end) {
            (Some(&n), Some(end)) if self.len > 0 && end <= n => {
                let mut out = x.to_vec();
                out[0] = self.len;
                Ok(out)
            }
            _ => Err(Error::shape(
                op,
                "input",
                format!(
                    "(N, …) with N >= {} to take items {}..{}",
                    end.unwrap_or(usize::MAX),
                    self.start,
                    end.unwrap_or(usize::MAX)
                ),
                x,
            )),
        }
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let item = numel(&shapes[0][1..]);
        out.copy_from_slice(&inputs[0][self.start * item..(self.start + self.len) * item]);
    }

    fn record(
        &self,
        _ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let item = numel(&inputs[0].shape[1..]) as u64 * 4;
        if item > 0 {
            rec.copy(
                inputs[0].buffer,
                self.start as u64 * item,
                out.buffer,
                0,
                self.len as u64 * item,
            );
        }
        Ok(())
    }
}
