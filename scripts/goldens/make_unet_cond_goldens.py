"""UNet2DConditionModel goldens from diffusers for tests/unet_condition.rs.

Pinned environment: scripts/goldens/requirements.txt (diffusers 0.42.1, torch 2.9.1,
numpy 2.3.5), run on x86-64 CPU in float32:

    python scripts/goldens/make_unet_cond_goldens.py tests/goldens/unet

For each case a tiny random-weight `UNet2DConditionModel` is built under `torch.manual_seed`;
every GroupNorm and LayerNorm weight and bias is then perturbed away from PyTorch's (1, 0)
init so that a dropped or swapped norm parameter changes the output, and every parameter is
rounded to float16 (so the weights file can be stored as f16, half the size, and the
reference output is computed with exactly the weights the engine reads). The cases
(`CASES`): `cross_attn` (1×1-conv projections, one transformer layer, cross-attention in the
outer down/up blocks and the mid block) and `cross_linear` (linear projections, two
transformer layers per block, per-block head counts, class-conditional, upcast_attention).
Written under `<out>/<case>/`:

- `config.json` (`save_pretrained`) + `diffusion_pytorch_model.safetensors` (f16);
- `io.safetensors` (f32): `sample` (N, C, H, W), `timestep` (N, per-sample, one
  fractional), `encoder_hidden_states` (N, L, cross_attention_dim), `class_labels` (N) when
  the model is class-conditional, `output` (the model's `sample`), and intermediates: `emb`
  (time + class embedding), `down.<i>` (the hidden state each down block returns), `mid`,
  `up.<i>`; for `cross_attn` also `odd.sample` (1, 4, 7, 9), `odd.encoder_hidden_states`,
  `odd.timestep` and `odd.output`: a size that is not a multiple of the downsampling, where
  diffusers resizes each upsampled map to its skip's size.
"""

import os
import sys

import torch
from safetensors.torch import save_file

from diffusers import UNet2DConditionModel

CASES = {
    # 1×1-conv proj_in/proj_out, one transformer layer, 2 heads (head dims 4 and 8), an
    # odd text length and width (7 tokens of 24), non-square input.
    "cross_attn": dict(
        config=dict(
            sample_size=8,
            in_channels=4,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=24,
            attention_head_dim=2,
        ),
        shape=(2, 4, 6, 10),
        tokens=7,
        labels=None,
        # A size that is not a multiple of 2: diffusers upsamples to the skip's size.
        odd_shape=(1, 4, 7, 9),
    ),
    # Linear proj_in/proj_out, two transformer layers per block, per-block head counts
    # (`attention_head_dim` is the head count here), a class embedding, upcast_attention.
    "cross_linear": dict(
        config=dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=12,
            attention_head_dim=(2, 4),
            transformer_layers_per_block=2,
            use_linear_projection=True,
            num_class_embeds=5,
            upcast_attention=True,
            flip_sin_to_cos=False,
            freq_shift=1,
        ),
        shape=(2, 4, 4, 6),
        tokens=5,
        labels=[1, 4],
    ),
}


def main(out_dir):
    torch.set_grad_enabled(False)
    for i, (name, case) in enumerate(CASES.items()):
        torch.manual_seed(4321 + i)
        model = UNet2DConditionModel(**case["config"]).eval()
        for m in model.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.copy_(1.0 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
        for p in model.parameters():
            p.copy_(p.half().float())
        sample = torch.randn(case["shape"])
        ehs = torch.randn(case["shape"][0], case["tokens"], case["config"]["cross_attention_dim"])
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

        out = model(sample, timestep, encoder_hidden_states=ehs, class_labels=labels_t).sample
        emb = inter.pop("time_embedding")
        if "class_embedding" in inter:
            emb = emb + inter.pop("class_embedding")
        odd = {}
        if "odd_shape" in case:
            # Drawn after the main case so that its inputs stay as they were.
            hooks_off = {k: v for k, v in inter.items()}
            x_odd = torch.randn(case["odd_shape"])
            e_odd = torch.randn(case["odd_shape"][0], case["tokens"], case["config"]["cross_attention_dim"])
            t_odd = torch.tensor([321.0])
            odd = {
                "odd.sample": x_odd,
                "odd.encoder_hidden_states": e_odd,
                "odd.timestep": t_odd,
                "odd.output": model(x_odd, t_odd, encoder_hidden_states=e_odd).sample,
            }
            inter = hooks_off

        d = os.path.join(out_dir, name)
        model.save_pretrained(d, safe_serialization=True)
        weights = {k: v.half().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, os.path.join(d, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        tensors = {
            "sample": sample,
            "timestep": timestep,
            "encoder_hidden_states": ehs,
            "output": out,
            "emb": emb,
            **inter,
            **odd,
        }
        if labels is not None:
            tensors["class_labels"] = torch.tensor(labels, dtype=torch.float32)
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, os.path.join(d, "io.safetensors"))
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n} parameters, output max |x| {out.abs().max():.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/goldens/unet")
