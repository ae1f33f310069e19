"""Image-to-image with the tiny LCM-distilled repository: a golden from diffusers'
`LatentConsistencyModelImg2ImgPipeline`, which is what `AutoPipelineForImage2Image` makes of a
`LatentConsistencyModelPipeline` repository.

That pipeline applies `strength` inside `LCMScheduler.set_timesteps`, not through the usual
`get_timesteps` tail: the distillation schedule is cut to its first ⌊K·strength⌋ timesteps
(K = `original_inference_steps`) and all `num_inference_steps` steps are taken from that. So an
LCM img2img run starts lower and takes more steps than the generic rule would give.

Pinned environment as make_tiny_sd.py (diffusers 0.42.1, transformers 5.23.0, torch 2.9.1,
numpy 2.3.5; x86-64 CPU, float32). Run after make_tiny_lcm.py, on its repository:

    python scripts/goldens/make_tiny_lcm_img2img.py tests/fixtures/tiny-lcm tests/goldens/sd

Writes `<goldens>/lcm_img2img.safetensors` and the case `lcm_img2img` in `<goldens>/cases.json`
(other cases are left as they are): the img2img golden's start image (`init.png`, which
make_tiny_sd.py wrote), 16×16 pixels, 4 steps, strength 0.5, guidance 8 (w = 7), the
repository's LCMScheduler. Tensors: `init_image`, the posterior sample's unit normal
(`noise.posterior`), the forward-noising one (`noise.forward`), the scheduler's per-step draws
(`noise.<k>`), `encoded`, the `timesteps` the pipeline ran, `prompt_embeds` (the prompt only:
no CFG), the final `latents` (the last step's `denoised`) and the decoded `image`.

The script checks that the schedule differs from the generic img2img rule's (so a test fails
if the engine used that rule) and prints both.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusers import LatentConsistencyModelImg2ImgPipeline

SIZE = 16


def randn(shape, g):
    return torch.randn(shape, generator=g, dtype=torch.float32)


def main(repo, out):
    pipe = LatentConsistencyModelImg2ImgPipeline.from_pretrained(
        repo, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    o = dict(prompt="a red dog on the grass", negative_prompt="", steps=4, guidance=8.0,
             strength=0.5, solver=None, width=SIZE, height=SIZE, repo="tiny-lcm")
    img8 = np.asarray(Image.open(os.path.join(out, "init.png")).convert("RGB"))
    init = (torch.from_numpy(img8.copy()).permute(2, 0, 1).float() / 255.0)[None]
    lat_shape = (1, 4, SIZE // 2, SIZE // 2)

    # The draws in the pipeline's order: the posterior sample, the forward noise, then one
    # per step but the last (the scheduler's).
    g = torch.Generator().manual_seed(80)
    e1, e2 = randn(lat_shape, g), randn(lat_shape, g)
    draws = [randn(lat_shape, g) for _ in range(o["steps"] - 1)]

    seen = []
    inner = pipe.unet.forward

    def spy(sample, timestep, *args, **kw):
        seen.append(int(timestep))
        return inner(sample, timestep, *args, **kw)

    pipe.unet.forward = spy
    with torch.no_grad():
        lat = pipe(o["prompt"], image=init, strength=o["strength"],
                   num_inference_steps=o["steps"], guidance_scale=o["guidance"],
                   generator=torch.Generator().manual_seed(80), output_type="latent").images
    pipe.unet.forward = inner
    assert len(seen) == o["steps"], seen

    # Check the draw order as make_tiny_sd.py does: the encoded latents handed over (no
    # posterior draw) with a generator whose next draw is e2 give the same result.
    with torch.no_grad():
        dist = pipe.vae.encode(init * 2 - 1).latent_dist
        enc = (dist.mean + dist.std * e1) * pipe.vae.config.scaling_factor
        g2 = torch.Generator().manual_seed(80)
        randn(lat_shape, g2)
        lat_check = pipe(o["prompt"], image=enc, strength=o["strength"],
                         num_inference_steps=o["steps"], guidance_scale=o["guidance"],
                         generator=g2, output_type="latent").images
    assert torch.allclose(lat, lat_check, atol=1e-6), "LCM img2img draw order changed"

    # The generic rule (StableDiffusionImg2ImgPipeline.get_timesteps) on the full LCM
    # schedule: the last ⌊steps·strength⌋ of it.
    pipe.scheduler.set_timesteps(o["steps"])
    full = [int(t) for t in pipe.scheduler.timesteps]
    generic = full[o["steps"] - int(o["steps"] * o["strength"]):]
    print(f"LCM img2img timesteps {seen}; the generic img2img rule would run {generic}")
    assert seen != generic

    with torch.no_grad():
        prompt_embeds, _ = pipe.encode_prompt(o["prompt"], "cpu", 1, False)
        image = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    tensors = {"init_image": init, "noise.posterior": e1, "noise.forward": e2, "encoded": enc,
               "timesteps": torch.tensor(seen, dtype=torch.float32), "latents": lat,
               "image": image, "prompt_embeds": prompt_embeds}
    tensors.update({f"noise.{k}": d for k, d in enumerate(draws)})
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, "lcm_img2img.safetensors"))

    path = os.path.join(out, "cases.json")
    with open(path) as f:
        cases = json.load(f)
    cases["lcm_img2img"] = o
    with open(path, "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")
    print("wrote lcm_img2img")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
