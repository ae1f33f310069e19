//! Sampling σ-space denoisers: models that map (x, σ) straight to the denoised x̂₀ (EDM's
//! D_θ, with the preconditioning and any output clip inside the model), as consistency
//! models are shipped.
//!
//! [`consistency_sample`] is the multistep consistency sampler of Song, Dhariwal, Chen &
//! Sutskever (2023), "Consistency Models", arXiv:2303.01469, Algorithm 1: x = σ₀·z,
//! x̂₀ = f(x, σ₀); then for each further σₙ: x = x̂₀ + √(σₙ² − ε²)·z, x̂₀ = f(x, σₙ)
//! (ε = σ_min). One σ is one-step generation. Unlike
//! [`ConsistencyMultistep`](super::solvers::ConsistencyMultistep) (diffusers' scheduler over a
//! raw network, Karras-ramp σ), the σ points are chosen by the caller and the model's own
//! clip applies.

use super::solvers::{Control, Noise, Sampled, StepContext, StepInfo};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::SolverUpdate;
use crate::tensor::Tensor;

const OP: &str = "consistency_sample";

/// A model that returns the denoised x̂₀ for x at noise level σ (same σ for the batch).
pub trait SigmaDenoiser {
    fn denoise_sigma(&mut self, exec: &mut Exec, x: &Tensor, sigma: f64) -> Result<Tensor>;

    /// (σ_min, σ_max) the model was trained on, when it declares them.
    fn sigma_range(&self) -> Option<(f64, f64)> {
        None
    }
}

/// Checks a σ list for [`consistency_sample`]: non-empty, finite, strictly decreasing and
/// within the model's range.
pub fn check_sigmas(sigmas: &[f64], range: Option<(f64, f64)>) -> Result<()> {
    if sigmas.is_empty() {
        return Err(Error::invalid(
            OP,
            "no sigmas: give at least one (e.g. 80 for one-step generation)",
        ));
    }
    for (i, &s) in sigmas.iter().enumerate() {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::invalid(
                OP,
                format!(
                    "sigma #{} is {s}: sigmas must be positive and finite",
                    i + 1
                ),
            ));
        }
        if i > 0 && s >= sigmas[i - 1] {
            return Err(Error::invalid(
                OP,
                format!(
                    "sigmas must strictly decrease: {s} follows {}",
                    sigmas[i - 1]
                ),
            ));
        }
        if let Some((lo, hi)) = range {
            if s < lo || s > hi {
                return Err(Error::invalid(
                    OP,
                    format!("sigma {s} is outside the model's range [{lo}, {hi}]"),
                ));
            }
        }
    }
    Ok(())
}

/// Algorithm 1 of the consistency-models paper (see the module doc) from pure noise of
/// `shape`. Noise: Philox (seed, step u32::MAX) for the start, as
/// [`initial_noise`](super::solvers::initial_noise), then (seed, step n) for the re-noising
/// before σₙ; or given unit tensors, one per draw. The callback sees each evaluation
/// (`timestep` = σ, `x` = the model input, `x0` = its output); [`Control::Stop`] ends early
/// with the latest x̂₀. On the GPU each evaluation is one submit; nothing is read back.
pub fn consistency_sample(
    exec: &mut Exec,
    model: &mut dyn SigmaDenoiser,
    shape: &[usize],
    sigmas: &[f64],
    noise: &mut Noise,
    mut callback: impl FnMut(&mut Exec, &StepInfo<'_>) -> Control,
) -> Result<Sampled> {
    let range = model.sigma_range();
    check_sigmas(sigmas, range)?;
    let eps = range.map(|r| r.0).unwrap_or(0.0);
    let total = sigmas.len();
    let mut x = match noise {
        Noise::Philox { seed } => exec.run(
            &SolverUpdate::noise(shape, sigmas[0], *seed, u32::MAX, 0),
            &[],
        )?,
        Noise::Given(queue) => {
            let z = queue
                .pop_front()
                .ok_or_else(|| Error::invalid(OP, "the given noise ran out at the start"))?;
            let z = exec.upload(&z)?;
            exec.run(&SolverUpdate::linear(&[sigmas[0]]), &[&z])?
        }
    };
    let mut x0 = model.denoise_sigma(exec, &x, sigmas[0])?;
    for (i, &s) in sigmas.iter().enumerate() {
        if i > 0 {
            let mut ctx = StepContext {
                exec,
                noise,
                step: i as u32,
            };
            let scale = (s * s - eps * eps).max(0.0).sqrt();
            x = ctx.combine_noisy(&[1.0], &[&x0], scale, 0)?;
            x0 = model.denoise_sigma(exec, &x, s)?;
        }
        let info = StepInfo {
            index: i,
            total,
            timestep: s,
            x: &x,
            x0: &x0,
        };
        let control = callback(exec, &info);
        exec.submit()?;
        if control == Control::Stop {
            return Ok(Sampled {
                sample: x0,
                steps: i + 1,
                stopped: true,
            });
        }
    }
    Ok(Sampled {
        sample: x0,
        steps: total,
        stopped: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A denoiser that returns x·k(σ) on the CPU, recording the σ it was called with.
    struct Scale(Vec<f64>);

    impl SigmaDenoiser for Scale {
        fn denoise_sigma(&mut self, exec: &mut Exec, x: &Tensor, sigma: f64) -> Result<Tensor> {
            self.0.push(sigma);
            exec.run(&SolverUpdate::linear(&[1.0 / (1.0 + sigma)]), &[x])
        }
        fn sigma_range(&self) -> Option<(f64, f64)> {
            Some((0.002, 80.0))
        }
    }

    #[test]
    fn multistep_follows_algorithm_1_with_given_noise() {
        let mut exec = Exec::cpu();
        let z0 = Tensor::from_vec(&[1, 2], vec![1.0, -0.5]).unwrap();
        let z1 = Tensor::from_vec(&[1, 2], vec![0.25, 2.0]).unwrap();
        let mut noise = Noise::Given(vec![z0, z1].into());
        let mut model = Scale(Vec::new());
        let out = consistency_sample(
            &mut exec,
            &mut model,
            &[1, 2],
            &[80.0, 2.0],
            &mut noise,
            |_, _| Control::Continue,
        )
        .unwrap();
        assert_eq!(model.0, vec![80.0, 2.0]);
        let got = out.sample.cpu_data().unwrap().to_vec();
        let renoise = (4.0f64 - 0.002 * 0.002).sqrt();
        for (k, (a, b)) in [(1.0f64, 0.25f64), (-0.5, 2.0)].into_iter().enumerate() {
            let x0 = 80.0 * a / 81.0;
            let want = (x0 + renoise * b) / 3.0;
            assert!(
                (got[k] as f64 - want).abs() < 1e-5,
                "{k}: {} vs {want}",
                got[k]
            );
        }
    }

    #[test]
    fn bad_sigma_lists_are_refused() {
        let r = Some((0.002, 80.0));
        assert!(check_sigmas(&[], r).is_err());
        assert!(check_sigmas(&[2.0, 80.0], r).is_err());
        assert!(check_sigmas(&[80.0, 80.0], r).is_err());
        assert!(check_sigmas(&[100.0], r).is_err());
        assert!(check_sigmas(&[f64::NAN], r).is_err());
        assert!(check_sigmas(&[80.0, 2.0, 0.1], r).is_ok());
    }
}
