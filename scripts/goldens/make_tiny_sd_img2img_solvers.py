"""Image-to-image goldens for the solvers that keep a history (and the two-call ones), from
the tiny SD repository that make_tiny_sd.py writes; adds the cases `img2img_<solver>` to
`<goldens>/cases.json` (the other cases are left as they are).

Pinned environment as make_tiny_sd.py (diffusers 0.42.1, transformers 5.23.0, torch 2.9.1,
numpy 2.3.5; x86-64 CPU, float32):

    python scripts/goldens/make_tiny_sd_img2img_solvers.py tests/fixtures/tiny-sd tests/goldens/sd

What diffusers' `StableDiffusionImg2ImgPipeline` does with these schedulers, and what the
cases pin down: `get_timesteps` keeps `scheduler.timesteps[t_start·order:]` with
t_start = steps − ⌊steps·strength⌋, calls `set_begin_index(t_start·order)` where the
scheduler has it, noises the encoded image to `timesteps[0]` with `add_noise`, and runs the
rest from the scheduler's fresh state (empty model-output history, `lower_order_nums` 0,
PNDM's `counter` 0), while step-index decisions (DPM-Solver's `lower_order_final`, LMS's
`min(step_index + 1, 4)`) see the whole schedule. Each case is 16×16 pixels (8×8 latents),
6 steps at strength 0.7 (t_start 2, 4 steps run; PNDM's list holds its PLMS warm-up, so
5 calls) unless its options say otherwise; DPM-Solver singlestep runs at strength 0.5
(t_start 3, inside an order-2 group) and DPM++ 3M over 20 steps (t_start 6, so its
third-order update runs after a fresh warm-up).

Every case uses the img2img case's prompt, negative prompt and init image (`init.png`'s
pixels), so its prompt states are that case's and are not stored again. Files hold
`init_image`, `noise.posterior` and `noise.forward` (the two unit normals the pipeline
draws first, in that order: see make_tiny_sd.py), `noise.<k>` (a stochastic solver's own
draws, in diffusers' order, from the same generator; their count is checked against the
generator's state after the run), `encoded`, `latents` (the final latents) and `image`
(the VAE decoder's output in [-1, 1]).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    UniPCMultistepScheduler,
)

SIZE = 16
PROMPT, NEGATIVE, GUIDANCE = "a red dog", "low quality", 7.5

# name, our solver name (None: the repository's scheduler), the scheduler, config
# overrides, steps, strength, seed.
CASES = [
    ("pndm", None, PNDMScheduler, {}, 6, 0.7, 70),
    ("pndm_prk", "pndm", PNDMScheduler, {"skip_prk_steps": False}, 6, 0.7, 71),
    ("dpmpp_2m", "dpmpp_2m", DPMSolverMultistepScheduler,
     {"algorithm_type": "dpmsolver++", "solver_order": 2}, 6, 0.7, 72),
    ("dpmpp_3m", "dpmpp_3m", DPMSolverMultistepScheduler,
     {"algorithm_type": "dpmsolver++", "solver_order": 3}, 20, 0.7, 73),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, 6, 0.7, 74),
    ("unipc", "unipc", UniPCMultistepScheduler, {}, 6, 0.7, 75),
    ("deis", "deis", DEISMultistepScheduler, {}, 6, 0.7, 76),
    ("dpm_singlestep", "dpm_singlestep", DPMSolverSinglestepScheduler, {}, 6, 0.5, 77),
    ("lms", "lms", LMSDiscreteScheduler, {}, 6, 0.7, 78),
    ("heun", "heun", HeunDiscreteScheduler, {}, 6, 0.7, 79),
    ("dpm2", "dpm2", KDPM2DiscreteScheduler, {}, 6, 0.7, 80),
    ("dpm2_ancestral", "dpm2_ancestral", KDPM2AncestralDiscreteScheduler, {}, 6, 0.7, 81),
]


def randn(shape, g):
    return torch.randn(shape, generator=g, dtype=torch.float32)


def draws_used(g_after, seed, shape, limit=64):
    """How many `shape` normals a generator seeded with `seed` drew to reach `g_after`."""
    g = torch.Generator().manual_seed(seed)
    for k in range(limit + 1):
        if torch.equal(g.get_state(), g_after.get_state()):
            return k
        randn(shape, g)
    raise RuntimeError("the pipeline drew something other than latent-shaped normals")


def main(repo, out):
    i2i = StableDiffusionImg2ImgPipeline.from_pretrained(
        repo, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    i2i.set_progress_bar_config(disable=True)
    sf = i2i.vae.config.scaling_factor
    base = dict(i2i.scheduler.config)
    lat_shape = (1, 4, SIZE // 2, SIZE // 2)
    path = os.path.join(out, "cases.json")
    with open(path) as f:
        cases = json.load(f)

    # make_tiny_sd.py's init image (init.png).
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    img8 = torch.stack([(xx * 16 + 7) % 256, (yy * 16 + 3) % 256, ((xx + yy) * 8 + 50) % 256])
    init = (img8.float() / 255.0)[None]

    for name, solver, cls, overrides, steps, strength, seed in CASES:
        i2i.scheduler = cls.from_config(base, **overrides)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            lat = i2i(PROMPT, image=init, strength=strength, negative_prompt=NEGATIVE,
                      num_inference_steps=steps, guidance_scale=GUIDANCE, generator=g,
                      output_type="latent").images
            image = i2i.vae.decode(lat / sf).sample
        n = draws_used(g, seed, lat_shape)
        g = torch.Generator().manual_seed(seed)
        e1, e2 = randn(lat_shape, g), randn(lat_shape, g)
        draws = [randn(lat_shape, g) for _ in range(n - 2)]
        with torch.no_grad():
            dist = i2i.vae.encode(init * 2 - 1).latent_dist
            enc = (dist.mean + dist.std * e1) * sf
        t = {"init_image": init, "noise.posterior": e1, "noise.forward": e2, "encoded": enc,
             "latents": lat, "image": image}
        t.update({f"noise.{k}": d for k, d in enumerate(draws)})
        t = {k: v.detach().float().contiguous() for k, v in t.items()}
        case = f"img2img_{name}"
        save_file(t, os.path.join(out, f"{case}.safetensors"))
        o = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, guidance=GUIDANCE,
                 strength=strength, solver=solver, width=SIZE, height=SIZE)
        if name == "pndm_prk":
            # Our `pndm` reads skip_prk_steps from the config (the named DPM variants fix
            # their algorithm and order themselves).
            o["scheduler_overrides"] = overrides
        cases[case] = o
        t_start = steps - min(int(steps * strength), steps)
        print(f"{case}: t_start {t_start}, {len(i2i.scheduler.timesteps) - t_start * i2i.scheduler.order}"
              f" scheduler calls, {len(draws)} solver draws")

    with open(path, "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
