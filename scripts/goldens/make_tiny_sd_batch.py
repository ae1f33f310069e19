"""Batches from one prompt (diffusers' `num_images_per_prompt`) with the tiny SD repository.

Pinned environment as make_tiny_sd.py (diffusers 0.42.1, transformers 5.23.0, torch 2.9.1,
numpy 2.3.5; x86-64 CPU, float32). Run after make_tiny_sd.py, on its repository:

    python scripts/goldens/make_tiny_sd_batch.py tests/fixtures/tiny-sd tests/goldens/sd

Adds to `<goldens>/cases.json` (other cases are left as they are) and writes
`<goldens>/<case>.safetensors` for

- `txt2img_batch`: `StableDiffusionPipeline`, the repository's PNDM, CFG 7.5 with a negative
  prompt, 5 steps, 2 images from diffusers' initial latents (`init_latents`, (2, 4, 8, 8)): the
  prompt states are repeated over the batch, `cat([uncond × 2, cond × 2])` under CFG.
- `img2img_batch`: `StableDiffusionImg2ImgPipeline`, DDIM, strength 0.6, 2 images from the one
  start image (make_tiny_sd.py's `init.png`): the image is encoded once (`noise.posterior`,
  (1, 4, 8, 8)) and its latents repeated, then noised with `noise.forward` (2, 4, 8, 8), the
  draw order checked as make_tiny_sd.py does.

Each has the final `latents` and decoded `image` of both images (and `encoded` for img2img);
`prompt_embeds` is the one prompt's `cat([uncond, cond])`. The script checks that the two
images differ (each has its own noise), so a run that gave both the first image's noise fails.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

SIZE = 16
BATCH = 2


def randn(shape, g):
    return torch.randn(shape, generator=g, dtype=torch.float32)


def main(repo, out):
    pipe = StableDiffusionPipeline.from_pretrained(
        repo, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    cases = {}
    tensors_of = {}

    def decode(lat):
        with torch.no_grad():
            return pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample

    def embeds(prompt, negative):
        with torch.no_grad():
            c, u = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
        return torch.cat([u, c])

    def differ(lat, name):
        rel = ((lat[0] - lat[1]).abs().max() / lat.abs().max()).item()
        print(f"{name}: the two images' latents differ by {rel:.3g} (relative)")
        assert rel > 0.05, rel

    lat_shape = (BATCH, 4, SIZE // 2, SIZE // 2)
    one_shape = (1, 4, SIZE // 2, SIZE // 2)

    o = dict(prompt="a photo of a cat", negative_prompt="blurry, ugly", steps=5, guidance=7.5,
             solver=None, width=SIZE, height=SIZE, batch=BATCH)
    lat0 = randn(lat_shape, torch.Generator().manual_seed(90))
    with torch.no_grad():
        lat = pipe(o["prompt"], negative_prompt=o["negative_prompt"], height=SIZE, width=SIZE,
                   num_inference_steps=o["steps"], guidance_scale=o["guidance"],
                   num_images_per_prompt=BATCH, latents=lat0.clone(), output_type="latent").images
    differ(lat, "txt2img_batch")
    cases["txt2img_batch"] = o
    tensors_of["txt2img_batch"] = {
        "init_latents": lat0, "latents": lat, "image": decode(lat),
        "prompt_embeds": embeds(o["prompt"], o["negative_prompt"])}

    i2i = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    i2i.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    i2i.set_progress_bar_config(disable=True)
    img8 = np.asarray(Image.open(os.path.join(out, "init.png")).convert("RGB"))
    init = (torch.from_numpy(img8.copy()).permute(2, 0, 1).float() / 255.0)[None]
    o = dict(prompt="a red dog", negative_prompt="low quality", steps=5, guidance=7.5,
             strength=0.6, solver="ddim", width=SIZE, height=SIZE, batch=BATCH)
    g = torch.Generator().manual_seed(91)
    e1, e2 = randn(one_shape, g), randn(lat_shape, g)

    def run(image, generator):
        with torch.no_grad():
            return i2i(o["prompt"], image=image, strength=o["strength"],
                       negative_prompt=o["negative_prompt"], num_inference_steps=o["steps"],
                       guidance_scale=o["guidance"], num_images_per_prompt=BATCH,
                       generator=generator, output_type="latent").images

    lat = run(init, torch.Generator().manual_seed(91))
    with torch.no_grad():
        dist = pipe.vae.encode(init * 2 - 1).latent_dist
        enc = (dist.mean + dist.std * e1) * pipe.vae.config.scaling_factor
    g2 = torch.Generator().manual_seed(91)
    randn(one_shape, g2)
    assert torch.allclose(lat, run(enc, g2), atol=1e-6), "img2img batch draw order changed"
    differ(lat, "img2img_batch")
    cases["img2img_batch"] = o
    tensors_of["img2img_batch"] = {
        "init_image": init, "noise.posterior": e1, "noise.forward": e2, "encoded": enc,
        "latents": lat, "image": decode(lat),
        "prompt_embeds": embeds(o["prompt"], o["negative_prompt"])}

    for name, t in tensors_of.items():
        t = {k: v.detach().float().contiguous() for k, v in t.items()}
        save_file(t, os.path.join(out, f"{name}.safetensors"))
    path = os.path.join(out, "cases.json")
    with open(path) as f:
        all_cases = json.load(f)
    all_cases.update(cases)
    with open(path, "w") as f:
        json.dump(all_cases, f, indent=1)
        f.write("\n")
    print("wrote", ", ".join(cases))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
