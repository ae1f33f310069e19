//! DEIS: Zhang & Chen (2023), "Fast Sampling of Diffusion Models with Exponential
//! Integrator", arXiv:2204.13902: the multistep ρAB-DEIS of §4 (eq. 15 with the ε̂ history
//! extrapolated by a Lagrange polynomial in log ρ, ρ = σ/α), orders 1–3, as diffusers'
//! `DEISMultistepScheduler.step` (0.42.1, `algorithm_type = "deis"`, `solver_type =
//! "logrho"`).
//!
//! Order 1 is DDIM (eq. 15 with a constant ε̂): x_t = (α_t/α_s)·x − σ_t(e^h − 1)·ε̂_s with
//! h = λ_t − λ_s. Orders 2 and 3: x_t = α_t·(x/α_{s0} + Σ_j C_j·ε̂_{s_j}), where C_j is the
//! integral over ρ ∈ [ρ_{s0}, ρ_t] of the Lagrange basis in log ρ through ρ_{s0}, ρ_{s1}
//! (, ρ_{s2}) that is 1 at ρ_{s_j}; its antiderivative in closed form is diffusers'
//! `ind_fn`. diffusers evaluates those antiderivatives in float32 and subtracts them, which
//! cancels digits; here everything is f64, so the coefficients are the accurate ones and the
//! observed difference to diffusers is float32 cancellation on its side (see
//! `tests/solvers.rs`).
//!
//! The converted output is ε̂ = (x − α·x̂₀)/σ with x̂₀ from the prediction type (for ε
//! prediction, the output itself up to rounding). Order selection as DPM-Solver multistep:
//! first order first, `lower_order_final` (default true) for fewer than 15 steps. The
//! schedule ends at σ_min (the first training σ, or the last converted σ repeated).

use std::collections::VecDeque;

use super::{
    as_class, check_order, check_step, opt_bool, opt_choice, opt_int, x0_processing, Denoiser,
    ModelOutput, Solver, StepContext, StepOutput, X0Processing,
};
use crate::error::{Error, Result};
use crate::sampling::{
    FinalSigmas, PredictionType, Schedule, SchedulerClass, SchedulerConfig, SigmaSchedule,
};
use crate::tensor::Tensor;

const OP: &str = "DEISMultistep";

pub struct Deis {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: PredictionType,
    order: usize,
    lower_order_final: bool,
    history: VecDeque<Tensor>,
    processing: X0Processing,
    lower_order_nums: usize,
    next_step: usize,
}

/// ∫ (ln τ − ln c)/(ln b − ln c) dτ (the order-2 Lagrange basis in log ρ).
fn ind2(t: f64, b: f64, c: f64) -> f64 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// ∫ (ln τ − ln c)(ln τ − ln d)/((ln b − ln c)(ln b − ln d)) dτ.
fn ind3(t: f64, b: f64, c: f64, d: f64) -> f64 {
    let (lt, lc, ld) = (t.ln(), c.ln(), d.ln());
    let num = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    num / ((b.ln() - lc) * (b.ln() - ld))
}

impl Deis {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let mut cfg = as_class(config, SchedulerClass::UniPcMultistep);
        // `thresholding` as diffusers' `convert_model_output`; the class has no clip_sample.
        let processing = x0_processing(&cfg, OP, None)?;
        // diffusers maps the DPM-Solver names onto deis; nothing else exists.
        opt_choice(
            &cfg,
            OP,
            "algorithm_type",
            &[("deis", ()), ("dpmsolver", ()), ("dpmsolver++", ())],
            (),
        )?;
        opt_choice(
            &cfg,
            OP,
            "solver_type",
            &[
                ("logrho", ()),
                ("midpoint", ()),
                ("heun", ()),
                ("bh1", ()),
                ("bh2", ()),
            ],
            (),
        )?;
        let order = opt_int(&cfg, OP, "solver_order", 2)?;
        if !(1..=3).contains(&order) {
            return Err(Error::invalid(
                OP,
                format!("solver_order {order} is not supported; valid: 1, 2, 3"),
            ));
        }
        if matches!(
            cfg.sigma_schedule,
            SigmaSchedule::Flow | SigmaSchedule::LuLambdas
        ) || cfg.prediction_type == PredictionType::FlowPrediction
        {
            return Err(Error::invalid(
                OP,
                "flow-matching sigmas / flow_prediction are not supported for DEIS yet; valid prediction_type: epsilon, sample, v_prediction; sigma schedules: interpolated, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas",
            ));
        }
        if cfg.rescale_betas_zero_snr {
            return Err(Error::invalid(
                OP,
                "rescale_betas_zero_snr is not an option of DEISMultistepScheduler; set it to false",
            ));
        }
        let lower_order_final = opt_bool(&cfg, OP, "lower_order_final", true)?;
        // DEIS always ends at σ_min: UniPC's schedule with final_sigmas_type = sigma_min.
        cfg.final_sigmas_type = FinalSigmas::SigmaMin;
        cfg.shift_terminal = None;
        let schedule = Schedule::new(&cfg)?;
        let ts = schedule.set_timesteps(steps)?;
        let sigmas: Vec<f64> = ts
            .sigmas
            .unwrap_or_default()
            .into_iter()
            .map(f64::from)
            .collect();
        if sigmas.len() != ts.timesteps.len() + 1 {
            return Err(Error::invalid(
                OP,
                "the schedule has the wrong number of sigmas",
            ));
        }
        Ok(Deis {
            timesteps: ts.timesteps,
            sigmas,
            prediction: cfg.prediction_type,
            order: order as usize,
            lower_order_final,
            history: VecDeque::new(),
            processing,
            lower_order_nums: 0,
            next_step: 0,
        })
    }

    fn alpha_sigma(&self, i: usize) -> (f64, f64) {
        let s = self.sigmas[i];
        let a = 1.0 / (s * s + 1.0).sqrt();
        (a, s * a)
    }

    /// ε̂ = a·x + b·output (`convert_model_output`), and x̂₀'s (a, b).
    pub fn conversion(&self, i: usize) -> ((f64, f64), (f64, f64)) {
        let (alpha, sigma) = self.alpha_sigma(i);
        let (a, b) = self.prediction.x0_coefficients(alpha, sigma);
        (((1.0 - alpha * a) / sigma, -alpha * b / sigma), (a, b))
    }

    /// The order diffusers' `step` picks at step `i`.
    pub fn step_order(&self, i: usize, lower_order_nums: usize) -> usize {
        let n = self.timesteps.len();
        let lower_final = i + 1 == n && self.lower_order_final && n < 15;
        let lower_second = i + 2 == n && self.lower_order_final && n < 15;
        if self.order == 1 || lower_order_nums < 1 || lower_final {
            1
        } else if self.order == 2 || lower_order_nums < 2 || lower_second {
            2
        } else {
            3
        }
    }

    /// (c_x, [c on ε̂_0 (newest), ε̂_1, ε̂_2]) of step `i` at `order`.
    pub fn update(&self, i: usize, order: usize) -> (f64, Vec<f64>) {
        let (alpha_t, sigma_t) = self.alpha_sigma(i + 1);
        let (alpha_0, sigma_0) = self.alpha_sigma(i);
        if order == 1 {
            let h = (alpha_t.ln() - sigma_t.ln()) - (alpha_0.ln() - sigma_0.ln());
            return (alpha_t / alpha_0, vec![-sigma_t * h.exp_m1()]);
        }
        let rho = |k: usize| {
            let (a, s) = self.alpha_sigma(k);
            s / a
        };
        let (rt, r0, r1) = (rho(i + 1), rho(i), rho(i - 1));
        let c_x = alpha_t / alpha_0;
        if order == 2 {
            let c1 = ind2(rt, r0, r1) - ind2(r0, r0, r1);
            let c2 = ind2(rt, r1, r0) - ind2(r0, r1, r0);
            return (c_x, vec![alpha_t * c1, alpha_t * c2]);
        }
        let r2 = rho(i - 2);
        let c1 = ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2);
        let c2 = ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0);
        let c3 = ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1);
        (c_x, vec![alpha_t * c1, alpha_t * c2, alpha_t * c3])
    }
}

impl Deis {
    /// The guidance combine, ε̂ and the update in one
    /// [`CfgUpdate`](crate::ops::CfgUpdate); ε̂_0 comes out with x_{t−1}.
    fn guided_step(
        &mut self,
        ctx: &mut StepContext<'_>,
        i: usize,
        x: &Tensor,
        pair: &Tensor,
        scale: f64,
    ) -> Result<StepOutput> {
        let order = self.step_order(i, self.lower_order_nums);
        let (c_x, c_m) = self.update(i, order);
        let (eps_c, _) = self.conversion(i);
        let (prev_sample, eps) =
            ctx.guided_multistep(pair, scale, eps_c, x, c_x, &c_m, &self.history)?;
        let (alpha, sigma) = self.alpha_sigma(i);
        let x0 = ctx.combine(&[1.0 / alpha, -sigma / alpha], &[x, &eps])?;
        self.history.push_back(eps);
        while self.history.len() > self.order {
            self.history.pop_front();
        }
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        self.next_step += 1;
        Ok(StepOutput { prev_sample, x0 })
    }
}

impl Solver for Deis {
    fn name(&self) -> &'static str {
        "deis"
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Empty history and `lower_order_nums = 0` at `first`; [`Self::step_order`] keeps
    /// counting the final steps from the end of the whole schedule, as diffusers.
    fn begin(&mut self, first: usize) -> Result<()> {
        check_step(OP, first, self.timesteps.len())?;
        self.history.clear();
        self.lower_order_nums = 0;
        self.next_step = first;
        Ok(())
    }

    /// `α_t·x₀ + σ_t·ε` at the step's σ (`_sigma_to_alpha_sigma_t`).
    fn add_noise_coefficients(&self, i: usize) -> Option<(f64, f64)> {
        (i < self.sigmas.len()).then(|| self.alpha_sigma(i))
    }

    fn step(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
    ) -> Result<StepOutput> {
        check_step(OP, i, self.timesteps.len())?;
        if i == 0 {
            self.begin(0)?;
        }
        check_order(OP, i, self.next_step)?;
        let fusable = self.processing == X0Processing::None;
        let out = match ctx.model_output(model, x, self.timesteps[i], fusable)? {
            ModelOutput::Output(out) => out,
            ModelOutput::GuidedPair { pair, scale } => {
                return self.guided_step(ctx, i, x, &pair, scale);
            }
        };
        let ((ea, eb), (xa, xb)) = self.conversion(i);
        let (eps, x0) = if self.processing != X0Processing::None {
            // ε̂ = (x − α_t·x̂₀)/σ_t from the thresholded x̂₀.
            let raw = ctx.combine(&[xa, xb], &[x, &out])?;
            let x0 = ctx.process_x0(self.processing, raw)?;
            let (alpha, sigma) = self.alpha_sigma(i);
            (ctx.combine(&[1.0 / sigma, -alpha / sigma], &[x, &x0])?, x0)
        } else {
            let eps = ctx.combine(&[ea, eb], &[x, &out])?;
            (eps, ctx.combine(&[xa, xb], &[x, &out])?)
        };
        self.history.push_back(eps);
        while self.history.len() > self.order {
            self.history.pop_front();
        }
        let order = self.step_order(i, self.lower_order_nums);
        let (c_x, c_m) = self.update(i, order);
        let mut coefs = vec![c_x];
        let mut inputs = vec![x];
        let n = self.history.len();
        for (k, c) in c_m.iter().enumerate() {
            coefs.push(*c);
            inputs.push(&self.history[n - 1 - k]);
        }
        let prev_sample = ctx.combine(&coefs, &inputs)?;
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        self.next_step += 1;
        Ok(StepOutput { prev_sample, x0 })
    }
}
