//! Multistep consistency sampling: Song, Dhariwal, Chen & Sutskever (2023), "Consistency
//! Models", arXiv:2303.01469, Algorithm 1, with the parameterization of eq. 7 and Appendix C
//! (c_skip = σ_d²/((σ − ε)² + σ_d²), c_out = (σ − ε)·σ_d/√(σ² + σ_d²), ε = σ_min) in the
//! EDM σ-space of Karras et al. (2022, arXiv:2206.00364): diffusers'
//! `CMStochasticIterativeScheduler.step` (0.42.1).
//!
//! The model sees x/√(σ² + σ_d²) (EDM's c_in) and the time 250·ln(σ + 10⁻⁴⁴) (EDM's
//! c_noise, scaled by 1000 as the consistency-model checkpoints expect). Each step:
//! denoised = c_out·output + c_skip·x (the x₀ preview), then
//! x' = denoised + s_noise·√(σ̂² − σ_min²)·z with σ̂ = clamp(σ_{i+1}, σ_min, σ_max): one update.
//! The last step goes to σ_min, so its noise term is 0 (diffusers still draws z; so do we, to
//! keep given-noise sequences aligned). Sigmas: the Karras ramp (eq. 5, ρ from the config)
//! at the training indices i·⌊N/n⌋, N = `num_train_timesteps` (default 40 in diffusers).
//!
//! `clip_denoised` (diffusers' default true) clamps the denoised sample to [−1, 1] (one clamp
//! dispatch) before it is previewed and re-noised.

use super::{
    as_class, check_step, opt_bool, Denoiser, Solver, StepContext, StepOutput, X0Processing,
};
use crate::error::{Error, Result};
use crate::sampling::{SchedulerClass, SchedulerConfig};
use crate::tensor::Tensor;

const OP: &str = "CMStochasticIterative";

pub struct ConsistencyMultistep {
    timesteps: Vec<f64>,
    /// σ per step and the final σ_min (float32 values, as diffusers).
    sigmas: Vec<f64>,
    sigma_min: f64,
    sigma_max: f64,
    sigma_data: f64,
    s_noise: f64,
    /// `clip_denoised` (default true): the denoised sample is clamped to [−1, 1] before
    /// it is previewed and re-noised.
    clip_denoised: bool,
}

impl ConsistencyMultistep {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let cfg = as_class(config, SchedulerClass::EdmEuler);
        let clip_denoised = opt_bool(&cfg, OP, "clip_denoised", true)?;
        let s_noise = match cfg.other.get("s_noise") {
            None | Some(serde_json::Value::Null) => 1.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::invalid(OP, format!("s_noise must be a number, got {v}")))?,
        };
        let train = cfg.num_train_timesteps;
        if steps == 0 || steps > train {
            return Err(Error::invalid(
                OP,
                format!("{steps} steps: use 1 to num_train_timesteps = {train}"),
            ));
        }
        let sigma_min = cfg.sigma_min.unwrap_or(0.002);
        let sigma_max = cfg.sigma_max.unwrap_or(80.0);
        let rho = cfg.rho;
        if !(sigma_min > 0.0 && sigma_max > sigma_min && rho > 0.0) {
            return Err(Error::invalid(
                OP,
                format!("need 0 < sigma_min < sigma_max and rho > 0, got sigma_min {sigma_min}, sigma_max {sigma_max}, rho {rho}"),
            ));
        }
        let ratio = train / steps;
        let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
        let sig64: Vec<f64> = (0..steps)
            .map(|i| {
                let ramp = (i * ratio) as f64 / (train as f64 - 1.0).max(1.0);
                (hi + ramp * (lo - hi)).powf(rho)
            })
            .collect();
        let timesteps = sig64.iter().map(|s| 250.0 * (s + 1e-44).ln()).collect();
        let mut sigmas: Vec<f64> = sig64.iter().map(|&s| s as f32 as f64).collect();
        sigmas.push(sigma_min as f32 as f64);
        Ok(ConsistencyMultistep {
            timesteps,
            sigmas,
            sigma_min,
            sigma_max,
            sigma_data: cfg.sigma_data,
            s_noise,
            clip_denoised,
        })
    }

    /// denoised's (c_x, c_o) at step `i` and the noise scale of the step.
    pub fn coefficients(&self, i: usize) -> ((f64, f64), f64) {
        let s = self.sigmas[i];
        let (e, sd2) = (self.sigma_min, self.sigma_data * self.sigma_data);
        let c_skip = sd2 / ((s - e) * (s - e) + sd2);
        let c_out = (s - e) * self.sigma_data / (s * s + sd2).sqrt();
        let hat = self.sigmas[i + 1].clamp(self.sigma_min, self.sigma_max);
        let noise = self.s_noise * (hat * hat - e * e).max(0.0).sqrt();
        ((c_skip, c_out), noise)
    }
}

impl Solver for ConsistencyMultistep {
    fn name(&self) -> &'static str {
        "consistency"
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.sigma_max
    }

    fn step(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
    ) -> Result<StepOutput> {
        check_step(OP, i, self.timesteps.len())?;
        let s = self.sigmas[i];
        let c_in = 1.0 / (s * s + self.sigma_data * self.sigma_data).sqrt();
        let scaled = ctx.combine(&[c_in], &[x])?;
        let out = model.denoise(ctx.exec, &scaled, self.timesteps[i])?;
        let ((cs, co), noise) = self.coefficients(i);
        let x0 = ctx.combine(&[cs, co], &[x, &out])?;
        if self.clip_denoised {
            let x0 = ctx.process_x0(X0Processing::Clip(1.0), x0)?;
            let prev_sample = if self.timesteps.len() > 1 {
                ctx.combine_noisy(&[1.0], &[&x0], noise, 0)?
            } else {
                x0.clone()
            };
            return Ok(StepOutput { prev_sample, x0 });
        }
        let prev_sample = if self.timesteps.len() > 1 {
            ctx.combine_noisy(&[cs, co], &[x, &out], noise, 0)?
        } else {
            x0.clone()
        };
        Ok(StepOutput { prev_sample, x0 })
    }
}
