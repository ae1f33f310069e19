//! LCM: Luo et al. (2023), "Latent Consistency Models: Synthesizing High-Resolution Images
//! with Few-Step Inference", arXiv:2310.04378, Algorithm 3 (multistep latent consistency
//! sampling), with the consistency-function parameterization f(x, t) = c_skip(t)·x +
//! c_out(t)·x̂₀(x, t) of its eq. 5–6 (Song et al. 2023's eq. 7 with the timestep scaled by
//! `timestep_scaling`): c_skip = σ_d²/((s·t)² + σ_d²), c_out = s·t/√((s·t)² + σ_d²), σ_d = ½.
//! diffusers' `LCMScheduler.step` (0.42.1).
//!
//! Each step: denoised = c_out·x̂₀ + c_skip·x_t, then (except at the last step) re-noised to
//! the next timestep, x = √ᾱ_{t'}·denoised + √(1 − ᾱ_{t'})·z. Linear in (x_t, output) plus
//! noise: one update; `denoised` is the x₀ preview, as diffusers returns it.
//!
//! Timesteps as diffusers: the distillation schedule t_j = j·⌊N/K⌋ − 1 for j = 1 … K
//! (K = `original_inference_steps`, default 50), reversed, and n of them at indices
//! ⌊i·K/n⌋. Needs n ≤ K.
//!
//! Image-to-image as diffusers' `LatentConsistencyModelImg2ImgPipeline` (strength s passed to
//! `LCMScheduler.set_timesteps`, [`Lcm::with_strength`]): the distillation schedule keeps its
//! first K' = ⌊K·s⌋ timesteps and the n steps are taken from those, at indices ⌊i·K'/n⌋; every
//! step runs (no cut-off tail). Needs n ≤ K'.
//!
//! `thresholding` / `clip_sample` (both LCMScheduler options, default off) process x̂₀
//! before the consistency function: denoised = c_out·P(x̂₀) + c_skip·x_t.

use super::{
    as_class, check_step, opt_int, x0_processing, Denoiser, Solver, StepContext, StepOutput,
    X0Processing,
};
use crate::error::{Error, Result};
use crate::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig};
use crate::tensor::Tensor;
use serde_json::Value;

const OP: &str = "LCM";

pub struct Lcm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    timestep_scaling: f64,
    processing: X0Processing,
}

fn opt_float(config: &SchedulerConfig, key: &str, default: f64) -> Result<f64> {
    match config.other.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| Error::invalid(OP, format!("{key} must be a number, got {v}"))),
    }
}

impl Lcm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        Self::with_strength(config, steps, 1.0)
    }

    /// The schedule of an image-to-image run at `strength` in (0, 1] (see the module docs).
    pub fn with_strength(config: &SchedulerConfig, steps: usize, strength: f64) -> Result<Self> {
        let cfg = as_class(config, SchedulerClass::Ddim);
        let processing = x0_processing(&cfg, OP, Some(false))?;
        if cfg.prediction_type == PredictionType::FlowPrediction {
            return Err(Error::invalid(
                OP,
                "prediction_type flow_prediction is not supported; valid: epsilon, sample, v_prediction",
            ));
        }
        let train = cfg.num_train_timesteps;
        let original = opt_int(&cfg, OP, "original_inference_steps", 50)?;
        if original < 1 || original as usize > train {
            return Err(Error::invalid(
                OP,
                format!("original_inference_steps must be in 1..={train}, got {original}"),
            ));
        }
        let original = original as usize;
        if steps > train {
            return Err(Error::invalid(
                OP,
                format!("{steps} inference steps is more than the {train} training timesteps; use at most {original} (original_inference_steps)"),
            ));
        }
        if steps == 0 || steps > original {
            return Err(Error::invalid(
                OP,
                format!(
                    "{steps} steps: LCM takes 1 to original_inference_steps = {original} steps (its timesteps are a subset of that schedule)"
                ),
            ));
        }
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(Error::invalid(
                OP,
                format!("strength must be in (0, 1], got {strength}"),
            ));
        }
        // diffusers: int(original_steps * strength), in f64.
        let kept = (original as f64 * strength) as usize;
        if kept < steps {
            return Err(Error::invalid(
                OP,
                format!(
                    "strength {strength} keeps {kept} of the {original} distillation timesteps (original_inference_steps × strength), fewer than the {steps} steps asked; use at most {kept} steps or a strength of at least {}",
                    steps as f64 / original as f64
                ),
            ));
        }
        let timestep_scaling = opt_float(&cfg, "timestep_scaling", 10.0)?;
        let schedule = Schedule::new(&cfg)?;
        let k = (train / original) as i64;
        let origin: Vec<i64> = (1..=kept as i64).rev().map(|j| j * k - 1).collect();
        let stride = kept as f64 / steps as f64;
        let timesteps = (0..steps)
            .map(|i| origin[((i as f64 * stride).floor() as usize).min(kept - 1)] as f64)
            .collect();
        Ok(Lcm {
            timesteps,
            alphas_cumprod: schedule.alphas_cumprod,
            prediction: cfg.prediction_type,
            timestep_scaling,
            processing,
        })
    }

    fn alpha_prod(&self, t: f64) -> f64 {
        self.alphas_cumprod
            .get(t as usize)
            .copied()
            .unwrap_or(f32::NAN) as f64
    }

    /// (x̂₀'s (a, b) from (x_t, output), the consistency function's (c_skip, c_out)).
    fn parts(&self, i: usize) -> ((f64, f64), (f64, f64)) {
        let t = self.timesteps[i];
        let a = self.alpha_prod(t);
        let x0 = self.prediction.x0_coefficients(a.sqrt(), (1.0 - a).sqrt());
        let st = t * self.timestep_scaling;
        let sd2 = 0.25;
        (x0, (sd2 / (st * st + sd2), st / (st * st + sd2).sqrt()))
    }

    /// (denoised's (c_x, c_o), the next level's (√ᾱ', √(1 − ᾱ')) or None at the last step).
    #[allow(clippy::type_complexity)]
    pub fn coefficients(&self, i: usize) -> ((f64, f64), Option<(f64, f64)>) {
        let ((x0a, x0b), (c_skip, c_out)) = self.parts(i);
        let denoised = (c_out * x0a + c_skip, c_out * x0b);
        let next = self.timesteps.get(i + 1).map(|&tp| {
            let ap = self.alpha_prod(tp);
            (ap.sqrt(), (1.0 - ap).sqrt())
        });
        (denoised, next)
    }
}

impl Solver for Lcm {
    fn name(&self) -> &'static str {
        "lcm"
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
        let ((dx, dout), next) = self.coefficients(i);
        if self.processing != X0Processing::None {
            let ((x0a, x0b), (c_skip, c_out)) = self.parts(i);
            let x0 = ctx.combine(&[x0a, x0b], &[x, &out])?;
            let x0 = ctx.process_x0(self.processing, x0)?;
            let denoised = ctx.combine(&[c_out, c_skip], &[&x0, x])?;
            let prev_sample = match next {
                Some((sa, sb)) => ctx.combine_noisy(&[sa], &[&denoised], sb, 0)?,
                None => denoised.clone(),
            };
            return Ok(StepOutput {
                prev_sample,
                x0: denoised,
            });
        }
        let x0 = ctx.combine(&[dx, dout], &[x, &out])?;
        let prev_sample = match next {
            Some((sa, sb)) => ctx.combine_noisy(&[sa * dx, sa * dout], &[x, &out], sb, 0)?,
            None => x0.clone(),
        };
        Ok(StepOutput { prev_sample, x0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SchedulerConfig {
        SchedulerConfig::from_json_str(
            r#"{"_class_name": "LCMScheduler", "num_train_timesteps": 1000,
                "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "original_inference_steps": 50}"#,
            "scheduler_config.json",
            Some(SchedulerClass::Ddim),
        )
        .unwrap()
    }

    #[test]
    fn strength_cuts_the_distillation_schedule() {
        let cfg = config();
        // diffusers' LCMScheduler.set_timesteps(4): the 50-step schedule 999, 979, … at
        // indices 0, 12, 25, 37.
        let full = Lcm::new(&cfg, 4).unwrap();
        assert_eq!(full.timesteps(), &[999.0, 759.0, 499.0, 259.0]);
        // set_timesteps(4, strength=0.5): the first 25 distillation timesteps (499 down to
        // 19) at indices 0, 6, 12, 18 (the tiny LCM img2img golden ran these).
        let half = Lcm::with_strength(&cfg, 4, 0.5).unwrap();
        assert_eq!(half.timesteps(), &[499.0, 379.0, 259.0, 139.0]);
        // ⌊50 · 0.05⌋ = 2 timesteps cannot hold 4 steps; strength 0 or above 1 is refused.
        let e = Lcm::with_strength(&cfg, 4, 0.05).err().unwrap().to_string();
        assert!(
            e.contains("keeps 2 of the 50") && e.contains("at most 2 steps"),
            "{e}"
        );
        assert!(Lcm::with_strength(&cfg, 4, 0.0).is_err());
        assert!(Lcm::with_strength(&cfg, 4, 1.5).is_err());
    }
}
