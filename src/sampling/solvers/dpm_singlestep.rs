//! Singlestep DPM-Solver (noise-prediction form) and DPM-Solver++ (data-prediction form):
//! diffusers' `DPMSolverSinglestepScheduler.step` (0.42.1).
//!
//! * DPM-Solver: Lu et al. (2022), "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
//!   Sampling in Around 10 Steps", arXiv:2206.00927: DPM-Solver-1 is eq. 3.7, DPM-Solver-2
//!   Algorithm 1 and DPM-Solver-3 Algorithm 2 (the `heun` variants use eq. 3.6's Taylor
//!   coefficients with the divided differences D1, D2 of its Appendix B).
//! * DPM-Solver++: Lu et al. (2022), "DPM-Solver++: Fast Solver for Guided Sampling of
//!   Diffusion Probabilistic Models", arXiv:2211.01095: first order eq. 5, DPM-Solver++(2S)
//!   Algorithm 1, and the third-order singlestep of its Appendix B; `sde-dpmsolver++` adds
//!   Appendix A's noise σ_t·√(1 − e^{−2h})·z (eqs. 18–19).
//!
//! A singlestep solver of order k spends k model calls on one step from an anchor x_s to
//! x_t; diffusers lays the intermediate points on the schedule itself (`order_list`, e.g.
//! 1, 2, 1, 2, … for order 2), so each call here, as there, is one step: an order-1 call
//! sets the anchor and jumps to the next σ (the intermediate point where the next model call
//! is made); an order-k call goes from the anchor k − 1 steps back to σ_{i+1} with the last
//! k converted outputs. Every update is linear in (anchor, m_0, m_1, m_2, z): one update per
//! call, f64 coefficients. Names (diffusers → here): `sigma_s0/s1/s2` = σ_i, σ_{i−1}, σ_{i−2},
//! `h = λ_t − λ_anchor`, `r0 = h_0/h`, `r1 = h_1/h`, `D0, D1_0, D1_1, D1, D2` as diffusers.
//!
//! `lower_order_final` defaults to false here (as in diffusers), and diffusers switches it on
//! when the steps are not a multiple of the order or the last σ is 0.

use std::collections::VecDeque;

use super::{
    as_class, check_order, check_step, opt_bool, opt_choice, opt_int, x0_processing, Denoiser,
    ModelOutput, Solver, StepContext, StepOutput, X0Processing,
};
use crate::error::{Error, Result};
use crate::sampling::{
    BetaSchedule, FinalSigmas, PredictionType, Schedule, SchedulerClass, SchedulerConfig,
    SigmaSchedule, TimestepSpacing,
};
use crate::tensor::Tensor;

const OP: &str = "DPMSolverSinglestep";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinglestepAlgorithm {
    DpmSolver,
    DpmSolverPP,
    SdeDpmSolverPP,
}

const ALGORITHMS: &[(&str, SinglestepAlgorithm)] = &[
    ("dpmsolver", SinglestepAlgorithm::DpmSolver),
    ("dpmsolver++", SinglestepAlgorithm::DpmSolverPP),
    ("sde-dpmsolver++", SinglestepAlgorithm::SdeDpmSolverPP),
    // diffusers registers `deis` as dpmsolver++.
    ("deis", SinglestepAlgorithm::DpmSolverPP),
];

/// (is heun) of diffusers' `solver_type`.
const SOLVER_TYPES: &[(&str, bool)] = &[
    ("midpoint", false),
    ("heun", true),
    ("logrho", false),
    ("bh1", false),
    ("bh2", false),
];

pub struct DpmSolverSinglestep {
    name: &'static str,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: PredictionType,
    algorithm: SinglestepAlgorithm,
    heun: bool,
    order: usize,
    flow: bool,
    order_list: Vec<usize>,
    history: VecDeque<Tensor>,
    processing: X0Processing,
    anchor: Option<Tensor>,
    next_step: usize,
}

/// diffusers' `get_order_list`.
pub fn singlestep_orders(
    steps: usize,
    order: usize,
    lower_order_final: bool,
    final_zero: bool,
) -> Vec<usize> {
    if steps == 0 {
        return Vec::new();
    }
    let rep = |pat: &[usize], k: usize| -> Vec<usize> {
        pat.iter().copied().cycle().take(pat.len() * k).collect()
    };
    let mut orders = match (order, lower_order_final) {
        (3, true) => match steps % 3 {
            0 => [rep(&[1, 2, 3], steps / 3 - 1), vec![1, 2, 1]].concat(),
            1 => [rep(&[1, 2, 3], steps / 3), vec![1]].concat(),
            _ => [rep(&[1, 2, 3], steps / 3), vec![1, 2]].concat(),
        },
        (2, true) => {
            if steps.is_multiple_of(2) {
                [rep(&[1, 2], steps / 2 - 1), vec![1, 1]].concat()
            } else {
                [rep(&[1, 2], steps / 2), vec![1]].concat()
            }
        }
        (3, false) => rep(&[1, 2, 3], steps / 3),
        (2, false) => rep(&[1, 2], steps / 2),
        _ => vec![1; steps],
    };
    if final_zero {
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
    }
    orders
}

impl DpmSolverSinglestep {
    pub fn new(config: &SchedulerConfig, steps: usize, name: &'static str) -> Result<Self> {
        let mut cfg = as_class(config, SchedulerClass::DpmSolverMultistep);
        // The singlestep scheduler has only linspace spacing (no `timestep_spacing` key).
        cfg.timestep_spacing = TimestepSpacing::Linspace;
        // `thresholding` as diffusers' `convert_model_output`; the class has no clip_sample.
        let processing = x0_processing(&cfg, OP, None)?;
        let algorithm = opt_choice(
            &cfg,
            OP,
            "algorithm_type",
            ALGORITHMS,
            SinglestepAlgorithm::DpmSolverPP,
        )?;
        let heun = opt_choice(&cfg, OP, "solver_type", SOLVER_TYPES, false)?;
        let order = opt_int(&cfg, OP, "solver_order", 2)?;
        if !(1..=3).contains(&order) {
            return Err(Error::invalid(
                OP,
                format!("solver_order {order} is not supported; valid: 1, 2, 3"),
            ));
        }
        let order = order as usize;
        // diffusers reads only "learned"/"learned_range" here (the model then outputs twice
        // the channels and the step drops the variance half); any other value, such as the
        // "fixed_small" of a DDPM config the scheduler was made from, changes nothing.
        if let Some(v) = cfg.other.get("variance_type").and_then(|v| v.as_str()) {
            if v == "learned" || v == "learned_range" {
                return Err(Error::invalid(
                    OP,
                    format!("variance_type \"{v}\" (learned variance channels) is not supported; use a model that predicts only ε, v or x₀"),
                ));
            }
        }
        match cfg.sigma_schedule {
            SigmaSchedule::LuLambdas => {
                return Err(Error::invalid(
                    OP,
                    "use_lu_lambdas is not an option of DPMSolverSinglestepScheduler; valid sigma schedules: interpolated, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas, use_flow_sigmas",
                ))
            }
            SigmaSchedule::Karras if cfg.beta_schedule == BetaSchedule::SquaredcosCapV2 => {
                // The multistep schedule leaves these timesteps unrounded; this class rounds.
                return Err(Error::invalid(
                    OP,
                    "use_karras_sigmas with beta_schedule squaredcos_cap_v2 is not supported yet; use another beta_schedule or sigma schedule",
                ));
            }
            _ => {}
        }
        if cfg.rescale_betas_zero_snr {
            return Err(Error::invalid(
                OP,
                "rescale_betas_zero_snr is not an option of DPMSolverSinglestepScheduler; set it to false",
            ));
        }
        let final_zero = cfg.final_sigmas_type == FinalSigmas::Zero;
        let data = algorithm != SinglestepAlgorithm::DpmSolver;
        if !data && final_zero {
            return Err(Error::invalid(
                OP,
                "final_sigmas_type zero is not supported for algorithm_type dpmsolver (σ = 0 has no ε-form step); valid: sigma_min",
            ));
        }
        if !data && cfg.prediction_type == PredictionType::FlowPrediction {
            return Err(Error::invalid(
                OP,
                "prediction_type flow_prediction needs algorithm_type dpmsolver++ or sde-dpmsolver++; valid for dpmsolver: epsilon, sample, v_prediction",
            ));
        }
        let mut lower_order_final = opt_bool(&cfg, OP, "lower_order_final", false)?;
        if !steps.is_multiple_of(order) || final_zero {
            lower_order_final = true;
        }
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
        Ok(DpmSolverSinglestep {
            name,
            order_list: singlestep_orders(steps, order, lower_order_final, final_zero),
            timesteps: ts.timesteps,
            sigmas,
            prediction: cfg.prediction_type,
            algorithm,
            heun,
            order,
            flow: cfg.sigma_schedule == SigmaSchedule::Flow,
            history: VecDeque::new(),
            processing,
            anchor: None,
            next_step: 0,
        })
    }

    /// The order of each call (diffusers' `order_list`).
    pub fn orders(&self) -> &[usize] {
        &self.order_list
    }

    fn alpha_sigma(&self, s: f64) -> (f64, f64) {
        if self.flow {
            (1.0 - s, s)
        } else {
            let a = 1.0 / (s * s + 1.0).sqrt();
            (a, s * a)
        }
    }

    fn lambda(&self, i: usize) -> f64 {
        let (a, s) = self.alpha_sigma(self.sigmas[i]);
        a.ln() - s.ln()
    }

    fn x0_conversion(&self, i: usize) -> (f64, f64) {
        let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
        match self.prediction {
            PredictionType::FlowPrediction => (1.0, -self.sigmas[i]),
            p => p.x0_coefficients(alpha, sigma),
        }
    }

    /// `convert_model_output`: x̂₀ (DPM-Solver++) or ε̂ (DPM-Solver) as a·x + b·output.
    fn conversion(&self, i: usize) -> (f64, f64) {
        if self.algorithm == SinglestepAlgorithm::DpmSolver {
            let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
            self.prediction.eps_coefficients(alpha, sigma)
        } else {
            self.x0_conversion(i)
        }
    }

    /// Call `i` at `order`: (c_anchor, [c on m_0 (newest), m_1, …], noise scale).
    pub fn update(&self, i: usize, order: usize) -> (f64, Vec<f64>, f64) {
        use SinglestepAlgorithm::*;
        let a_idx = i + 1 - order;
        let (alpha_t, sigma_t) = self.alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = self.alpha_sigma(self.sigmas[a_idx]);
        let lambda_s = self.lambda(a_idx);
        let h = self.lambda(i + 1) - lambda_s;
        let em = (-h).exp_m1(); // e^{−h} − 1
        let ep = h.exp_m1(); // e^h − 1
        let e2 = -(-2.0 * h).exp_m1(); // 1 − e^{−2h}
        let (c_x, c0, noise) = match self.algorithm {
            DpmSolverPP => (sigma_t / sigma_s, -alpha_t * em, 0.0),
            DpmSolver => (alpha_t / alpha_s, -sigma_t * ep, 0.0),
            SdeDpmSolverPP => (
                sigma_t / sigma_s * (-h).exp(),
                alpha_t * e2,
                sigma_t * e2.sqrt(),
            ),
        };
        // First-order Taylor coefficient (heun / third order) and second-order one.
        let (t1, t2) = match self.algorithm {
            DpmSolverPP => (
                alpha_t * (em / h + 1.0),
                -alpha_t * ((em + h) / (h * h) - 0.5),
            ),
            DpmSolver => (
                -sigma_t * (ep / h - 1.0),
                -sigma_t * ((ep - h) / (h * h) - 0.5),
            ),
            SdeDpmSolverPP => (
                alpha_t * (e2 / (-2.0 * h) + 1.0),
                alpha_t * ((e2 - 2.0 * h) / (4.0 * h * h) - 0.5),
            ),
        };
        match order {
            1 => (c_x, vec![c0], noise),
            2 => {
                // D0 = m1, D1 = (m0 − m1)/r0.
                let r0 = (self.lambda(i) - lambda_s) / h;
                let c1 = if self.heun { t1 } else { 0.5 * c0 };
                (c_x, vec![c1 / r0, c0 - c1 / r0], noise)
            }
            _ => {
                // D0 = m2, D1_0 = (m1 − m2)/r1, D1_1 = (m0 − m2)/r0,
                // D1 = (r0·D1_0 − r1·D1_1)/(r0 − r1), D2 = 2(D1_1 − D1_0)/(r0 − r1).
                let r0 = (self.lambda(i) - lambda_s) / h;
                let r1 = (self.lambda(i - 1) - lambda_s) / h;
                let (k10, k11) = if self.heun {
                    let d = r0 - r1;
                    (t1 * r0 / d - 2.0 * t2 / d, -t1 * r1 / d + 2.0 * t2 / d)
                } else {
                    (0.0, t1)
                };
                (
                    c_x,
                    vec![k11 / r0, k10 / r1, c0 - k10 / r1 - k11 / r0],
                    noise,
                )
            }
        }
    }
}

impl Solver for DpmSolverSinglestep {
    fn name(&self) -> &'static str {
        self.name
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Empty `model_outputs` and no anchor sample at `first`. A start inside an order-2 or
    /// order-3 group then takes the order the history allows (`order_list[i]` capped by the
    /// outputs kept, diffusers' `while self.model_outputs[-order] is None: order -= 1`), so
    /// the first step is first order and anchors the group.
    fn begin(&mut self, first: usize) -> Result<()> {
        check_step(OP, first, self.timesteps.len())?;
        self.history.clear();
        self.anchor = None;
        self.next_step = first;
        Ok(())
    }

    /// `α_t·x₀ + σ_t·ε` at the step's σ (`_sigma_to_alpha_sigma_t`).
    fn add_noise_coefficients(&self, i: usize) -> Option<(f64, f64)> {
        Some(self.alpha_sigma(*self.sigmas.get(i)?))
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
        let fusable = self.processing == X0Processing::None
            && self.algorithm != SinglestepAlgorithm::SdeDpmSolverPP;
        let out = match ctx.model_output(model, x, self.timesteps[i], fusable)? {
            ModelOutput::Output(out) => out,
            ModelOutput::GuidedPair { pair, scale } => {
                return self.guided_step(ctx, i, x, &pair, scale);
            }
        };
        let (m, x0) = if self.processing != X0Processing::None {
            // Thresholded x̂₀; the noise-prediction form turns it back into
            // ε̂ = (x − α_t·x̂₀)/σ_t.
            let (a, b) = self.x0_conversion(i);
            let raw = ctx.combine(&[a, b], &[x, &out])?;
            let x0 = ctx.process_x0(self.processing, raw)?;
            let m = if self.algorithm == SinglestepAlgorithm::DpmSolver {
                let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
                ctx.combine(&[1.0 / sigma, -alpha / sigma], &[x, &x0])?
            } else {
                x0.clone()
            };
            (m, x0)
        } else {
            let (a, b) = self.conversion(i);
            let m = ctx.combine(&[a, b], &[x, &out])?;
            let x0 = if self.algorithm == SinglestepAlgorithm::DpmSolver {
                let (a, b) = self.x0_conversion(i);
                ctx.combine(&[a, b], &[x, &out])?
            } else {
                m.clone()
            };
            (m, x0)
        };
        self.history.push_back(m);
        while self.history.len() > self.order {
            self.history.pop_front();
        }
        let order = self.order_list[i].min(self.history.len());
        if order == 1 {
            self.anchor = Some(x.clone());
        }
        let anchor = self.anchor.clone().unwrap_or_else(|| x.clone());
        let (c_x, c_m, noise) = self.update(i, order);
        let mut coefs = vec![c_x];
        let mut inputs = vec![&anchor];
        let n = self.history.len();
        for (k, c) in c_m.iter().enumerate() {
            coefs.push(*c);
            inputs.push(&self.history[n - 1 - k]);
        }
        let prev_sample = if self.algorithm == SinglestepAlgorithm::SdeDpmSolverPP {
            ctx.combine_noisy(&coefs, &inputs, noise, 0)?
        } else {
            ctx.combine(&coefs, &inputs)?
        };
        self.next_step += 1;
        Ok(StepOutput { prev_sample, x0 })
    }
}

impl DpmSolverSinglestep {
    /// A deterministic step with the guidance combine and the conversion m₀ = a·x + b·g in
    /// the update's dispatch: x' = c_x·anchor + c₀·m₀ + Σ_k c_k·m_k (x bound first, with a
    /// zero weight, for m₀'s a·x term).
    fn guided_step(
        &mut self,
        ctx: &mut StepContext<'_>,
        i: usize,
        x: &Tensor,
        pair: &Tensor,
        scale: f64,
    ) -> Result<StepOutput> {
        // The history holds m₀ after the push: order = min(order_list[i], len + 1).
        let order = self.order_list[i].min(self.history.len() + 1);
        if order == 1 {
            self.anchor = Some(x.clone());
        }
        let anchor = self.anchor.clone().unwrap_or_else(|| x.clone());
        let (c_x, c_m, _) = self.update(i, order);
        let mut coefs = vec![0.0, c_x];
        let mut inputs = vec![x, &anchor];
        let n = self.history.len();
        for (k, c) in c_m.iter().enumerate().skip(1) {
            coefs.push(*c);
            inputs.push(&self.history[n - k]);
        }
        let (prev_sample, m) = ctx.guided_update(
            pair,
            scale,
            self.conversion(i),
            &inputs,
            &coefs,
            0.0,
            c_m[0],
        )?;
        let x0 = if self.algorithm == SinglestepAlgorithm::DpmSolver {
            // x̂₀ = (x − σ·ε̂)/α.
            let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
            ctx.combine(&[1.0 / alpha, -sigma / alpha], &[x, &m])?
        } else {
            m.clone()
        };
        self.history.push_back(m);
        while self.history.len() > self.order {
            self.history.pop_front();
        }
        self.next_step += 1;
        Ok(StepOutput { prev_sample, x0 })
    }
}

#[cfg(test)]
mod tests {
    use super::singlestep_orders;

    /// diffusers' `get_order_list` for a few step counts (expected lists printed by diffusers
    /// 0.42.1's own `get_order_list`).
    #[test]
    fn order_lists() {
        assert_eq!(singlestep_orders(6, 3, true, false), [1, 2, 3, 1, 2, 1]);
        assert_eq!(singlestep_orders(7, 3, true, true), [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(singlestep_orders(5, 3, true, false), [1, 2, 3, 1, 2]);
        assert_eq!(singlestep_orders(6, 2, true, true), [1, 2, 1, 2, 1, 1]);
        assert_eq!(singlestep_orders(5, 2, true, false), [1, 2, 1, 2, 1]);
        assert_eq!(singlestep_orders(6, 3, false, false), [1, 2, 3, 1, 2, 3]);
        assert_eq!(singlestep_orders(4, 2, false, true), [1, 2, 1, 1]);
        assert_eq!(singlestep_orders(3, 1, false, false), [1, 1, 1]);
        assert!(singlestep_orders(0, 3, true, true).is_empty());
    }
}
