//! GMS, the Gaussian Mixture Solver: Guo, Lu, Bao, Pang, Yan, Du & Li (2023), "Gaussian
//! Mixture Solvers for Diffusion Models", arXiv:2311.00941.
//!
//! A DDPM-type ancestral sampler over the DDPM schedule's timesteps whose reverse
//! transition q(x_s | x_t) is a two-component Gaussian mixture per element instead of a
//! Gaussian: the model ([`MomentDenoiser`]) predicts E[ε|x_t], Var[ε|x_t], κ₃[ε|x_t]; the
//! first three moments of x_s = c_x·x_t + c_ε·ε + λ·z follow (the DDPM posterior
//! q(x_s | x_t, x₀) = N(μ̃, λ²) with x₀ = (x_t − σ_t·ε)/α_t, so its moments are those of ε
//! pushed through an affine map, plus Gaussian noise of variance λ² = β̃), and the
//! mixture matching them is fitted in closed form and sampled, all in one kernel
//! ([`GmsUpdate`], whose docs give the fit equations and the fallback when the predicted
//! skewness is beyond what the mixture can express).
//!
//! Coefficients (t → s, ᾱ_s = 1 after the last step; β̄ = 1 − ᾱ):
//!   λ² = β̄_s/β̄_t·(1 − ᾱ_t/ᾱ_s),  c_x = √ᾱ_s/√ᾱ_t,  c_ε = √(β̄_s − λ²) − √ᾱ_s·√β̄_t/√ᾱ_t,
//! the same mean as DDPM's posterior mean with ε̂ = E[ε|x_t]. The last step outputs the
//! mean x̂₀ (no noise), as DDPM does.
//!
//! The paper's mixture is fitted by a generalized method of moments with an optimiser; here
//! the parameterisation (weights ⅓/⅔, one shared variance) makes the system exactly
//! determined, so the fit is a closed form and runs per element on the GPU.
//!
//! Noise must be Philox (the mixture needs a uniform as well as a Gaussian per element);
//! given noise tensors are rejected.

use super::analytic_dpm::ddpm_grid;
use super::{check_step, Denoiser, Noise, Solver, StepContext, StepOutput};
use crate::error::{Error, Result};
use crate::ops::GmsUpdate;
use crate::sampling::SchedulerConfig;
use crate::tensor::Tensor;

const OP: &str = "GMS";

pub struct Gms {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
}

/// One GMS step's coefficients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GmsCoefficients {
    pub c_x: f64,
    pub c_eps: f64,
    pub lambda2: f64,
    /// x̂₀ = x0.0·x_t + x0.1·E[ε].
    pub x0: (f64, f64),
}

impl Gms {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        // The moment model predicts ε and its powers, whatever the config's prediction type.
        let (timesteps, alphas_cumprod, _) = ddpm_grid(config, steps, OP)?;
        Ok(Self {
            timesteps,
            alphas_cumprod,
        })
    }

    fn alpha_prod(&self, t: f64) -> f64 {
        if t >= 0.0 {
            self.alphas_cumprod
                .get(t as usize)
                .copied()
                .unwrap_or(f32::NAN) as f64
        } else {
            1.0
        }
    }

    pub fn coefficients(&self, i: usize) -> GmsCoefficients {
        let t = self.timesteps[i];
        let s = self.timesteps.get(i + 1).copied().unwrap_or(-1.0);
        let (a_t, a_s) = (self.alpha_prod(t), self.alpha_prod(s));
        let (b_t, b_s) = (1.0 - a_t, 1.0 - a_s);
        let lambda2 = if s >= 0.0 {
            b_s / b_t * (1.0 - a_t / a_s)
        } else {
            0.0
        };
        let c_x = (a_s / a_t).sqrt();
        let c_eps = (b_s - lambda2).max(0.0).sqrt() - (a_s * b_t / a_t).sqrt();
        GmsCoefficients {
            c_x,
            c_eps,
            lambda2,
            x0: (1.0 / a_t.sqrt(), -(b_t / a_t).sqrt()),
        }
    }
}

impl Solver for Gms {
    fn name(&self) -> &'static str {
        "gms"
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
        let seed = match ctx.noise {
            Noise::Philox { seed } => *seed,
            Noise::Given(_) => {
                return Err(Error::invalid(
                    OP,
                    "GMS draws a uniform and a Gaussian per element; use Philox noise, not given noise tensors",
                ))
            }
        };
        let moments = model.as_moments().ok_or_else(|| {
            Error::invalid(
                OP,
                "GMS needs a model that predicts the variance and skewness of ε (a MomentDenoiser); this model only predicts its output",
            )
        })?;
        let [m1, var, k3] = moments.eps_moments(ctx.exec, x, self.timesteps[i])?;
        let c = self.coefficients(i);
        let x0 = ctx.combine(&[c.x0.0, c.x0.1], &[x, &m1])?;
        let prev_sample = if c.lambda2 > 0.0 {
            let op = GmsUpdate {
                c_x: c.c_x,
                c_eps: c.c_eps,
                lambda2: c.lambda2,
                seed,
                step: ctx.step,
                stream: 0,
            };
            ctx.exec.run(&op, &[x, &m1, &var, &k3])?
        } else {
            ctx.combine(&[c.c_x, c.c_eps], &[x, &m1])?
        };
        Ok(StepOutput { prev_sample, x0 })
    }
}
