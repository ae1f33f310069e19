//! Adaptive-step DPM-Solver-12 and -23: Lu, Zhou, Bao, Chen, Li & Zhu (2022), "DPM-Solver:
//! A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps",
//! arXiv:2206.00927, Sec. 4 / Appendix C (Algorithm 4, adaptive step size with error
//! control).
//!
//! Each attempted step from λ_s to λ_t = λ_s + h computes a lower- and a higher-order
//! estimate sharing model calls (noise-prediction form, their Algorithms 1–2 with eq. 3.7
//! for first order):
//! * 12: x_low = DPM-Solver-1, x_high = DPM-Solver-2 (r₁ = ½); 2 model calls.
//! * 23: x_low = DPM-Solver-2 (r₁ = ⅓), x_high = DPM-Solver-3 (r₁ = ⅓, r₂ = ⅔); 3 calls.
//!
//! The step is accepted when E = ‖(x_high − x_low)/δ‖_RMS ≤ 1 (the RMS over each sample's
//! elements, the worst sample of the batch), δ = max(atol, rtol·max(|x_low|, |x_s|))
//! elementwise; then h ← min(θ·h·E^(−1/k), λ_end − λ_s) with θ = 0.9 and k the higher
//! order, whether or not the step was accepted.
//!
//! Time: the model's discrete ᾱ table is made continuous by linear interpolation between
//! integer timesteps (the model is called at fractional timesteps, as continuous-time and
//! most discrete networks allow); λ(t) = log(α/σ) is inverted by bisection. Sampling runs
//! from the last training timestep to t = 0.
//!
//! This is not a [`super::Solver`]: its steps are decided at run time from the error
//! norm, which needs the sample on the host, so [`sample_adaptive`] reads back every
//! attempted step (cheap on the CPU backend; one small readback per step on the GPU). It
//! reports the accepted timesteps, the rejections and the model calls.

use super::Denoiser;
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::SolverUpdate;
use crate::sampling::analytic::alpha_sigma_at;
use crate::sampling::PredictionType;
use crate::tensor::Tensor;

const OP: &str = "DPMSolverAdaptive";

/// Which order pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveOrder {
    /// DPM-Solver-12.
    O12,
    /// DPM-Solver-23.
    O23,
}

/// The controller's settings (the paper's defaults: rtol 0.05, atol 0.0078, h_init 0.05,
/// θ = 0.9).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveOptions {
    pub order: AdaptiveOrder,
    pub rtol: f64,
    pub atol: f64,
    pub h_init: f64,
    pub theta: f64,
    /// Give up after this many attempted steps.
    pub max_steps: usize,
}

impl Default for AdaptiveOptions {
    fn default() -> Self {
        Self {
            order: AdaptiveOrder::O12,
            rtol: 0.05,
            atol: 0.0078,
            h_init: 0.05,
            theta: 0.9,
            max_steps: 10_000,
        }
    }
}

/// What [`sample_adaptive`] returns.
pub struct AdaptiveResult {
    pub sample: Tensor,
    /// Model time of every accepted step's end, in order.
    pub timesteps: Vec<f64>,
    pub rejected: usize,
    /// Model calls (NFE).
    pub model_calls: usize,
}

/// The continuous VP schedule of a discrete ᾱ table.
struct Continuous<'a> {
    alphas_cumprod: &'a [f32],
}

impl Continuous<'_> {
    fn alpha_sigma(&self, t: f64) -> Result<(f64, f64)> {
        alpha_sigma_at(self.alphas_cumprod, t)
    }

    fn lambda(&self, t: f64) -> Result<f64> {
        let (a, s) = self.alpha_sigma(t)?;
        Ok(a.ln() - s.ln())
    }

    /// t with λ(t) = l, by bisection (λ decreases in t).
    fn t_of_lambda(&self, l: f64) -> Result<f64> {
        let (mut lo, mut hi) = (0.0, (self.alphas_cumprod.len() - 1) as f64);
        if l >= self.lambda(lo)? {
            return Ok(lo);
        }
        if l <= self.lambda(hi)? {
            return Ok(hi);
        }
        for _ in 0..80 {
            let mid = 0.5 * (lo + hi);
            if self.lambda(mid)? > l {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(0.5 * (lo + hi))
    }
}

/// One attempted step, as [`sample_adaptive_observed`] reports it.
pub struct AdaptiveStep<'a> {
    /// Steps accepted so far (this one included when `accepted`).
    pub accepted_steps: usize,
    pub rejected: usize,
    pub accepted: bool,
    /// Model time the sample has reached.
    pub t: f64,
    /// The current sample (after this step when accepted).
    pub x: &'a Tensor,
}

/// Runs the adaptive solver from `x_t` (at the last training timestep) to t = 0.
pub async fn sample_adaptive(
    exec: &mut Exec,
    model: &mut dyn Denoiser,
    alphas_cumprod: &[f32],
    prediction: PredictionType,
    x_t: &Tensor,
    opts: AdaptiveOptions,
) -> Result<AdaptiveResult> {
    sample_adaptive_observed(
        exec,
        model,
        alphas_cumprod,
        prediction,
        x_t,
        opts,
        &mut |_, _| Ok(()),
    )
    .await
}

/// [`sample_adaptive`], calling `observe` after every attempted step (a page's progress
/// and preview, its abort check: an error from `observe` ends the run with that error).
pub async fn sample_adaptive_observed(
    exec: &mut Exec,
    model: &mut dyn Denoiser,
    alphas_cumprod: &[f32],
    prediction: PredictionType,
    x_t: &Tensor,
    opts: AdaptiveOptions,
    observe: &mut dyn FnMut(&mut Exec, &AdaptiveStep<'_>) -> Result<()>,
) -> Result<AdaptiveResult> {
    if alphas_cumprod.len() < 2 {
        return Err(Error::invalid(OP, "the ᾱ table needs at least two entries"));
    }
    if !(opts.rtol > 0.0 && opts.atol > 0.0 && opts.h_init > 0.0 && opts.theta > 0.0) {
        return Err(Error::invalid(
            OP,
            format!(
                "rtol, atol, h_init and theta must be positive, got {}, {}, {}, {}",
                opts.rtol, opts.atol, opts.h_init, opts.theta
            ),
        ));
    }
    let sched = Continuous { alphas_cumprod };
    let t_end = 0.0;
    let lambda_end = sched.lambda(t_end)?;
    let mut s = (alphas_cumprod.len() - 1) as f64;
    let mut x = exec.upload(x_t)?;
    let mut h = opts.h_init;
    let mut calls = 0usize;
    let mut rejected = 0usize;
    let mut accepted = Vec::new();
    let rows = x.shape().first().copied().unwrap_or(1).max(1);
    let order = match opts.order {
        AdaptiveOrder::O12 => 2.0,
        AdaptiveOrder::O23 => 3.0,
    };
    let mut eps_of = |exec: &mut Exec, x: &Tensor, t: f64, calls: &mut usize| -> Result<Tensor> {
        *calls += 1;
        let out = model.denoise(exec, x, t)?;
        let (a, sg) = alpha_sigma_at(alphas_cumprod, t)?;
        let (ca, cb) = prediction.eps_coefficients(a, sg);
        exec.run(&SolverUpdate::linear(&[ca, cb]), &[x, &out])
    };
    for _ in 0..opts.max_steps {
        if s <= t_end {
            return Ok(AdaptiveResult {
                sample: x,
                timesteps: accepted,
                rejected,
                model_calls: calls,
            });
        }
        let lambda_s = sched.lambda(s)?;
        let t = sched.t_of_lambda((lambda_s + h).min(lambda_end))?;
        let h_eff = sched.lambda(t)? - lambda_s;
        let (alpha_s, _) = sched.alpha_sigma(s)?;
        let (alpha_t, sigma_t) = sched.alpha_sigma(t)?;
        let phi = h_eff.exp_m1();
        let eps_s = eps_of(exec, &x, s, &mut calls)?;
        // u = α_{s1}/α_s·x − σ_{s1}·(e^{r h} − 1)·ε_s at λ_s + r·h.
        let stage = |r: f64| -> Result<(f64, f64, f64, f64)> {
            let si = sched.t_of_lambda(lambda_s + r * h_eff)?;
            let (a, sg) = sched.alpha_sigma(si)?;
            Ok((si, a / alpha_s, -sg * (r * h_eff).exp_m1(), sg))
        };
        let base = [alpha_t / alpha_s, -sigma_t * phi];
        let (x_low, x_high) = match opts.order {
            AdaptiveOrder::O12 => {
                let r1 = 0.5;
                let (s1, ca, ce, _) = stage(r1)?;
                let u1 = exec.run(&SolverUpdate::linear(&[ca, ce]), &[&x, &eps_s])?;
                let e1 = eps_of(exec, &u1, s1, &mut calls)?;
                let low = exec.run(&SolverUpdate::linear(&base), &[&x, &eps_s])?;
                // − σ_t/(2r₁)·(e^h − 1)·(ε(u₁) − ε_s).
                let k = -sigma_t / (2.0 * r1) * phi;
                let high = exec.run(
                    &SolverUpdate::linear(&[base[0], base[1] - k, k]),
                    &[&x, &eps_s, &e1],
                )?;
                (low, high)
            }
            AdaptiveOrder::O23 => {
                let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
                let (s1, ca1, ce1, _) = stage(r1)?;
                let u1 = exec.run(&SolverUpdate::linear(&[ca1, ce1]), &[&x, &eps_s])?;
                let e1 = eps_of(exec, &u1, s1, &mut calls)?;
                let k_low = -sigma_t / (2.0 * r1) * phi;
                let low = exec.run(
                    &SolverUpdate::linear(&[base[0], base[1] - k_low, k_low]),
                    &[&x, &eps_s, &e1],
                )?;
                let (s2, ca2, ce2, sg2) = stage(r2)?;
                // − σ_{s2}·r₂/r₁·((e^{r₂h} − 1)/(r₂h) − 1)·D₁, D₁ = ε(u₁) − ε_s.
                let k2 = -sg2 * r2 / r1 * ((r2 * h_eff).exp_m1() / (r2 * h_eff) - 1.0);
                let u2 = exec.run(
                    &SolverUpdate::linear(&[ca2, ce2 - k2, k2]),
                    &[&x, &eps_s, &e1],
                )?;
                let e2 = eps_of(exec, &u2, s2, &mut calls)?;
                // − σ_t/r₂·((e^h − 1)/h − 1)·D₂, D₂ = ε(u₂) − ε_s.
                let k3 = -sigma_t / r2 * (phi / h_eff - 1.0);
                let high = exec.run(
                    &SolverUpdate::linear(&[base[0], base[1] - k3, k3]),
                    &[&x, &eps_s, &e2],
                )?;
                (low, high)
            }
        };
        let v = exec.read_many(&[&x_low, &x_high, &x]).await?;
        let n = v[0].len() / rows;
        let mut err = 0f64;
        for r in 0..rows {
            let mut acc = 0.0;
            let range = r * n..(r + 1) * n;
            let rows_of = v[0][range.clone()]
                .iter()
                .zip(&v[1][range.clone()])
                .zip(&v[2][range]);
            for ((&lo, &hi), &cur) in rows_of {
                let (lo, hi, cur) = (lo as f64, hi as f64, cur as f64);
                let delta = opts.atol.max(opts.rtol * lo.abs().max(cur.abs()));
                acc += ((hi - lo) / delta).powi(2);
            }
            err = err.max((acc / n as f64).sqrt());
        }
        if !err.is_finite() {
            return Err(Error::invalid(
                OP,
                format!("the sample became non-finite at model time {t:.3}"),
            ));
        }
        let ok = err <= 1.0;
        if ok {
            x = x_high;
            s = t;
            accepted.push(t);
        } else {
            rejected += 1;
        }
        observe(
            exec,
            &AdaptiveStep {
                accepted_steps: accepted.len(),
                rejected,
                accepted: ok,
                t: s,
                x: &x,
            },
        )?;
        let remaining = lambda_end - sched.lambda(s)?;
        h = (opts.theta * h * err.max(1e-10).powf(-1.0 / order)).min(remaining);
        exec.submit()?;
    }
    Err(Error::invalid(
        OP,
        format!(
            "did not reach t = 0 in {} attempted steps (rtol {}, atol {}); loosen the tolerances",
            opts.max_steps, opts.rtol, opts.atol
        ),
    ))
}
