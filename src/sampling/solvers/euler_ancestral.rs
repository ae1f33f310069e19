//! Euler ancestral: an Euler step of the probability-flow ODE down to σ_down followed by fresh
//! noise up to σ_{i+1}, so that the marginal matches the ancestral (DDPM-like) step: Karras et
//! al. (2022), arXiv:2206.00364, and k-diffusion's `sample_euler_ancestral` /
//! `get_ancestral_step` (Crowson); diffusers' `EulerAncestralDiscreteScheduler.step` (0.42.1).
//!
//! σ_up = √(σ_{i+1}²·(σ_i² − σ_{i+1}²)/σ_i²), σ_down = √(σ_{i+1}² − σ_up²),
//! d_i = (x − x̂₀)/σ_i, x_{i+1} = x + d_i·(σ_down − σ_i) + σ_up·z.
//! Names (diffusers → here): `sigma_from` = σ_i, `sigma_to` = σ_{i+1}, `sigma_up`,
//! `sigma_down`, `derivative` = d_i. diffusers draws noise on every step (also the last,
//! where σ_up = 0), and so does this solver, so given noise stays in step.

use super::euler::{sigma_x0_coefficients, SigmaSteps};
use super::{check_step, Denoiser, Solver, StepContext, StepOutput};
use crate::error::Result;
use crate::sampling::SchedulerConfig;
use crate::tensor::Tensor;

const OP: &str = "EulerAncestral";

pub struct EulerAncestral {
    s: SigmaSteps,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        Ok(EulerAncestral {
            s: SigmaSteps::new(config, steps, OP)?,
        })
    }

    /// (c_x, c_o, σ_up) of x_{i+1} = c_x·x + c_o·output + σ_up·z, and x̂₀'s (a, b).
    pub fn coefficients(&self, i: usize) -> ((f64, f64, f64), (f64, f64)) {
        let from = self.s.sigmas[i];
        let to = self.s.sigmas[i + 1];
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let (a, b) = sigma_x0_coefficients(self.s.prediction, from);
        let k = (down - from) / from;
        ((1.0 + (1.0 - a) * k, -b * k, up), (a, b))
    }
}

impl Solver for EulerAncestral {
    fn name(&self) -> &'static str {
        "euler_ancestral"
    }

    fn timesteps(&self) -> &[f64] {
        &self.s.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.s.init_noise_sigma
    }

    fn step(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
    ) -> Result<StepOutput> {
        check_step(OP, i, self.s.timesteps.len())?;
        let out = self.s.denoise(ctx, model, i, x)?;
        let ((cx, co, up), (a, b)) = self.coefficients(i);
        let x0 = ctx.combine(&[a, b], &[x, &out])?;
        let prev_sample = ctx.combine_noisy(&[cx, co], &[x, &out], up, 0)?;
        Ok(StepOutput { prev_sample, x0 })
    }
}
