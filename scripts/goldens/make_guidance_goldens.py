"""Classifier-free guidance goldens from diffusers for tests/guidance.rs.

Pinned environment: scripts/goldens/requirements.txt (diffusers 0.42.1, torch 2.9.1), x86-64
CPU, float32:

    python scripts/goldens/make_guidance_goldens.py tests/goldens/guidance.safetensors

Random (uncond, cond) model outputs, combined as the Stable Diffusion pipeline does
(`noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)`), then passed
through diffusers' own `rescale_noise_cfg` (arXiv:2305.08891 eqs. 15-16). Tensors:
`out2` (2N, C, H, W) = cat([uncond, cond]), and for each (w, phi) in CASES
`guided_<k>` (N, C, H, W) plus `params_<k>` = [w, phi].
"""

import sys

import torch
from safetensors.torch import save_file

# The same function the Stable Diffusion pipelines copy (importing those needs transformers).
from diffusers.guiders.guider_utils import rescale_noise_cfg

CASES = [(7.5, 0.0), (7.5, 0.7), (3.0, 1.0), (12.0, 0.35)]


def main(path):
    torch.manual_seed(99)
    n = 2
    uncond = torch.randn(n, 4, 5, 7)
    # The conditional output is correlated with the unconditional one and wider, as in use.
    cond = 0.8 * uncond + 0.9 * torch.randn(n, 4, 5, 7)
    tensors = {"out2": torch.cat([uncond, cond])}
    for k, (w, phi) in enumerate(CASES):
        cfg = uncond + w * (cond - uncond)
        if phi > 0:
            cfg = rescale_noise_cfg(cfg, cond, guidance_rescale=phi)
        tensors[f"guided_{k}"] = cfg
        tensors[f"params_{k}"] = torch.tensor([w, phi])
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/goldens/guidance.safetensors")
