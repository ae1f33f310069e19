//! UniPC: Zhao et al. (2023), "UniPC: A Unified Predictor-Corrector Framework for Fast
//! Sampling of Diffusion Models", arXiv:2302.04867; diffusers' `UniPCMultistepScheduler.step`
//! (0.42.1) with its B(h) variants.
//!
//! * The predictor UniP-p is Algorithm 2 (data prediction; Algorithm 1's noise-prediction
//!   form with `predict_x0 = false`): x̃_t = σ_t/σ_s·x − α_t·(e^{−h} − 1)·m₀ −
//!   α_t·B(h)·Σ_k a_k·D_k/r_k, D_k = m_k − m₀, with the a_k solving the order conditions of
//!   eq. 9 (R_p(h)·a_p = g_p(h)/B(h), `torch.linalg.solve(R[:-1, :-1], b[:-1])`), and
//!   a = ½ at p = 2 (the paper's simplified UniP-2).
//! * The corrector UniC-p is Algorithm 2's second half (eq. 8): the same update from the
//!   *previous* step's sample, with the new model output m_t as one more divided difference,
//!   D_t = m_t − m₀ (r = 1), coefficients from the full p×p system (½ at p = 1). It raises the
//!   order by one at no extra model call; `disable_corrector` lists the steps it skips.
//! * B(h) = h (`bh1`, Appendix C's B₁) or e^h − 1 (`bh2`, B₂), with h negated in the data
//!   form (`hh`). `h_phi_k`/`factorial_i` build g_k = φ_{k+1}(h)·k!/B(h), eq. 9's right side.
//!
//! Names (diffusers → here): `sigmas` = VE σ, `_sigma_to_alpha_sigma_t` → (α, σ_VP),
//! λ = log α − log σ_VP, `rks` = r_k = (λ_{s_k} − λ_{s₀})/h, `rhos_p`/`rhos_c` = a,
//! `model_outputs` = the history (x̂₀ or ε̂), `last_sample` = the sample the predictor started
//! from (after correction), `this_order` = p. Each stage is linear in its tensors (≤ 5), so it
//! is one update with coefficients computed here in f64. diffusers solves for `rhos` in float32
//! (`R`, `b` are float32 tensors); here it is f64 Gaussian elimination.
//!
//! Per step: the converted output (one update), the corrector (one), the predictor (one).

use std::collections::VecDeque;

use serde_json::Value;

use super::{
    as_class, check_order, check_step, opt_bool, opt_choice, opt_int, x0_processing, Denoiser,
    ModelOutput, Solver, StepContext, StepOutput, X0Processing,
};
use crate::error::{Error, Result};
use crate::ops::cfg_update::MAX_INPUTS;
use crate::sampling::{
    FinalSigmas, PredictionType, Schedule, SchedulerClass, SchedulerConfig, SigmaSchedule,
};
use crate::tensor::Tensor;

const OP: &str = "UniPCMultistep";

/// diffusers' `solver_type`: the B(h) of the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcVariant {
    /// B(h) = h.
    Bh1,
    /// B(h) = e^h − 1.
    Bh2,
}

const VARIANTS: &[(&str, UniPcVariant)] = &[
    ("bh1", UniPcVariant::Bh1),
    ("bh2", UniPcVariant::Bh2),
    // diffusers maps DPM-Solver/DEIS solver types onto bh2.
    ("midpoint", UniPcVariant::Bh2),
    ("heun", UniPcVariant::Bh2),
    ("logrho", UniPcVariant::Bh2),
];

pub struct UniPc {
    name: &'static str,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: PredictionType,
    variant: UniPcVariant,
    order: usize,
    predict_x0: bool,
    lower_order_final: bool,
    disable_corrector: Vec<i64>,
    flow: bool,
    /// Thresholding applies in the data-prediction form only (as in diffusers).
    processing: X0Processing,
    history: VecDeque<Tensor>,
    last_sample: Option<Tensor>,
    this_order: usize,
    lower_order_nums: usize,
    next_step: usize,
}

/// One stage's update `Σ c·input`; see [`UniPc::predictor`] and [`UniPc::corrector`].
#[derive(Debug, Clone, PartialEq)]
pub struct UniPcUpdate {
    /// On the stage's starting sample.
    pub c_x: f64,
    /// On m₀, m₁, … (newest first).
    pub c_m: Vec<f64>,
    /// On the new model output m_t (corrector only, else 0).
    pub c_new: f64,
}

impl UniPc {
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        name: &'static str,
        variant: Option<UniPcVariant>,
    ) -> Result<Self> {
        let cfg = as_class(config, SchedulerClass::UniPcMultistep);
        let processing = x0_processing(&cfg, OP, None)?;
        let variant = match variant {
            Some(v) => v,
            None => opt_choice(&cfg, OP, "solver_type", VARIANTS, UniPcVariant::Bh2)?,
        };
        let order = opt_int(&cfg, OP, "solver_order", 2)?;
        if !(1..=3).contains(&order) {
            return Err(Error::invalid(
                OP,
                format!("solver_order {order} is not supported; valid: 1, 2, 3"),
            ));
        }
        if cfg.other.get("solver_p").is_some_and(|v| !v.is_null()) {
            return Err(Error::invalid(
                OP,
                "solver_p (another scheduler as the predictor) is not supported; valid: null",
            ));
        }
        let disable_corrector = match cfg.other.get("disable_corrector") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_i64().ok_or_else(|| {
                        Error::invalid(
                            OP,
                            format!("disable_corrector must list step indices, got {v}"),
                        )
                    })
                })
                .collect::<Result<_>>()?,
            Some(v) => {
                return Err(Error::invalid(
                    OP,
                    format!("disable_corrector must be a list of step indices, got {v}"),
                ))
            }
        };
        let predict_x0 = opt_bool(&cfg, OP, "predict_x0", true)?;
        let prediction = cfg.prediction_type;
        if !predict_x0 && prediction == PredictionType::FlowPrediction {
            return Err(Error::invalid(
                OP,
                "prediction_type flow_prediction needs predict_x0 = true; valid with predict_x0 = false: epsilon, sample, v_prediction",
            ));
        }
        if variant == UniPcVariant::Bh1 && cfg.final_sigmas_type == FinalSigmas::Zero {
            // B(h) = h is infinite onto σ = 0 and diffusers' last step is NaN (∞·0).
            return Err(Error::invalid(
                OP,
                "solver_type bh1 with final_sigmas_type zero gives NaN at the last step (as in diffusers); use solver_type bh2 or final_sigmas_type sigma_min",
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
        if sigmas.len() != ts.timesteps.len() + 1 {
            return Err(Error::invalid(
                OP,
                "the schedule has the wrong number of sigmas",
            ));
        }
        Ok(UniPc {
            name,
            timesteps: ts.timesteps,
            sigmas,
            prediction,
            variant,
            order: order as usize,
            predict_x0,
            lower_order_final: opt_bool(&cfg, OP, "lower_order_final", true)?,
            disable_corrector,
            flow: cfg.sigma_schedule == SigmaSchedule::Flow,
            processing: if predict_x0 {
                processing
            } else {
                X0Processing::None
            },
            history: VecDeque::new(),
            last_sample: None,
            this_order: 0,
            lower_order_nums: 0,
            next_step: 0,
        })
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

    /// `convert_model_output`: m = a·x + b·output, x̂₀ or ε̂.
    pub fn conversion(&self, i: usize) -> (f64, f64) {
        if self.predict_x0 {
            self.x0_conversion(i)
        } else {
            let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
            self.prediction.eps_coefficients(alpha, sigma)
        }
    }

    /// The update from σ at index `s` to index `t` = s + 1 at order `p`, with history
    /// m_k at sigma index s − k; `corrector` adds the new output at `t` (UniC).
    fn stage(&self, s: usize, p: usize, corrector: bool) -> UniPcUpdate {
        let t = s + 1;
        let (alpha_t, sigma_t) = self.alpha_sigma(self.sigmas[t]);
        let (alpha_s, sigma_s) = self.alpha_sigma(self.sigmas[s]);
        let h = self.lambda(t) - self.lambda(s);
        let rks: Vec<f64> = (1..p)
            .map(|k| (self.lambda(s - k) - self.lambda(s)) / h)
            .chain(std::iter::once(1.0))
            .collect();
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => hh.exp_m1(),
        };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = Vec::with_capacity(p);
        for i in 1..=p {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        // R[j][k] = r_k^j.
        let r = |n: usize| -> Vec<Vec<f64>> {
            (0..n)
                .map(|j| rks[..n].iter().map(|&r| r.powi(j as i32)).collect())
                .collect()
        };
        let rhos: Vec<f64> = if corrector {
            if p == 1 {
                vec![0.5]
            } else {
                solve(r(p), b.clone())
            }
        } else {
            match p {
                1 => Vec::new(),
                2 => vec![0.5],
                _ => solve(r(p - 1), b[..p - 1].to_vec()),
            }
        };
        let (c_x, c_0, k) = if self.predict_x0 {
            (sigma_t / sigma_s, -alpha_t * h_phi_1, alpha_t * b_h)
        } else {
            (alpha_t / alpha_s, -sigma_t * h_phi_1, sigma_t * b_h)
        };
        // − k·(Σ_k ρ_k·(m_k − m₀)/r_k + ρ_t·(m_t − m₀)).
        let mut c_m = vec![c_0];
        for j in 0..p - 1 {
            let c = k * rhos[j] / rks[j];
            c_m[0] += c;
            c_m.push(-c);
        }
        let c_new = if corrector {
            let rho_t = rhos[rhos.len() - 1];
            c_m[0] += k * rho_t;
            -k * rho_t
        } else {
            0.0
        };
        UniPcUpdate { c_x, c_m, c_new }
    }

    /// UniP-p from step `i`'s sample (σ_i → σ_{i+1}); m₀ is step i's output.
    pub fn predictor(&self, i: usize, p: usize) -> UniPcUpdate {
        self.stage(i, p, false)
    }

    /// UniC-p correcting step `i`'s sample: from step i − 1's sample with its history
    /// (m₀ = step i − 1's output) and step i's new output.
    pub fn corrector(&self, i: usize, p: usize) -> UniPcUpdate {
        self.stage(i - 1, p, true)
    }
}

/// Solves the small dense system `a·x = b` (Gaussian elimination with partial pivoting).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .unwrap_or(col);
        a.swap(col, piv);
        b.swap(col, piv);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

impl Solver for UniPc {
    fn name(&self) -> &'static str {
        self.name
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Empty history, no `last_sample` (so the first step runs no corrector, as diffusers'
    /// `use_corrector` needs one) and `lower_order_nums = 0` at `first`; the predictor's
    /// final-step order drop counts from the end of the whole schedule.
    fn begin(&mut self, first: usize) -> Result<()> {
        check_step(OP, first, self.timesteps.len())?;
        self.history.clear();
        self.last_sample = None;
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
        let (a, b) = self.conversion(i);
        let m = ctx.combine(&[a, b], &[x, &out])?;
        let m = ctx.process_x0(self.processing, m)?;
        let x0 = if self.predict_x0 {
            m.clone()
        } else {
            let (a, b) = self.x0_conversion(i);
            ctx.combine(&[a, b], &[x, &out])?
        };
        let mut sample = x.clone();
        if let Some(last) = &self.last_sample {
            if !self.disable_corrector.contains(&(i as i64 - 1)) {
                let u = self.corrector(i, self.this_order);
                let mut coefs = vec![u.c_x];
                let mut inputs = vec![last];
                for (k, c) in u.c_m.iter().enumerate() {
                    coefs.push(*c);
                    inputs.push(&self.history[self.history.len() - 1 - k]);
                }
                coefs.push(u.c_new);
                inputs.push(&m);
                sample = ctx.combine(&coefs, &inputs)?;
            }
        }
        self.history.push_back(m);
        while self.history.len() > self.order {
            self.history.pop_front();
        }
        self.set_order(i);
        let u = self.predictor(i, self.this_order);
        let mut coefs = vec![u.c_x];
        let mut inputs = vec![&sample];
        for (k, c) in u.c_m.iter().enumerate() {
            coefs.push(*c);
            inputs.push(&self.history[self.history.len() - 1 - k]);
        }
        let prev_sample = ctx.combine(&coefs, &inputs)?;
        self.finish_step(sample);
        Ok(StepOutput { prev_sample, x0 })
    }
}

impl UniPc {
    /// The predictor's order at step `i` (diffusers' `this_order`).
    fn set_order(&mut self, i: usize) {
        let n = self.timesteps.len();
        let p = if self.lower_order_final {
            self.order.min(n - i)
        } else {
            self.order
        };
        self.this_order = p.min(self.lower_order_nums + 1);
    }

    fn finish_step(&mut self, sample: Tensor) {
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        self.next_step += 1;
    }

    fn push_history(&mut self, m: Tensor) {
        self.history.push_back(m);
        while self.history.len() > self.order {
            self.history.pop_front();
        }
    }

    /// The step with the guidance combine and the conversion m = a·x + b·g folded into the
    /// first update that takes m: the corrector (UniC) when it runs, else the predictor.
    /// A corrector over more inputs than [`CfgUpdate`](crate::ops::CfgUpdate) binds
    /// (order 3) gets m from the fused dispatch alone and runs as before.
    fn guided_step(
        &mut self,
        ctx: &mut StepContext<'_>,
        i: usize,
        x: &Tensor,
        pair: &Tensor,
        scale: f64,
    ) -> Result<StepOutput> {
        let conv = self.conversion(i);
        let corrector = match &self.last_sample {
            Some(last) if !self.disable_corrector.contains(&(i as i64 - 1)) => {
                Some((last.clone(), self.corrector(i, self.this_order)))
            }
            _ => None,
        };
        let (sample, m, prev_sample) = match corrector {
            None => {
                // No corrector: sample = x, and m enters the predictor directly.
                self.set_order(i);
                let u = self.predictor(i, self.this_order);
                let (prev, m) =
                    ctx.guided_multistep(pair, scale, conv, x, u.c_x, &u.c_m, &self.history)?;
                self.push_history(m.clone());
                (x.clone(), m, Some(prev))
            }
            Some((last, u)) => {
                // UniC: sample = c_x·last + Σ c_m[k]·m_{k+1} + c_new·m (m_1 the newest
                // history entry), with x bound first for m's a·x term.
                let mut coefs = vec![0.0, u.c_x];
                let mut inputs = vec![x, &last];
                let n = self.history.len();
                for (k, c) in u.c_m.iter().enumerate() {
                    coefs.push(*c);
                    inputs.push(&self.history[n - 1 - k]);
                }
                let (sample, m) = if inputs.len() <= MAX_INPUTS {
                    ctx.guided_update(pair, scale, conv, &inputs, &coefs, 0.0, u.c_new)?
                } else {
                    let (m, _) = ctx.guided_update(pair, scale, conv, &[x], &[0.0], 0.0, 1.0)?;
                    coefs.push(u.c_new);
                    inputs.push(&m);
                    (ctx.combine(&coefs[1..], &inputs[1..])?, m)
                };
                self.push_history(m.clone());
                (sample, m, None)
            }
        };
        let prev_sample = match prev_sample {
            Some(prev) => prev,
            None => {
                self.set_order(i);
                let u = self.predictor(i, self.this_order);
                let mut coefs = vec![u.c_x];
                let mut inputs = vec![&sample];
                for (k, c) in u.c_m.iter().enumerate() {
                    coefs.push(*c);
                    inputs.push(&self.history[self.history.len() - 1 - k]);
                }
                ctx.combine(&coefs, &inputs)?
            }
        };
        let x0 = if self.predict_x0 {
            m
        } else {
            // x̂₀ = (x − σ·ε̂)/α.
            let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
            ctx.combine(&[1.0 / alpha, -sigma / alpha], &[x, &m])?
        };
        self.finish_step(sample);
        Ok(StepOutput { prev_sample, x0 })
    }
}
