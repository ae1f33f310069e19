//! The solver update `out = Σᵢ cᵢ·inᵢ + s·z` (up to five inputs) with counter-based Gaussian
//! noise `z` (see `philox`). Every solver (DDIM, DPM-Solver, UniPC, …) computes its `cᵢ` and
//! `s` in f64 on the CPU and ends each step in this one dispatch; with no inputs it draws
//! the initial noise `x_T = s·z`.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, philox, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, BufferSlice, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "solver_update";
pub const MAX_INPUTS: usize = 5;
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SolverUpdateParams {
    pub n: u32,
    pub num_inputs: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub step: u32,
    pub stream: u32,
    pub noise_scale: f32,
    pub _pad: u32,
    pub coef: [f32; 8],
}

/// One solver step's linear combination plus scaled noise.
#[derive(Clone, Debug, Default)]
pub struct SolverUpdate {
    /// `cᵢ` for each input, in input order (f64 math rounded once to f32).
    pub coefs: Vec<f64>,
    /// `s`, the noise scale; 0 for deterministic solvers.
    pub noise_scale: f64,
    pub seed: u64,
    /// The sampling step (part of the Philox counter, so each step draws fresh noise).
    pub step: u32,
    /// Separates independent draws within a step (e.g. ancestral noise vs. a corrector).
    pub stream: u32,
    /// Output shape when there are no inputs (pure noise).
    pub shape: Option<Vec<usize>>,
}

impl SolverUpdate {
    /// `Σᵢ cᵢ·inᵢ`, no noise.
    pub fn linear(coefs: &[f64]) -> Self {
        Self {
            coefs: coefs.to_vec(),
            ..Default::default()
        }
    }

    /// `scale · z` of the given shape: the initial sample of a sampler.
    pub fn noise(shape: &[usize], scale: f64, seed: u64, step: u32, stream: u32) -> Self {
        Self {
            noise_scale: scale,
            seed,
            step,
            stream,
            shape: Some(shape.to_vec()),
            ..Default::default()
        }
    }

    /// Add noise `s·z` to a linear combination.
    pub fn with_noise(mut self, scale: f64, seed: u64, step: u32, stream: u32) -> Self {
        self.noise_scale = scale;
        self.seed = seed;
        self.step = step;
        self.stream = stream;
        self
    }
}

impl Op for SolverUpdate {
    fn name(&self) -> &'static str {
        "solver_update"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        if inputs.len() != self.coefs.len() {
            return Err(Error::invalid(
                op,
                format!(
                    "{} coefficients for {} inputs",
                    self.coefs.len(),
                    inputs.len()
                ),
            ));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(Error::invalid(
                op,
                format!("at most {MAX_INPUTS} inputs, got {}", inputs.len()),
            ));
        }
        let shape = match (inputs.first(), &self.shape) {
            (Some(s), _) => s.to_vec(),
            (None, Some(s)) => s.clone(),
            (None, None) => return Err(Error::invalid(op, "no inputs and no output shape")),
        };
        for (i, s) in inputs.iter().enumerate() {
            if *s != shape.as_slice() {
                return Err(Error::shape(
                    op,
                    format!("input {i}"),
                    format!("{shape:?} like input 0"),
                    s,
                ));
            }
        }
        super::elementwise::check_u32(op, &shape)?;
        Ok(shape)
    }

    fn cpu(&self, _shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let coefs: Vec<f32> = self.coefs.iter().map(|&c| c as f32).collect();
        let s = self.noise_scale as f32;
        if s != 0.0 {
            philox::fill_gaussian(self.seed, self.step, self.stream, out);
        } else {
            out.fill(0.0);
        }
        for (e, o) in out.iter_mut().enumerate() {
            // Same order of operations as the shader: noise term first, then each input.
            let mut acc = s * *o;
            for (c, x) in coefs.iter().zip(inputs) {
                acc += c * x[e];
            }
            *o = acc;
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let n = crate::tensor::numel(out.shape);
        let mut coef = [0f32; 8];
        for (c, &v) in coef.iter_mut().zip(&self.coefs) {
            *c = v as f32;
        }
        let params = SolverUpdateParams {
            n: n as u32,
            num_inputs: inputs.len() as u32,
            seed_lo: self.seed as u32,
            seed_hi: (self.seed >> 32) as u32,
            step: self.step,
            stream: self.stream,
            noise_scale: self.noise_scale as f32,
            _pad: 0,
            coef,
        };
        // Unused input slots are bound to a buffer the dispatch does not read: the first
        // input, or with no inputs a small scratch buffer (never the output: a buffer may
        // not be bound read-only and read-write in one dispatch).
        let scratch = inputs
            .is_empty()
            .then(|| Arc::new(ctx.pool.get("solver_update unused input", 4)));
        let Some(filler) = inputs
            .first()
            .map(|a| a.buffer)
            .or(scratch.as_deref().map(|s| s.buffer()))
        else {
            return Err(Error::invalid(
                self.name(),
                "no buffer to bind for unused inputs",
            ));
        };
        let mut slots: Vec<BufferSlice<'_>> = inputs
            .iter()
            .map(|a| BufferSlice::whole(a.buffer))
            .collect();
        slots.resize(MAX_INPUTS, BufferSlice::whole(filler));
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, "solver_update").with("WG", WG as f64),
            BindingLayout {
                inputs: MAX_INPUTS as u32,
                outputs: 1,
            },
        )?;
        rec.dispatch(
            ctx,
            &pipeline,
            bytemuck::bytes_of(&params),
            &slots,
            &[BufferSlice::whole(out.buffer)],
            grid_1d(ctx, n.div_ceil(4), WG),
        )?;
        if let Some(s) = scratch {
            rec.hold(s);
        }
        Ok(())
    }
}
