//! Heun: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative
//! Models", arXiv:2206.00364, Algorithm 1 (Heun's 2nd-order method on the probability-flow
//! ODE, eq. 3, with σ(t) = t), as diffusers' `HeunDiscreteScheduler.step` (0.42.1) runs it.
//!
//! diffusers interleaves each timestep twice and calls `step` 2n − 1 times; one step here is
//! one of Algorithm 1's iterations, two model calls:
//! d_i = (x_i − x̂₀(x_i; σ_i))/σ_i, x̃ = x_i + (σ_{i+1} − σ_i)·d_i (the Euler predictor),
//! d'_i = (x̃ − x̂₀(x̃; σ_{i+1}))/σ_{i+1}, x_{i+1} = x_i + (σ_{i+1} − σ_i)·(d_i + d'_i)/2,
//! except the last step (σ_{i+1} = 0), which is the Euler step alone (Algorithm 1, line 7).
//! Names (diffusers → here): `derivative`/`prev_derivative` = d'_i/d_i, `dt` = σ_{i+1} − σ_i,
//! `sigma_next` = σ_{i+1}, `self.sample` = x_i. The corrector is linear in
//! (x_i, output₁, x̃, output₂): one update with four inputs. x̂₀ for previews is the second
//! stage's, as diffusers returns it.
//!
//! `clip_sample` (HeunDiscreteScheduler's option, default false) clamps each stage's x̂₀
//! before it enters the derivative: d_i = (x_i − clip(x̂₀))/σ_i. The update is then linear
//! in (x_i, clip(x̂₀₁), x̃, clip(x̂₀₂)) instead. Heun has no `thresholding`: the key is
//! ignored, as diffusers drops it.

use super::euler::{sigma_x0_coefficients, SigmaSteps};
use super::{
    check_step, x0_processing_for, Denoiser, ModelOutput, Solver, StepContext, StepOutput,
    X0Processing,
};
use crate::error::Result;
use crate::sampling::{FinalSigmas, InterpolationType, SchedulerConfig, TimestepType};
use crate::tensor::Tensor;

const OP: &str = "Heun";

pub struct Heun {
    s: SigmaSteps,
    processing: X0Processing,
}

impl Heun {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        // HeunDiscreteScheduler has none of EulerDiscrete's extra schedule options.
        let mut cfg = config.clone();
        cfg.final_sigmas_type = FinalSigmas::Zero;
        cfg.interpolation_type = InterpolationType::Linear;
        cfg.timestep_type = TimestepType::Discrete;
        let processing = x0_processing_for(&cfg, OP, false, Some(false))?;
        Ok(Heun {
            s: SigmaSteps::new(&cfg, steps, OP)?,
            processing,
        })
    }
}

impl Solver for Heun {
    fn name(&self) -> &'static str {
        "heun"
    }

    fn timesteps(&self) -> &[f64] {
        &self.s.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.s.init_noise_sigma
    }

    /// `x₀ + σ·ε` at the step's σ: diffusers' interleaved `sigmas[2·i]` (its begin index is
    /// `2·i`, this step's first call).
    fn add_noise_coefficients(&self, i: usize) -> Option<(f64, f64)> {
        Some((1.0, *self.s.sigmas.get(i)?))
    }

    fn step(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
    ) -> Result<StepOutput> {
        check_step(OP, i, self.s.timesteps.len())?;
        let (s0, s1) = (self.s.sigmas[i], self.s.sigmas[i + 1]);
        let dt = s1 - s0;
        let fusable = self.processing == X0Processing::None;
        let out1 =
            match SigmaSteps::model_output_at(ctx, model, s0, self.s.timesteps[i], x, fusable)? {
                ModelOutput::Output(out) => out,
                ModelOutput::GuidedPair { pair, scale } => {
                    return self.guided_step(ctx, model, i, x, &pair, scale);
                }
            };
        let (a0, b0) = sigma_x0_coefficients(self.s.prediction, s0);
        // x̃ = x + dt·((1 − a₀)·x − b₀·o₁)/σ₀
        let k0 = dt / s0;
        if self.processing != X0Processing::None {
            return self.step_processed(ctx, model, i, x, out1);
        }
        let euler = [1.0 + (1.0 - a0) * k0, -b0 * k0];
        if i + 1 == self.s.timesteps.len() {
            let x0 = ctx.combine(&[a0, b0], &[x, &out1])?;
            let prev_sample = ctx.combine(&euler, &[x, &out1])?;
            return Ok(StepOutput { prev_sample, x0 });
        }
        let x_mid = ctx.combine(&euler, &[x, &out1])?;
        let scaled = ctx.combine(&[1.0 / (s1 * s1 + 1.0).sqrt()], &[&x_mid])?;
        let out2 = model.denoise(ctx.exec, &scaled, self.s.timesteps[i + 1])?;
        let (a1, b1) = sigma_x0_coefficients(self.s.prediction, s1);
        let x0 = ctx.combine(&[a1, b1], &[&x_mid, &out2])?;
        let h = dt / 2.0;
        let prev_sample = ctx.combine(
            &[
                1.0 + h * (1.0 - a0) / s0,
                -h * b0 / s0,
                h * (1.0 - a1) / s1,
                -h * b1 / s1,
            ],
            &[x, &out1, &x_mid, &out2],
        )?;
        Ok(StepOutput { prev_sample, x0 })
    }
}

impl Heun {
    /// The step with the guidance combine folded into each stage's update (one
    /// [`CfgUpdate`](crate::ops::CfgUpdate) per model call). Stage 1 writes x̃ and x̂₀₁; the
    /// corrector, rewritten in x̂₀₁ instead of output₁ (b₀·output₁ = x̂₀₁ − a₀·x), is
    /// x_{i+1} = (1 + h/σ₀)·x − (h/σ₀)·x̂₀₁ + h·((1 − a₁)·x̃ − b₁·g₂)/σ₁ with h = dt/2,
    /// and writes x̂₀₂ with it.
    fn guided_step(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
        pair: &Tensor,
        scale: f64,
    ) -> Result<StepOutput> {
        let (s0, s1) = (self.s.sigmas[i], self.s.sigmas[i + 1]);
        let dt = s1 - s0;
        let (a0, b0) = sigma_x0_coefficients(self.s.prediction, s0);
        let k0 = dt / s0;
        let (x_mid, x01) = ctx.guided_update(
            pair,
            scale,
            (a0, b0),
            &[x],
            &[1.0 + (1.0 - a0) * k0],
            -b0 * k0,
            0.0,
        )?;
        if i + 1 == self.s.timesteps.len() {
            return Ok(StepOutput {
                prev_sample: x_mid,
                x0: x01,
            });
        }
        let t1 = self.s.timesteps[i + 1];
        let (a1, b1) = sigma_x0_coefficients(self.s.prediction, s1);
        let h = dt / 2.0;
        let c = [h * (1.0 - a1) / s1, 1.0 + h / s0, -h / s0];
        let inputs = [&x_mid, x, &x01];
        let (prev_sample, x0) = match SigmaSteps::model_output_at(ctx, model, s1, t1, &x_mid, true)?
        {
            ModelOutput::GuidedPair { pair, scale } => {
                ctx.guided_update(&pair, scale, (a1, b1), &inputs, &c, -h * b1 / s1, 0.0)?
            }
            // A model that fused the first call fuses the second; this is for completeness.
            ModelOutput::Output(out2) => {
                let x0 = ctx.combine(&[a1, b1], &[&x_mid, &out2])?;
                let prev =
                    ctx.combine(&[c[0], c[1], c[2], -h * b1 / s1], &[&x_mid, x, &x01, &out2])?;
                (prev, x0)
            }
        };
        Ok(StepOutput { prev_sample, x0 })
    }

    /// The step with x̂₀ clipped: both derivatives are formed from the clipped x̂₀, so the
    /// stages combine (x_i, x̂₀₁) and (x̃, x̂₀₂) instead of the raw model outputs.
    fn step_processed(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
        out1: Tensor,
    ) -> Result<StepOutput> {
        let (s0, s1) = (self.s.sigmas[i], self.s.sigmas[i + 1]);
        let dt = s1 - s0;
        let (a0, b0) = sigma_x0_coefficients(self.s.prediction, s0);
        let x01 = ctx.combine(&[a0, b0], &[x, &out1])?;
        let x01 = ctx.process_x0(self.processing, x01)?;
        // x̃ = x + dt·(x − x̂₀₁)/σ₀
        let k0 = dt / s0;
        let x_mid = ctx.combine(&[1.0 + k0, -k0], &[x, &x01])?;
        if i + 1 == self.s.timesteps.len() {
            return Ok(StepOutput {
                prev_sample: x_mid,
                x0: x01,
            });
        }
        let scaled = ctx.combine(&[1.0 / (s1 * s1 + 1.0).sqrt()], &[&x_mid])?;
        let out2 = model.denoise(ctx.exec, &scaled, self.s.timesteps[i + 1])?;
        let (a1, b1) = sigma_x0_coefficients(self.s.prediction, s1);
        let x02 = ctx.combine(&[a1, b1], &[&x_mid, &out2])?;
        let x02 = ctx.process_x0(self.processing, x02)?;
        // x_{i+1} = x + (dt/2)·((x − x̂₀₁)/σ₀ + (x̃ − x̂₀₂)/σ₁)
        let h = dt / 2.0;
        let prev_sample = ctx.combine(
            &[1.0 + h / s0, -h / s0, h / s1, -h / s1],
            &[x, &x01, &x_mid, &x02],
        )?;
        Ok(StepOutput {
            prev_sample,
            x0: x02,
        })
    }
}
