//! Multistep DPM-Solver (noise-prediction form) and DPM-Solver++ (data-prediction form), ODE
//! and SDE variants: diffusers' `DPMSolverMultistepScheduler.step` (0.42.1).
//!
//! * DPM-Solver: Lu et al. (2022), "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
//!   Sampling in Around 10 Steps", arXiv:2206.00927. First order is eq. 3.7 (DDIM in λ-space);
//!   the multistep second and third orders are the noise-prediction counterparts of
//!   DPM-Solver++'s Algorithms 2 and 3 (the `heun` variant uses the first-order Taylor
//!   coefficient (e^h − 1)/h − 1 of eq. 3.6 instead of the midpoint's ½(e^h − 1)).
//! * DPM-Solver++: Lu et al. (2022), "DPM-Solver++: Fast Solver for Guided Sampling of
//!   Diffusion Probabilistic Models", arXiv:2211.01095. First order is eq. 5 (DDIM in
//!   data-prediction form), `2M` is Algorithm 2 (multistep second order, D = (1 + 1/(2r))x̂₀ᵢ −
//!   1/(2r)·x̂₀ᵢ₋₁ with r = h_{i−1}/h_i), `3M` the third-order multistep of its Appendix B
//!   (eq. 3.7–3.8 of the DPM-Solver paper with x̂₀ for ε̂). `SDE-DPM-Solver++(2M)` is its
//!   Appendix A's SDE solver (eqs. 18–19): the data-prediction update of the variance-exploding
//!   reverse SDE, with the injected noise σ_t·√(1 − e^{−2h})·z.
//!
//! Names (diffusers → here / the papers): `sigmas[i]` = the VE σ_i, `_sigma_to_alpha_sigma_t`
//! gives α_i = 1/√(σ_i² + 1) and σ_i·α_i (the VP σ), `lambda_*` = λ = log α − log σ_VP,
//! `h = λ_t − λ_s0`, `h_0 = λ_s0 − λ_s1`, `r0 = h_0/h`, `model_outputs` = the history of
//! converted outputs (x̂₀ for DPM-Solver++, ε̂ for DPM-Solver), `D0, D1, D2` = the divided
//! differences. Every update is linear in (x_i, m_i, m_{i−1}, m_{i−2}, z): the coefficients are
//! computed in f64 here and applied in one update; the history stays on the executor's
//! backend. Converting the output (x̂₀ or ε̂ = a·x + b·output) is one more update per step,
//! whose result joins the history.
//!
//! Step selection as diffusers: first order on the first step, `lower_order_final` (first
//! order on the last step and second order on the one before when there are < 15 steps),
//! `euler_at_final`, and always first order onto σ = 0 (`final_sigmas_type = "zero"`).

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

const OP: &str = "DPMSolverMultistep";

/// diffusers' `algorithm_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// `dpmsolver`: the noise-prediction form (history of ε̂).
    DpmSolver,
    /// `dpmsolver++`: the data-prediction form (history of x̂₀).
    DpmSolverPP,
    /// `sde-dpmsolver`.
    SdeDpmSolver,
    /// `sde-dpmsolver++`.
    SdeDpmSolverPP,
}

impl DpmAlgorithm {
    const VALID: &'static [(&'static str, DpmAlgorithm)] = &[
        ("dpmsolver", DpmAlgorithm::DpmSolver),
        ("dpmsolver++", DpmAlgorithm::DpmSolverPP),
        ("sde-dpmsolver", DpmAlgorithm::SdeDpmSolver),
        ("sde-dpmsolver++", DpmAlgorithm::SdeDpmSolverPP),
        // diffusers registers `deis` as dpmsolver++.
        ("deis", DpmAlgorithm::DpmSolverPP),
    ];

    fn data_prediction(self) -> bool {
        matches!(
            self,
            DpmAlgorithm::DpmSolverPP | DpmAlgorithm::SdeDpmSolverPP
        )
    }

    fn stochastic(self) -> bool {
        matches!(
            self,
            DpmAlgorithm::SdeDpmSolver | DpmAlgorithm::SdeDpmSolverPP
        )
    }
}

/// diffusers' `solver_type` of the second-order step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmSolverType {
    Midpoint,
    Heun,
}

const SOLVER_TYPES: &[(&str, DpmSolverType)] = &[
    ("midpoint", DpmSolverType::Midpoint),
    ("heun", DpmSolverType::Heun),
    // diffusers maps UniPC/DEIS solver types onto midpoint.
    ("logrho", DpmSolverType::Midpoint),
    ("bh1", DpmSolverType::Midpoint),
    ("bh2", DpmSolverType::Midpoint),
];

/// What a solver name fixes, over the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct DpmPreset {
    pub algorithm: Option<DpmAlgorithm>,
    pub order: Option<usize>,
}

pub struct DpmSolverMultistep {
    name: &'static str,
    timesteps: Vec<f64>,
    /// σ per step plus the final one (float32 values, as diffusers' `self.sigmas`).
    sigmas: Vec<f64>,
    prediction: PredictionType,
    algorithm: DpmAlgorithm,
    solver_type: DpmSolverType,
    order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    flow: bool,
    processing: X0Processing,
    /// Converted outputs of the last `order` steps, oldest first (`model_outputs`).
    history: VecDeque<Tensor>,
    lower_order_nums: usize,
    next_step: usize,
}

/// A step's update `prev = c_x·x + Σ c_k·m_k (+ noise·z)`, m_0 the newest history entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DpmUpdate {
    pub order: usize,
    pub c_x: f64,
    /// On m_0, m_1, … (newest first).
    pub c_m: Vec<f64>,
    pub noise: f64,
}

impl DpmSolverMultistep {
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        name: &'static str,
        preset: DpmPreset,
    ) -> Result<Self> {
        let cfg = as_class(config, SchedulerClass::DpmSolverMultistep);
        let processing = x0_processing(&cfg, OP, None)?;
        let algorithm = match preset.algorithm {
            Some(a) => a,
            None => opt_choice(
                &cfg,
                OP,
                "algorithm_type",
                DpmAlgorithm::VALID,
                DpmAlgorithm::DpmSolverPP,
            )?,
        };
        let solver_type = opt_choice(
            &cfg,
            OP,
            "solver_type",
            SOLVER_TYPES,
            DpmSolverType::Midpoint,
        )?;
        let order = match preset.order {
            Some(o) => o,
            None => {
                let o = opt_int(&cfg, OP, "solver_order", 2)?;
                if !(1..=3).contains(&o) {
                    return Err(Error::invalid(
                        OP,
                        format!("solver_order {o} is not supported; valid: 1, 2, 3"),
                    ));
                }
                o as usize
            }
        };
        if algorithm == DpmAlgorithm::SdeDpmSolver && order == 3 {
            return Err(Error::invalid(
                OP,
                "algorithm_type sde-dpmsolver has no third-order update; valid solver_order: 1, 2 (or use sde-dpmsolver++)",
            ));
        }
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
        let final_zero = cfg.final_sigmas_type == FinalSigmas::Zero;
        if !algorithm.data_prediction() && final_zero {
            return Err(Error::invalid(
                OP,
                "final_sigmas_type zero is not supported for algorithm_type dpmsolver / sde-dpmsolver (σ = 0 has no ε-form step); valid: sigma_min",
            ));
        }
        let prediction = cfg.prediction_type;
        if !algorithm.data_prediction() && prediction == PredictionType::FlowPrediction {
            return Err(Error::invalid(
                OP,
                "prediction_type flow_prediction needs algorithm_type dpmsolver++ or sde-dpmsolver++; valid for dpmsolver: epsilon, sample, v_prediction",
            ));
        }
        let lower_order_final = opt_bool(&cfg, OP, "lower_order_final", true)?;
        let euler_at_final = opt_bool(&cfg, OP, "euler_at_final", false)?;
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
        Ok(DpmSolverMultistep {
            name,
            timesteps: ts.timesteps,
            sigmas,
            prediction,
            algorithm,
            solver_type,
            order,
            lower_order_final,
            euler_at_final,
            final_zero,
            flow: cfg.sigma_schedule == SigmaSchedule::Flow,
            processing,
            history: VecDeque::new(),
            lower_order_nums: 0,
            next_step: 0,
        })
    }

    /// `_sigma_to_alpha_sigma_t`: (α, σ_VP) of a VE σ.
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

    /// The converted output m_i = a·x + b·output (`convert_model_output`): x̂₀ or ε̂.
    pub fn conversion(&self, i: usize) -> (f64, f64) {
        let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
        if self.algorithm.data_prediction() {
            self.x0_conversion(i)
        } else {
            self.prediction.eps_coefficients(alpha, sigma)
        }
    }

    /// x̂₀ = a·x + b·output at step `i`.
    fn x0_conversion(&self, i: usize) -> (f64, f64) {
        let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
        match self.prediction {
            // diffusers uses the raw sigma here; with flow sigmas it equals σ_VP anyway.
            PredictionType::FlowPrediction => (1.0, -self.sigmas[i]),
            p => p.x0_coefficients(alpha, sigma),
        }
    }

    /// The order diffusers' `step` picks at step `i` with `lower_order_nums` earlier steps.
    pub fn step_order(&self, i: usize, lower_order_nums: usize) -> usize {
        let n = self.timesteps.len();
        let lower_final = i + 1 == n
            && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_zero);
        let lower_second = i + 2 == n && self.lower_order_final && n < 15;
        if self.order == 1 || lower_order_nums < 1 || lower_final {
            1
        } else if self.order == 2 || lower_order_nums < 2 || lower_second {
            2
        } else {
            3
        }
    }

    /// The update of step `i` at `order` (needs `order − 1` earlier steps).
    pub fn update(&self, i: usize, order: usize) -> DpmUpdate {
        let (s_t, s_0) = (self.sigmas[i + 1], self.sigmas[i]);
        let (alpha_t, sigma_t) = self.alpha_sigma(s_t);
        let (alpha_0, sigma_0) = self.alpha_sigma(s_0);
        let h = self.lambda(i + 1) - self.lambda(i);
        // e^{−h} − 1, e^h − 1 and 1 − e^{−2h} without cancellation; h = ∞ onto σ = 0.
        let em = (-h).exp_m1();
        let ep = h.exp_m1();
        let e2 = -(-2.0 * h).exp_m1();
        use DpmAlgorithm::*;
        use DpmSolverType::*;
        let (c_x, noise) = match self.algorithm {
            DpmSolverPP => (sigma_t / sigma_0, 0.0),
            DpmSolver => (alpha_t / alpha_0, 0.0),
            SdeDpmSolverPP => (sigma_t / sigma_0 * (-h).exp(), sigma_t * e2.sqrt()),
            SdeDpmSolver => (alpha_t / alpha_0, sigma_t * (2.0 * h).exp_m1().sqrt()),
        };
        // c0·D0 + c1·D1 + c2·D2 (diffusers' expressions, term by term).
        let c0 = match self.algorithm {
            DpmSolverPP => -alpha_t * em,
            DpmSolver => -sigma_t * ep,
            SdeDpmSolverPP => alpha_t * e2,
            SdeDpmSolver => -2.0 * sigma_t * ep,
        };
        if order == 1 {
            return DpmUpdate {
                order,
                c_x,
                c_m: vec![c0],
                noise,
            };
        }
        let h0 = self.lambda(i) - self.lambda(i - 1);
        let r0 = h0 / h;
        if order == 2 {
            let c1 = match (self.algorithm, self.solver_type) {
                (DpmSolverPP, Midpoint) => -0.5 * alpha_t * em,
                (DpmSolverPP, Heun) => alpha_t * (em / h + 1.0),
                (DpmSolver, Midpoint) => -0.5 * sigma_t * ep,
                (DpmSolver, Heun) => -sigma_t * (ep / h - 1.0),
                (SdeDpmSolverPP, Midpoint) => 0.5 * alpha_t * e2,
                (SdeDpmSolverPP, Heun) => alpha_t * (e2 / (-2.0 * h) + 1.0),
                (SdeDpmSolver, Midpoint) => -sigma_t * ep,
                (SdeDpmSolver, Heun) => -2.0 * sigma_t * (ep / h - 1.0),
            };
            // D1 = (m0 − m1)/r0.
            return DpmUpdate {
                order,
                c_x,
                c_m: vec![c0 + c1 / r0, -c1 / r0],
                noise,
            };
        }
        let h1 = self.lambda(i - 1) - self.lambda(i - 2);
        let r1 = h1 / h;
        let (c1, c2) = match self.algorithm {
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
            // Rejected in `new`.
            SdeDpmSolver => (f64::NAN, f64::NAN),
        };
        // D1 = D1_0 + r0/(r0 + r1)·(D1_0 − D1_1), D2 = (D1_0 − D1_1)/(r0 + r1),
        // D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1.
        let k0 = c1 * (1.0 + r0 / (r0 + r1)) + c2 / (r0 + r1);
        let k1 = -c1 * r0 / (r0 + r1) - c2 / (r0 + r1);
        DpmUpdate {
            order,
            c_x,
            c_m: vec![c0 + k0 / r0, -k0 / r0 + k1 / r1, -k1 / r1],
            noise,
        }
    }
}

impl DpmSolverMultistep {
    /// A deterministic step with the guidance combine, the conversion and the update in one
    /// [`CfgUpdate`](crate::ops::CfgUpdate): m_0 comes out of the same dispatch as x_{t−1}.
    fn guided_step(
        &mut self,
        ctx: &mut StepContext<'_>,
        i: usize,
        x: &Tensor,
        pair: &Tensor,
        scale: f64,
    ) -> Result<StepOutput> {
        let order = self.step_order(i, self.lower_order_nums);
        let u = self.update(i, order);
        // The newest output m_0 is the fused one; m_1, m_2 are the history so far.
        let (prev_sample, m) = ctx.guided_multistep(
            pair,
            scale,
            self.conversion(i),
            x,
            u.c_x,
            &u.c_m,
            &self.history,
        )?;
        let x0 = if self.algorithm.data_prediction() {
            m.clone()
        } else {
            let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
            ctx.combine(&[1.0 / alpha, -sigma / alpha], &[x, &m])?
        };
        self.history.push_back(m);
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

impl Solver for DpmSolverMultistep {
    fn name(&self) -> &'static str {
        self.name
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Empty `model_outputs` and `lower_order_nums = 0` at `first`; [`Self::step_order`]
    /// keeps counting the final steps from the end of the whole schedule, as diffusers'
    /// `len(self.timesteps)` after `set_begin_index`.
    fn begin(&mut self, first: usize) -> Result<()> {
        check_step(OP, first, self.timesteps.len())?;
        self.history.clear();
        self.lower_order_nums = 0;
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
            // A new trajectory.
            self.begin(0)?;
        }
        check_order(OP, i, self.next_step)?;
        let fusable = self.processing == X0Processing::None && !self.algorithm.stochastic();
        let out = match ctx.model_output(model, x, self.timesteps[i], fusable)? {
            ModelOutput::Output(out) => out,
            ModelOutput::GuidedPair { pair, scale } => {
                return self.guided_step(ctx, i, x, &pair, scale);
            }
        };
        let (m, x0) = if self.processing == X0Processing::None {
            let (a, b) = self.conversion(i);
            let m = ctx.combine(&[a, b], &[x, &out])?;
            let x0 = if self.algorithm.data_prediction() {
                m.clone()
            } else {
                let (a, b) = self.x0_conversion(i);
                ctx.combine(&[a, b], &[x, &out])?
            };
            (m, x0)
        } else {
            // `convert_model_output` thresholds x̂₀; the ε form re-derives ε̂ from it.
            let (a, b) = self.x0_conversion(i);
            let x0 = ctx.combine(&[a, b], &[x, &out])?;
            let x0 = ctx.process_x0(self.processing, x0)?;
            let m = if self.algorithm.data_prediction() {
                x0.clone()
            } else {
                let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
                ctx.combine(&[1.0 / sigma, -alpha / sigma], &[x, &x0])?
            };
            (m, x0)
        };
        self.history.push_back(m);
        while self.history.len() > self.order {
            self.history.pop_front();
        }
        let order = self.step_order(i, self.lower_order_nums);
        let u = self.update(i, order);
        let mut coefs = vec![u.c_x];
        let mut inputs = vec![x];
        for (k, c) in u.c_m.iter().enumerate() {
            coefs.push(*c);
            inputs.push(&self.history[self.history.len() - 1 - k]);
        }
        let prev_sample = if self.algorithm.stochastic() {
            ctx.combine_noisy(&coefs, &inputs, u.noise, 0)?
        } else {
            ctx.combine(&coefs, &inputs)?
        };
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        self.next_step += 1;
        Ok(StepOutput { prev_sample, x0 })
    }
}
