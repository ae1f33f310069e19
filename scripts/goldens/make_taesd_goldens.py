"""TAESD (diffusers' AutoencoderTiny) decoder goldens for tests/taesd.rs.

Pinned environment: scripts/goldens/requirements.txt (diffusers 0.42.1, torch 2.9.1,
numpy 2.3.5), x86-64 CPU, float32:

    python scripts/goldens/make_taesd_goldens.py tests/fixtures tests/goldens/taesd

What it writes:

- `<fixtures>/tiny-taesd/{config.json,diffusion_pytorch_model.safetensors}`: a random
  `AutoencoderTiny` with small channels (decoder: 3 stages of 12 channels with 2, 1, 1
  blocks, so two nearest 2x upsamplers; encoder: 2 stages of 4 channels, stored only because
  real TAESD folders hold both halves), `scaling_factor` 0.8 and `shift_factor` 0.1 so that
  the latent scaling is exercised, weights rounded to float16 and stored so. Conv weights
  are scaled by 1.5 and biases perturbed, so that activations
  neither vanish nor all pass the ReLUs and the decoded image varies.
- `<goldens>/decode.safetensors`: `latents` (2, 4, 5, 7), raw as the sampler leaves them,
  with values past +-3 so that the tanh clamp is non-linear, and `decoded` =
  `vae.decode(latents / scaling_factor + shift_factor).sample` (2, 3, 20, 28), in [-1, 1]
  by diffusers' convention (DecoderTiny ends in `.mul(2).sub(1)`).
"""

import os
import sys

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderTiny


def main():
    fixtures, goldens = sys.argv[1], sys.argv[2]
    torch.manual_seed(7)
    vae = AutoencoderTiny(
        in_channels=3,
        out_channels=3,
        encoder_block_out_channels=(4, 4),
        decoder_block_out_channels=(12, 12, 12),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(2, 1, 1),
        latent_channels=4,
        upsampling_scaling_factor=2,
        act_fn="relu",
        scaling_factor=0.8,
        shift_factor=0.1,
    ).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("weight"):
                # PyTorch's default init shrinks activations through every ReLU; a gain
                # of 1.5 keeps the decoded image varied (at 2.4 it grew to std 15).
                p.mul_(1.5)
            else:
                p.add_(torch.randn_like(p) * 0.05)
            # The stored model is float16: compute the goldens from the same values.
            p.copy_(p.half().float())
    d = os.path.join(fixtures, "tiny-taesd")
    os.makedirs(d, exist_ok=True)
    vae.save_config(d)
    state = {k: v.detach().half().contiguous() for k, v in vae.state_dict().items()}
    save_file(state, os.path.join(d, "diffusion_pytorch_model.safetensors"))

    g = torch.Generator().manual_seed(8)
    latents = torch.randn(2, 4, 5, 7, generator=g) * 2.5
    cfg = vae.config
    with torch.no_grad():
        decoded = vae.decode(latents / cfg.scaling_factor + cfg.shift_factor).sample
    os.makedirs(goldens, exist_ok=True)
    save_file(
        {"latents": latents.contiguous(), "decoded": decoded.contiguous()},
        os.path.join(goldens, "decode.safetensors"),
    )
    print("decoded range", decoded.min().item(), decoded.max().item(), "std", decoded.std().item())


if __name__ == "__main__":
    main()
