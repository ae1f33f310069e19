"""UNet2DModel goldens from diffusers for tests/unet.rs.

Pinned environment: scripts/goldens/requirements.txt (diffusers 0.42.1, torch 2.9.1,
numpy 2.3.5), run on x86-64 CPU in float32:

    python scripts/goldens/make_unet_goldens.py tests/goldens/unet

For each case a small random-weight `UNet2DModel` is built under `torch.manual_seed`; every
GroupNorm weight and bias is then perturbed away from PyTorch's (1, 0) init so that a dropped
or swapped norm parameter changes the output. The cases (`CASES`): `uncond_attn`,
`class_cond` and `plain`. Written under `<out>/<case>/`:

- `config.json` + `diffusion_pytorch_model.safetensors` (f32): the model folder, exactly as
  `save_pretrained` writes it;
- `io.safetensors`: `sample` (N, C, H, W), `timestep` (N) as float32 (per-sample, one of them
  fractional), `class_labels` (N) as float32 when the model is class-conditional, `output`
  (the model's `sample`), and intermediates: `emb` (time + class embedding), `down.<i>` (the
  hidden state each down block returns), `mid`, `up.<i>`.
"""

import os
import sys

import torch
from safetensors.torch import save_file

from diffusers import UNet2DModel

CASES = {
    # Unconditional, attention in the inner down block and the first up block, default
    # time scale shift, conv downsampling with padding 1, non-square input.
    "uncond_attn": dict(
        config=dict(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
            flip_sin_to_cos=True,
            freq_shift=0,
        ),
        shape=(2, 3, 8, 12),
        labels=None,
    ),
    # Class-conditional, attention in the outer blocks (one head of 16 channels), scale_shift
    # resnets (so the mid attention has no group norm), the downsample_padding=0 quirk
    # (pad right/bottom by one), centred input, sin-first embedding with freq_shift 1, and a
    # mid-block output scale factor.
    "class_cond": dict(
        config=dict(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            attention_head_dim=None,
            num_class_embeds=10,
            resnet_time_scale_shift="scale_shift",
            downsample_padding=0,
            center_input_sample=True,
            flip_sin_to_cos=False,
            freq_shift=1,
            mid_block_scale_factor=1.414,
        ),
        shape=(2, 3, 6, 10),
        labels=[3, 7],
    ),
    # No attention anywhere (mid block without attention), two layers per block, a custom
    # time embedding width and eps, different in/out channels.
    "plain": dict(
        config=dict(
            sample_size=8,
            in_channels=2,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=2,
            norm_num_groups=4,
            norm_eps=1e-6,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            add_attention=False,
            time_embedding_dim=24,
        ),
        shape=(2, 2, 4, 6),
        labels=None,
    ),
}


def main(out_dir):
    torch.set_grad_enabled(False)
    for i, (name, case) in enumerate(CASES.items()):
        torch.manual_seed(1234 + i)
        model = UNet2DModel(**case["config"]).eval()
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1.0 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
        sample = torch.randn(case["shape"])
        timestep = torch.tensor([10.0, 999.5])
        labels = case["labels"]
        labels_t = None if labels is None else torch.tensor(labels)

        inter = {}

        def hook(key):
            def f(_module, _inputs, output):
                h = output[0] if isinstance(output, tuple) else output
                inter[key] = h.detach().clone()

            return f

        for j, b in enumerate(model.down_blocks):
            b.register_forward_hook(hook(f"down.{j}"))
        model.mid_block.register_forward_hook(hook("mid"))
        for j, b in enumerate(model.up_blocks):
            b.register_forward_hook(hook(f"up.{j}"))
        model.time_embedding.register_forward_hook(hook("time_embedding"))
        if model.class_embedding is not None:
            model.class_embedding.register_forward_hook(hook("class_embedding"))

        out = model(sample, timestep, class_labels=labels_t).sample
        emb = inter.pop("time_embedding")
        if "class_embedding" in inter:
            emb = emb + inter.pop("class_embedding")

        d = os.path.join(out_dir, name)
        model.save_pretrained(d, safe_serialization=True)
        tensors = {
            "sample": sample,
            "timestep": timestep,
            "output": out,
            "emb": emb,
            **inter,
        }
        if labels is not None:
            tensors["class_labels"] = torch.tensor(labels, dtype=torch.float32)
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, os.path.join(d, "io.safetensors"))
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n} parameters, output max |x| {out.abs().max():.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/goldens/unet")
