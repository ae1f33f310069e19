//! LayerNorm (Ba et al., 2016) with PyTorch's semantics (`torch.nn.LayerNorm`): normalise
//! over the trailing `normalized_shape` dimensions.
//!
//! Shapes: x (..., *normalized_shape); weight and bias (*normalized_shape) when present;
//! out like x. Transformers normalise the last dim, (N, T, D) over (D); MLP-Mixer
//! normalises a whole (C, P) slab per sample. Shares `shaders/norm.wgsl` with GroupNorm: a
//! LayerNorm row is a GroupNorm group with one group and one element per affine entry.

use super::norm::Rows;
use super::{GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Recorder};
use crate::tensor::numel;

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub normalized_shape: Vec<usize>,
    pub eps: f32,
    /// A `weight` input follows x (`elementwise_affine=True`).
    pub elementwise_affine: bool,
    /// A `bias` input follows the weight (`bias=True`; needs `elementwise_affine`).
    pub bias: bool,
}

impl LayerNorm {
    /// With weight and bias (PyTorch's defaults).
    pub fn new(normalized_shape: &[usize], eps: f32) -> Self {
        Self {
            normalized_shape: normalized_shape.to_vec(),
            eps,
            elementwise_affine: true,
            bias: true,
        }
    }

    /// No weight and bias inputs (`elementwise_affine=False`).
    pub fn without_affine(mut self) -> Self {
        self.elementwise_affine = false;
        self.bias = false;
        self
    }

    /// A weight but no bias input (`bias=False`).
    pub fn without_bias(mut self) -> Self {
        self.bias = false;
        self
    }

    fn num_inputs(&self) -> usize {
        1 + self.elementwise_affine as usize + (self.elementwise_affine && self.bias) as usize
    }

    fn rows(&self, x: &[usize]) -> Rows {
        let row_len = numel(&self.normalized_shape);
        Rows {
            rows: numel(x).checked_div(row_len).unwrap_or(0),
            row_len,
            groups: 1,
            inner: 1,
            cpg: row_len,
            eps: self.eps,
            silu: false,
        }
    }
}

impl Op for LayerNorm {
    fn name(&self) -> &'static str {
        "layer_norm"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        let d = &self.normalized_shape;
        if d.is_empty() {
            return Err(Error::invalid(
                op,
                "normalized_shape must have at least one dimension",
            ));
        }
        if self.bias && !self.elementwise_affine {
            return Err(Error::invalid(
                op,
                "a bias needs elementwise_affine (PyTorch has no bias-only LayerNorm)",
            ));
        }
        super::expect_inputs(op, inputs, self.num_inputs())?;
        let x = inputs[0];
        if x.len() < d.len() || x[x.len() - d.len()..] != d[..] {
            return Err(Error::shape(
                op,
                "input",
                format!("(..., {}) ending in normalized_shape", dims(d)),
                x,
            ));
        }
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(Error::invalid(
                op,
                format!("eps must be >= 0, got {}", self.eps),
            ));
        }
        for (i, what) in ["weight", "bias"]
            .into_iter()
            .enumerate()
            .take(self.num_inputs() - 1)
        {
            if inputs[i + 1] != &d[..] {
                return Err(Error::shape(
                    op,
                    what,
                    format!("({}) = normalized_shape", dims(d)),
                    inputs[i + 1],
                ));
            }
        }
        super::elementwise::check_u32(op, x)?;
        Ok(x.to_vec())
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        self.rows(shapes[0]).cpu(
            inputs[0],
            inputs.get(1).copied(),
            inputs.get(2).copied(),
            out,
        );
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

fn dims(d: &[usize]) -> String {
    d.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
