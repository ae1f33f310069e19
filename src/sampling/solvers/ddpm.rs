//! DDPM ancestral sampling: Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic
//! Models", arXiv:2006.11239, the posterior q(x_{t−1} | x_t, x₀) of eq. 6–7 with x₀ replaced
//! by the model's x̂₀; diffusers' `DDPMScheduler.step` (0.42.1), which also strides over
//! inference timesteps (t → t', the next one in the list, or −1 after the last).
//!
//! μ̃ = √ᾱ_{t'}·β̃/(1 − ᾱ_t)·x̂₀ + √α̃·(1 − ᾱ_{t'})/(1 − ᾱ_t)·x_t,  α̃ = ᾱ_t/ᾱ_{t'},
//! β̃ = 1 − α̃; x_{t'} = μ̃ + σ·z for t > 0, with σ² the posterior variance
//! (1 − ᾱ_{t'})/(1 − ᾱ_t)·β̃ (`fixed_small`, eq. 7's β̃_t, clamped at 10⁻²⁰) or β̃
//! (`fixed_large`, the paper's σ_t² = β_t).
//!
//! Names (diffusers → paper): `alpha_prod_t` = ᾱ_t, `alpha_prod_t_prev` = ᾱ_{t'},
//! `current_alpha_t` = α̃, `current_beta_t` = β̃, `pred_original_sample_coeff` and
//! `current_sample_coeff` the two weights of μ̃.

use super::{
    as_class, check_step, opt_choice, x0_processing, Denoiser, Solver, StepContext, StepOutput,
    X0Processing,
};
use crate::error::{Error, Result};
use crate::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig};
use crate::tensor::Tensor;

const OP: &str = "DDPM";

/// `variance_type`: the reverse-step variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdpmVariance {
    /// β̃_t, the posterior variance (diffusers' `fixed_small`; `fixed_small_log` is the
    /// same value through exp(½ log)).
    FixedSmall,
    /// β_t (`fixed_large`).
    FixedLarge,
}

pub const VARIANCE_TYPES: &[(&str, DdpmVariance)] = &[
    ("fixed_small", DdpmVariance::FixedSmall),
    ("fixed_small_log", DdpmVariance::FixedSmall),
    ("fixed_large", DdpmVariance::FixedLarge),
];

pub struct Ddpm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    variance: DdpmVariance,
    processing: X0Processing,
}

/// One step's coefficients.
#[derive(Debug, Clone, Copy)]
pub struct DdpmCoefficients {
    /// prev = c_x·x_t + c_o·output + noise·z
    pub c_x: f64,
    pub c_o: f64,
    pub noise: f64,
    /// x̂₀ = x0.0·x_t + x0.1·output
    pub x0: (f64, f64),
    /// μ̃ = c_x0·x̂₀ + c_cur·x_t (eq. 7's two weights), used when x̂₀ is clipped first.
    pub c_x0: f64,
    pub c_cur: f64,
}

impl Ddpm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let cfg = as_class(config, SchedulerClass::Ddpm);
        let processing = x0_processing(&cfg, OP, Some(true))?;
        let variance = opt_choice(
            &cfg,
            OP,
            "variance_type",
            VARIANCE_TYPES,
            DdpmVariance::FixedSmall,
        )?;
        if cfg.prediction_type == PredictionType::FlowPrediction {
            return Err(Error::invalid(
                OP,
                "prediction_type flow_prediction is not a DDPM prediction type; valid: epsilon, sample, v_prediction",
            ));
        }
        let schedule = Schedule::new(&cfg)?;
        let ts = schedule.set_timesteps(steps)?;
        Ok(Ddpm {
            timesteps: ts.timesteps,
            alphas_cumprod: schedule.alphas_cumprod,
            prediction: cfg.prediction_type,
            variance,
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
            1.0
        }
    }

    pub fn coefficients(&self, i: usize) -> DdpmCoefficients {
        let t = self.timesteps[i] as i64;
        let prev_t = self.timesteps.get(i + 1).map_or(-1, |&p| p as i64);
        let a_t = self.alpha_prod(t);
        let a_prev = self.alpha_prod(prev_t);
        let beta_t = 1.0 - a_t;
        let beta_prev = 1.0 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let x0 = self.prediction.x0_coefficients(a_t.sqrt(), beta_t.sqrt());
        let c_x0 = a_prev.sqrt() * cur_beta / beta_t;
        let c_cur = cur_alpha.sqrt() * beta_prev / beta_t;
        let noise = if t > 0 {
            match self.variance {
                DdpmVariance::FixedSmall => (beta_prev / beta_t * cur_beta).max(1e-20).sqrt(),
                DdpmVariance::FixedLarge => cur_beta.sqrt(),
            }
        } else {
            0.0
        };
        DdpmCoefficients {
            c_x: c_x0 * x0.0 + c_cur,
            c_o: c_x0 * x0.1,
            noise,
            x0,
            c_x0,
            c_cur,
        }
    }
}

impl Solver for Ddpm {
    fn name(&self) -> &'static str {
        "ddpm"
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
        let out = model.denoise(ctx.exec, x, self.timestep(i))?;
        let c = self.coefficients(i);
        let x0 = ctx.combine(&[c.x0.0, c.x0.1], &[x, &out])?;
        if self.processing != X0Processing::None {
            // Clipped, x̂₀ enters the update as a tensor: μ̃ = c_x0·x̂₀ + c_cur·x_t.
            let x0 = ctx.process_x0(self.processing, x0)?;
            let prev_sample = if c.noise > 0.0 {
                ctx.combine_noisy(&[c.c_x0, c.c_cur], &[&x0, x], c.noise, 0)?
            } else {
                ctx.combine(&[c.c_x0, c.c_cur], &[&x0, x])?
            };
            return Ok(StepOutput { prev_sample, x0 });
        }
        let prev_sample = if c.noise > 0.0 {
            ctx.combine_noisy(&[c.c_x, c.c_o], &[x, &out], c.noise, 0)?
        } else {
            ctx.combine(&[c.c_x, c.c_o], &[x, &out])?
        };
        Ok(StepOutput { prev_sample, x0 })
    }
}
