//! DDIM inversion: the deterministic DDIM update (Song, Meng & Ermon 2021, "Denoising
//! Diffusion Implicit Models", arXiv:2010.02502, eq. 12 with σ_t = 0) run from low to high
//! noise, which eq. 13's ODE view makes a valid encoder (§4.3, "the encoding of x₀ to x_T");
//! diffusers' `DDIMInverseScheduler.step` (0.42.1).
//!
//! x_{t'} = √ᾱ_{t'}·x̂₀ + √(1 − ᾱ_{t'})·ε̂ with x̂₀, ε̂ from the output at the *lower* level.
//!
//! diffusers' indexing, kept exactly: the timesteps ascend, and the step called with
//! timestep t moves the sample from level s = min(t − N/n, N − 1) (ᾱ_s, or
//! `initial_alpha_cumprod` = 1 / ᾱ₀ when s < 0) to level t, while the model is called with t
//! (as the inversion pipelines do). Only `leading` and `trailing` spacings exist.

use super::{
    as_class, check_step, x0_processing_for, Denoiser, Solver, StepContext, StepOutput,
    X0Processing,
};
use crate::error::{Error, Result};
use crate::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig, TimestepSpacing};
use crate::tensor::Tensor;

const OP: &str = "DDIMInverse";

pub struct DdimInverse {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    initial_alpha_cumprod: f32,
    prediction: PredictionType,
    step_ratio: i64,
    train: i64,
    processing: X0Processing,
}

impl DdimInverse {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let mut cfg = as_class(config, SchedulerClass::Ddim);
        // DDIMInverseScheduler has `clip_sample` (default true) but no `thresholding`.
        let processing = x0_processing_for(&cfg, OP, false, Some(true))?;
        if cfg.prediction_type == PredictionType::FlowPrediction {
            return Err(Error::invalid(
                OP,
                "prediction_type flow_prediction is not supported; valid: epsilon, sample, v_prediction",
            ));
        }
        if cfg.timestep_spacing == TimestepSpacing::Linspace {
            return Err(Error::invalid(
                OP,
                "timestep_spacing linspace is not supported by DDIMInverseScheduler; valid: leading, trailing",
            ));
        }
        // A config read as another class keeps `set_alpha_to_one` among the other keys.
        if let Some(v) = cfg.other.get("set_alpha_to_one").and_then(|v| v.as_bool()) {
            cfg.set_alpha_to_one = v;
        }
        let schedule = Schedule::new(&cfg)?;
        // DDIM's descending leading/trailing timesteps, reversed: the same integers.
        let mut timesteps = schedule.set_timesteps(steps)?.timesteps;
        timesteps.reverse();
        Ok(DdimInverse {
            timesteps,
            initial_alpha_cumprod: schedule.final_alpha_cumprod(),
            alphas_cumprod: schedule.alphas_cumprod,
            prediction: cfg.prediction_type,
            step_ratio: (cfg.num_train_timesteps / steps) as i64,
            train: cfg.num_train_timesteps as i64,
            processing,
        })
    }

    fn alpha_prod(&self, t: i64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod
                .get(t as usize)
                .copied()
                .unwrap_or(f32::NAN) as f64
        } else {
            self.initial_alpha_cumprod as f64
        }
    }

    /// (c_x, c_o) of the step's update and x̂₀'s (a, b).
    pub fn coefficients(&self, i: usize) -> ((f64, f64), (f64, f64)) {
        let (x0, eps, (sa, sb)) = self.parts(i);
        ((sa * x0.0 + sb * eps.0, sa * x0.1 + sb * eps.1), x0)
    }

    /// x̂₀'s and ε̂'s (a, b) from (x, output), and the target level's (√ᾱ, √(1 − ᾱ)).
    #[allow(clippy::type_complexity)]
    fn parts(&self, i: usize) -> ((f64, f64), (f64, f64), (f64, f64)) {
        let target = self.timesteps[i] as i64;
        let source = (target - self.step_ratio).min(self.train - 1);
        let a_s = self.alpha_prod(source);
        let a_t = self.alpha_prod(target);
        let (alpha, sigma) = (a_s.sqrt(), (1.0 - a_s).sqrt());
        let x0 = self.prediction.x0_coefficients(alpha, sigma);
        let eps = self.prediction.eps_coefficients(alpha, sigma);
        (x0, eps, (a_t.sqrt(), (1.0 - a_t).sqrt()))
    }
}

impl Solver for DdimInverse {
    fn name(&self) -> &'static str {
        "ddim_inverse"
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn step(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
    ) -> Result<StepOutput> {
        check_step(OP, i, self.timesteps.len())?;
        let out = model.denoise(ctx.exec, x, self.timesteps[i])?;
        let ((cx, co), (ax, bx)) = self.coefficients(i);
        let x0 = ctx.combine(&[ax, bx], &[x, &out])?;
        if self.processing != X0Processing::None {
            // ε̂ is the model's (not re-derived from the clipped x̂₀), as in diffusers.
            let x0 = ctx.process_x0(self.processing, x0)?;
            let (_, (ea, eb), (sa, sb)) = self.parts(i);
            let prev_sample = ctx.combine(&[sa, sb * ea, sb * eb], &[&x0, x, &out])?;
            return Ok(StepOutput { prev_sample, x0 });
        }
        let prev_sample = ctx.combine(&[cx, co], &[x, &out])?;
        Ok(StepOutput { prev_sample, x0 })
    }
}
