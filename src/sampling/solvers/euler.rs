//! Euler: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative
//! Models", arXiv:2206.00364, Algorithm 2 without churn (an Euler step of the probability-flow
//! ODE dx/dσ = (x − D(x; σ))/σ, eq. 3 with σ(t) = t); diffusers' `EulerDiscreteScheduler.step`
//! (0.42.1) with its default `s_churn = 0`.
//!
//! Variables live in σ-space: x = x_vp·√(σ² + 1). The model sees `scale_model_input`'s
//! x/√(σ² + 1), and x̂₀ = D(x; σ) comes from the output by the prediction type:
//! ε: x̂₀ = x − σ·ε; v: x̂₀ = x/(σ² + 1) − σ/√(σ² + 1)·v; sample: x̂₀ = output.
//! Then `derivative` = d_i = (x − x̂₀)/σ_i, `dt` = σ_{i+1} − σ_i and x_{i+1} = x + d_i·dt,
//! all linear in (x, output): one update.

use super::{as_class, check_step, Denoiser, ModelOutput, Solver, StepContext, StepOutput};
use crate::error::{Error, Result};
use crate::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig};
use crate::tensor::Tensor;

const OP: &str = "Euler";

/// x̂₀ = a·x + b·output in σ-space (diffusers' k-diffusion-style schedulers).
pub fn sigma_x0_coefficients(prediction: PredictionType, sigma: f64) -> (f64, f64) {
    match prediction {
        PredictionType::Epsilon => (1.0, -sigma),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            (1.0 / s2, -sigma / s2.sqrt())
        }
        PredictionType::Sample | PredictionType::FlowPrediction => (0.0, 1.0),
    }
}

/// The σ-space schedule shared by Euler and Euler ancestral.
pub(crate) struct SigmaSteps {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
    pub prediction: PredictionType,
}

impl SigmaSteps {
    pub fn new(config: &SchedulerConfig, steps: usize, op: &'static str) -> Result<Self> {
        let cfg = as_class(config, SchedulerClass::EulerDiscrete);
        if !matches!(
            cfg.prediction_type,
            PredictionType::Epsilon | PredictionType::VPrediction | PredictionType::Sample
        ) {
            return Err(Error::invalid(
                op,
                format!(
                    "prediction_type {} is not supported; valid: epsilon, v_prediction, sample",
                    cfg.prediction_type.name()
                ),
            ));
        }
        let schedule = Schedule::new(&cfg)?;
        let ts = schedule.set_timesteps(steps)?;
        let sigmas: Vec<f64> = ts
            .sigmas
            .unwrap_or_default()
            .into_iter()
            .map(f64::from)
            .collect();
        if sigmas.len() < ts.timesteps.len() + 1 {
            return Err(Error::invalid(op, "the schedule has too few sigmas"));
        }
        Ok(SigmaSteps {
            timesteps: ts.timesteps,
            sigmas,
            init_noise_sigma: ts.init_noise_sigma,
            prediction: cfg.prediction_type,
        })
    }

    /// `scale_model_input` then the model.
    /// The model output at (x, σ, model time `t`) with the input scaled by 1/√(σ² + 1), as
    /// [`StepContext::model_output`] hands it back (the guided pair when `fusable`).
    pub fn model_output_at(
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        sigma: f64,
        t: f64,
        x: &Tensor,
        fusable: bool,
    ) -> Result<ModelOutput> {
        let scaled = ctx.combine(&[1.0 / (sigma * sigma + 1.0).sqrt()], &[x])?;
        ctx.model_output(model, &scaled, t, fusable)
    }

    pub fn denoise(
        &self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[i];
        let scaled = ctx.combine(&[1.0 / (sigma * sigma + 1.0).sqrt()], &[x])?;
        model.denoise(ctx.exec, &scaled, self.timesteps[i])
    }
}

pub struct Euler {
    s: SigmaSteps,
}

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        Ok(Euler {
            s: SigmaSteps::new(config, steps, OP)?,
        })
    }

    /// (c_x, c_o) of x_{i+1} = c_x·x + c_o·output, and x̂₀'s (a, b).
    pub fn coefficients(&self, i: usize) -> ((f64, f64), (f64, f64)) {
        let sigma = self.s.sigmas[i];
        let dt = self.s.sigmas[i + 1] - sigma;
        let (a, b) = sigma_x0_coefficients(self.s.prediction, sigma);
        // x + (x − a·x − b·o)/σ·dt
        let k = dt / sigma;
        ((1.0 + (1.0 - a) * k, -b * k), (a, b))
    }
}

impl Solver for Euler {
    fn name(&self) -> &'static str {
        "euler"
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
        let sigma = self.s.sigmas[i];
        let scaled = ctx.combine(&[1.0 / (sigma * sigma + 1.0).sqrt()], &[x])?;
        let out = match ctx.model_output(model, &scaled, self.s.timesteps[i], true)? {
            ModelOutput::Output(out) => out,
            ModelOutput::GuidedPair { pair, scale } => {
                // x̂₀ and the Euler step in one dispatch with the guidance combine.
                let ((cx, co), x0c) = self.coefficients(i);
                let (prev_sample, x0) =
                    ctx.guided_update(&pair, scale, x0c, &[x], &[cx], co, 0.0)?;
                return Ok(StepOutput { prev_sample, x0 });
            }
        };
        let ((cx, co), (a, b)) = self.coefficients(i);
        let x0 = ctx.combine(&[a, b], &[x, &out])?;
        let prev_sample = ctx.combine(&[cx, co], &[x, &out])?;
        Ok(StepOutput { prev_sample, x0 })
    }
}
