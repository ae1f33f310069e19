//! GroupNorm (Wu & He, 2018) with PyTorch's semantics (`torch.nn.GroupNorm`), optionally
//! followed by SiLU: the `norm → silu` pair that opens every diffusers `ResnetBlock2D` and
//! guided-diffusion `ResBlock`.
//!
//! Shapes: x (N, C, *S) — (N, C, H, W) images, (N, C, L) sequences, any spatial rank;
//! weight (C) and bias (C) when affine; out like x. Statistics are per (sample, group)
//! over (C/G)·|S| elements, with the biased variance.

use super::norm::Rows;
use super::{GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Recorder};
use crate::tensor::numel;

#[derive(Clone, Copy, Debug)]
pub struct GroupNorm {
    pub num_groups: usize,
    pub eps: f32,
    /// Inputs are `(x, weight, bias)` when true, `(x)` when false.
    pub affine: bool,
    /// Apply SiLU after the affine transform (`silu(group_norm(x))`).
    pub silu: bool,
}

impl GroupNorm {
    /// Affine GroupNorm without activation (PyTorch's defaults).
    pub fn new(num_groups: usize, eps: f32) -> Self {
        Self {
            num_groups,
            eps,
            affine: true,
            silu: false,
        }
    }

    /// Fuse SiLU after the normalisation.
    pub fn with_silu(mut self) -> Self {
        self.silu = true;
        self
    }

    /// No weight and bias inputs (`affine=False`).
    pub fn without_affine(mut self) -> Self {
        self.affine = false;
        self
    }

    fn rows(&self, x: &[usize]) -> Rows {
        let (n, c) = (x[0], x[1]);
        let g = self.num_groups;
        let inner = numel(&x[2..]);
        Rows {
            rows: n * g,
            row_len: c / g * inner,
            groups: g,
            inner,
            cpg: c / g,
            eps: self.eps,
            silu: self.silu,
        }
    }
}

impl Op for GroupNorm {
    fn name(&self) -> &'static str {
        "group_norm"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        super::expect_inputs(op, inputs, if self.affine { 3 } else { 1 })?;
        let x = inputs[0];
        if x.len() < 2 {
            return Err(Error::shape(op, "input", "(N, C, *spatial)", x));
        }
        let g = self.num_groups;
        if g == 0 {
            return Err(Error::invalid(op, "num_groups must be at least 1"));
        }
        let c = x[1];
        if !c.is_multiple_of(g) {
            return Err(Error::shape(
                op,
                "input",
                format!("(N, C, *spatial) with C divisible by num_groups = {g}"),
                x,
            ));
        }
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(Error::invalid(
                op,
                format!("eps must be >= 0, got {}", self.eps),
            ));
        }
        for (i, what) in [(1, "weight"), (2, "bias")] {
            if self.affine && inputs[i] != [c] {
                return Err(Error::shape(
                    op,
                    what,
                    format!("({c},) for C = {c}"),
                    inputs[i],
                ));
            }
        }
        super::elementwise::check_u32(op, x)?;
        Ok(x.to_vec())
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let (w, b) = if self.affine {
            (Some(inputs[1]), Some(inputs[2]))
        } else {
            (None, None)
        };
        self.rows(shapes[0]).cpu(inputs[0], w, b, out);
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        self.rows(inputs[0].shape)
            .record(self.name(), ctx, rec, inputs, out)
    }
}
