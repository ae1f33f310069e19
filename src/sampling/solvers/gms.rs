//! GMS, the Gaussian Mixture Solver: Guo, Lu, Bao, Pang, Yan, Du & Li (2023), "Gaussian
//! Mixture Solvers for Diffusion Models", arXiv:2311.00941.
//!
//! A DDPM-type ancestral sampler over the DDPM schedule's timesteps whose reverse
//! transition q(x_s | x_t) is a two-component Gaussian mixture per element instead of a
//! Gaussian: the model ([`MomentDenoiser`]) predicts E[ε|x_t], Var[ε|x_t], κ₃[ε|x_t]; the
//! first three moments of x_s = c_x·x_t + c_ε·ε + λ·z follow (the DDPM posterior
//! q(x_s | x_t, x₀) = N(μ̃, λ²) with x₀ = (x_t − σ_t·ε)/α_t, so its moments are those of ε
//! pushed through an affine map, plus Gaussian noise of variance λ² = β̃), and the
//! mixture matching them is fitted in closed form and sampled, all in one kernel
//! ([`GmsUpdate`], whose docs give the fit equations and the fallback when the predicted
//! skewness is beyond what the mixture can express).
//!
//! Coefficients (t → s, ᾱ_s = 1 after the last step; β̄ = 1 − ᾱ):
//!   λ² = β̄_s/β̄_t·(1 − ᾱ_t/ᾱ_s),  c_x = √ᾱ_s/√ᾱ_t,  c_ε = √(β̄_s − λ²) − √ᾱ_s·√β̄_t/√ᾱ_t,
//! the same mean as DDPM's posterior mean with ε̂ = E[ε|x_t]. The last step outputs the
//! mean x̂₀ (no noise), as DDPM does.
//!
//! The paper's mixture is fitted by a generalized method of moments with an optimiser; here
//! the parameterisation (weights ⅓/⅔, one shared variance) makes the system exactly
//! determined, so the fit is a closed form and runs per element on the GPU.
//!
//! Noise must be Philox (the mixture needs a uniform as well as a Gaussian per element);
//! given noise tensors are rejected.

use super::analytic_dpm::ddpm_grid;
use super::{
    check_step, reject_x0_processing, Denoiser, MomentDenoiser, Noise, Solver, StepContext,
    StepOutput,
};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::{Binary, BinaryOp, GmsUpdate, SliceBatch, SolverUpdate, Transpose};
use crate::sampling::SchedulerConfig;
use crate::tensor::Tensor;

const OP: &str = "GMS";

pub struct Gms {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
}

/// One GMS step's coefficients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GmsCoefficients {
    pub c_x: f64,
    pub c_eps: f64,
    pub lambda2: f64,
    /// x̂₀ = x0.0·x_t + x0.1·E[ε].
    pub x0: (f64, f64),
}

impl Gms {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        // The moment model predicts ε and its powers, whatever the config's prediction type.
        let (timesteps, alphas_cumprod, _) = ddpm_grid(config, steps, OP)?;
        // GMS has no x̂₀ clipping: refuse it only when asked for explicitly.
        reject_x0_processing(config, OP, false)?;
        Ok(Self {
            timesteps,
            alphas_cumprod,
        })
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

    pub fn coefficients(&self, i: usize) -> GmsCoefficients {
        let t = self.timesteps[i];
        let s = self.timesteps.get(i + 1).copied().unwrap_or(-1.0);
        let (a_t, a_s) = (self.alpha_prod(t), self.alpha_prod(s));
        let (b_t, b_s) = (1.0 - a_t, 1.0 - a_s);
        let lambda2 = if s >= 0.0 {
            b_s / b_t * (1.0 - a_t / a_s)
        } else {
            0.0
        };
        let c_x = (a_s / a_t).sqrt();
        let c_eps = (b_s - lambda2).max(0.0).sqrt() - (a_s * b_t / a_t).sqrt();
        GmsCoefficients {
            c_x,
            c_eps,
            lambda2,
            x0: (1.0 / a_t.sqrt(), -(b_t / a_t).sqrt()),
        }
    }
}

impl Solver for Gms {
    fn name(&self) -> &'static str {
        "gms"
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
        let seed = match ctx.noise {
            Noise::Philox { seed } => *seed,
            Noise::Given(_) => {
                return Err(Error::invalid(
                    OP,
                    "GMS draws a uniform and a Gaussian per element; use Philox noise, not given noise tensors",
                ))
            }
        };
        let moments = model.as_moments().ok_or_else(|| {
            Error::invalid(
                OP,
                "GMS needs a model that predicts the variance and skewness of ε (a MomentDenoiser); this model only predicts its output",
            )
        })?;
        let [m1, var, k3] = moments.eps_moments(ctx.exec, x, self.timesteps[i])?;
        let c = self.coefficients(i);
        let x0 = ctx.combine(&[c.x0.0, c.x0.1], &[x, &m1])?;
        let prev_sample = if c.lambda2 > 0.0 {
            let op = GmsUpdate {
                c_x: c.c_x,
                c_eps: c.c_eps,
                lambda2: c.lambda2,
                seed,
                step: ctx.step,
                stream: 0,
            };
            ctx.exec.run(&op, &[x, &m1, &var, &k3])?
        } else {
            ctx.combine(&[c.c_x, c.c_eps], &[x, &m1])?
        };
        Ok(StepOutput { prev_sample, x0 })
    }
}

/// A network whose output stacks ε with its raw second and third moments along the channel
/// axis, as the second- and third-order noise networks of GMS (Sec. 3.2 of the paper) are
/// trained to predict: for an input x_t of C channels the output has 3·C channels,
/// channels `0..C` = E[ε|x_t], `C..2C` = E[ε²|x_t], `2C..3C` = E[ε³|x_t] (element-wise
/// powers). [`Denoiser::denoise`] hands out the first block (so every other solver samples
/// the model as an ε-prediction network) and [`MomentDenoiser::eps_moments`] converts the raw
/// moments to the mean, variance and third central moment GMS takes.
///
/// The conversion runs in f32 on the executor, where κ₃ = E[ε³] − 3E[ε]E[ε²] + 2E[ε]³
/// loses digits to cancellation when |E[ε]| is large against the spread (see
/// [`MomentDenoiser`]); a model that can give central moments directly should implement
/// the trait itself.
pub struct MomentChannels<D> {
    inner: D,
    /// C, the channels of x_t.
    channels: usize,
}

impl<D: Denoiser> MomentChannels<D> {
    /// `inner` maps C-channel inputs to 3·C-channel outputs.
    pub fn new(inner: D, channels: usize) -> Result<Self> {
        if channels == 0 {
            return Err(Error::invalid(
                OP,
                "a moment model needs at least one channel",
            ));
        }
        Ok(Self { inner, channels })
    }

    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }

    /// The model output split into its three (N, C, H, W) blocks; `blocks` of them.
    fn split(
        &mut self,
        exec: &mut Exec,
        x: &Tensor,
        timestep: f64,
        blocks: usize,
    ) -> Result<Vec<Tensor>> {
        let xs = x.shape();
        if xs.len() < 2 || xs[1] != self.channels {
            return Err(Error::shape(
                OP,
                "moment model input",
                format!("(N, {}, …)", self.channels),
                xs,
            ));
        }
        let out = self.inner.denoise(exec, x, timestep)?;
        let mut want = xs.to_vec();
        want[1] = 3 * self.channels;
        if out.shape() != want.as_slice() {
            return Err(Error::shape(
                OP,
                "moment model output",
                format!(
                    "{want:?}: E[ε], E[ε²], E[ε³] stacked on the channels (out_channels = 3 × in_channels)"
                ),
                out.shape(),
            ));
        }
        let n = xs[0];
        let m = x.numel() / n.max(1);
        let mut parts = Vec::with_capacity(blocks);
        if n == 1 {
            // One sample: the blocks are contiguous already.
            let o = out.reshape(&[3, m])?;
            for k in 0..blocks {
                parts.push(exec.run(&SliceBatch::new(k, 1), &[&o])?.reshape(xs)?);
            }
        } else {
            // (N, 3m) → (3m, N) makes each block one contiguous batch item; slice, then
            // transpose the (m, N) block back to (N, m).
            let t = exec.run(&Transpose, &[&out.reshape(&[1, n, 3 * m])?])?;
            let t = t.reshape(&[3, m, n])?;
            for k in 0..blocks {
                let b = exec.run(&SliceBatch::new(k, 1), &[&t])?;
                parts.push(exec.run(&Transpose, &[&b])?.reshape(xs)?);
            }
        }
        Ok(parts)
    }
}

impl<D: Denoiser> Denoiser for MomentChannels<D> {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let mut p = self.split(exec, x, timestep, 1)?;
        p.pop()
            .ok_or_else(|| Error::invalid(OP, "the moment model gave no output"))
    }

    fn as_moments(&mut self) -> Option<&mut dyn MomentDenoiser> {
        Some(self)
    }
}

impl<D: Denoiser> MomentDenoiser for MomentChannels<D> {
    fn eps_moments(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<[Tensor; 3]> {
        let p = self.split(exec, x, timestep, 3)?;
        let (m1, m2, m3) = (&p[0], &p[1], &p[2]);
        let mul = Binary::new(BinaryOp::Mul);
        let m1sq = exec.run(&mul, &[m1, m1])?;
        let m1m2 = exec.run(&mul, &[m1, m2])?;
        let m1cube = exec.run(&mul, &[&m1sq, m1])?;
        let var = exec.run(&SolverUpdate::linear(&[1.0, -1.0]), &[m2, &m1sq])?;
        let k3 = exec.run(
            &SolverUpdate::linear(&[1.0, -3.0, 2.0]),
            &[m3, &m1m2, &m1cube],
        )?;
        Ok([m1.clone(), var, k3])
    }
}
