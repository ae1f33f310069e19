#!/usr/bin/env python3
"""Writes the noise-schedule goldens that `tests/schedules.rs` checks `src/sampling` against.

Every case builds a diffusers scheduler from a config, saves that config exactly as
`scheduler.save_config` would (`scheduler.config` plus `_class_name`), and records what
diffusers computes: the training betas and alphas_cumprod (1000-entry arrays, stored once
and referenced by content hash), and for several step counts the timesteps, sigmas and
init_noise_sigma after `set_timesteps`.

float32 values are stored as their IEEE bit patterns (8 hex digits each, concatenated into
one string per array), float64 values as 16 hex digits, integers as JSON integers: exact,
with no decimal round trip.

Usage (versions pinned in requirements.txt next to this file):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -r scripts/goldens/requirements.txt
    /tmp/venv/bin/python scripts/goldens/make_schedule_goldens.py [--out tests/goldens/schedules]
"""

import argparse
import hashlib
import itertools
import json
import os
import platform

import diffusers
import numpy as np
import scipy
import scipy.stats
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

STEP_COUNTS = [1, 2, 7, 25, 50]

# (beta_schedule, beta_start, beta_end) families; trained_betas is handled separately.
BETA_FAMILIES = [
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
]
# Given betas that no formula here produces: a geometric ramp in float64 (cast to float32
# by diffusers' `torch.tensor(trained_betas, dtype=torch.float32)`).
TRAINED_BETAS = [float(1e-4 * (0.03 / 1e-4) ** (i / 999.0)) for i in range(1000)]
# (timestep_spacing, steps_offset): the offset only acts on "leading".
SPACINGS = [("linspace", 0), ("leading", 0), ("leading", 1), ("trailing", 0)]

arrays = {}


def f32_hex(values):
    a = np.asarray(values, dtype=np.float32).reshape(-1)
    return a.astype(">f4").tobytes().hex()


def f64_hex(values):
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    return a.astype(">f8").tobytes().hex()


def stored(values):
    """Stores a float32 array once and returns its key."""
    h = f32_hex(values)
    key = hashlib.sha256(h.encode()).hexdigest()[:16]
    arrays[key] = h
    return key


def tensor_f32(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def saved_config(sched):
    cfg = dict(sched.config)
    cfg["_class_name"] = type(sched).__name__
    cfg["_diffusers_version"] = diffusers.__version__
    out = {}
    for k, v in cfg.items():
        if k.startswith("_use_default_values"):
            continue
        # Infinite floats (DPM-Solver's default lambda_min_clipped) stay floats: json.dump
        # writes them as the bare token -Infinity, exactly as diffusers' save_config does.
        if k == "trained_betas" and v is not None:
            # Kept out of every case (1000 numbers each): the test puts TRAINED_BETAS, stored
            # once under "trained_betas" in arrays.json, back in place of this marker.
            assert list(v) == TRAINED_BETAS
            v = "@trained_betas"
        if isinstance(v, (np.ndarray, torch.Tensor)):
            v = np.asarray(v).tolist()
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def run_case(cls, kwargs, step_counts=STEP_COUNTS, timestep_dtype="int64"):
    sched = cls(**kwargs)
    case = {"config": saved_config(sched)}
    if hasattr(sched, "betas"):
        case["betas"] = stored(tensor_f32(sched.betas))
        case["alphas_cumprod"] = stored(tensor_f32(sched.alphas_cumprod))
    steps = {}
    for n in step_counts:
        s = cls(**kwargs)
        try:
            s.set_timesteps(n)
        except Exception as e:  # noqa: BLE001 - recorded so the Rust side must fail too
            steps[str(n)] = {"error": f"{type(e).__name__}: {e}"}
            continue
        entry = {}
        ts = s.timesteps
        if timestep_dtype == "int64":
            entry["timesteps"] = [int(t) for t in ts.tolist()]
        else:
            entry["timesteps"] = f32_hex(tensor_f32(ts))
        if hasattr(s, "sigmas") and cls not in (DDIMScheduler, DDPMScheduler):
            entry["sigmas"] = f32_hex(tensor_f32(s.sigmas))
        ins = s.init_noise_sigma
        entry["init_noise_sigma"] = f32_hex([float(tensor_f32(ins))])
        steps[str(n)] = entry
    case["steps"] = steps
    return case


def beta_variants(with_trained=True, extra=()):
    out = [dict(b) for b in BETA_FAMILIES] + [dict(e) for e in extra]
    if with_trained:
        out.append({"trained_betas": TRAINED_BETAS})
    return out


def ddim_ddpm_cases(cls, extra_betas=()):
    cases = []
    for beta, rescale, (spacing, offset) in itertools.product(
        beta_variants(extra=extra_betas), [False, True], SPACINGS
    ):
        kw = dict(beta, rescale_betas_zero_snr=rescale, timestep_spacing=spacing, steps_offset=offset)
        cases.append(run_case(cls, kw, STEP_COUNTS + ([1000] if spacing == "trailing" else [])))
    # A training length other than 1000.
    cases.append(run_case(cls, dict(num_train_timesteps=500, timestep_spacing="trailing"), [1, 3, 7, 499]))
    return cases


SIGMA_KINDS = {
    "plain": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}


def euler_cases():
    cls = EulerDiscreteScheduler
    cases = []
    for beta, rescale, (spacing, offset), interp in itertools.product(
        beta_variants(), [False, True], SPACINGS, ["linear", "log_linear"]
    ):
        kw = dict(beta, rescale_betas_zero_snr=rescale, timestep_spacing=spacing, steps_offset=offset,
                  interpolation_type=interp)
        cases.append(run_case(cls, kw, timestep_dtype="float32"))
    for beta, rescale, (spacing, offset), kind, final in itertools.product(
        beta_variants(with_trained=False), [False, True], SPACINGS, ["karras", "exponential", "beta"],
        ["zero", "sigma_min"]
    ):
        kw = dict(beta, rescale_betas_zero_snr=rescale, timestep_spacing=spacing, steps_offset=offset,
                  final_sigmas_type=final, **SIGMA_KINDS[kind])
        cases.append(run_case(cls, kw, timestep_dtype="float32"))
    # Plain sigmas with sigma_min as the last one.
    for spacing, offset in SPACINGS:
        kw = dict(BETA_FAMILIES[1], timestep_spacing=spacing, steps_offset=offset, final_sigmas_type="sigma_min")
        cases.append(run_case(cls, kw, timestep_dtype="float32"))
    # Continuous timesteps (used with v-prediction, e.g. SD 2 upscaler / cosxl).
    for spacing, offset in SPACINGS:
        for kind in ["plain", "karras"]:
            kw = dict(BETA_FAMILIES[1], timestep_spacing=spacing, steps_offset=offset,
                      timestep_type="continuous", prediction_type="v_prediction", **SIGMA_KINDS[kind])
            cases.append(run_case(cls, kw, timestep_dtype="float32"))
    # Explicit sigma range for the converted schedules.
    for kind in ["karras", "exponential", "beta"]:
        kw = dict(BETA_FAMILIES[1], sigma_min=0.03, sigma_max=14.6, **SIGMA_KINDS[kind])
        cases.append(run_case(cls, kw, timestep_dtype="float32"))
    return cases


def multistep_cases(cls, extra_kinds):
    cases = []
    for beta, rescale, (spacing, offset), final in itertools.product(
        beta_variants(), [False, True], SPACINGS, ["zero", "sigma_min"]
    ):
        kw = dict(beta, rescale_betas_zero_snr=rescale, timestep_spacing=spacing, steps_offset=offset,
                  final_sigmas_type=final)
        cases.append(run_case(cls, kw))
    kinds = dict(SIGMA_KINDS)
    kinds.update(extra_kinds)
    for beta, rescale, (spacing, offset), kind, final in itertools.product(
        beta_variants(with_trained=False), [False, True], [SPACINGS[0], SPACINGS[2]],
        [k for k in kinds if k != "plain"], ["zero", "sigma_min"]
    ):
        kw = dict(beta, rescale_betas_zero_snr=rescale, timestep_spacing=spacing, steps_offset=offset,
                  final_sigmas_type=final, **kinds[kind])
        cases.append(run_case(cls, kw))
    return cases


def dpm_cases():
    cls = DPMSolverMultistepScheduler
    cases = multistep_cases(
        cls,
        {
            "lu": {"use_lu_lambdas": True},
            "flow": {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
        },
    )
    # lambda_min_clipped as DeepFloyd IF uses it.
    for spacing, offset in SPACINGS:
        kw = dict(BETA_FAMILIES[2], timestep_spacing=spacing, steps_offset=offset, lambda_min_clipped=-5.1)
        cases.append(run_case(cls, kw))
    return cases


def unipc_cases():
    cls = UniPCMultistepScheduler
    cases = multistep_cases(
        cls,
        {"flow": {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}},
    )
    for kind in ["karras", "exponential", "beta"]:
        kw = dict(BETA_FAMILIES[1], sigma_min=0.03, sigma_max=14.6, **SIGMA_KINDS[kind])
        cases.append(run_case(cls, kw))
    return cases


def edm_cases():
    cls = EDMEulerScheduler
    cases = []
    for schedule, final in itertools.product(["karras", "exponential"], ["zero", "sigma_min"]):
        kw = dict(sigma_schedule=schedule, final_sigmas_type=final)
        cases.append(run_case(cls, kw, timestep_dtype="float32"))
    cases.append(run_case(cls, dict(sigma_min=0.002, sigma_max=160.0, rho=5.0), timestep_dtype="float32"))
    # Preconditioning (Karras et al. 2022, Table 1) at a spread of sigmas.
    s = cls(sigma_data=0.5)
    sig = torch.tensor([0.002, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 80.0], dtype=torch.float32)
    x = torch.ones_like(sig)
    pre = {
        "sigma_data": 0.5,
        "sigmas": f32_hex(sig),
        "c_in": f32_hex(s.precondition_inputs(x, sig)),
        "c_noise": f32_hex(s.precondition_noise(sig)),
    }
    # precondition_outputs(sample, model_output, sigma) = c_skip*sample + c_out*model_output.
    pre["c_skip"] = f32_hex(s.precondition_outputs(x, torch.zeros_like(sig), sig))
    pre["c_out"] = f32_hex(s.precondition_outputs(torch.zeros_like(sig), x, sig))
    return cases, pre


def beta_ppf_goldens():
    out = []
    for a, b in [(0.6, 0.6), (0.5, 0.5), (2.0, 5.0), (0.3, 3.0), (1.0, 1.0)]:
        ps = np.concatenate([np.linspace(0, 1, 101), [1e-12, 1e-6, 1e-3, 1 - 1e-3, 1 - 1e-6]])
        # The exact p values diffusers feeds: 1 - linspace(0, 1, n).
        for n in STEP_COUNTS + [100]:
            ps = np.concatenate([ps, 1 - np.linspace(0, 1, n)])
        q = [scipy.stats.beta.ppf(p, a, b) for p in ps]
        out.append({"a": a, "b": b, "p": f64_hex(ps), "ppf": f64_hex(q)})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "goldens", "schedules"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    meta = {
        "generator": "scripts/goldens/make_schedule_goldens.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_mkl": torch.backends.mkl.is_available(),
    }
    files = {
        "DDIMScheduler": ddim_ddpm_cases(DDIMScheduler),
        "DDPMScheduler": ddim_ddpm_cases(
            DDPMScheduler,
            extra_betas=[
                {"beta_schedule": "laplace"},
                {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02},
            ],
        ),
        "EulerDiscreteScheduler": euler_cases(),
        "DPMSolverMultistepScheduler": dpm_cases(),
        "UniPCMultistepScheduler": unipc_cases(),
    }
    edm, pre = edm_cases()
    files["EDMEulerScheduler"] = edm
    for name, cases in files.items():
        with open(os.path.join(args.out, f"{name}.json"), "w") as fh:
            json.dump({"meta": meta, "cases": cases}, fh, separators=(",", ":"))
    with open(os.path.join(args.out, "arrays.json"), "w") as fh:
        json.dump({"meta": meta, "trained_betas": f64_hex(TRAINED_BETAS), "f32": arrays}, fh, separators=(",", ":"), sort_keys=True)
    with open(os.path.join(args.out, "special.json"), "w") as fh:
        json.dump({"meta": meta, "beta_ppf": beta_ppf_goldens(), "edm_precondition": pre}, fh,
                  separators=(",", ":"))
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {sum(len(c) for c in files.values())} cases, {len(arrays)} arrays, {total} bytes to {args.out}")


if __name__ == "__main__":
    main()
