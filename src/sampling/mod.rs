//! Sampling: noise schedules and solvers. Plain f64/f32 math on the CPU, no GPU code;
//! the GPU only ever sees the per-step coefficients computed here.
//!
//! * [`schedule`]: diffusers' discrete schedules (betas, ᾱ, timesteps, sigmas) per scheduler
//!   class, reproduced bit for bit where diffusers is deterministic.
//! * [`analytic`]: an exact Gaussian-mixture denoiser (test model of the research solvers).
//! * [`config`]: diffusers' `scheduler_config.json` with each class's defaults.
//! * [`continuous`]: continuous-time VP-SDE, EDM preconditioning, prediction-type
//!   conversions.
//! * [`special`]: the inverse regularized incomplete beta function (Beta-sigma schedules).
//! * [`mirror`]: numpy/torch primitives reproduced to the bit.
//! * [`solvers`]: the sampling loop, the `Denoiser`/`Solver` traits and the solvers.
//!
//! # Which dtype diffusers uses where (diffusers 0.42.1, torch 2.9.1, numpy 2.3.5)
//!
//! Found by reading the scheduler sources and checking each primitive against torch and
//! numpy on x86-64 (`scripts/goldens/make_schedule_goldens.py` writes the goldens that
//! `tests/schedules.rs` compares with).
//!
//! | quantity | computed as | dtype | here |
//! |---|---|---|---|
//! | `linear` betas | `torch.linspace(β₀, β₁, N, float32)` | f32, fused multiply-add from both ends | [`mirror::torch_linspace_f32`] |
//! | `scaled_linear` betas | `torch.linspace(√β₀, √β₁)**2` (√ by Python `** 0.5`) | f32, `x·x` | same, then `x * x` |
//! | `squaredcos_cap_v2`, `laplace` betas | Python `math` loop | f64, then cast to f32 | f64, cast |
//! | `trained_betas` | `torch.tensor(list, float32)` | f64 → f32 cast | cast |
//! | `sigmoid` betas (DDPM) | `torch.sigmoid(linspace) * (β₁−β₀) + β₀` | f32, torch's vectorized exp | f64 sigmoid, f32 rest (≤ 2 ulp) |
//! | `rescale_betas_zero_snr` | torch ops on the betas | f32 (√ via MKL, see below) | f32 with IEEE √ |
//! | `alphas`, `alphas_cumprod` | `1 − β`, `torch.cumprod` | f32 values, cumprod accumulates in **f64** | [`mirror::torch_cumprod_f32`] |
//! | ᾱ_T under zero-SNR rescale | Euler/DPM/UniPC set it to 2⁻²⁴ | f32 | same |
//! | training σ | `((1 − ᾱ)/ᾱ) ** 0.5` in torch | f32 (√ via MKL on x86) | f32 with IEEE √ |
//! | `log_sigmas` | `np.log` of the f32 σ array | f32 (numpy SIMD log on AVX2/512) | f32 via f64 `ln` |
//! | integer timesteps | `np.linspace`/`np.arange` + `.round()` (half to even) | f64 → int64 | [`mirror::np_linspace`], [`mirror::np_arange_f64`] |
//! | Euler timesteps | same, then `astype(float32)` | f32 | f32 |
//! | interpolated σ | `np.interp` on f64 copies | f64, then f32 | [`mirror::np_interp_unit_grid`] |
//! | Karras / exponential / beta σ | numpy + Python floats, `scipy.stats.beta.ppf` | f64, then f32 | f64, [`special::beta_ppf`] |
//! | `_sigma_to_t` | numpy on f64 σ and f32 log σ | f64, then f32 (Euler) or round/int64 | [`schedule::sigma_to_t`] |
//! | Euler `log_linear` σ | `torch.linspace(log σ_max, log σ_min).exp()` | f32 (exp via MKL) | f32 via f64 `exp` |
//! | Euler continuous timesteps | `0.25 * σ.log()` on 0-d tensors | f32 (log via MKL) | f32 via f64 `ln` |
//! | Euler `init_noise_sigma` | `σ.max()`, or `(σ_max² + 1) ** 0.5` for `leading` | f32 | f32 |
//! | EDM Karras σ | `torch.linspace(0, 1, n, float64)` ramp, torch pow | f64, then f32 | f64 |
//! | EDM exponential σ | `torch.linspace(log σ_min, log σ_max, n).exp()` | f32 | f32 via f64 `exp` |
//!
//! Three findings decide what can be bit-exact:
//! 1. **torch.linspace** in float32 is `fma(step, i, start)` for the first half and
//!    `fma(−step, N−1−i, end)` for the second (ATen's scalar kernel, contracted to FMA by
//!    the compiler). Rust's `mul_add` is a correctly rounded FMA on every target, so the
//!    betas match exactly.
//! 2. **torch.cumprod** on float32 accumulates in double. A float32 running product is
//!    wrong in 94% of positions.
//! 3. **torch's float32 `sqrt`, `log`, `exp`** on x86 Linux go through Intel MKL's VML in
//!    its high-accuracy mode (`vmsSqrt(…, VML_HA)`, aten/src/ATen/cpu/vml.h): within 1 ulp
//!    but not correctly rounded (17% of square roots differ from IEEE); macOS builds use
//!    other code. numpy's float32 `log` on AVX2/AVX-512 is a SIMD polynomial, also a few
//!    ulp off. These results depend on the machine diffusers runs on, so this crate uses
//!    correctly rounded values instead, and every σ that passes through a torch `sqrt`
//!    (all training sigmas, hence interpolated and converted sigmas) can differ from an x86
//!    diffusers by an ulp or two. The float64 numpy paths (`np.exp`, `np.power`, `np.log`)
//!    also use SIMD code that differs from libm in the last f64 bit now and then; after the
//!    cast to float32 that almost never shows.
//!
//! Measured against 661 golden configs (DDIM, DDPM, EulerDiscrete, DPM-Solver multistep,
//! UniPC, EDM Euler; `tests/schedules.rs` states each tolerance and why):
//! * bit-exact: all betas and ᾱ (except DDPM `sigmoid`, ≤ 2 ulp), all integer timesteps
//!   (including Karras/exponential/beta/Lu/flow conversions), Euler's interpolated float32
//!   timesteps, DDIM/DDPM/DPM/UniPC `init_noise_sigma`;
//! * ≤ 1 ulp (DPM-Solver, UniPC, EDM) or ≤ 2 ulp (Euler): sigmas, ~90% of them exact;
//! * ≤ 33 ulp: Euler's converted or continuous float32 timesteps (numpy's SIMD log);
//! * `rescale_betas_zero_snr`: relative 1.4·10⁻³ (an ill-conditioned σ₀ amplifies MKL's √).

pub mod analytic;
pub mod config;
pub mod continuous;
pub mod edm;
pub mod finite;
pub mod guidance;
pub mod mirror;
pub mod schedule;
pub mod solvers;
pub mod special;

pub use config::SchedulerConfig;
pub use continuous::{Edm, EdmCoefficients, VpSde};
pub use finite::FiniteWatch;
pub use guidance::{guidance_combine, Guided};
pub use schedule::{
    BetaSchedule, FinalSigmas, InterpolationType, PredictionType, Schedule, SchedulerClass,
    SigmaSchedule, TimestepSpacing, TimestepType, Timesteps,
};
