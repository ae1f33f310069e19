//! LMS: the linear multistep method on the probability-flow ODE dx/dσ = (x − D(x; σ))/σ of
//! Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models",
//! arXiv:2206.00364, eq. 3 with σ(t) = t, as Katherine Crowson's k-diffusion `sample_lms`
//! and diffusers' `LMSDiscreteScheduler.step` (0.42.1) run it: with the last k derivatives
//! d_{i−j} at σ_{i−j},
//!
//!   x_{i+1} = x_i + Σ_j c_j·d_{i−j},  c_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ,
//!
//! ℓ_j the Lagrange basis polynomial through σ_i … σ_{i−k+1} that is 1 at σ_{i−j} (the
//! Adams–Bashforth construction for non-uniform steps; Hairer, Nørsett & Wanner, "Solving
//! Ordinary Differential Equations I", §III.1, eq. 1.5). k = min(i + 1, order), order 4 by
//! default (diffusers' `step(order=4)`; set `solver_order` in the config for another).
//!
//! diffusers integrates with `scipy.integrate.quad` (21-point Gauss–Kronrod, the integrand in
//! float32 torch arithmetic). ℓ_j has degree ≤ 3, so a 4-point Gauss–Legendre rule in f64 is
//! exact; the two agree to float32 rounding of the integrand (≈1e-7 relative, see
//! `tests/solvers.rs`). The step is one update of x and ≤ 4 stored derivatives; each
//! derivative d_i = ((1 − a)·x − b·output)/σ_i (x̂₀ = a·x + b·output) is one more update.

use std::collections::VecDeque;

use super::euler::{sigma_x0_coefficients, SigmaSteps};
use super::{
    check_order, check_step, opt_int, Denoiser, ModelOutput, Solver, StepContext, StepOutput,
};
use crate::error::{Error, Result};
use crate::sampling::{FinalSigmas, InterpolationType, SchedulerConfig, TimestepType};
use crate::tensor::Tensor;

const OP: &str = "LMS";

pub struct Lms {
    s: SigmaSteps,
    order: usize,
    derivatives: VecDeque<Tensor>,
    next_step: usize,
}

/// 4-point Gauss–Legendre nodes and weights on [−1, 1] (exact for degree ≤ 7).
const GAUSS4: [(f64, f64); 4] = [
    (-0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
    (-0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
    (0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
    (0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
];

impl Lms {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        // LMSDiscreteScheduler has none of EulerDiscrete's extra schedule options.
        let mut cfg = config.clone();
        cfg.final_sigmas_type = FinalSigmas::Zero;
        cfg.interpolation_type = InterpolationType::Linear;
        cfg.timestep_type = TimestepType::Discrete;
        super::reject_zero_snr(&cfg, OP, "LMSDiscreteScheduler")?;
        let order = opt_int(&cfg, OP, "solver_order", 4)?;
        if !(1..=4).contains(&order) {
            return Err(Error::invalid(
                OP,
                format!("solver_order {order} is not supported; valid: 1, 2, 3, 4"),
            ));
        }
        Ok(Lms {
            s: SigmaSteps::new(&cfg, steps, OP)?,
            order: order as usize,
            derivatives: VecDeque::new(),
            next_step: 0,
        })
    }

    /// σ_i (σ_n = 0 after the last step).
    pub fn sigma(&self, i: usize) -> f64 {
        self.s.sigmas[i]
    }

    /// The integrated coefficients c_0 … c_{k−1} of step `i` (c_0 on the newest derivative),
    /// diffusers' `get_lms_coefficient(order, i, j)`.
    pub fn coefficients(&self, i: usize) -> Vec<f64> {
        let k = (i + 1).min(self.order);
        let sig = &self.s.sigmas;
        let (lo, hi) = (sig[i], sig[i + 1]);
        let (mid, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
        (0..k)
            .map(|j| {
                let basis = |tau: f64| {
                    (0..k)
                        .filter(|&m| m != j)
                        .map(|m| (tau - sig[i - m]) / (sig[i - j] - sig[i - m]))
                        .product::<f64>()
                };
                half * GAUSS4
                    .iter()
                    .map(|&(x, w)| w * basis(mid + half * x))
                    .sum::<f64>()
            })
            .collect()
    }
}

impl Solver for Lms {
    fn name(&self) -> &'static str {
        "lms"
    }

    fn timesteps(&self) -> &[f64] {
        &self.s.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.s.init_noise_sigma
    }

    /// No derivatives kept at `first`. diffusers still picks the order from the position
    /// (`min(step_index + 1, 4)`), so the first steps use the leading coefficients of that
    /// higher-order rule ([`Lms::coefficients`]) over the derivatives there are (its `zip`
    /// stops at the shorter list), not a lower-order rule.
    fn begin(&mut self, first: usize) -> Result<()> {
        check_step(OP, first, self.s.timesteps.len())?;
        self.derivatives.clear();
        self.next_step = first;
        Ok(())
    }

    /// `x₀ + σ·ε` at the step's σ.
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
        if i == 0 {
            self.begin(0)?;
        }
        check_order(OP, i, self.next_step)?;
        let sigma = self.s.sigmas[i];
        let (a, b) = sigma_x0_coefficients(self.s.prediction, sigma);
        let t = self.s.timesteps[i];
        let out = match SigmaSteps::model_output_at(ctx, model, sigma, t, x, true)? {
            ModelOutput::Output(out) => out,
            ModelOutput::GuidedPair { pair, scale } => {
                // The guidance combine, d_i and the update in one dispatch; x̂₀ = x − σ·d_i.
                let d_conv = ((1.0 - a) / sigma, -b / sigma);
                let mut c = self.coefficients(i);
                c.truncate(self.derivatives.len() + 1);
                let (prev_sample, d) =
                    ctx.guided_multistep(&pair, scale, d_conv, x, 1.0, &c, &self.derivatives)?;
                let x0 = ctx.combine(&[1.0, -sigma], &[x, &d])?;
                self.derivatives.push_back(d);
                while self.derivatives.len() > self.order {
                    self.derivatives.pop_front();
                }
                self.next_step += 1;
                return Ok(StepOutput { prev_sample, x0 });
            }
        };
        let x0 = ctx.combine(&[a, b], &[x, &out])?;
        let d = ctx.combine(&[(1.0 - a) / sigma, -b / sigma], &[x, &out])?;
        self.derivatives.push_back(d);
        while self.derivatives.len() > self.order {
            self.derivatives.pop_front();
        }
        let mut c = self.coefficients(i);
        // After a mid-schedule start there may be fewer derivatives than the order:
        // diffusers' `zip(lms_coeffs, reversed(self.derivatives))` drops the extra ones.
        c.truncate(self.derivatives.len());
        let mut coefs = vec![1.0];
        let mut inputs = vec![x];
        let n = self.derivatives.len();
        for (j, cj) in c.iter().enumerate() {
            coefs.push(*cj);
            inputs.push(&self.derivatives[n - 1 - j]);
        }
        let prev_sample = ctx.combine(&coefs, &inputs)?;
        self.next_step += 1;
        Ok(StepOutput { prev_sample, x0 })
    }
}
