//! DPM2 and DPM2 ancestral: DPM-Solver-2 (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for
//! Diffusion Probabilistic Sampling in Around 10 Steps", arXiv:2206.00927, Algorithm 1 with
//! r₁ = ½, i.e. the midpoint in log σ) written in σ-space on the probability-flow ODE
//! dx/dσ = (x − D(x; σ))/σ of Karras et al. (2022, arXiv:2206.00364, eq. 3), as Katherine
//! Crowson's k-diffusion `sample_dpm_2` / `sample_dpm_2_ancestral` and diffusers'
//! `KDPM2DiscreteScheduler` / `KDPM2AncestralDiscreteScheduler` (0.42.1) run them.
//!
//! One step here is both of diffusers' `step()` calls (its timesteps are interleaved):
//! d = (x − x̂₀(x; σ_i))/σ_i, x̃ = x + (σ_mid − σ_i)·d with σ_mid = √(σ_i·σ_{i+1})
//! (computed as diffusers does, exp of the float32 log-lerp), then the model at (x̃, σ_mid),
//! d̃ = (x̃ − x̂₀(x̃; σ_mid))/σ_mid and x_{i+1} = x + (σ_{i+1} − σ_i)·d̃. The last step, onto
//! σ = 0, has σ_mid = 0: the first stage alone, x_{i+1} = x̂₀.
//!
//! Ancestral (k-diffusion's `get_ancestral_step`): σ_up = √(σ_{i+1}²(σ_i² − σ_{i+1}²)/σ_i²),
//! σ_down = √(σ_{i+1}² − σ_up²), the midpoint between σ_i and σ_down, the step to σ_down and
//! then σ_up·z added. The stage-2 model time is the σ → t interpolation of σ_mid, in float32
//! like diffusers' `_sigma_to_t` on tensors. x̂₀ for previews is the second stage's.

use super::euler::{sigma_x0_coefficients, SigmaSteps};
use super::{check_step, Denoiser, ModelOutput, Solver, StepContext, StepOutput};
use crate::error::{Error, Result};
use crate::sampling::mirror::{exp_f32, ln_f32, sqrt_f32};
use crate::sampling::{
    FinalSigmas, InterpolationType, PredictionType, Schedule, SchedulerClass, SchedulerConfig,
    SigmaSchedule, TimestepType,
};
use crate::tensor::Tensor;

pub struct Kdpm2 {
    name: &'static str,
    op: &'static str,
    s: SigmaSteps,
    ancestral: bool,
    /// Per step: σ_mid, its model time, σ_up, σ_down (σ_down = σ_{i+1} and σ_up = 0 without
    /// ancestral sampling).
    mid: Vec<(f64, f64, f64, f64)>,
}

/// `_sigma_to_t` on a float32 tensor: every operation in float32.
fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    let ls = ln_f32(sigma.max(1e-10));
    let n = log_sigmas.len();
    let low = log_sigmas
        .iter()
        .rposition(|&l| ls - l >= 0.0)
        .unwrap_or(0)
        .min(n.saturating_sub(2));
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - ls) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f32 + w * (low + 1) as f32
}

/// `a.log().lerp(b.log(), 0.5).exp()` in float32 (torch's lerp at weight ½ is end − ½·diff).
fn log_midpoint(a: f32, b: f32) -> f32 {
    let (la, lb) = (ln_f32(a), ln_f32(b));
    exp_f32(lb - (lb - la) * 0.5)
}

impl Kdpm2 {
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        name: &'static str,
        ancestral: bool,
    ) -> Result<Self> {
        let op = if ancestral { "KDPM2Ancestral" } else { "KDPM2" };
        let mut cfg = config.clone();
        cfg.final_sigmas_type = FinalSigmas::Zero;
        cfg.interpolation_type = InterpolationType::Linear;
        cfg.timestep_type = TimestepType::Discrete;
        // KDPM2(Ancestral)DiscreteScheduler take neither `clip_sample` nor `thresholding`:
        // a config from another class keeps them, and they are ignored as diffusers drops them.
        let class = if ancestral {
            "KDPM2AncestralDiscreteScheduler"
        } else {
            "KDPM2DiscreteScheduler"
        };
        super::reject_zero_snr(&cfg, op, class)?;
        if !matches!(
            cfg.prediction_type,
            PredictionType::Epsilon | PredictionType::VPrediction
        ) {
            return Err(Error::invalid(
                op,
                format!(
                    "prediction_type {} is not supported (diffusers raises NotImplementedError); valid: epsilon, v_prediction",
                    cfg.prediction_type.name()
                ),
            ));
        }
        let mut s = SigmaSteps::new(&cfg, steps, op)?;
        if cfg.sigma_schedule == SigmaSchedule::Karras {
            // KDPM2 rounds its Karras timesteps (EulerDiscrete does not).
            for t in &mut s.timesteps {
                *t = t.round_ties_even();
            }
        }
        let schedule = Schedule::new(&super::as_class(&cfg, SchedulerClass::EulerDiscrete))?;
        let log_sigmas: Vec<f32> = schedule.train_sigmas().iter().map(|&x| ln_f32(x)).collect();
        let sig: Vec<f32> = s.sigmas.iter().map(|&x| x as f32).collect();
        let n = s.timesteps.len();
        let mid = (0..n)
            .map(|i| {
                let (si, sn) = (sig[i], sig[i + 1]);
                let (mid, up, down) = if ancestral {
                    let up = sqrt_f32(sn * sn * (si * si - sn * sn) / (si * si));
                    let down = if i + 1 == n {
                        0.0
                    } else {
                        sqrt_f32(sn * sn - up * up)
                    };
                    // diffusers zeroes the midpoint of the last step.
                    let mid = if i + 1 == n {
                        0.0
                    } else {
                        log_midpoint(si, down)
                    };
                    (mid, up, down)
                } else {
                    (log_midpoint(sn, si), 0.0, sn)
                };
                let t = sigma_to_t_f32(mid, &log_sigmas) as f64;
                (mid as f64, t, up as f64, down as f64)
            })
            .collect();
        Ok(Kdpm2 {
            name,
            op,
            s,
            ancestral,
            mid,
        })
    }
}

impl Solver for Kdpm2 {
    fn name(&self) -> &'static str {
        self.name
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
        check_step(self.op, i, self.s.timesteps.len())?;
        let s0 = self.s.sigmas[i];
        let s_mid = self.mid[i].0;
        let (a0, b0) = sigma_x0_coefficients(self.s.prediction, s0);
        // x̃ = x + (σ_mid − σ_i)·((1 − a₀)·x − b₀·o₁)/σ_i
        let k0 = (s_mid - s0) / s0;
        let stage1 = [1.0 + (1.0 - a0) * k0, -b0 * k0];
        let t0 = self.s.timesteps[i];
        let out1 = match SigmaSteps::model_output_at(ctx, model, s0, t0, x, true)? {
            ModelOutput::Output(out) => out,
            ModelOutput::GuidedPair { pair, scale } => {
                // Stage 1 with the guidance combine in one dispatch: x̃ and x̂₀₁ together.
                let (x_mid, x01) =
                    ctx.guided_update(&pair, scale, (a0, b0), &[x], &stage1[..1], stage1[1], 0.0)?;
                if s_mid == 0.0 {
                    return Ok(StepOutput {
                        prev_sample: x_mid,
                        x0: x01,
                    });
                }
                return self.stage2(ctx, model, i, x, x_mid);
            }
        };
        if s_mid == 0.0 {
            let x0 = ctx.combine(&[a0, b0], &[x, &out1])?;
            let prev_sample = ctx.combine(&stage1, &[x, &out1])?;
            return Ok(StepOutput { prev_sample, x0 });
        }
        let x_mid = ctx.combine(&stage1, &[x, &out1])?;
        self.stage2(ctx, model, i, x, x_mid)
    }
}

impl Kdpm2 {
    /// The model at (x̃, σ_mid) and x_{i+1} = x + (σ_down − σ_i)·d̃ (+ σ_up·z), with the
    /// guidance combine in the update when the model hands back its pair and the step is
    /// deterministic.
    fn stage2(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
        x_mid: Tensor,
    ) -> Result<StepOutput> {
        let s0 = self.s.sigmas[i];
        let (s_mid, t_mid, up, down) = self.mid[i];
        let (a1, b1) = sigma_x0_coefficients(self.s.prediction, s_mid);
        let k1 = (down - s0) / s_mid;
        let fusable = !self.ancestral;
        let out2 = match SigmaSteps::model_output_at(ctx, model, s_mid, t_mid, &x_mid, fusable)? {
            ModelOutput::Output(out) => out,
            ModelOutput::GuidedPair { pair, scale } => {
                let (prev_sample, x0) = ctx.guided_update(
                    &pair,
                    scale,
                    (a1, b1),
                    &[&x_mid, x],
                    &[(1.0 - a1) * k1, 1.0],
                    -b1 * k1,
                    0.0,
                )?;
                return Ok(StepOutput { prev_sample, x0 });
            }
        };
        let x0 = ctx.combine(&[a1, b1], &[&x_mid, &out2])?;
        let coefs = [1.0, (1.0 - a1) * k1, -b1 * k1];
        let inputs = [x, &x_mid, &out2];
        let prev_sample = if self.ancestral {
            ctx.combine_noisy(&coefs, &inputs, up, 0)?
        } else {
            ctx.combine(&coefs, &inputs)?
        };
        Ok(StepOutput { prev_sample, x0 })
    }
}
