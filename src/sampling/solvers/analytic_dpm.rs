//! Analytic-DPM: Bao, Li, Zhu & Zhang (2022), "Analytic-DPM: an Analytic Estimate of the
//! Optimal Reverse Variance in Diffusion Probabilistic Models", arXiv:2201.06503.
//!
//! The reverse step from t to s (the next inference timestep, ᾱ_s = 1 after the last) is
//! the DDIM-family posterior q_λ(x_s | x_t, x₀) = N(μ̃, λ²) with x₀ replaced by the model's
//! x̂₀ (their eq. 3 and Theorem 1's optimal mean):
//!   μ = √ᾱ_s·x̂₀ + √(β̄_s − λ²)·ε̂,   β̄ = 1 − ᾱ,
//! and the variance is their optimal σ*² (Theorem 1, written for a skipped step as in
//! their Sec. 3.2):
//!   σ*² = λ² + (√(β̄_t·ᾱ_s/ᾱ_t) − √(β̄_s − λ²))²·(1 − Γ_t),   Γ_t = E_{q(x_t)} ‖ε̂(x_t)‖²/d.
//! (Derivation: x₀'s coefficient in μ̃, written in (x_t, x₀), is c = √ᾱ_s −
//! √(β̄_s − λ²)·√(ᾱ_t/β̄_t); the step's extra variance is c²·E tr Cov[x₀|x_t]/d, and
//! Cov[x₀|x_t] = β̄_t/ᾱ_t·Cov[ε|x_t] with E tr Cov[ε|x_t]/d = 1 − Γ_t.)
//!
//! * `Ddpm` variant: λ² = β̃ = β̄_s/β̄_t·(1 − ᾱ_t/ᾱ_s), the DDPM posterior variance (μ is
//!   then DDPM's posterior mean).
//! * `Ddim` variant: λ = 0 (Analytic-DDIM: the deterministic DDIM mean plus the optimal
//!   noise).
//!
//! Γ_t is estimated once per schedule by Monte Carlo over data ([`estimate_gamma`]), as the
//! paper does (its Algorithm 1 / eq. 8), and given to the solver as a table. Clipping (their
//! Theorem 2 / Sec. 4): Γ is clipped to [0, 1] (σ*² between its lower bound λ² and the
//! upper bound of a model that knows nothing), and with data in [a, b] σ*² is also capped
//! at λ² + c²·((b − a)/2)². As in the paper's samplers the last step (onto ᾱ = 1) outputs
//! the mean x̂₀ with no noise.

use super::{
    as_class, check_step, x0_processing, Denoiser, Solver, StepContext, StepOutput, X0Processing,
};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::SolverUpdate;
use crate::sampling::analytic::alpha_sigma_at;
use crate::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig};
use crate::tensor::Tensor;

const OP: &str = "AnalyticDPM";

/// Which posterior family the optimal variance is added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnalyticVariant {
    /// λ² = β̃ (Analytic-DDPM).
    Ddpm,
    /// λ = 0 (Analytic-DDIM).
    Ddim,
}

pub struct AnalyticDpm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    variant: AnalyticVariant,
    gamma: Vec<f64>,
    /// (b − a)/2 of the data range, when the data is known to be bounded.
    data_half_range: Option<f64>,
    /// `clip_sample` / `thresholding` of x̂₀ (off unless the config asks for it).
    processing: X0Processing,
}

/// One step: prev = c_x·x + c_o·output + std·z; x̂₀ = x0.0·x + x0.1·output.
#[derive(Debug, Clone, Copy)]
pub struct AnalyticCoefficients {
    pub c_x: f64,
    pub c_o: f64,
    pub std: f64,
    pub x0: (f64, f64),
    /// The parts of μ when x̂₀ is processed: μ = sp·x̂₀ + dir·ε̂, ε̂ = eps.0·x + eps.1·output
    /// (ε̂ from the model, unclipped, as diffusers' DDIM keeps it).
    pub sp: f64,
    pub dir: f64,
    pub eps: (f64, f64),
}

/// The DDPM-class timesteps and ᾱ table the DDPM-type research solvers step over.
pub(crate) fn ddpm_grid(
    config: &SchedulerConfig,
    steps: usize,
    op: &'static str,
) -> Result<(Vec<f64>, Vec<f32>, PredictionType)> {
    let cfg = as_class(config, SchedulerClass::Ddpm);
    if cfg.prediction_type == PredictionType::FlowPrediction {
        return Err(Error::invalid(
            op,
            "prediction_type flow_prediction is not a DDPM prediction type; valid: epsilon, sample, v_prediction",
        ));
    }
    let schedule = Schedule::new(&cfg)?;
    let ts = schedule.set_timesteps(steps)?;
    Ok((ts.timesteps, schedule.alphas_cumprod, cfg.prediction_type))
}

impl AnalyticDpm {
    /// `gamma[i]` is Γ at step i's timestep ([`AnalyticDpm::timesteps_for`] lists them).
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        variant: AnalyticVariant,
        gamma: Vec<f64>,
        data_half_range: Option<f64>,
    ) -> Result<Self> {
        let (timesteps, alphas_cumprod, prediction) = ddpm_grid(config, steps, OP)?;
        let processing = x0_processing(&as_class(config, SchedulerClass::Ddpm), OP, Some(false))?;
        if gamma.len() != timesteps.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the Γ table has {} entries for {} steps; estimate it at the solver's timesteps (AnalyticDpm::timesteps_for)",
                    gamma.len(),
                    timesteps.len()
                ),
            ));
        }
        if let Some(g) = gamma.iter().find(|g| !g.is_finite()) {
            return Err(Error::invalid(OP, format!("the Γ table holds {g}")));
        }
        Ok(Self {
            timesteps,
            alphas_cumprod,
            prediction,
            variant,
            gamma,
            data_half_range,
            processing,
        })
    }

    /// The timesteps an `steps`-step solver visits (where Γ is needed).
    pub fn timesteps_for(config: &SchedulerConfig, steps: usize) -> Result<Vec<f64>> {
        Ok(ddpm_grid(config, steps, OP)?.0)
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

    pub fn coefficients(&self, i: usize) -> AnalyticCoefficients {
        let t = self.timesteps[i];
        let s = self.timesteps.get(i + 1).copied().unwrap_or(-1.0);
        let (a_t, a_s) = (self.alpha_prod(t), self.alpha_prod(s));
        let (b_t, b_s) = (1.0 - a_t, 1.0 - a_s);
        let x0 = self.prediction.x0_coefficients(a_t.sqrt(), b_t.sqrt());
        let eps = self.prediction.eps_coefficients(a_t.sqrt(), b_t.sqrt());
        let last = s < 0.0;
        let lambda2 = match self.variant {
            AnalyticVariant::Ddpm if !last => b_s / b_t * (1.0 - a_t / a_s),
            _ => 0.0,
        };
        let dir = (b_s - lambda2).max(0.0).sqrt();
        let std = if last {
            0.0
        } else {
            let gap = (b_t * a_s / a_t).sqrt() - dir;
            let mut extra = gap * gap * (1.0 - self.gamma[i].clamp(0.0, 1.0));
            if let Some(h) = self.data_half_range {
                let c = a_s.sqrt() - dir * (a_t / b_t).sqrt();
                extra = extra.min(c * c * h * h);
            }
            (lambda2 + extra).sqrt()
        };
        let sp = a_s.sqrt();
        AnalyticCoefficients {
            c_x: sp * x0.0 + dir * eps.0,
            c_o: sp * x0.1 + dir * eps.1,
            std,
            x0,
            sp,
            dir,
            eps,
        }
    }
}

impl Solver for AnalyticDpm {
    fn name(&self) -> &'static str {
        match self.variant {
            AnalyticVariant::Ddpm => "analytic_ddpm",
            AnalyticVariant::Ddim => "analytic_ddim",
        }
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
        let c = self.coefficients(i);
        let x0 = ctx.combine(&[c.x0.0, c.x0.1], &[x, &out])?;
        if self.processing != X0Processing::None {
            let x0 = ctx.process_x0(self.processing, x0)?;
            let coefs = [c.sp, c.dir * c.eps.0, c.dir * c.eps.1];
            let inputs = [&x0, x, &out];
            let prev_sample = if c.std > 0.0 {
                ctx.combine_noisy(&coefs, &inputs, c.std, 0)?
            } else {
                ctx.combine(&coefs, &inputs)?
            };
            return Ok(StepOutput { prev_sample, x0 });
        }
        let prev_sample = if c.std > 0.0 {
            ctx.combine_noisy(&[c.c_x, c.c_o], &[x, &out], c.std, 0)?
        } else {
            ctx.combine(&[c.c_x, c.c_o], &[x, &out])?
        };
        Ok(StepOutput { prev_sample, x0 })
    }
}

/// Γ_t = E‖ε̂(x_t)‖²/d at each of `timesteps`, by Monte Carlo over the rows of `data`
/// (shape (M, …), samples of the data distribution): x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·z with
/// Philox z (`seed`, step = the timestep's index, stream 3), one batched model call per
/// timestep. `alphas_cumprod` is the training ᾱ table, `prediction` the model's output type.
pub async fn estimate_gamma(
    exec: &mut Exec,
    model: &mut dyn Denoiser,
    timesteps: &[f64],
    alphas_cumprod: &[f32],
    prediction: PredictionType,
    data: &Tensor,
    seed: u64,
) -> Result<Vec<f64>> {
    let data = exec.upload(data)?;
    let mut gamma = Vec::with_capacity(timesteps.len());
    for (i, &t) in timesteps.iter().enumerate() {
        let (alpha, sigma) = alpha_sigma_at(alphas_cumprod, t)?;
        let op = SolverUpdate::linear(&[alpha]).with_noise(sigma, seed, i as u32, 3);
        let x_t = exec.run(&op, &[&data])?;
        let out = model.denoise(exec, &x_t, t)?;
        let (a, b) = prediction.eps_coefficients(alpha, sigma);
        let eps = exec.run(&SolverUpdate::linear(&[a, b]), &[&x_t, &out])?;
        let v = exec.read(&eps).await?;
        let g = v.iter().map(|&e| (e as f64) * (e as f64)).sum::<f64>() / v.len().max(1) as f64;
        if !g.is_finite() {
            return Err(Error::invalid(
                OP,
                format!("the model's ε at timestep {t} is not finite (Γ = {g})"),
            ));
        }
        gamma.push(g);
    }
    Ok(gamma)
}

/// Data for Γ: (K, C, H, W) in the model's range, with labels when the source has them.
pub struct MomentData {
    pub data: Tensor,
    pub labels: Option<Vec<usize>>,
    /// Where the data came from, for messages (a path, a URL, "the bundled held-out digits").
    pub source: String,
}

/// What the Γ estimate needs to know about the run being sampled.
pub struct GammaRun<'a> {
    /// (N, C, H, W) of the run.
    pub shape: [usize; 4],
    /// The class labels the model is conditioned on, one per sample of the run.
    pub labels: Option<&'a [usize]>,
    /// The model only takes batches of exactly N (it is conditioned per sample).
    pub fixed_batch: bool,
    /// K, the number of data rows averaged over.
    pub samples: usize,
    pub seed: u64,
    /// How the front end spells the data and sample-count options (`--moment-data` in the
    /// CLI, `momentData` in JS), so errors name what the user typed.
    pub data_option: &'static str,
    pub samples_option: &'static str,
}

/// Γ_t at each of `timesteps` (Analytic-DPM's eq. 8) for a run: the Monte Carlo average of
/// [`estimate_gamma`] over `run.samples` data rows, evaluated in batches the model takes
/// (exactly N rows when the model is conditioned per sample, K rounded up to whole
/// batches; otherwise up to 64 rows at a time, exactly K in all). When the run is
/// class-conditional and the data labelled, each slot of a batch takes a row of the class
/// that slot is sampled with, so a class-conditional model sees data of its class.
pub async fn estimate_gamma_for_run(
    exec: &mut Exec,
    model: &mut dyn Denoiser,
    scheduler: &SchedulerConfig,
    timesteps: &[f64],
    data: &MomentData,
    run: &GammaRun<'_>,
) -> Result<Vec<f64>> {
    const OP: &str = "analytic_dpm";
    let ds = data.data.shape();
    let [n, c, h, w] = run.shape;
    if ds.len() != 4 || ds[1..] != [c, h, w] {
        return Err(Error::invalid(
            OP,
            format!(
                "{} {}: shape {ds:?}; this model's samples are ({c}, {h}, {w}), so the data \
                 must be (K, {c}, {h}, {w})",
                run.data_option, data.source
            ),
        ));
    }
    if run.samples == 0 {
        return Err(Error::invalid(
            OP,
            format!("{} must be at least 1", run.samples_option),
        ));
    }
    let rows = ds[0];
    let item = c * h * w;
    let host = data
        .data
        .cpu_data()
        .ok_or_else(|| Error::invalid(OP, "the moment data must be on the host"))?;
    let batch = if run.fixed_batch {
        n
    } else {
        run.samples.min(64)
    };
    let chunks = run.samples.div_ceil(batch);
    let total = if run.fixed_batch {
        chunks * batch
    } else {
        run.samples
    };
    let mut by_label: Vec<Vec<usize>> = Vec::new();
    if let (Some(labels), Some(dl)) = (run.labels, &data.labels) {
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        by_label = vec![Vec::new(); classes];
        for (r, &l) in dl.iter().enumerate() {
            if l < classes {
                by_label[l].push(r);
            }
        }
        if let Some(l) = labels.iter().find(|&&l| by_label[l].is_empty()) {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} {}: no sample of class {l}, which this run draws",
                    run.data_option, data.source
                ),
            ));
        }
    }
    let schedule = Schedule::new(scheduler)?;
    let mut sum = vec![0.0; timesteps.len()];
    let mut next = 0usize;
    for chunk in 0..chunks {
        let size = batch.min(total - chunk * batch);
        let mut v = Vec::with_capacity(size * item);
        for slot in 0..size {
            let r = match run.labels {
                Some(l) if !by_label.is_empty() => {
                    let q = &by_label[l[slot % l.len()]];
                    q[chunk % q.len()]
                }
                _ => {
                    let r = next % rows;
                    next += 1;
                    r
                }
            };
            v.extend_from_slice(&host[r * item..(r + 1) * item]);
        }
        let x = Tensor::from_vec(&[size, c, h, w], v)?;
        let g = estimate_gamma(
            exec,
            model,
            timesteps,
            &schedule.alphas_cumprod,
            scheduler.prediction_type,
            &x,
            run.seed.wrapping_add(chunk as u64),
        )
        .await?;
        for (s, g) in sum.iter_mut().zip(g) {
            *s += g * size as f64;
        }
    }
    Ok(sum.iter().map(|s| s / total as f64).collect())
}
