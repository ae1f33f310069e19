"""Tiled VAE decode/encode goldens for tests/sd_components.rs: diffusers' own tiling
(`AutoencoderKL.enable_tiling`, `tiled_decode` / `_tiled_encode`) on the tiny VAE fixture.

Pinned environment: scripts/goldens/requirements.txt (diffusers 0.42.1, torch 2.9.1,
numpy 2.3.5), x86-64 CPU, float32:

    python scripts/goldens/make_vae_tiling_goldens.py tests/fixtures/tiny-vae tests/goldens/sd

The fixture (block_out_channels (16, 32): factor 2) is made by make_sd_component_goldens.py.
Shapes are picked so the edge cases of diffusers' arithmetic are hit: non-square inputs, a
last row of tiles thinner than the blend extent (so `min(a, b, extent)` matters), and
several tiles per row and column. For each tile size T (pixels), with
`vae.tile_sample_min_size = T` and `vae.tile_latent_min_size = T // 2`:

- `latents` (1, 4, 13, 18) raw (as the sampler leaves them) and `decoded_T` =
  `vae.decode(latents / scaling_factor).sample` with tiling on;
- `image` (1, 3, 26, 36) in [-1, 1], `mean_T` = posterior mean × scaling_factor, `noise`
  (1, 4, 13, 18), `sampled_T` = (mean + std · noise) × scaling_factor, with tiling on;
- `decoded_plain`, `mean_plain`: the same without tiling (to show the tiles matter).
"""

import os
import sys

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKL

TILES = (8, 16)


def main():
    fixture, goldens = sys.argv[1], sys.argv[2]
    vae = AutoencoderKL.from_pretrained(fixture, torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(11)
    latents = torch.randn(1, 4, 13, 18, generator=g) * 0.8
    image = torch.rand(1, 3, 26, 36, generator=g) * 2 - 1
    noise = torch.randn(1, 4, 13, 18, generator=g)
    sf = vae.config.scaling_factor
    res = {"latents": latents, "image": image, "noise": noise}
    with torch.no_grad():
        res["decoded_plain"] = vae.decode(latents / sf).sample
        res["mean_plain"] = vae.encode(image).latent_dist.mean * sf
        vae.enable_tiling()
        for t in TILES:
            vae.tile_sample_min_size = t
            vae.tile_latent_min_size = t // 2
            res[f"decoded_{t}"] = vae.decode(latents / sf).sample
            dist = vae.encode(image).latent_dist
            res[f"mean_{t}"] = dist.mean * sf
            res[f"sampled_{t}"] = (dist.mean + dist.std * noise) * sf
    for t in TILES:
        d = (res[f"decoded_{t}"] - res["decoded_plain"]).abs().max().item()
        m = (res[f"mean_{t}"] - res["mean_plain"]).abs().max().item()
        print(f"tile {t}: decoded differs from untiled by {d:.3g}, mean by {m:.3g}")
    os.makedirs(goldens, exist_ok=True)
    out = os.path.join(goldens, "vae_tiled.safetensors")
    save_file({k: v.contiguous() for k, v in res.items()}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
