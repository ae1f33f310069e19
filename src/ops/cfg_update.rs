//! Classifier-free guidance folded into a solver's update: one dispatch reads the batched
//! model output `cat([u, c])`, forms the guided output g = (1 − w)·u + w·c (Ho & Salimans
//! 2022, arXiv:2207.12598, eq. 6), the solver's converted model output m = m_x·x + m_g·g
//! (what multistep solvers keep as history, or x̂₀) and the new sample
//! `Σ cᵢ·inᵢ + c_g·g + c_m·m`, writing both m and the sample. Unfused, the same step is two
//! batch slices, the guidance combine, the conversion and the update (five commands); the
//! intermediate g never reaches memory here.
//!
//! Deterministic updates only (no noise term: stochastic solvers keep the unfused path),
//! and no guidance rescale (it needs a per-sample reduction of g first).
//!
//! Two outputs, so it is not an [`Op`](super::Op) but a [`PairOp`] run by
//! [`Exec::run_pair`](crate::exec::Exec::run_pair).

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, GpuArg};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, BufferSlice, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "cfg_update";
/// Inputs besides the pair: x_t and up to three more (a multistep history).
pub const MAX_INPUTS: usize = 4;
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CfgUpdateParams {
    pub n: u32,
    pub num_inputs: u32,
    pub _pad: [u32; 2],
    /// (1 − w, w, m_x, m_g).
    pub guide: [f32; 4],
    /// c₁ … c₄, c_g, c_m (zero-padded).
    pub coef: [f32; 8],
}

/// An op with two outputs of the shape [`PairOp::output_shape`] returns.
pub trait PairOp {
    fn name(&self) -> &'static str;
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>>;
    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32], out2: &mut [f32]);
    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
        out2: &GpuArg<'_>,
    ) -> Result<()>;
}

/// See the module docs. Inputs: the pair (2N, …), then x_t (N, …) and up to three more
/// tensors of x_t's shape. Outputs: the new sample, then m.
#[derive(Clone, Debug, Default)]
pub struct CfgUpdate {
    /// w, the guidance scale.
    pub scale: f64,
    /// (m_x, m_g): m = m_x·x + m_g·g.
    pub model: (f64, f64),
    /// cᵢ over x_t and the further inputs, in input order.
    pub coefs: Vec<f64>,
    /// c_g, on the guided output.
    pub c_guided: f64,
    /// c_m, on m.
    pub c_model: f64,
}

impl CfgUpdate {
    fn guide(&self) -> [f32; 4] {
        [
            (1.0 - self.scale) as f32,
            self.scale as f32,
            self.model.0 as f32,
            self.model.1 as f32,
        ]
    }
}

impl PairOp for CfgUpdate {
    fn name(&self) -> &'static str {
        "cfg_update"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        let k = inputs.len().saturating_sub(1);
        if k == 0 || k > MAX_INPUTS || self.coefs.len() != k {
            return Err(Error::invalid(
                op,
                format!(
                    "the guided pair plus 1 to {MAX_INPUTS} inputs with one coefficient each; got {k} inputs and {} coefficients",
                    self.coefs.len()
                ),
            ));
        }
        let x = inputs[1];
        let mut pair = x.to_vec();
        match pair.first_mut() {
            Some(n) => *n *= 2,
            None => return Err(Error::shape(op, "x", "(N, …)", x)),
        }
        if inputs[0] != pair.as_slice() {
            return Err(Error::shape(
                op,
                "model output",
                format!("{pair:?}: the unconditional then the conditional batch"),
                inputs[0],
            ));
        }
        for (i, s) in inputs.iter().enumerate().skip(2) {
            if *s != x {
                return Err(Error::shape(
                    op,
                    format!("input {i}"),
                    format!("{x:?} like x"),
                    s,
                ));
            }
        }
        super::elementwise::check_u32(op, &pair)?;
        Ok(x.to_vec())
    }

    fn cpu(&self, _shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32], out2: &mut [f32]) {
        let [gu, gc, mx, mg] = self.guide();
        let c: Vec<f32> = self.coefs.iter().map(|&v| v as f32).collect();
        let (cg, cm) = (self.c_guided as f32, self.c_model as f32);
        let n = out.len();
        let (pair, rest) = (inputs[0], &inputs[1..]);
        for e in 0..n {
            // The shader's order of operations.
            let mut g = 0f32;
            g += gu * pair[e];
            g += gc * pair[n + e];
            let mut m = 0f32;
            m += mx * rest[0][e];
            m += mg * g;
            let mut acc = 0f32;
            for (ci, x) in c.iter().zip(rest) {
                acc += ci * x[e];
            }
            acc += cg * g;
            acc += cm * m;
            out[e] = acc;
            out2[e] = m;
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
        out2: &GpuArg<'_>,
    ) -> Result<()> {
        let n = crate::tensor::numel(out.shape);
        let mut coef = [0f32; 8];
        for (c, &v) in coef.iter_mut().zip(&self.coefs) {
            *c = v as f32;
        }
        coef[4] = self.c_guided as f32;
        coef[5] = self.c_model as f32;
        let params = CfgUpdateParams {
            n: n as u32,
            num_inputs: (inputs.len() - 1) as u32,
            _pad: [0; 2],
            guide: self.guide(),
            coef,
        };
        // Unused slots are bound to x_t, which the dispatch then does not read there.
        let mut slots: Vec<BufferSlice<'_>> = inputs
            .iter()
            .map(|a| BufferSlice::whole(a.buffer))
            .collect();
        slots.resize(1 + MAX_INPUTS, BufferSlice::whole(inputs[1].buffer));
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, "cfg_update").with("WG", WG as f64),
            BindingLayout {
                inputs: (1 + MAX_INPUTS) as u32,
                outputs: 2,
            },
        )?;
        rec.dispatch(
            ctx,
            &pipeline,
            bytemuck::bytes_of(&params),
            &slots,
            &[
                BufferSlice::whole(out.buffer),
                BufferSlice::whole(out2.buffer),
            ],
            grid_1d(ctx, n, WG),
        )
    }
}
