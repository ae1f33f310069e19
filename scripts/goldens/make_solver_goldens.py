"""Solver trajectories from diffusers for tests/solvers.rs.

Pinned environment: scripts/goldens/requirements.txt (diffusers 0.42.1, torch 2.9.1,
numpy 2.3.5), run on x86-64 CPU:

    python scripts/goldens/make_solver_goldens.py tests/goldens/solvers

Each case samples a small x_T (shape (1, 2, 5, 7); (2, 3, 4, 5) for the thresholding cases) with a deterministic fake model

    model(x, t) = a(t) * x + b(t) * c,   a(t) = 0.6 + 0.3 cos(t / 170),
                                         b(t) = 0.5 sin(t / 90 + 0.3),

(a, b computed in float64 and rounded to float32; c a fixed tensor), exactly as a diffusers
pipeline does: latents = x_T * init_noise_sigma, then per timestep scale_model_input, the
model, scheduler.step. Every step's prev_sample and pred_original_sample are recorded. For
stochastic solvers, every noise tensor diffusers draws (randn_tensor, in call order) is
recorded too, so the Rust test can feed the same noise (see tests/solvers.rs).

Classes that return no pred_original_sample get the x0 their Rust solver previews (LCM's
`denoised`, the consistency model's denoised sample, PNDM's and the multistep solvers' x0 of
the model output in float64). LMS goldens also carry diffusers' integrated coefficients
(`lms_coeffs`, from scipy.integrate.quad; scipy 1.16.3). Cases in F64_REFERENCE are also run
with the scheduler in float64 (`<name>_f64.json`), the reference where diffusers' own float32
run is ill-conditioned. Cases in BEGIN_CASES (`<case>_begin<k>`) start mid-schedule as
diffusers' image-to-image pipeline does: `set_begin_index(k·order)` where the scheduler has
it, x = `add_noise(c/2, x_unit, timesteps[k·order])` (stored as `x_start`, with the
`add_noise` coefficients), then `timesteps[k·order:]` from the scheduler's fresh state.
Optional further arguments pick cases by name prefix:

    python scripts/goldens/make_solver_goldens.py tests/goldens/solvers lms deis_3
"""

import inspect
import json
import math
import os
import sys

import numpy as np
import torch

import diffusers
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    CMStochasticIterativeScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
import diffusers.schedulers.scheduling_ddim as m_ddim
import diffusers.schedulers.scheduling_ddpm as m_ddpm
import diffusers.schedulers.scheduling_dpmsolver_multistep as m_dpm
import diffusers.schedulers.scheduling_dpmsolver_singlestep as m_dpms
import diffusers.schedulers.scheduling_euler_ancestral_discrete as m_ea
import diffusers.schedulers.scheduling_euler_discrete as m_euler
import diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete as m_kdpm2a
import diffusers.schedulers.scheduling_lcm as m_lcm
import diffusers.schedulers.scheduling_consistency_models as m_cm

assert diffusers.__version__ == "0.42.1", diffusers.__version__
assert torch.__version__.startswith("2.9.1"), torch.__version__

SHAPE = (1, 2, 5, 7)
RECORDED = []


def recording(orig):
    def f(*args, **kwargs):
        z = orig(*args, **kwargs)
        RECORDED.append(z.clone())
        return z

    return f


for mod in (m_ddim, m_ddpm, m_dpm, m_dpms, m_ea, m_euler, m_kdpm2a, m_lcm, m_cm):
    mod.randn_tensor = recording(mod.randn_tensor)


def coeffs(t):
    t = float(t)
    return 0.6 + 0.3 * math.cos(t / 170.0), 0.5 * math.sin(t / 90.0 + 0.3)


def f32list(x):
    return [float("%.9g" % v) for v in x.detach().to(torch.float32).flatten().tolist()]


CASES = [
    # (name, solver, class, config overrides, steps, eta)
    ("ddim_eps", "ddim", DDIMScheduler, dict(clip_sample=False), 10, 0.0),
    (
        "ddim_v_trailing",
        "ddim",
        DDIMScheduler,
        dict(
            clip_sample=False,
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            set_alpha_to_one=False,
        ),
        15,
        0.0,
    ),
    (
        "ddim_sample_linspace",
        "ddim",
        DDIMScheduler,
        dict(clip_sample=False, prediction_type="sample", timestep_spacing="linspace"),
        12,
        0.0,
    ),
    ("ddim_eta1", "ddim", DDIMScheduler, dict(clip_sample=False, steps_offset=1), 10, 1.0),
    ("ddpm_small", "ddpm", DDPMScheduler, dict(clip_sample=False), 10, 0.0),
    (
        "ddpm_large_v",
        "ddpm",
        DDPMScheduler,
        dict(
            clip_sample=False,
            variance_type="fixed_large",
            prediction_type="v_prediction",
            beta_schedule="squaredcos_cap_v2",
        ),
        12,
        0.0,
    ),
    ("euler_eps", "euler", EulerDiscreteScheduler, dict(), 20, 0.0),
    (
        "euler_v_karras",
        "euler",
        EulerDiscreteScheduler,
        dict(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            use_karras_sigmas=True,
        ),
        15,
        0.0,
    ),
    (
        "euler_sample_leading",
        "euler",
        EulerDiscreteScheduler,
        dict(prediction_type="sample", timestep_spacing="leading", steps_offset=1),
        10,
        0.0,
    ),
    ("euler_a_eps", "euler_ancestral", EulerAncestralDiscreteScheduler, dict(), 15, 0.0),
    (
        "euler_a_v_trailing",
        "euler_ancestral",
        EulerAncestralDiscreteScheduler,
        dict(prediction_type="v_prediction", timestep_spacing="trailing"),
        10,
        0.0,
    ),
    ("heun_eps", "heun", HeunDiscreteScheduler, dict(), 10, 0.0),
    (
        "heun_v_karras",
        "heun",
        HeunDiscreteScheduler,
        dict(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            use_karras_sigmas=True,
        ),
        8,
        0.0,
    ),
]

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
DPM = DPMSolverMultistepScheduler
UNIPC = UniPCMultistepScheduler
CASES += [
    ("dpmpp_2m_eps", "dpmpp_2m", DPM, dict(), 10, 0.0),
    ("dpmpp_2m_heun_v_karras", "dpmpp_2m", DPM,
     dict(SD, solver_type="heun", prediction_type="v_prediction", use_karras_sigmas=True), 12, 0.0),
    ("dpmpp_3m_eps_20", "dpmpp_3m", DPM, dict(SD, solver_order=3), 20, 0.0),
    ("dpmpp_3m_sample_sigmamin", "dpmpp_3m", DPM,
     dict(solver_order=3, prediction_type="sample", final_sigmas_type="sigma_min",
          timestep_spacing="trailing"), 16, 0.0),
    ("dpmpp_2m_euler_final_nolof", "dpmpp_2m", DPM,
     dict(SD, lower_order_final=False, euler_at_final=True, final_sigmas_type="sigma_min",
          use_karras_sigmas=True), 10, 0.0),
    ("dpmpp_1_eps", "dpm_multistep", DPM, dict(solver_order=1), 8, 0.0),
    ("dpm_2m_eps_sigmamin", "dpm_multistep", DPM,
     dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), 10, 0.0),
    ("dpm_3m_v_heun", "dpm_multistep", DPM,
     dict(SD, algorithm_type="dpmsolver", solver_order=3, solver_type="heun",
          prediction_type="v_prediction", final_sigmas_type="sigma_min"), 18, 0.0),
    ("dpm_2m_sample_heun", "dpm_multistep", DPM,
     dict(algorithm_type="dpmsolver", solver_type="heun", prediction_type="sample",
          final_sigmas_type="sigma_min", lower_order_final=False), 10, 0.0),
    ("dpmpp_2m_sde_eps", "dpmpp_2m_sde", DPM, dict(algorithm_type="sde-dpmsolver++"), 12, 0.0),
    ("dpmpp_2m_sde_heun_v_karras", "dpmpp_2m_sde", DPM,
     dict(SD, algorithm_type="sde-dpmsolver++", solver_type="heun",
          prediction_type="v_prediction", use_karras_sigmas=True), 10, 0.0),
    ("dpmpp_3m_sde_eps", "dpmpp_3m_sde", DPM,
     dict(algorithm_type="sde-dpmsolver++", solver_order=3), 16, 0.0),
    ("dpm_2m_sde_eps", "dpm_multistep", DPM,
     dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min"), 10, 0.0),
    ("unipc_bh2_eps", "unipc", UNIPC, dict(), 10, 0.0),
    ("unipc_bh1_3_v_karras", "unipc", UNIPC,
     dict(SD, solver_type="bh1", solver_order=3, prediction_type="v_prediction",
          use_karras_sigmas=True, final_sigmas_type="sigma_min"), 15, 0.0),
    ("unipc_bh2_3_eps_20", "unipc", UNIPC, dict(SD, solver_order=3), 20, 0.0),
    ("unipc_bh2_1_sample", "unipc", UNIPC,
     dict(solver_order=1, prediction_type="sample", timestep_spacing="trailing"), 8, 0.0),
    ("unipc_bh1_2_noisepred_disable", "unipc", UNIPC,
     dict(solver_type="bh1", predict_x0=False, disable_corrector=[0, 3],
          final_sigmas_type="sigma_min"), 12, 0.0),
    ("unipc_bh2_3_nolof_sigmamin", "unipc", UNIPC,
     dict(solver_order=3, lower_order_final=False, final_sigmas_type="sigma_min",
          timestep_spacing="leading", steps_offset=1), 10, 0.0),
]

# Cases may carry a 7th element: (step() keyword arguments, extra keys for the golden config
# that tell the Rust solver the same thing, e.g. LMS's `order`).
CASES += [
    ("ddim_inv_eps", "ddim_inverse", DDIMInverseScheduler, dict(clip_sample=False), 10, 0.0),
    ("ddim_inv_v_trailing", "ddim_inverse", DDIMInverseScheduler,
     dict(SD, clip_sample=False, prediction_type="v_prediction", timestep_spacing="trailing",
          set_alpha_to_one=False), 12, 0.0),
    ("ddim_inv_sample_offset", "ddim_inverse", DDIMInverseScheduler,
     dict(clip_sample=False, prediction_type="sample", steps_offset=1, set_alpha_to_one=False),
     8, 0.0),
    ("ddim_inv_v_zsnr_trailing", "ddim_inverse", DDIMInverseScheduler,
     dict(SD, clip_sample=False, prediction_type="v_prediction", timestep_spacing="trailing",
          rescale_betas_zero_snr=True), 10, 0.0),
    ("pndm_plms_eps", "plms", PNDMScheduler, dict(SD, skip_prk_steps=True), 10, 0.0),
    ("pndm_prk_eps", "pndm", PNDMScheduler, dict(), 10, 0.0),
    ("pndm_plms_v_trailing", "pndm", PNDMScheduler,
     dict(skip_prk_steps=True, prediction_type="v_prediction", timestep_spacing="trailing",
          set_alpha_to_one=True), 12, 0.0),
    ("pndm_prk_v_linspace", "pndm", PNDMScheduler,
     dict(SD, prediction_type="v_prediction", timestep_spacing="linspace", steps_offset=1), 8, 0.0),
    ("lms_eps", "lms", LMSDiscreteScheduler, dict(), 12, 0.0),
    ("lms_v_karras", "lms", LMSDiscreteScheduler,
     dict(SD, prediction_type="v_prediction", use_karras_sigmas=True), 10, 0.0),
    ("lms_sample_leading", "lms", LMSDiscreteScheduler,
     dict(prediction_type="sample", timestep_spacing="leading", steps_offset=1), 10, 0.0),
    ("lms_order2_trailing", "lms", LMSDiscreteScheduler, dict(SD, timestep_spacing="trailing"), 9,
     0.0, (dict(order=2), dict(solver_order=2))),
    ("dpm2_eps", "dpm2", KDPM2DiscreteScheduler, dict(), 10, 0.0),
    ("dpm2_v_karras", "dpm2", KDPM2DiscreteScheduler,
     dict(SD, prediction_type="v_prediction", use_karras_sigmas=True), 8, 0.0),
    ("dpm2_eps_leading", "dpm2", KDPM2DiscreteScheduler,
     dict(SD, timestep_spacing="leading", steps_offset=1), 7, 0.0),
    ("dpm2_a_eps", "dpm2_ancestral", KDPM2AncestralDiscreteScheduler, dict(), 10, 0.0),
    ("dpm2_a_v_karras", "dpm2_ancestral", KDPM2AncestralDiscreteScheduler,
     dict(SD, prediction_type="v_prediction", use_karras_sigmas=True), 8, 0.0),
]

DPMS = DPMSolverSinglestepScheduler
DEIS = DEISMultistepScheduler
CASES += [
    ("dpms_2s_eps", "dpm_singlestep", DPMS, dict(), 10, 0.0),
    ("dpms_3s_v_karras", "dpm_singlestep", DPMS,
     dict(SD, solver_order=3, prediction_type="v_prediction", use_karras_sigmas=True), 12, 0.0),
    ("dpms_1_eps", "dpm_singlestep", DPMS, dict(solver_order=1), 8, 0.0),
    ("dpms_dpm2_sigmamin", "dpm_singlestep", DPMS,
     dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), 10, 0.0),
    ("dpms_dpm3_heun_sample_sigmamin", "dpm_singlestep", DPMS,
     dict(SD, algorithm_type="dpmsolver", solver_order=3, solver_type="heun",
          prediction_type="sample", final_sigmas_type="sigma_min"), 12, 0.0),
    ("dpms_3s_heun_lof", "dpm_singlestep", DPMS,
     dict(solver_order=3, solver_type="heun", lower_order_final=True), 11, 0.0),
    ("dpms_sde_2s_heun", "dpm_singlestep", DPMS,
     dict(algorithm_type="sde-dpmsolver++", solver_type="heun"), 10, 0.0),
    ("dpms_2s_flow", "dpm_singlestep", DPMS,
     dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0), 10, 0.0),
    ("deis_2_eps", "deis", DEIS, dict(), 10, 0.0),
    ("deis_3_v_karras", "deis", DEIS,
     dict(SD, solver_order=3, prediction_type="v_prediction", use_karras_sigmas=True), 15, 0.0),
    ("deis_1_sample_trailing", "deis", DEIS,
     dict(solver_order=1, prediction_type="sample", timestep_spacing="trailing"), 8, 0.0),
    ("deis_3_eps_leading_nolof", "deis", DEIS,
     dict(SD, solver_order=3, lower_order_final=False, timestep_spacing="leading",
          steps_offset=1), 12, 0.0),
]

CM = CMStochasticIterativeScheduler
CASES += [
    ("lcm_eps_4", "lcm", LCMScheduler, dict(), 4, 0.0),
    ("lcm_v_8_orig40", "lcm", LCMScheduler,
     dict(prediction_type="v_prediction", original_inference_steps=40, set_alpha_to_one=False),
     8, 0.0),
    ("lcm_sample_6_linear", "lcm", LCMScheduler,
     dict(prediction_type="sample", beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
          timestep_scaling=5.0), 6, 0.0),
    ("cm_40_4", "consistency", CM, dict(clip_denoised=False), 4, 0.0),
    ("cm_151_6_snoise", "consistency", CM,
     dict(clip_denoised=False, num_train_timesteps=151, s_noise=0.9, sigma_data=0.6, rho=5.0),
     6, 0.0),
    ("cm_1step", "consistency", CM, dict(clip_denoised=False), 1, 0.0),
]

# Two-stage solvers: diffusers interleaves their timesteps and calls step() twice per step.
TWO_STAGE = ("heun", "dpm2", "dpm2_ancestral")


def alpha_x0(sched, t, sample, output):
    """x0 of a solver indexed by integer timestep (PNDM), from (sample, output) in float64."""
    a = float(sched.alphas_cumprod[int(t)])
    x, o = sample.double(), output.double()
    if sched.config.prediction_type == "epsilon":
        x0 = (x - math.sqrt(1 - a) * o) / math.sqrt(a)
    else:
        x0 = math.sqrt(a) * x - math.sqrt(1 - a) * o
    return x0.float()


# x0 clipping and dynamic thresholding (Imagen's per-sample quantile of |x0|). A batch of 2
# with 60 values per sample makes the quantile per sample and non-trivial (r = q*59 is not an
# integer); ratios and sample_max_value are chosen so that s lands strictly inside
# (1, sample_max_value) on some steps and is clamped on others.
TSHAPE = (2, 3, 4, 5)
CASES += [
    ("ddpm_clip", "ddpm", DDPMScheduler, dict(clip_sample=True, clip_sample_range=1.5), 10, 0.0),
    ("ddpm_threshold_v", "ddpm", DDPMScheduler,
     dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0,
          prediction_type="v_prediction"), 10, 0.0, TSHAPE),
    ("ddim_clip", "ddim", DDIMScheduler, dict(clip_sample=True), 10, 0.0),
    ("ddim_threshold_eta", "ddim", DDIMScheduler,
     dict(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1.5), 10, 0.5,
     TSHAPE),
    ("dpmpp_2m_threshold", "dpmpp_2m", DPM,
     dict(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5), 10, 0.0,
     TSHAPE),
    ("unipc_bh2_threshold_sample", "unipc", UNIPC,
     dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0,
          prediction_type="sample"), 10, 0.0, TSHAPE),
    # DPM-Solver singlestep (x0 form; diffusers' noise-prediction form indexes alpha_t by a
    # timestep step() never passes, so it cannot threshold) and DEIS (x0 thresholded, then
    # epsilon = (x - alpha_t * x0) / sigma_t).
    ("dpms_2s_threshold", "dpm_singlestep", DPMS,
     dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0), 10, 0.0,
     TSHAPE),
    ("dpms_3s_threshold_v", "dpm_singlestep", DPMS,
     dict(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5,
          solver_order=3, prediction_type="v_prediction"), 9, 0.0, TSHAPE),
    ("deis_2_threshold", "deis", DEIS,
     dict(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5), 10, 0.0,
     TSHAPE),
    ("deis_1_threshold_sample", "deis", DEIS,
     dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0,
          solver_order=1, prediction_type="sample"), 8, 0.0, TSHAPE),
    # The classes that have only clip_sample (Heun, DDIMInverse), LCM (both), and the
    # consistency sampler's clip_denoised (its default).
    ("heun_clip", "heun", HeunDiscreteScheduler, dict(clip_sample=True, clip_sample_range=1.2),
     8, 0.0),
    ("ddim_inv_clip", "ddim_inverse", DDIMInverseScheduler, dict(clip_sample=True), 10, 0.0),
    ("lcm_clip_4", "lcm", LCMScheduler, dict(clip_sample=True), 4, 0.0),
    ("lcm_threshold_6", "lcm", LCMScheduler,
     dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5), 6, 0.0,
     TSHAPE),
    ("cm_40_4_clip", "consistency", CM, dict(), 4, 0.0),
]


def multistep_x0(sched, k, sample, output):
    """The x0 prediction of a multistep solver's step k, which `step()` does not return: the
    converted model output where that is x0 (DPM-Solver++, UniPC with predict_x0), else x0 from
    (sample, model output) by the prediction type in float64, rounded once (going through
    diffusers' float32 epsilon would add its rounding, amplified by 1/alpha_t)."""
    x0_form = getattr(sched, "predict_x0", None)
    if x0_form is None:
        x0_form = sched.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++")
    if x0_form:
        return sched.model_outputs[-1]
    s = float(sched.sigmas[k])
    alpha = 1.0 / math.sqrt(s * s + 1.0)
    sigma = s * alpha
    x, o = sample.double(), output.double()
    pred = sched.config.prediction_type
    if pred == "epsilon":
        x0 = (x - sigma * o) / alpha
    elif pred == "v_prediction":
        x0 = alpha * x - sigma * o
    else:
        x0 = o
    if sched.config.thresholding:
        # epsilon-form solvers (DEIS) threshold x0 inside convert_model_output and keep
        # only epsilon; the x0 they step with is diffusers' own threshold of this x0.
        return sched._threshold_sample(x0.float())
    return x0.float()


def run(name, solver, cls, overrides, steps, eta, extra=({}, {}), shape=SHAPE, begin=0):
    # The thresholding cases give their shape as the seventh item.
    if all(isinstance(v, int) for v in extra):
        extra, shape = ({}, {}), tuple(extra)
    step_kw, extra_config = extra
    sched = cls(**overrides)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(1234)
    x_unit = torch.randn(shape, generator=g, dtype=torch.float32)
    c = torch.randn(shape, generator=g, dtype=torch.float32)
    gen = torch.Generator().manual_seed(99)
    start = begin * sched.order
    begin_out = {}
    if begin:
        # diffusers' img2img start (pipeline_stable_diffusion_img2img.get_timesteps).
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        t0 = sched.timesteps[start : start + 1]
        latents = sched.add_noise(0.5 * c, x_unit, t0)
        one, zero = torch.ones(1), torch.zeros(1)
        begin_out = {
            "begin": begin,
            "x_start": f32list(latents),
            "add_noise": [float(sched.add_noise(one, zero, t0)), float(sched.add_noise(zero, one, t0))],
        }
    else:
        latents = x_unit * sched.init_noise_sigma
    traj = []
    first_t = None
    for k in range(start, len(sched.timesteps)):
        t = sched.timesteps[k]
        # Heun calls step() twice per step (timesteps interleaved): record a step once it
        # is complete (state back to first order), with the time of its first stage.
        if first_t is None:
            first_t = t
        del RECORDED[:]
        inp = sched.scale_model_input(latents, t)
        a, b = coeffs(t)
        out = a * inp + b * c
        params = inspect.signature(sched.step).parameters
        kw = {"generator": gen} if "generator" in params else {}
        if solver == "ddim":
            kw["eta"] = eta
        kw.update(step_kw)
        latents_in = latents
        res = sched.step(out, t, latents, **kw)
        latents = res.prev_sample
        last = k + 1 == len(sched.timesteps)
        if solver in TWO_STAGE and not sched.state_in_first_order and not last:
            continue
        x0 = getattr(res, "pred_original_sample", None)
        if solver == "lcm":
            x0 = res.denoised
        if solver == "consistency":
            s = float(sched.sigmas[k])
            e, sd = sched.config.sigma_min, sched.config.sigma_data
            c_skip = sd**2 / ((s - e) ** 2 + sd**2)
            c_out = (s - e) * sd / math.sqrt(s * s + sd**2)
            x0 = (c_out * out.double() + c_skip * latents_in.double()).float()
            if sched.config.clip_denoised:
                x0 = x0.clamp(-1, 1)
        if x0 is None and solver in ("pndm", "plms"):
            x0 = alpha_x0(sched, t, inp, out)
        if x0 is None:
            x0 = multistep_x0(sched, k, inp, out)
        step = {
            "t": float(first_t),
            "prev": f32list(res.prev_sample),
            "x0": f32list(x0),
        }
        if RECORDED:
            step["noise"] = [f32list(z) for z in RECORDED]
        traj.append(step)
        first_t = None
    # `_use_default_values` would make a loader targeting another class (the Rust test loads
    # Euler ancestral and Heun configs as EulerDiscrete) use that class's defaults; the
    # golden wants the values this scheduler ran with. (It is also a set: random order.)
    # DPM-Solver's default `lambda_min_clipped = -inf` is not JSON; absent means the same.
    config = {
        k: v
        for k, v in dict(sched.config).items()
        if k != "_use_default_values" and not (isinstance(v, float) and math.isinf(v))
    }
    config.update(extra_config)
    extra_out = {}
    if solver == "lms":
        # diffusers' integrated coefficients (scipy.integrate.quad), newest derivative first.
        order = step_kw.get("order", 4)
        extra_out["lms_coeffs"] = [
            [float(sched.get_lms_coefficient(min(k + 1, order), k, j)) for j in range(min(k + 1, order))]
            for k in range(len(sched.timesteps))
        ]
    return {
        **extra_out,
        **begin_out,
        "name": name,
        "solver": solver,
        "class": cls.__name__,
        "config": config,
        "steps": steps,
        "eta": eta,
        "shape": list(shape),
        "init_noise_sigma": float(sched.init_noise_sigma),
        "x_unit": f32list(x_unit),
        "c": f32list(c),
        "trajectory": traj,
    }


def run_f64(name, solver, cls, overrides, steps, eta, extra=({}, {})):
    """The same case with the scheduler's sigmas, the samples and the model in float64: the
    reference for cases whose float32 diffusers run is itself ill-conditioned (DEIS order 3
    subtracts float32 antiderivatives). Deterministic multistep solvers only."""
    sched = cls(**overrides)
    sched.set_timesteps(steps)
    sched.sigmas = sched.sigmas.double()
    g = torch.Generator().manual_seed(1234)
    x_unit = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    c = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    latents = x_unit.double() * sched.init_noise_sigma
    traj = []
    for k, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(latents, t)
        a, b = coeffs(t)
        out = a * inp + b * c.double()
        res = sched.step(out, t, latents)
        latents = res.prev_sample
        x0 = multistep_x0(sched, k, inp, out)
        traj.append({"t": float(t), "prev": f32list(res.prev_sample), "x0": f32list(x0)})
    g32 = run(name, solver, cls, overrides, steps, eta, extra)
    worst = 0.0
    for s64, s32 in zip(traj, g32["trajectory"]):
        for key in ("prev", "x0"):
            scale = max(abs(v) for v in s32[key])
            err = max(abs(p - q) for p, q in zip(s64[key], s32[key]))
            worst = max(worst, err / scale)
    print(name, "diffusers float32 vs float64: max step error %.3e" % worst)
    g32["name"] = name + "_f64"
    g32["trajectory"] = traj
    return g32


F64_REFERENCE = ("deis_3_v_karras", "deis_3_eps_leading_nolof")


# Mid-schedule starts (image-to-image): (case, first step); each becomes `<case>_begin<k>`.
BEGIN_CASES = [
    ("pndm_plms_eps", 3),
    ("pndm_prk_eps", 3),
    ("dpmpp_2m_eps", 3),
    ("dpmpp_3m_eps_20", 5),
    ("dpmpp_2m_sde_eps", 4),
    ("unipc_bh2_3_eps_20", 5),
    ("unipc_bh1_3_v_karras", 2),
    ("deis_2_eps", 3),
    ("dpms_2s_eps", 3),
    ("dpms_3s_v_karras", 4),
    ("lms_eps", 3),
    ("lms_order2_trailing", 1),
    ("heun_eps", 3),
    ("dpm2_v_karras", 3),
    ("dpm2_a_eps", 3),
    ("euler_eps", 7),
    ("ddim_eps", 4),
]


def begin_cases():
    by_name = {c[0]: c for c in CASES}
    for base, k in BEGIN_CASES:
        case = by_name[base]
        yield (f"{base}_begin{k}",) + case[1:], k


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/goldens/solvers"
    os.makedirs(out_dir, exist_ok=True)
    only = sys.argv[2:]
    for case in CASES:
        if case[0] in F64_REFERENCE and (not only or any(case[0].startswith(p) for p in only)):
            g = run_f64(*case)
            with open(os.path.join(out_dir, case[0] + "_f64.json"), "w") as f:
                json.dump(g, f, separators=(",", ":"), allow_nan=False)
    for case in CASES:
        if only and not any(case[0].startswith(p) for p in only):
            continue
        g = run(*case)
        with open(os.path.join(out_dir, case[0] + ".json"), "w") as f:
            json.dump(g, f, separators=(",", ":"), allow_nan=False)
        print(case[0], len(g["trajectory"]), "steps")
    for case, k in begin_cases():
        if only and not any(case[0].startswith(p) for p in only):
            continue
        extra = case[6:]
        g = run(*case[:6], *extra, begin=k) if extra else run(*case, begin=k)
        with open(os.path.join(out_dir, case[0] + ".json"), "w") as f:
            json.dump(g, f, separators=(",", ":"), allow_nan=False)
        print(case[0], len(g["trajectory"]), "steps")


if __name__ == "__main__":
    main()
