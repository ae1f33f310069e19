//! DDIM: Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models", arXiv:2010.02502,
//! eq. 12 with σ_t(η) of eq. 16; diffusers' `DDIMScheduler.step` (0.42.1).
//!
//! x_{t−1} = √ᾱ_{t−1}·x̂₀ + √(1 − ᾱ_{t−1} − σ_t²)·ε̂ + σ_t·z,
//! σ_t = η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1}).
//!
//! Names (diffusers → paper): `alpha_prod_t` = ᾱ_t (the paper's α_t), `alpha_prod_t_prev` =
//! ᾱ_{t−1}, `std_dev_t` = σ_t(η), `pred_original_sample` = x̂₀, `pred_epsilon` = ε̂. The
//! previous timestep is `t − N/n` whatever the spacing (as diffusers does), and ᾱ before the
//! first training step is `final_alpha_cumprod` (1 with `set_alpha_to_one`).
//!
//! x̂₀ and ε̂ are both linear in (x_t, model output), so the whole step is one update
//! `prev = c_x·x_t + c_o·output (+ σ_t·z)`; x̂₀ is a second update for previews.

use super::{
    as_class, check_step, x0_processing, Denoiser, ModelOutput, Solver, StepContext, StepOutput,
    X0Processing,
};
use crate::error::{Error, Result};
use crate::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig};
use crate::tensor::Tensor;

const OP: &str = "DDIM";

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: PredictionType,
    eta: f64,
    processing: X0Processing,
    /// `num_train_timesteps // num_inference_steps`.
    step_ratio: i64,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize, eta: f64) -> Result<Self> {
        let cfg = as_class(config, SchedulerClass::Ddim);
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(Error::invalid(OP, format!("eta must be ≥ 0, got {eta}")));
        }
        let processing = x0_processing(&cfg, OP, Some(true))?;
        if cfg.prediction_type == PredictionType::FlowPrediction {
            return Err(Error::invalid(
                OP,
                "prediction_type flow_prediction is not a DDIM prediction type; valid: epsilon, sample, v_prediction",
            ));
        }
        let schedule = Schedule::new(&cfg)?;
        let ts = schedule.set_timesteps(steps)?;
        Ok(Ddim {
            timesteps: ts.timesteps,
            final_alpha_cumprod: schedule.final_alpha_cumprod(),
            alphas_cumprod: schedule.alphas_cumprod,
            prediction: cfg.prediction_type,
            eta,
            processing,
            step_ratio: (cfg.num_train_timesteps / steps) as i64,
        })
    }

    fn alpha_prod(&self, t: i64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod
                .get(t as usize)
                .copied()
                .unwrap_or(f32::NAN) as f64
        } else {
            self.final_alpha_cumprod as f64
        }
    }

    /// (c_x, c_o, σ_t) of step `i`, and x̂₀'s (a, b).
    pub fn coefficients(&self, i: usize) -> ((f64, f64, f64), (f64, f64)) {
        let t = self.timesteps[i] as i64;
        let a_t = self.alpha_prod(t);
        let a_prev = self.alpha_prod(t - self.step_ratio);
        let beta_t = 1.0 - a_t;
        let beta_prev = 1.0 - a_prev;
        let (alpha, sigma) = (a_t.sqrt(), beta_t.sqrt());
        let x0 = self.prediction.x0_coefficients(alpha, sigma);
        let eps = self.prediction.eps_coefficients(alpha, sigma);
        let variance = (beta_prev / beta_t) * (1.0 - a_t / a_prev);
        let std = self.eta * variance.sqrt();
        let dir = (1.0 - a_prev - std * std).sqrt();
        let sp = a_prev.sqrt();
        ((sp * x0.0 + dir * eps.0, sp * x0.1 + dir * eps.1, std), x0)
    }

    /// √ᾱ_{t−1}, the direction weight √(1 − ᾱ_{t−1} − σ_t²) and ε̂'s (a, b) of step `i`: the
    /// update's parts when x̂₀ is clipped (diffusers keeps the unclipped ε̂ unless its
    /// `use_clipped_model_output` step argument is set).
    fn parts(&self, i: usize) -> (f64, f64, (f64, f64)) {
        let t = self.timesteps[i] as i64;
        let a_t = self.alpha_prod(t);
        let a_prev = self.alpha_prod(t - self.step_ratio);
        let (alpha, sigma) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let eps = self.prediction.eps_coefficients(alpha, sigma);
        let variance = ((1.0 - a_prev) / (1.0 - a_t)) * (1.0 - a_t / a_prev);
        let std = self.eta * variance.sqrt();
        (a_prev.sqrt(), (1.0 - a_prev - std * std).sqrt(), eps)
    }
}

impl Solver for Ddim {
    fn name(&self) -> &'static str {
        "ddim"
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
        let t = self.timestep(i);
        let fusable = self.processing == X0Processing::None && self.eta == 0.0;
        let out = match ctx.model_output(model, x, t, fusable)? {
            ModelOutput::Output(out) => out,
            ModelOutput::GuidedPair { pair, scale } => {
                // x̂₀ and the update in one dispatch with the guidance combine.
                let ((cx, co, _), x0c) = self.coefficients(i);
                let (prev_sample, x0) =
                    ctx.guided_update(&pair, scale, x0c, &[x], &[cx], co, 0.0)?;
                return Ok(StepOutput { prev_sample, x0 });
            }
        };
        let ((cx, co, std), (ax, bx)) = self.coefficients(i);
        let x0 = ctx.combine(&[ax, bx], &[x, &out])?;
        if self.processing != X0Processing::None {
            let x0 = ctx.process_x0(self.processing, x0)?;
            let (sp, dir, (ea, eb)) = self.parts(i);
            let (coefs, inputs) = ([sp, dir * ea, dir * eb], [&x0, x, &out]);
            let prev_sample = if self.eta > 0.0 {
                ctx.combine_noisy(&coefs, &inputs, std, 0)?
            } else {
                ctx.combine(&coefs, &inputs)?
            };
            return Ok(StepOutput { prev_sample, x0 });
        }
        let prev_sample = if self.eta > 0.0 {
            ctx.combine_noisy(&[cx, co], &[x, &out], std, 0)?
        } else {
            ctx.combine(&[cx, co], &[x, &out])?
        };
        Ok(StepOutput { prev_sample, x0 })
    }
}
