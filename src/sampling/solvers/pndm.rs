//! PNDM and PLMS: Liu, Ren, Lin & Zhao (2022), "Pseudo Numerical Methods for Diffusion Models
//! on Manifolds", arXiv:2202.09778. The transfer part φ is eq. 9 (the DDIM step written with
//! ᾱ ratios); the gradient part is the pseudo 4th-order Runge–Kutta of eq. 13 (PRK, 4 model
//! calls per step) for the first three steps and then the pseudo linear multistep of eq. 12
//! (PLMS, Adams–Bashforth weights (55, −59, 37, −9)/24). diffusers' `PNDMScheduler` (0.42.1),
//! including `skip_prk_steps` (crowsonkb's PLMS warm-up: one Euler step, one Heun-style
//! averaged step, then AB2, AB3, AB4).
//!
//! Granularity: one step here is one diffusers `step()` call, i.e. one model call, with
//! diffusers' own interleaved `timesteps` (n + 1 entries with `skip_prk_steps`, n + 9
//! without), which is how diffusers' PNDM pipeline loops. The x̂₀ of each step (for previews;
//! diffusers returns none) is the model output's x̂₀ at that call's sample and timestep.
//!
//! Eq. 9 with ε̂ = e (the combined output, converted from v by the call's `sample` exactly as
//! diffusers does): x_{t−δ} = √(ᾱ_{t−δ}/ᾱ_t)·x_t − (ᾱ_{t−δ} − ᾱ_t)·e /
//! (ᾱ_t·√(1 − ᾱ_{t−δ}) + √(ᾱ_t(1 − ᾱ_t)ᾱ_{t−δ})); linear in x_t and the stored outputs, so
//! each call is one update of at most five inputs.

use std::collections::VecDeque;

use super::{
    as_class, check_order, check_step, opt_bool, Denoiser, Solver, StepContext, StepOutput,
};
use crate::error::{Error, Result};
use crate::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig};
use crate::tensor::Tensor;

const OP: &str = "PNDM";

pub struct Pndm {
    name: &'static str,
    timesteps: Vec<f64>,
    /// Number of leading PRK calls (12, or 0 with `skip_prk_steps`).
    prk_calls: usize,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: PredictionType,
    /// `num_train_timesteps // num_inference_steps`.
    ratio: i64,
    /// The call the run started at ([`Solver::begin`]); `counter` counts from it.
    first: usize,
    counter: usize,
    /// Raw outputs of the multistep history (`ets`), oldest first.
    ets: VecDeque<Tensor>,
    /// Raw outputs of the current PRK step's stages.
    stages: Vec<Tensor>,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    /// `skip_prk`: `Some` fixes `skip_prk_steps` (the `plms` name), `None` reads it.
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        name: &'static str,
        skip_prk: Option<bool>,
    ) -> Result<Self> {
        let mut cfg = as_class(config, SchedulerClass::Ddim);
        super::reject_zero_snr(&cfg, OP, "PNDMScheduler")?;
        if !matches!(
            cfg.prediction_type,
            PredictionType::Epsilon | PredictionType::VPrediction
        ) {
            return Err(Error::invalid(
                OP,
                format!(
                    "prediction_type {} is not supported by PNDMScheduler; valid: epsilon, v_prediction",
                    cfg.prediction_type.name()
                ),
            ));
        }
        if let Some(v) = cfg.other.get("set_alpha_to_one").and_then(|v| v.as_bool()) {
            cfg.set_alpha_to_one = v;
        }
        let skip_prk = match skip_prk {
            Some(s) => s,
            None => opt_bool(&cfg, OP, "skip_prk_steps", false)?,
        };
        let schedule = Schedule::new(&cfg)?;
        // PNDM's `_timesteps` (ascending) are DDIM's integer timesteps in reverse.
        let mut asc = schedule.set_timesteps(steps)?.timesteps;
        asc.reverse();
        let ratio = (cfg.num_train_timesteps / steps) as i64;
        let n = asc.len();
        let mut timesteps: Vec<f64> = Vec::new();
        let prk_calls = if skip_prk {
            // [t_0 … t_{n−2}, t_{n−2}, t_{n−1}] reversed: the second call repeats a time.
            timesteps.extend(asc[..n - 1].iter().copied());
            if n >= 2 {
                timesteps.push(asc[n - 2]);
            }
            timesteps.push(asc[n - 1]);
            timesteps.reverse();
            0
        } else {
            if n < 4 {
                return Err(Error::invalid(
                    OP,
                    format!("the PRK warm-up (skip_prk_steps = false) needs at least 4 steps, got {steps}; use more steps or set skip_prk_steps = true"),
                ));
            }
            // Each of the last four times t and t + ratio/2, then every interior point twice.
            let half = (ratio / 2) as f64;
            let mut prk: Vec<f64> = asc[n - 4..].iter().flat_map(|&t| [t, t + half]).collect();
            prk.pop();
            let doubled: Vec<f64> = prk.iter().flat_map(|&t| [t, t]).collect();
            let mut prk: Vec<f64> = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            timesteps.extend(prk);
            timesteps.extend(asc[..n - 3].iter().rev().copied());
            12
        };
        Ok(Pndm {
            name,
            timesteps,
            prk_calls,
            final_alpha_cumprod: schedule.final_alpha_cumprod(),
            alphas_cumprod: schedule.alphas_cumprod,
            prediction: cfg.prediction_type,
            ratio,
            first: 0,
            counter: 0,
            ets: VecDeque::new(),
            stages: Vec::new(),
            cur_sample: None,
        })
    }

    fn alpha_prod(&self, t: i64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod
                .get(t as usize)
                .copied()
                .unwrap_or(f32::NAN) as f64
        } else {
            self.final_alpha_cumprod as f64
        }
    }

    /// Eq. 9 from level `t` to `tp` as (c_sample, c_output) on the sample and the combined
    /// raw output (`_get_prev_sample`, with the v → ε conversion folded in).
    pub fn transfer(&self, t: i64, tp: i64) -> (f64, f64) {
        let a = self.alpha_prod(t);
        let ap = self.alpha_prod(tp);
        let sample_coeff = (ap / a).sqrt();
        let denom = a * (1.0 - ap).sqrt() + (a * (1.0 - a) * ap).sqrt();
        let k = (ap - a) / denom;
        match self.prediction {
            // ε = √ᾱ·v + √(1 − ᾱ)·x
            PredictionType::VPrediction => (sample_coeff - k * (1.0 - a).sqrt(), -k * a.sqrt()),
            _ => (sample_coeff, -k),
        }
    }

    /// x̂₀ = a·x + b·output at integer time `t`.
    fn x0_coefficients(&self, t: i64) -> (f64, f64) {
        let a = self.alpha_prod(t);
        self.prediction.x0_coefficients(a.sqrt(), (1.0 - a).sqrt())
    }
}

impl Solver for Pndm {
    fn name(&self) -> &'static str {
        self.name
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// A fresh `counter = 0`, `ets = []` at call `first`. diffusers' PNDM has no begin index:
    /// its image-to-image loop runs `timesteps[first:]` through a fresh scheduler, whose
    /// warm-up is driven by the counter alone, so the run starts over with the PLMS warm-up
    /// (Euler, then the averaged step, which returns to the warm-up's first sample and steps
    /// from one ratio above the call's time) or the PRK stages (whose base time is
    /// `timesteps[counter/4·4]` of the whole list, as in `step_prk`), while each call's own
    /// time is still `timesteps[i]`.
    fn begin(&mut self, first: usize) -> Result<()> {
        check_step(OP, first, self.timesteps.len())?;
        self.first = first;
        self.counter = 0;
        self.ets.clear();
        self.stages.clear();
        self.cur_sample = None;
        Ok(())
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
        check_order(OP, i, self.first + self.counter)?;
        let t_call = self.timesteps[i] as i64;
        let out = model.denoise(ctx.exec, x, t_call as f64)?;
        let (ax, bx) = self.x0_coefficients(t_call);
        let x0 = ctx.combine(&[ax, bx], &[x, &out])?;
        // (sample, t, t_prev, weights on `outs`) of this call's eq. 9 update.
        let counter = self.counter;
        let prev_sample = if counter < self.prk_calls {
            let diff = if counter % 2 == 1 { 0 } else { self.ratio / 2 };
            let tp = t_call - diff;
            let t = self.timesteps[counter / 4 * 4] as i64;
            if counter.is_multiple_of(4) {
                self.ets.push_back(out.clone());
                self.cur_sample = Some(x.clone());
                self.stages.clear();
            }
            self.stages.push(out.clone());
            let (cs, co) = self.transfer(t, tp);
            let s = self.cur_sample.clone().unwrap_or_else(|| x.clone());
            if counter % 4 == 3 {
                // RK4 weights (1, 2, 2, 1)/6 on the four stages (eq. 13).
                let w = [1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0];
                let stages = std::mem::take(&mut self.stages);
                let mut coefs = vec![cs];
                let mut inputs = vec![&s];
                for (wk, o) in w.iter().zip(&stages) {
                    coefs.push(co * wk);
                    inputs.push(o);
                }
                ctx.combine(&coefs, &inputs)?
            } else {
                ctx.combine(&[cs, co], &[&s, &out])?
            }
        } else {
            let (mut t, mut tp) = (t_call, t_call - self.ratio);
            if counter != 1 {
                while self.ets.len() > 3 {
                    self.ets.pop_front();
                }
                self.ets.push_back(out.clone());
            } else {
                tp = t_call;
                t = t_call + self.ratio;
            }
            let (cs, co) = self.transfer(t, tp);
            let e = &self.ets;
            let len = e.len();
            let mut sample = x.clone();
            // Adams–Bashforth weights, newest first (eq. 12 and its lower-order warm-up).
            let (weights, outs): (Vec<f64>, Vec<&Tensor>) = if len == 1 && counter == 0 {
                self.cur_sample = Some(x.clone());
                (vec![1.0], vec![&out])
            } else if len == 1 && counter == 1 {
                if let Some(s) = self.cur_sample.take() {
                    sample = s;
                }
                (vec![0.5, 0.5], vec![&out, &e[len - 1]])
            } else if len == 2 {
                (vec![1.5, -0.5], vec![&e[1], &e[0]])
            } else if len == 3 {
                (
                    vec![23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0],
                    vec![&e[2], &e[1], &e[0]],
                )
            } else {
                (
                    vec![55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0],
                    vec![&e[len - 1], &e[len - 2], &e[len - 3], &e[len - 4]],
                )
            };
            let mut coefs = vec![cs];
            let mut inputs = vec![&sample];
            for (w, o) in weights.iter().zip(outs) {
                coefs.push(co * w);
                inputs.push(o);
            }
            ctx.combine(&coefs, &inputs)?
        };
        self.counter += 1;
        Ok(StepOutput { prev_sample, x0 })
    }
}
