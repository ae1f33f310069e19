//! An exact denoiser for Gaussian-mixture data: the test model of the research solvers
//! (convergence orders, Analytic-DPM, GMS), plus a sampler of the true mixture and a
//! sliced-Wasserstein distance to measure sample quality.
//!
//! # The model
//!
//! Data x₀ ∈ ℝᴰ follows p(x₀) = Σ_k π_k·N(μ_k, diag(s²_k)). The VP forward process gives
//! x_t = α_t·x₀ + σ_t·ε with ε ~ N(0, I). Everything below is per dimension d (the
//! covariances are diagonal), with the component index k implied.
//!
//! * Marginal of x_t under component k: N(α·μ_k, v_k), v_k = α²·s²_k + σ².
//! * Posterior over components: w_k(x_t) = π_k·N(x_t; α·μ_k, v_k) / Σ_j (…)_j, computed
//!   with log-sum-exp so far-away points do not underflow.
//! * Given k, (x₀, x_t) is jointly Gaussian, so ε = (x_t − α·x₀)/σ given (x_t, k) is
//!   Gaussian with mean e_k = σ·(x_t − α·μ_k)/v_k and variance τ_k = α²·s²_k/v_k
//!   (from E[x₀|x_t,k] = μ_k + α·s²_k·(x_t − α·μ_k)/v_k and Var[x₀|x_t,k] = s²_k·σ²/v_k).
//! * Moments of ε given x_t are those of the mixture Σ_k w_k·N(e_k, τ_k):
//!   E[ε] = Σ w_k·e_k, E[ε²] = Σ w_k·(e_k² + τ_k), E[ε³] = Σ w_k·(e_k³ + 3·e_k·τ_k).
//! * x̂₀ = E[x₀|x_t] = (x_t − σ·E[ε])/α; v = α·ε − σ·x₀ has E[v] = α·E[ε] − σ·x̂₀.
//!
//! The model time of the solvers (diffusers' integer or interpolated timestep) maps to
//! (α, σ) through the training ᾱ table the solver uses, linearly interpolated between
//! integer timesteps, so the model is exactly the one each solver believes it samples.
//!
//! Everything is f64 on the CPU. As a [`Denoiser`] it reads the input back when it lives on
//! the GPU (native only) and uploads its output: it is a test model, not a fast one.

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::philox;
use crate::sampling::solvers::{Denoiser, MomentDenoiser};
use crate::sampling::PredictionType;
use crate::tensor::Tensor;

const OP: &str = "GaussianMixture";

/// A diagonal-covariance Gaussian mixture in `dim` dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    pub dim: usize,
    /// Mixture weights π_k (normalised by [`GaussianMixture::new`]).
    pub weights: Vec<f64>,
    /// Means μ_k, `dim` values each.
    pub means: Vec<Vec<f64>>,
    /// Per-dimension variances s²_k, `dim` values each.
    pub variances: Vec<Vec<f64>>,
}

/// Per-element conditional moments of ε given x_t.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpsMoments {
    pub m1: Vec<f64>,
    pub m2: Vec<f64>,
    pub m3: Vec<f64>,
}

impl GaussianMixture {
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, variances: Vec<Vec<f64>>) -> Result<Self> {
        let k = weights.len();
        if k == 0 || means.len() != k || variances.len() != k {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} weights, {} means and {} variance vectors; need the same positive count",
                    k,
                    means.len(),
                    variances.len()
                ),
            ));
        }
        let dim = means[0].len();
        if dim == 0
            || means.iter().any(|m| m.len() != dim)
            || variances.iter().any(|v| v.len() != dim)
        {
            return Err(Error::invalid(
                OP,
                "every mean and variance vector must have the same positive length",
            ));
        }
        if weights.iter().any(|w| !(*w > 0.0 && w.is_finite()))
            || variances
                .iter()
                .flatten()
                .any(|v| !(*v > 0.0 && v.is_finite()))
            || means.iter().flatten().any(|m| !m.is_finite())
        {
            return Err(Error::invalid(
                OP,
                "weights and variances must be positive and finite, means finite",
            ));
        }
        let total: f64 = weights.iter().sum();
        Ok(Self {
            dim,
            weights: weights.iter().map(|w| w / total).collect(),
            means,
            variances,
        })
    }

    /// An isotropic mixture: component k has variance `variances[k]` in every dimension.
    pub fn isotropic(weights: Vec<f64>, means: Vec<Vec<f64>>, variances: &[f64]) -> Result<Self> {
        let dim = means.first().map_or(0, |m| m.len());
        let v = variances.iter().map(|&s| vec![s; dim]).collect();
        Self::new(weights, means, v)
    }

    /// The moments of ε given each row of `x` (rows of `dim` values) at (α, σ).
    pub fn eps_moments(&self, x: &[f32], alpha: f64, sigma: f64) -> EpsMoments {
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        self.eps_moments_f64(&x, alpha, sigma)
    }

    /// [`GaussianMixture::eps_moments`] of f64 inputs (for f64 reference integrators).
    pub fn eps_moments_f64(&self, x: &[f64], alpha: f64, sigma: f64) -> EpsMoments {
        let d = self.dim;
        let n = x.len();
        let mut out = EpsMoments {
            m1: vec![0.0; n],
            m2: vec![0.0; n],
            m3: vec![0.0; n],
        };
        let kk = self.weights.len();
        let mut logw = vec![0.0; kk];
        for (r, row) in x.chunks(d).enumerate() {
            for (k, lw) in logw.iter_mut().enumerate() {
                let mut l = self.weights[k].ln();
                for (j, &xv) in row.iter().enumerate() {
                    let v = alpha * alpha * self.variances[k][j] + sigma * sigma;
                    let dx = xv - alpha * self.means[k][j];
                    l -= 0.5 * (dx * dx / v + v.ln());
                }
                *lw = l;
            }
            let mx = logw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logw.iter().map(|l| (l - mx).exp()).sum();
            for (k, lw) in logw.iter().enumerate() {
                let w = (lw - mx).exp() / z;
                for (j, &xv) in row.iter().enumerate() {
                    let s2 = self.variances[k][j];
                    let v = alpha * alpha * s2 + sigma * sigma;
                    let e = sigma * (xv - alpha * self.means[k][j]) / v;
                    let tau = alpha * alpha * s2 / v;
                    let i = r * d + j;
                    out.m1[i] += w * e;
                    out.m2[i] += w * (e * e + tau);
                    out.m3[i] += w * (e * e * e + 3.0 * e * tau);
                }
            }
        }
        out
    }

    /// E[ε | x_t] per element.
    pub fn eps(&self, x: &[f32], alpha: f64, sigma: f64) -> Vec<f64> {
        self.eps_moments(x, alpha, sigma).m1
    }

    /// The model output in `prediction` form per element.
    pub fn predict(
        &self,
        x: &[f32],
        alpha: f64,
        sigma: f64,
        prediction: PredictionType,
    ) -> Vec<f64> {
        let eps = self.eps(x, alpha, sigma);
        eps.iter()
            .zip(x)
            .map(|(&e, &xv)| {
                let x0 = (xv as f64 - sigma * e) / alpha;
                match prediction {
                    PredictionType::Epsilon => e,
                    PredictionType::Sample => x0,
                    PredictionType::VPrediction => alpha * e - sigma * x0,
                    // Rectified flow: x_t = (1 − s)·x₀ + s·ε, velocity ε − x₀.
                    PredictionType::FlowPrediction => e - x0,
                }
            })
            .collect()
    }

    /// `n` samples of the mixture as (n, dim) row-major f32, from Philox keyed by `seed`
    /// (counter stream 0 picks components, stream 1 draws the Gaussians).
    pub fn sample(&self, n: usize, seed: u64) -> Vec<f32> {
        let d = self.dim;
        let mut z = vec![0f32; n * d];
        philox::fill_gaussian(seed, 0, 1, &mut z);
        let key = [seed as u32, (seed >> 32) as u32];
        let mut out = vec![0f32; n * d];
        for r in 0..n {
            let w = philox::philox4x32_10([(r / 4) as u32, 0, 0, 0], key);
            let u = (w[r % 4] >> 8) as f64 / 16_777_216.0;
            let mut acc = 0.0;
            let mut k = self.weights.len() - 1;
            for (j, &p) in self.weights.iter().enumerate() {
                acc += p;
                if u < acc {
                    k = j;
                    break;
                }
            }
            for j in 0..d {
                let i = r * d + j;
                out[i] = (self.means[k][j] + self.variances[k][j].sqrt() * z[i] as f64) as f32;
            }
        }
        out
    }
}

/// A mixture read from JSON (the CLI's `--model gmm:FILE.json`), with the shape one sample
/// takes as a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct MixtureFile {
    pub mixture: GaussianMixture,
    /// (C, H, W) of one sample; C·H·W = the mixture's dimension.
    pub sample_shape: Vec<usize>,
}

impl MixtureFile {
    /// Parses `{"weights": [π…], "means": [μ_k…], "variances": [s²_k…], "shape": [C, H, W]}`.
    /// Each mean and variance is a list of D numbers or one number for every dimension
    /// (then `shape` fixes D); `shape` defaults to (D, 1, 1). `file` names the source in
    /// errors.
    pub fn from_json_str(text: &str, file: &str) -> Result<Self> {
        const OPF: &str = "gmm model file";
        let bad = |what: String| Error::invalid(OPF, format!("{file}: {what}"));
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("expected a JSON object with weights, means, variances".into()))?;
        const KEYS: &[&str] = &["weights", "means", "variances", "shape"];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown key \"{k}\"; valid: {}",
                KEYS.join(", ")
            )));
        }
        let num = |x: &serde_json::Value, what: &str| -> Result<f64> {
            x.as_f64()
                .ok_or_else(|| bad(format!("{what} must be a number, got {x}")))
        };
        let list = |key: &str| -> Result<&Vec<serde_json::Value>> {
            obj.get(key)
                .ok_or_else(|| bad(format!("missing \"{key}\"")))?
                .as_array()
                .ok_or_else(|| bad(format!("\"{key}\" must be a list")))
        };
        let weights = list("weights")?
            .iter()
            .map(|w| num(w, "a weight"))
            .collect::<Result<Vec<f64>>>()?;
        let shape: Option<Vec<usize>> = match obj.get("shape") {
            None => None,
            Some(s) => {
                let dims = s
                    .as_array()
                    .filter(|a| a.len() == 3)
                    .and_then(|a| {
                        a.iter()
                            .map(|d| d.as_u64().map(|d| d as usize))
                            .collect::<Option<Vec<_>>>()
                    })
                    .filter(|d| d.iter().all(|&d| d > 0 && d <= 1 << 16))
                    .ok_or_else(|| {
                        bad(format!(
                            "\"shape\" must be [C, H, W] with positive integers, got {s}"
                        ))
                    })?;
                Some(dims)
            }
        };
        // D from the first list-valued mean or variance, else from the shape.
        let listed = list("means")?
            .iter()
            .chain(list("variances")?.iter())
            .find_map(|e| e.as_array().map(|a| a.len()));
        let dim = match (listed, &shape) {
            (Some(d), Some(s)) if d != s.iter().product::<usize>() => {
                return Err(bad(format!(
                    "the means/variances have {d} values but shape {s:?} holds {}",
                    s.iter().product::<usize>()
                )))
            }
            (Some(d), _) => d,
            (None, Some(s)) => s.iter().product(),
            (None, None) => {
                return Err(bad(
                    "every mean and variance is a single number: give \"shape\": [C, H, W]".into(),
                ))
            }
        };
        let vectors = |key: &str| -> Result<Vec<Vec<f64>>> {
            list(key)?
                .iter()
                .enumerate()
                .map(|(k, e)| match e.as_array() {
                    Some(a) if a.len() == dim => a.iter().map(|x| num(x, key)).collect(),
                    Some(a) => Err(bad(format!(
                        "{key}[{k}] has {} values, expected {dim}",
                        a.len()
                    ))),
                    None => Ok(vec![num(e, key)?; dim]),
                })
                .collect()
        };
        let mixture = GaussianMixture::new(weights, vectors("means")?, vectors("variances")?)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            mixture,
            sample_shape: shape.unwrap_or(vec![dim, 1, 1]),
        })
    }
}

/// (α, σ) of a model time through the training ᾱ table, linear in t between integers.
pub fn alpha_sigma_at(alphas_cumprod: &[f32], t: f64) -> Result<(f64, f64)> {
    let last = alphas_cumprod.len().saturating_sub(1) as f64;
    if !(t >= 0.0 && t <= last) {
        return Err(Error::invalid(
            OP,
            format!("model time {t} outside the training range [0, {last}]"),
        ));
    }
    let lo = t.floor() as usize;
    let hi = (lo + 1).min(alphas_cumprod.len() - 1);
    let f = t - lo as f64;
    let a = alphas_cumprod[lo] as f64 * (1.0 - f) + alphas_cumprod[hi] as f64 * f;
    Ok((a.sqrt(), (1.0 - a).sqrt()))
}

/// The mixture as a [`Denoiser`] (and [`MomentDenoiser`]) for a discrete schedule.
pub struct AnalyticDenoiser {
    pub mixture: GaussianMixture,
    pub alphas_cumprod: Vec<f32>,
    pub prediction: PredictionType,
    /// Model calls so far (the solvers' NFE).
    pub calls: usize,
}

impl AnalyticDenoiser {
    pub fn new(
        mixture: GaussianMixture,
        alphas_cumprod: Vec<f32>,
        prediction: PredictionType,
    ) -> Self {
        Self {
            mixture,
            alphas_cumprod,
            prediction,
            calls: 0,
        }
    }

    fn host(&self, exec: &mut Exec, x: &Tensor) -> Result<Vec<f32>> {
        if !x.numel().is_multiple_of(self.mixture.dim) {
            return Err(Error::shape(
                OP,
                "x",
                format!("rows of {} values", self.mixture.dim),
                x.shape(),
            ));
        }
        match x.cpu_data() {
            Some(d) => Ok(d.to_vec()),
            None => read_native(exec, x),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn read_native(exec: &mut Exec, x: &Tensor) -> Result<Vec<f32>> {
    crate::platform::block_on(exec.read(x))
}

#[cfg(target_arch = "wasm32")]
fn read_native(_exec: &mut Exec, _x: &Tensor) -> Result<Vec<f32>> {
    Err(Error::invalid(
        OP,
        "the analytic model needs its input on the CPU in the browser (no blocking readback)",
    ))
}

fn to_tensor(exec: &mut Exec, shape: &[usize], v: &[f64]) -> Result<Tensor> {
    let data: Vec<f32> = v.iter().map(|&e| e as f32).collect();
    exec.tensor(shape, &data)
}

impl Denoiser for AnalyticDenoiser {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        self.calls += 1;
        let (alpha, sigma) = alpha_sigma_at(&self.alphas_cumprod, timestep)?;
        let host = self.host(exec, x)?;
        let out = self.mixture.predict(&host, alpha, sigma, self.prediction);
        to_tensor(exec, x.shape(), &out)
    }

    fn as_moments(&mut self) -> Option<&mut dyn MomentDenoiser> {
        Some(self)
    }
}

impl MomentDenoiser for AnalyticDenoiser {
    fn eps_moments(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<[Tensor; 3]> {
        self.calls += 1;
        let (alpha, sigma) = alpha_sigma_at(&self.alphas_cumprod, timestep)?;
        let host = self.host(exec, x)?;
        let m = self.mixture.eps_moments(&host, alpha, sigma);
        // Central moments in f64 (the trait's contract; see MomentDenoiser).
        let var: Vec<f64> = m.m1.iter().zip(&m.m2).map(|(a, b)| b - a * a).collect();
        let k3: Vec<f64> =
            m.m1.iter()
                .zip(&m.m2)
                .zip(&m.m3)
                .map(|((a, b), c)| c - 3.0 * a * b + 2.0 * a * a * a)
                .collect();
        Ok([
            to_tensor(exec, x.shape(), &m.m1)?,
            to_tensor(exec, x.shape(), &var)?,
            to_tensor(exec, x.shape(), &k3)?,
        ])
    }
}

/// Sliced 2-Wasserstein distance between two equally sized point clouds of `dim`-vectors
/// (row-major): the root mean over `projections` random unit directions (Philox, `seed`)
/// of the 1-D W₂² between the sorted projections.
pub fn sliced_wasserstein(
    a: &[f32],
    b: &[f32],
    dim: usize,
    projections: usize,
    seed: u64,
) -> Result<f64> {
    if dim == 0 || a.len() != b.len() || !a.len().is_multiple_of(dim) || a.is_empty() {
        return Err(Error::invalid(
            "sliced_wasserstein",
            format!(
                "need two equal non-empty sets of {dim}-vectors, got {} and {} values",
                a.len(),
                b.len()
            ),
        ));
    }
    let n = a.len() / dim;
    let mut dir = vec![0f32; dim];
    let mut total = 0.0;
    for p in 0..projections {
        philox::fill_gaussian(seed, p as u32, 2, &mut dir);
        let norm = dir.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let proj = |x: &[f32]| -> Vec<f64> {
            let mut v: Vec<f64> = x
                .chunks(dim)
                .map(|r| {
                    r.iter()
                        .zip(&dir)
                        .map(|(&a, &d)| a as f64 * d as f64)
                        .sum::<f64>()
                        / norm
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (pa, pb) = (proj(a), proj(b));
        total += pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            / n as f64;
    }
    Ok((total / projections as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> GaussianMixture {
        GaussianMixture::new(
            vec![0.3, 0.7],
            vec![vec![-1.0, 0.5], vec![1.2, -0.4]],
            vec![vec![0.04, 0.09], vec![0.16, 0.01]],
        )
        .unwrap()
    }

    /// The closed-form moments against Monte Carlo over the joint (x₀, ε) restricted to a
    /// thin slab around a fixed x_t is too slow; instead check them against direct
    /// numerical integration over x₀ in 1-D (the posterior p(x₀|x_t) ∝ p(x₀)·N(x_t; αx₀, σ²)).
    #[test]
    fn moments_match_quadrature_1d() {
        let g = GaussianMixture::new(
            vec![0.4, 0.6],
            vec![vec![-0.8], vec![0.9]],
            vec![vec![0.05], vec![0.2]],
        )
        .unwrap();
        for &(alpha, sigma, x) in &[
            (0.9, 0.43588989, 0.3f32),
            (0.5, 0.8660254, -1.1),
            (0.99, 0.14106736, 0.85),
        ] {
            let m = g.eps_moments(&[x], alpha, sigma);
            let (mut z, mut s1, mut s2, mut s3) = (0.0, 0.0, 0.0, 0.0);
            let h = 1e-4;
            let mut x0 = -6.0;
            while x0 < 6.0 {
                let prior: f64 = (0..2)
                    .map(|k| {
                        let v = g.variances[k][0];
                        g.weights[k] * (-(x0 - g.means[k][0]).powi(2) / (2.0 * v)).exp() / v.sqrt()
                    })
                    .sum();
                let lik = (-(x as f64 - alpha * x0).powi(2) / (2.0 * sigma * sigma)).exp();
                let w = prior * lik;
                let e = (x as f64 - alpha * x0) / sigma;
                z += w;
                s1 += w * e;
                s2 += w * e * e;
                s3 += w * e * e * e;
                x0 += h;
            }
            let (q1, q2, q3) = (s1 / z, s2 / z, s3 / z);
            assert!((m.m1[0] - q1).abs() < 1e-6, "m1 {} vs {q1}", m.m1[0]);
            assert!((m.m2[0] - q2).abs() < 1e-6, "m2 {} vs {q2}", m.m2[0]);
            assert!((m.m3[0] - q3).abs() < 1e-6, "m3 {} vs {q3}", m.m3[0]);
        }
    }

    #[test]
    fn prediction_types_agree() {
        let g = mix();
        let x = [0.3f32, -0.2, 1.5, 0.7];
        let (a, s) = (0.8, 0.6);
        let eps = g.predict(&x, a, s, PredictionType::Epsilon);
        let x0 = g.predict(&x, a, s, PredictionType::Sample);
        let v = g.predict(&x, a, s, PredictionType::VPrediction);
        for i in 0..4 {
            let xv = x[i] as f64;
            assert!((PredictionType::Epsilon.to_x0(eps[i], xv, a, s) - x0[i]).abs() < 1e-12);
            assert!((PredictionType::VPrediction.to_x0(v[i], xv, a, s) - x0[i]).abs() < 1e-12);
        }
    }

    #[test]
    fn samples_have_the_mixture_moments() {
        let g = mix();
        let n = 40_000;
        let s = g.sample(n, 7);
        for j in 0..2 {
            let mean: f64 = (0..n).map(|r| s[r * 2 + j] as f64).sum::<f64>() / n as f64;
            let want: f64 = (0..2).map(|k| g.weights[k] * g.means[k][j]).sum();
            let var: f64 = (0..n)
                .map(|r| (s[r * 2 + j] as f64 - want).powi(2))
                .sum::<f64>()
                / n as f64;
            let want_var: f64 = (0..2)
                .map(|k| g.weights[k] * (g.variances[k][j] + (g.means[k][j] - want).powi(2)))
                .sum();
            assert!((mean - want).abs() < 0.02, "dim {j}: mean {mean} vs {want}");
            assert!(
                (var - want_var).abs() < 0.03,
                "dim {j}: var {var} vs {want_var}"
            );
        }
    }

    #[test]
    fn sliced_wasserstein_sees_a_shift() {
        let g = mix();
        let a = g.sample(2000, 1);
        let b = g.sample(2000, 2);
        let same = sliced_wasserstein(&a, &b, 2, 64, 3).unwrap();
        let shifted: Vec<f32> = b.iter().map(|v| v + 0.5).collect();
        let far = sliced_wasserstein(&a, &shifted, 2, 64, 3).unwrap();
        assert!(same < 0.06, "two samples of one mixture: {same}");
        // A shift by (0.5, 0.5) projects to 0.5·(d₀ + d₁); its RMS over directions is 0.5.
        assert!((far - 0.5).abs() < 0.08, "shifted: {far}");
        assert!(sliced_wasserstein(&a, &b[..10], 2, 4, 0).is_err());
    }
}
