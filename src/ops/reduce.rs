//! Per-sample reductions.
//!
//! `SampleStd`: x (N, …) → (N), each sample's standard deviation over all its elements with
//! Bessel's correction, `x.std(dim=[1, …, ndim−1])` in PyTorch (unbiased by default). This
//! is the statistic of guidance rescale (Lin et al. 2023, arXiv:2305.08891, eq. 15), which
//! diffusers' `rescale_noise_cfg` takes over every non-batch dim. Needs at least two
//! elements per sample (torch returns NaN for one; here it is an error). The GPU sums in f32
//! in two passes (`shaders/reduce.wgsl`), the CPU reference in f64.

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::{expect_inputs, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{fold_workgroups, BindingLayout, GpuContext, PipelineKey, Recorder};
use crate::tensor::numel;

pub const SHADER: &str = "reduce";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ReduceParams {
    pub rows: u32,
    pub row_len: u32,
    pub off: u32,
    pub out_off: u32,
}

/// Per-sample unbiased standard deviation, (N, …) → (N).
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleStd;

impl Op for SampleStd {
    fn name(&self) -> &'static str {
        "sample_std"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        expect_inputs(op, inputs, 1)?;
        let x = inputs[0];
        if x.len() < 2 || x[0] == 0 || numel(&x[1..]) < 2 {
            return Err(Error::shape(
                op,
                "input",
                "(N, …) with N >= 1 and at least 2 elements per sample",
                x,
            ));
        }
        super::elementwise::check_u32(op, x)?;
        Ok(vec![x[0]])
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let m = numel(&shapes[0][1..]);
        for (row, o) in inputs[0].chunks(m).zip(out.iter_mut()) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
            let ss: f64 = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
            *o = (ss / (m - 1) as f64).sqrt() as f32;
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
        let (n, m) = (s[0], numel(&s[1..]));
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, "sample_std"),
            BindingLayout {
                inputs: 1,
                outputs: 1,
            },
        )?;
        let (xs, ys) = (Operand::items("x", m as u64 * 4), Operand::items("out", 4));
        let (max_binding, align) = chunk::limits(ctx);
        for part in chunk::plan(self.name(), n, 1, &[xs, ys], max_binding, align)? {
            let rows = part.batches.len();
            let (xb, ob) = (part.binding(&xs, 1, align), part.binding(&ys, 1, align));
            let params = ReduceParams {
                rows: rows as u32,
                row_len: m as u32,
                off: xb.skip,
                out_off: ob.skip,
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[xb.of(inputs[0].buffer)],
                &[ob.of(out.buffer)],
                fold_workgroups(rows as u32, ctx.caps.max_workgroups()),
            )?;
        }
        Ok(())
    }
}
