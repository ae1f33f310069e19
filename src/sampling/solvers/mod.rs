//! Solvers: the sampling loop and one file per solver, each citing its paper and equation.
//!
//! Every solver computes its per-step coefficients in f64 on the CPU from the schedule and
//! applies them with [`SolverUpdate`] (`out = Σ cᵢ·inᵢ + s·z`) through the [`Exec`], so the
//! same loop runs on the CPU reference backend and on the GPU, and nothing is read back
//! between steps. The model output is turned into x₀ or ε by coefficients (prediction-type
//! conversions are linear in (x_t, output)), which fold into the step's one update wherever
//! the solver's update is itself linear in them.
//!
//! * [`Denoiser`]: anything that maps x_t and the model time to the model output (a GPU
//!   network, a CPU closure, an analytic model).
//! * [`Solver`]: one diffusers scheduler's `step()`, exactly (see each file).
//! * [`sample`]: the loop, with a per-step callback (previews of x₀ as a tensor on the
//!   executor's backend) and cancellation.
//! * [`Noise`]: Philox noise keyed by (seed, step, stream), or given tensors (a test hook, so
//!   stochastic solvers can be compared with diffusers' torch noise).
//!
//! Options that are not part of the schedule arrive in [`SchedulerConfig::other`] exactly as
//! in `scheduler_config.json`; [`SolverOptions`] adds the ones diffusers takes as `step()`
//! arguments (`eta`).

use std::collections::VecDeque;

use serde_json::Value;

use super::{SchedulerClass, SchedulerConfig};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::{AbsQuantile, CfgUpdate, Clamp, SolverUpdate, ThresholdRows};
use crate::tensor::Tensor;

pub mod adaptive;
pub mod analytic_dpm;
pub mod consistency;
pub mod ddim;
pub mod ddim_inverse;
pub mod ddpm;
pub mod deis;
pub mod dpm_multistep;
pub mod dpm_singlestep;
pub mod euler;
pub mod euler_ancestral;
pub mod gms;
pub mod heun;
pub mod kdpm2;
pub mod lcm;
pub mod lms;
pub mod pndm;
pub mod unipc;

pub use adaptive::{
    sample_adaptive, sample_adaptive_observed, AdaptiveOptions, AdaptiveOrder, AdaptiveResult,
    AdaptiveStep,
};
pub use analytic_dpm::{
    estimate_gamma, estimate_gamma_for_run, AnalyticDpm, AnalyticVariant, GammaRun, MomentData,
};
pub use consistency::ConsistencyMultistep;
pub use ddim::Ddim;
pub use ddim_inverse::DdimInverse;
pub use ddpm::{Ddpm, DdpmVariance};
pub use deis::Deis;
pub use dpm_multistep::{DpmAlgorithm, DpmPreset, DpmSolverMultistep, DpmSolverType};
pub use dpm_singlestep::{DpmSolverSinglestep, SinglestepAlgorithm};
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use gms::{Gms, MomentChannels};
pub use heun::Heun;
pub use kdpm2::Kdpm2;
pub use lcm::Lcm;
pub use lms::Lms;
pub use pndm::Pndm;
pub use unipc::{UniPc, UniPcVariant};

/// A model to sample: given x_t as the model takes it (already scaled by the solver where
/// the scheduler's `scale_model_input` does so) and the model time (`timestep`, diffusers'
/// `t` passed to the network), returns the model output in the schedule's prediction type.
pub trait Denoiser {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor>;

    /// The same model's higher moments of ε, when it has them (GMS needs them).
    fn as_moments(&mut self) -> Option<&mut dyn MomentDenoiser> {
        None
    }

    /// For classifier-free guidance a solver can fold into its update: runs the model once
    /// on the doubled batch and returns its `cat([uncond, cond])` output with the scale w
    /// (see [`StepContext::model_output`]). `None` (the default; also guidance with
    /// rescale, which needs a reduction of the guided output) means: use
    /// [`Denoiser::denoise`]. A model that returns `Some` must not have run anything else.
    fn denoise_guided_pair(
        &mut self,
        _exec: &mut Exec,
        _x: &Tensor,
        _timestep: f64,
    ) -> Result<Option<(Tensor, f64)>> {
        Ok(None)
    }
}

/// A step's model output: the output itself, or the batched guided pair a solver folds
/// into its update with [`CfgUpdate`] (one dispatch instead of slice, slice, combine,
/// conversion and update).
pub enum ModelOutput {
    Output(Tensor),
    GuidedPair { pair: Tensor, scale: f64 },
}

/// A model that also predicts the per-element conditional moments of the noise, as the
/// second- and third-order noise networks of GMS (Guo et al. 2023, arXiv:2311.00941) do.
pub trait MomentDenoiser {
    /// `[E[ε|x_t], Var[ε|x_t], κ₃[ε|x_t]]` per element (mean, variance and third central
    /// moment E[(ε − E[ε])³|x_t]), for x_t and the model time as [`Denoiser::denoise`]
    /// takes them. Central rather than raw moments: E[ε³] − 3E[ε]E[ε²] + 2E[ε]³ cancels in
    /// float32, and GMS takes the cube root of κ₃, so a model with raw-moment networks
    /// should convert in its own (higher) precision.
    fn eps_moments(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<[Tensor; 3]>;
}

impl<F> Denoiser for F
where
    F: FnMut(&mut Exec, &Tensor, f64) -> Result<Tensor>,
{
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        self(exec, x, timestep)
    }
}

/// Where a stochastic solver's noise comes from.
pub enum Noise {
    /// Philox Gaussian noise keyed by (seed, step, stream), identical on CPU and GPU.
    Philox { seed: u64 },
    /// Given unit Gaussian tensors, consumed one per draw in the order the solver draws
    /// (diffusers' order of `randn_tensor` calls): lets tests feed diffusers' own noise.
    Given(VecDeque<Tensor>),
}

/// What one step hands back.
pub struct StepOutput {
    /// x at the next (lower) noise level, diffusers' `prev_sample`.
    pub prev_sample: Tensor,
    /// The step's x₀ prediction (`pred_original_sample`), for previews.
    pub x0: Tensor,
}

/// What a solver needs besides its own state: the executor and the noise.
pub struct StepContext<'a> {
    pub exec: &'a mut Exec,
    pub noise: &'a mut Noise,
    /// The step index (part of the Philox counter).
    pub step: u32,
}

impl StepContext<'_> {
    /// The model output at (x, t). With `fusable` (the solver's update is deterministic and
    /// linear in the output) a guided model hands back its (uncond, cond) pair instead, for
    /// [`StepContext::guided_update`].
    pub fn model_output(
        &mut self,
        model: &mut dyn Denoiser,
        x: &Tensor,
        timestep: f64,
        fusable: bool,
    ) -> Result<ModelOutput> {
        if fusable {
            if let Some((pair, scale)) = model.denoise_guided_pair(self.exec, x, timestep)? {
                return Ok(ModelOutput::GuidedPair { pair, scale });
            }
        }
        Ok(ModelOutput::Output(model.denoise(self.exec, x, timestep)?))
    }

    /// One [`CfgUpdate`]: with g = (1 − w)·u + w·c from `pair`, m = m.0·x + m.1·g and
    /// prev = Σ cᵢ·inᵢ + c_g·g + c_m·m, `inputs[0]` = x. Returns (prev, m).
    #[allow(clippy::too_many_arguments)]
    pub fn guided_update(
        &mut self,
        pair: &Tensor,
        scale: f64,
        m: (f64, f64),
        inputs: &[&Tensor],
        coefs: &[f64],
        c_guided: f64,
        c_model: f64,
    ) -> Result<(Tensor, Tensor)> {
        let op = CfgUpdate {
            scale,
            model: m,
            coefs: coefs.to_vec(),
            c_guided,
            c_model,
        };
        let mut all = vec![pair];
        all.extend_from_slice(inputs);
        self.exec.run_pair(&op, &all)
    }

    /// [`StepContext::guided_update`] for a multistep update whose newest history entry is
    /// the converted guided output m₀ = conv.0·x + conv.1·g:
    /// x' = c_x·x + Σ_k c_m[k]·m_k, with m₁, m₂, … the newest entries of `history` (which
    /// does not hold m₀ yet). Returns (x', m₀).
    #[allow(clippy::too_many_arguments)]
    pub fn guided_multistep(
        &mut self,
        pair: &Tensor,
        scale: f64,
        conv: (f64, f64),
        x: &Tensor,
        c_x: f64,
        c_m: &[f64],
        history: &VecDeque<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let Some((&c_new, older)) = c_m.split_first() else {
            return Err(Error::invalid(
                "sample",
                "a multistep update with no model term",
            ));
        };
        if older.len() > history.len() {
            return Err(Error::invalid(
                "sample",
                format!(
                    "a multistep update over {} past outputs with {} stored",
                    older.len(),
                    history.len()
                ),
            ));
        }
        let mut coefs = vec![c_x];
        let mut inputs = vec![x];
        for (k, c) in older.iter().enumerate() {
            coefs.push(*c);
            inputs.push(&history[history.len() - 1 - k]);
        }
        self.guided_update(pair, scale, conv, &inputs, &coefs, 0.0, c_new)
    }

    /// `Σ cᵢ·inᵢ` in one dispatch.
    pub fn combine(&mut self, coefs: &[f64], inputs: &[&Tensor]) -> Result<Tensor> {
        self.exec.run(&SolverUpdate::linear(coefs), inputs)
    }

    /// `Σ cᵢ·inᵢ + s·z` with `z` a fresh unit Gaussian draw; `stream` separates draws
    /// within one step. With given noise the tensor is one more input of the same update.
    pub fn combine_noisy(
        &mut self,
        coefs: &[f64],
        inputs: &[&Tensor],
        scale: f64,
        stream: u32,
    ) -> Result<Tensor> {
        match self.noise {
            Noise::Philox { seed } => {
                let op = SolverUpdate::linear(coefs).with_noise(scale, *seed, self.step, stream);
                self.exec.run(&op, inputs)
            }
            Noise::Given(queue) => {
                let z = queue.pop_front().ok_or_else(|| {
                    Error::invalid(
                        "sample",
                        format!("the given noise ran out at step {}", self.step),
                    )
                })?;
                let z = self.exec.upload(&z)?;
                let mut c = coefs.to_vec();
                c.push(scale);
                let mut ins = inputs.to_vec();
                ins.push(&z);
                self.exec.run(&SolverUpdate::linear(&c), &ins)
            }
        }
    }
}

/// One diffusers scheduler's sampling rule.
pub trait Solver {
    /// The solver's name as [`solver_from_name`] takes it.
    fn name(&self) -> &'static str;
    /// The model time of every step (diffusers' `timesteps`).
    fn timesteps(&self) -> &[f64];
    /// Number of sampling steps (diffusers' `num_inference_steps`).
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }
    /// The model time of step `i` (NaN past the end).
    fn timestep(&self, i: usize) -> f64 {
        self.timesteps().get(i).copied().unwrap_or(f64::NAN)
    }
    /// The scale of the initial noise (`init_noise_sigma`).
    fn init_noise_sigma(&self) -> f64;
    /// Prepares a run that starts at step `first` (image-to-image) with the solver's fresh
    /// state: no model outputs kept, warm-up counters at zero, while every decision that
    /// depends on the position in the schedule (final-step order drops, the step's σ) still
    /// sees the whole schedule. This is diffusers' `set_begin_index(first·order)` on a
    /// scheduler whose `set_timesteps` was just called (`order` = 2 for the schedulers that
    /// interleave two calls per step, which are one step here). The default is for solvers
    /// that keep nothing between steps; a step `i = 0` resets the state on its own (a run
    /// from the start needs no `begin`).
    fn begin(&mut self, first: usize) -> Result<()> {
        check_step(self.name(), first, self.num_steps())
    }
    /// diffusers' `add_noise(x₀, ε, t)` at step `i` (where image-to-image starts) as (a, b)
    /// of `a·x₀ + b·ε`, for solvers that hold their own noise levels (σ schedules that may
    /// differ from the training schedule, e.g. Karras σ); `None`: the caller derives it from
    /// the schedule at the step's timestep.
    fn add_noise_coefficients(&self, _i: usize) -> Option<(f64, f64)> {
        None
    }
    /// Step `i` from `x`: calls the model (once, or more for multi-stage solvers) and applies
    /// the update. Steps must be taken in order 0, 1, … or `first`, `first + 1`, … after
    /// [`Solver::begin`] (multistep solvers keep history).
    fn step(
        &mut self,
        ctx: &mut StepContext<'_>,
        model: &mut dyn Denoiser,
        i: usize,
        x: &Tensor,
    ) -> Result<StepOutput>;
}

/// Whether the loop goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// What the step callback sees.
pub struct StepInfo<'a> {
    /// The step just taken (0-based).
    pub index: usize,
    pub total: usize,
    /// Its model time.
    pub timestep: f64,
    /// The sample after the step.
    pub x: &'a Tensor,
    /// The step's x₀ prediction, on the executor's backend (not read back).
    pub x0: &'a Tensor,
}

/// What [`sample`] returns.
pub struct Sampled {
    pub sample: Tensor,
    /// Steps taken (less than the solver's when the callback stopped the loop).
    pub steps: usize,
    pub stopped: bool,
}

/// The initial sample `init_noise_sigma · z`, z from Philox (seed, step u32::MAX, stream 0:
/// a counter no sampling step uses).
pub fn initial_noise(
    exec: &mut Exec,
    solver: &dyn Solver,
    shape: &[usize],
    seed: u64,
) -> Result<Tensor> {
    let op = SolverUpdate::noise(shape, solver.init_noise_sigma(), seed, u32::MAX, 0);
    exec.run(&op, &[])
}

/// Scales unit-variance noise by `init_noise_sigma`, as diffusers pipelines prepare latents.
pub fn scale_initial_noise(exec: &mut Exec, solver: &dyn Solver, unit: &Tensor) -> Result<Tensor> {
    let unit = exec.upload(unit)?;
    exec.run(
        &SolverUpdate::linear(&[solver.init_noise_sigma()]),
        &[&unit],
    )
}

/// Runs `solver` from `x_t` (already scaled by `init_noise_sigma`). After each step the
/// callback gets the step's sample and x₀ prediction; returning [`Control::Stop`] ends the
/// loop there. On the GPU each step is one submit: the step's dispatches plus whatever the
/// callback recorded (a preview render) go to the queue together after the callback, so the
/// GPU works while the next step is recorded and a stop takes effect between steps. Nothing
/// is read back; the caller reads the result.
pub fn sample(
    exec: &mut Exec,
    solver: &mut dyn Solver,
    model: &mut dyn Denoiser,
    x_t: &Tensor,
    noise: &mut Noise,
    mut callback: impl FnMut(&mut Exec, &StepInfo<'_>) -> Control,
) -> Result<Sampled> {
    let total = solver.num_steps();
    let mut x = exec.upload(x_t)?;
    for i in 0..total {
        let mut ctx = StepContext {
            exec,
            noise,
            step: i as u32,
        };
        let out = solver.step(&mut ctx, model, i, &x)?;
        x = out.prev_sample;
        let info = StepInfo {
            index: i,
            total,
            timestep: solver.timestep(i),
            x: &x,
            x0: &out.x0,
        };
        let control = callback(exec, &info);
        exec.submit()?;
        if control == Control::Stop {
            return Ok(Sampled {
                sample: x,
                steps: i + 1,
                stopped: true,
            });
        }
    }
    Ok(Sampled {
        sample: x,
        steps: total,
        stopped: false,
    })
}

/// Options diffusers takes as `step()` arguments rather than config keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolverOptions {
    /// DDIM's η: 0 is deterministic DDIM, 1 the DDPM posterior variance.
    pub eta: f64,
}

impl Default for SolverOptions {
    fn default() -> Self {
        Self { eta: 0.0 }
    }
}

/// The solver names [`solver_from_name`] accepts, with the diffusers class each follows.
pub const SOLVERS: &[(&str, &str)] = &[
    ("ddim", "DDIMScheduler"),
    ("ddpm", "DDPMScheduler"),
    ("euler", "EulerDiscreteScheduler"),
    ("euler_ancestral", "EulerAncestralDiscreteScheduler"),
    ("heun", "HeunDiscreteScheduler"),
    ("dpm_multistep", "DPMSolverMultistepScheduler"),
    ("dpmpp_2m", "DPMSolverMultistepScheduler"),
    ("dpmpp_3m", "DPMSolverMultistepScheduler"),
    ("dpmpp_2m_sde", "DPMSolverMultistepScheduler"),
    ("dpmpp_3m_sde", "DPMSolverMultistepScheduler"),
    ("unipc", "UniPCMultistepScheduler"),
    ("unipc_bh1", "UniPCMultistepScheduler"),
    ("unipc_bh2", "UniPCMultistepScheduler"),
    ("ddim_inverse", "DDIMInverseScheduler"),
    ("pndm", "PNDMScheduler"),
    ("plms", "PNDMScheduler"),
    ("lms", "LMSDiscreteScheduler"),
    ("dpm2", "KDPM2DiscreteScheduler"),
    ("dpm2_ancestral", "KDPM2AncestralDiscreteScheduler"),
    ("dpm_singlestep", "DPMSolverSinglestepScheduler"),
    ("dpmpp_2s", "DPMSolverSinglestepScheduler"),
    ("dpmpp_3s", "DPMSolverSinglestepScheduler"),
    ("deis", "DEISMultistepScheduler"),
    ("lcm", "LCMScheduler"),
    ("consistency", "CMStochasticIterativeScheduler"),
];

/// Other names [`solver_from_name`] takes: diffusers class names and common spellings,
/// with the solver each means. A named variant (`dpmpp_2m`, …) fixes `algorithm_type` and
/// `solver_order` whatever the config says; the class names take every option from it.
pub const ALIASES: &[(&str, &str)] = &[
    ("DDIMScheduler", "ddim"),
    ("DDPMScheduler", "ddpm"),
    ("EulerDiscreteScheduler", "euler"),
    ("euler_a", "euler_ancestral"),
    ("EulerAncestralDiscreteScheduler", "euler_ancestral"),
    ("HeunDiscreteScheduler", "heun"),
    ("DPMSolverMultistepScheduler", "dpm_multistep"),
    ("dpmsolver_multistep", "dpm_multistep"),
    ("dpmpp_2m_sde_gpu", "dpmpp_2m_sde"),
    ("dpmpp_3m_sde_gpu", "dpmpp_3m_sde"),
    ("UniPCMultistepScheduler", "unipc"),
    ("uni_pc", "unipc"),
    ("uni_pc_bh2", "unipc_bh2"),
    ("DDIMInverseScheduler", "ddim_inverse"),
    ("PNDMScheduler", "pndm"),
    ("LMSDiscreteScheduler", "lms"),
    ("k_lms", "lms"),
    ("KDPM2DiscreteScheduler", "dpm2"),
    ("k_dpm_2", "dpm2"),
    ("KDPM2AncestralDiscreteScheduler", "dpm2_ancestral"),
    ("k_dpm_2_ancestral", "dpm2_ancestral"),
    ("dpm2_a", "dpm2_ancestral"),
    ("DPMSolverSinglestepScheduler", "dpm_singlestep"),
    ("dpmsolver_singlestep", "dpm_singlestep"),
    ("DEISMultistepScheduler", "deis"),
    ("LCMScheduler", "lcm"),
    ("CMStochasticIterativeScheduler", "consistency"),
    ("cm", "consistency"),
];

/// Builds a solver by name for `steps` sampling steps. The config's schedule keys are used
/// as they are (whatever its `_class_name`), as `Scheduler.from_config(other.config)` does.
pub fn solver_from_name(
    name: &str,
    config: &SchedulerConfig,
    steps: usize,
    options: SolverOptions,
) -> Result<Box<dyn Solver>> {
    let name = ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, n)| *n);
    let dpm = |algorithm, order, name| {
        let preset = DpmPreset {
            algorithm: Some(algorithm),
            order: Some(order),
        };
        DpmSolverMultistep::new(config, steps, name, preset)
    };
    Ok(match name {
        "ddim" => Box::new(Ddim::new(config, steps, options.eta)?),
        "ddpm" => Box::new(Ddpm::new(config, steps)?),
        "euler" => Box::new(Euler::new(config, steps)?),
        "euler_ancestral" => Box::new(EulerAncestral::new(config, steps)?),
        "heun" => Box::new(Heun::new(config, steps)?),
        "dpm_multistep" => Box::new(DpmSolverMultistep::new(
            config,
            steps,
            "dpm_multistep",
            DpmPreset::default(),
        )?),
        "dpmpp_2m" => Box::new(dpm(DpmAlgorithm::DpmSolverPP, 2, "dpmpp_2m")?),
        "dpmpp_3m" => Box::new(dpm(DpmAlgorithm::DpmSolverPP, 3, "dpmpp_3m")?),
        "dpmpp_2m_sde" => Box::new(dpm(DpmAlgorithm::SdeDpmSolverPP, 2, "dpmpp_2m_sde")?),
        "dpmpp_3m_sde" => Box::new(dpm(DpmAlgorithm::SdeDpmSolverPP, 3, "dpmpp_3m_sde")?),
        "unipc" => Box::new(UniPc::new(config, steps, "unipc", None)?),
        "unipc_bh1" => Box::new(UniPc::new(
            config,
            steps,
            "unipc_bh1",
            Some(UniPcVariant::Bh1),
        )?),
        "unipc_bh2" => Box::new(UniPc::new(
            config,
            steps,
            "unipc_bh2",
            Some(UniPcVariant::Bh2),
        )?),
        "ddim_inverse" => Box::new(DdimInverse::new(config, steps)?),
        "pndm" => Box::new(Pndm::new(config, steps, "pndm", None)?),
        "plms" => Box::new(Pndm::new(config, steps, "plms", Some(true))?),
        "lms" => Box::new(Lms::new(config, steps)?),
        "dpm2" => Box::new(Kdpm2::new(config, steps, "dpm2", false)?),
        "dpm2_ancestral" => Box::new(Kdpm2::new(config, steps, "dpm2_ancestral", true)?),
        "dpm_singlestep" => Box::new(DpmSolverSinglestep::new(config, steps, "dpm_singlestep")?),
        "dpmpp_2s" | "dpmpp_3s" => {
            // A named variant fixes the algorithm and order whatever the config says.
            let mut cfg = config.clone();
            cfg.other
                .insert("algorithm_type".into(), Value::from("dpmsolver++"));
            let order = if name == "dpmpp_2s" { 2 } else { 3 };
            cfg.other.insert("solver_order".into(), Value::from(order));
            let name = if order == 2 { "dpmpp_2s" } else { "dpmpp_3s" };
            Box::new(DpmSolverSinglestep::new(&cfg, steps, name)?)
        }
        "deis" => Box::new(Deis::new(config, steps)?),
        "lcm" => Box::new(Lcm::new(config, steps)?),
        "consistency" => Box::new(ConsistencyMultistep::new(config, steps)?),
        _ => {
            let mut valid: Vec<&str> = SOLVERS.iter().map(|(n, _)| *n).collect();
            valid.extend(ALIASES.iter().map(|(a, _)| *a));
            return Err(Error::invalid(
                "solver_from_name",
                format!("unknown solver \"{name}\"; valid: {}", valid.join(", ")),
            ));
        }
    })
}

/// The schedule class whose `scheduler_config.json` keys a solver (name, alias or diffusers
/// class name) shares: load a config for it with [`SchedulerConfig::from_json_value`] and
/// `Some(class)`, e.g. Stable Diffusion 1.x's `PNDMScheduler` config as DDIM. Keys the class
/// does not take land in [`SchedulerConfig::other`], where the solver reads them. `None` for
/// an unknown name.
pub fn schedule_class_for(name: &str) -> Option<SchedulerClass> {
    let name = ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, n)| *n);
    Some(match name {
        "ddim" | "ddim_inverse" | "pndm" | "plms" | "lcm" => SchedulerClass::Ddim,
        "ddpm" => SchedulerClass::Ddpm,
        "euler" | "euler_ancestral" | "heun" | "lms" | "dpm2" | "dpm2_ancestral" => {
            SchedulerClass::EulerDiscrete
        }
        "dpm_multistep" | "dpmpp_2m" | "dpmpp_3m" | "dpmpp_2m_sde" | "dpmpp_3m_sde"
        | "dpm_singlestep" | "dpmpp_2s" | "dpmpp_3s" | "deis" => SchedulerClass::DpmSolverMultistep,
        "unipc" | "unipc_bh1" | "unipc_bh2" => SchedulerClass::UniPcMultistep,
        "consistency" => SchedulerClass::EdmEuler,
        _ => return None,
    })
}

/// Rejects `rescale_betas_zero_snr` for classes that do not take it (diffusers would drop
/// the key silently; an explicit request is better answered with an error).
pub(crate) fn reject_zero_snr(
    config: &SchedulerConfig,
    op: &'static str,
    class: &str,
) -> Result<()> {
    if config.rescale_betas_zero_snr {
        return Err(Error::invalid(
            op,
            format!("rescale_betas_zero_snr is not an option of {class}; set it to false"),
        ));
    }
    Ok(())
}

/// `config` re-targeted at `class` (the schedule keys kept, as `from_config` does).
pub(crate) fn as_class(config: &SchedulerConfig, class: SchedulerClass) -> SchedulerConfig {
    let mut c = config.clone();
    c.class = class;
    c
}

/// A boolean option from [`SchedulerConfig::other`], or the class default.
pub(crate) fn opt_bool(
    config: &SchedulerConfig,
    op: &'static str,
    key: &str,
    default: bool,
) -> Result<bool> {
    match config.other.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::invalid(
            op,
            format!("{key} must be true or false, got {v}"),
        )),
    }
}

/// An integer option from [`SchedulerConfig::other`], or the class default.
pub(crate) fn opt_int(
    config: &SchedulerConfig,
    op: &'static str,
    key: &str,
    default: i64,
) -> Result<i64> {
    match config.other.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| Error::invalid(op, format!("{key} must be an integer, got {v}"))),
    }
}

/// A string option from [`SchedulerConfig::other`], checked against `valid`.
pub(crate) fn opt_choice<T: Copy>(
    config: &SchedulerConfig,
    op: &'static str,
    key: &str,
    valid: &[(&str, T)],
    default: T,
) -> Result<T> {
    match config.other.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => valid
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = valid.iter().map(|(n, _)| *n).collect();
                Error::invalid(
                    op,
                    format!(
                        "{key} \"{s}\" is not supported; valid: {}",
                        names.join(", ")
                    ),
                )
            }),
        Some(v) => Err(Error::invalid(
            op,
            format!("{key} must be a string, got {v}"),
        )),
    }
}

/// Errors unless step `i` is the one a solver with history expects next.
pub(crate) fn check_order(op: &'static str, i: usize, expected: usize) -> Result<()> {
    if i == expected {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("steps must be taken in order: expected step {expected}, got {i}"),
        ))
    }
}

/// Errors unless `i` is a step of an `n`-step solver.
pub(crate) fn check_step(op: &'static str, i: usize, n: usize) -> Result<()> {
    if i < n {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("step {i} of a {n}-step solver")))
    }
}

/// diffusers' processing of the x₀ prediction before it enters the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum X0Processing {
    None,
    /// `clip_sample`: clamp to ±`clip_sample_range`.
    Clip(f64),
    /// `thresholding` (dynamic thresholding, Imagen, arXiv:2205.11487 Sec. 2.3): per sample,
    /// s = the `dynamic_thresholding_ratio` quantile of |x̂₀| clamped to
    /// [1, `sample_max_value`], then x̂₀ ← clamp(x̂₀, −s, s)/s.
    Threshold {
        ratio: f64,
        max_value: f64,
    },
}

/// A float option from [`SchedulerConfig::other`], or the class default.
pub(crate) fn opt_float(
    config: &SchedulerConfig,
    op: &'static str,
    key: &str,
    default: f64,
) -> Result<f64> {
    match config.other.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| Error::invalid(op, format!("{key} must be a finite number, got {v}"))),
    }
}

/// Reads `thresholding` (with `dynamic_thresholding_ratio`, `sample_max_value`) and, for
/// classes that have it (`clip_default` is its default there, `None` for classes without
/// the option, which ignore the key as diffusers does), `clip_sample` (with
/// `clip_sample_range`). Thresholding wins over clipping, as in diffusers' `step`.
pub(crate) fn x0_processing(
    config: &SchedulerConfig,
    op: &'static str,
    clip_default: Option<bool>,
) -> Result<X0Processing> {
    x0_processing_for(config, op, true, clip_default)
}

/// [`x0_processing`] for a class that may lack `thresholding` (`has_thresholding` false:
/// the key is ignored, as diffusers drops config keys a class does not take — a DDPM config
/// reused for Heun keeps its `clip_sample` but loses its `thresholding`).
pub(crate) fn x0_processing_for(
    config: &SchedulerConfig,
    op: &'static str,
    has_thresholding: bool,
    clip_default: Option<bool>,
) -> Result<X0Processing> {
    if has_thresholding && opt_bool(config, op, "thresholding", false)? {
        let ratio = opt_float(config, op, "dynamic_thresholding_ratio", 0.995)?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::invalid(
                op,
                format!("dynamic_thresholding_ratio must be in [0, 1], got {ratio}"),
            ));
        }
        let max_value = opt_float(config, op, "sample_max_value", 1.0)?;
        if max_value <= 0.0 {
            return Err(Error::invalid(
                op,
                format!("sample_max_value must be positive, got {max_value}"),
            ));
        }
        return Ok(X0Processing::Threshold { ratio, max_value });
    }
    if let Some(default) = clip_default {
        if opt_bool(config, op, "clip_sample", default)? {
            let range = opt_float(config, op, "clip_sample_range", 1.0)?;
            if range < 0.0 {
                return Err(Error::invalid(
                    op,
                    format!("clip_sample_range must be ≥ 0, got {range}"),
                ));
            }
            return Ok(X0Processing::Clip(range));
        }
    }
    Ok(X0Processing::None)
}

impl StepContext<'_> {
    /// Applies `p` to an x₀ prediction (one or two dispatches; none for `None`).
    pub fn process_x0(&mut self, p: X0Processing, x0: Tensor) -> Result<Tensor> {
        match p {
            X0Processing::None => Ok(x0),
            X0Processing::Clip(r) => self.exec.run(
                &Clamp {
                    lo: -r as f32,
                    hi: r as f32,
                },
                &[&x0],
            ),
            X0Processing::Threshold { ratio, max_value } => {
                let s = self.exec.run(&AbsQuantile { q: ratio }, &[&x0])?;
                // torch.clamp(s, min=1, max=m) is m whenever m < 1.
                let op = ThresholdRows {
                    lo: (max_value as f32).min(1.0),
                    hi: max_value as f32,
                };
                self.exec.run(&op, &[&x0, &s])
            }
        }
    }
}

/// Rejects x₀ clipping and dynamic thresholding, which need a per-element clamp (and a
/// per-sample percentile) that the linear update cannot express yet.
pub(crate) fn reject_x0_processing(
    config: &SchedulerConfig,
    op: &'static str,
    clip_default: bool,
) -> Result<()> {
    if opt_bool(config, op, "clip_sample", clip_default)? {
        return Err(Error::invalid(
            op,
            "clip_sample = true is not supported yet (set \"clip_sample\": false)",
        ));
    }
    if opt_bool(config, op, "thresholding", false)? {
        return Err(Error::invalid(
            op,
            "thresholding = true is not supported yet (set \"thresholding\": false)",
        ));
    }
    Ok(())
}
