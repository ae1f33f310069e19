"""Whole-pipeline goldens with diffusers' VAE tiling on (`pipe.vae.enable_tiling()`), from
the tiny SD repository that make_tiny_sd.py writes; adds the cases `txt2img_tiled` and
`img2img_tiled` to `<goldens>/cases.json` (the other cases are left as they are).

Pinned environment as make_tiny_sd.py (diffusers 0.42.1, transformers 5.23.0, torch 2.9.1,
numpy 2.3.5; x86-64 CPU, float32):

    python scripts/goldens/make_tiny_sd_tiled.py tests/fixtures/tiny-sd tests/goldens/sd

The image is 40×24 pixels (20×12 latents) with 16-pixel VAE tiles (`tile_sample_min_size`
16, `tile_latent_min_size` 8, the quarter overlap): 3×3 tiles for decoding, and for img2img
encoding 3×4 tiles (the image is cut every 12 pixels), so both tiled paths run inside the
pipelines. Files hold what make_tiny_sd.py's cases hold (`init_latents` or the two img2img
normals, `latents`, `image` from the tiled decode, `prompt_embeds`, `encoded`).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

W, H, TILE = 40, 24, 16


def main(repo, out):
    pipe = StableDiffusionPipeline.from_pretrained(
        repo, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling()
    pipe.vae.tile_sample_min_size = TILE
    pipe.vae.tile_latent_min_size = TILE // 2
    sf = pipe.vae.config.scaling_factor
    lat_shape = (1, 4, H // 2, W // 2)
    path = os.path.join(out, "cases.json")
    with open(path) as f:
        cases = json.load(f)

    def save(name, opts, tensors):
        tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
        save_file(tensors, os.path.join(out, f"{name}.safetensors"))
        cases[name] = opts

    def embeds(prompt, negative):
        with torch.no_grad():
            c, u = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
        return torch.cat([u, c])

    def decode(lat):
        with torch.no_grad():
            return pipe.vae.decode(lat / sf).sample

    o = dict(prompt="a photo of a cat", negative_prompt="blurry, ugly", steps=3,
             guidance=7.5, solver=None, width=W, height=H, vae_tile=TILE)
    lat0 = torch.randn(lat_shape, generator=torch.Generator().manual_seed(50))
    with torch.no_grad():
        lat = pipe(o["prompt"], negative_prompt=o["negative_prompt"], height=H, width=W,
                   num_inference_steps=3, guidance_scale=7.5, latents=lat0.clone(),
                   output_type="latent").images
    save("txt2img_tiled", o, {"init_latents": lat0, "latents": lat, "image": decode(lat),
                              "prompt_embeds": embeds(o["prompt"], o["negative_prompt"])})

    i2i = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    i2i.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    i2i.set_progress_bar_config(disable=True)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    img8 = torch.stack([(xx * 9 + 7) % 256, (yy * 13 + 3) % 256, ((xx + yy) * 5 + 50) % 256])
    init = (img8.float() / 255.0)[None]
    o = dict(prompt="a red dog", negative_prompt="low quality", steps=4, guidance=7.5,
             strength=0.5, solver="ddim", width=W, height=H, vae_tile=TILE)
    g = torch.Generator().manual_seed(60)
    e1, e2 = torch.randn(lat_shape, generator=g), torch.randn(lat_shape, generator=g)
    with torch.no_grad():
        lat = i2i(o["prompt"], image=init, strength=0.5, negative_prompt=o["negative_prompt"],
                  num_inference_steps=4, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(60), output_type="latent").images
        dist = pipe.vae.encode(init * 2 - 1).latent_dist
        enc = (dist.mean + dist.std * e1) * sf
    save("img2img_tiled", o, {"init_image": init, "noise.posterior": e1, "noise.forward": e2,
                              "encoded": enc, "latents": lat, "image": decode(lat),
                              "prompt_embeds": embeds(o["prompt"], o["negative_prompt"])})

    with open(path, "w") as f:
        json.dump(cases, f, indent=1)
    print("wrote txt2img_tiled, img2img_tiled")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
