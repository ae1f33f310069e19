"""A tiny LCM-distilled pipeline repository (a UNet with a guidance embedding,
`time_cond_proj_dim`) and a whole-pipeline golden from diffusers'
`LatentConsistencyModelPipeline`.

Pinned environment as make_tiny_sd.py (diffusers 0.42.1, transformers 5.23.0, torch 2.9.1,
numpy 2.3.5; x86-64 CPU, float32). Run after make_tiny_sd.py, whose repository it reuses:

    python scripts/goldens/make_tiny_lcm.py tests/fixtures/tiny-sd tests/fixtures/tiny-lcm tests/goldens/sd

Writes

- `<repo>/`: a diffusers `LatentConsistencyModelPipeline` folder. `unet/` is new: a
  UNet2DConditionModel with `time_cond_proj_dim` 32 (so `time_embedding.cond_proj.weight`,
  (16, 32), no bias), block_out_channels [16, 32], 8 norm groups, cross_attention_dim 32,
  random seeded weights with the norms perturbed, stored as f16 (every parameter is rounded
  to f16 first, so the golden uses exactly the weights the engine reads). `scheduler/` is
  LCMScheduler with the config the public LCM-distilled SD-1.5 checkpoints ship.
  `text_encoder/`, `tokenizer/` and `vae/` are symbolic links to the tiny SD repository's
  (`../tiny-sd/…`), so the fixture adds only the small UNet.
- `<goldens>/lcm_distilled.safetensors` and its case in `<goldens>/cases.json` (other cases
  are left as they are): 16×16 pixels, 4 steps, guidance 8 (so w = 7 and the embedding
  matters), the repository's LCMScheduler, diffusers' initial latents (`init_latents`) and
  the scheduler's three per-step draws (`noise.<k>`), `prompt_embeds` (the prompt only: no
  CFG), `ids.cond`, `w_embedding` (what the pipeline passes as `timestep_cond`), the final
  `latents` (the last step's x̂₀, `denoised`) and the decoded `image`.
- `<goldens>/guidance_embedding.safetensors`: diffusers' `get_guidance_scale_embedding` for
  the scales in `scales` (w = scale − 1 per row) at several widths, `dim.<d>` (len(scales), d),
  odd ones included (zero-padded last column), computed in float32 as the pipeline does.

The script checks that dropping the guidance embedding changes the result notably (so a
test of the pipeline fails if `cond_proj` is skipped) and prints by how much.
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from diffusers import (
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

SIZE = 16
COND_DIM = 32
COND_PROJ_GAIN = 4.0
SHARED = ("text_encoder", "tokenizer", "vae")
EMBED_SCALES = [8.0, 1.0, 0.0, 2.5, 1.5]
EMBED_DIMS = [1, 4, 7, 32, 33, 256]


def perturb_norms(model, gen):
    for mod in model.modules():
        if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and mod.weight is not None:
            with torch.no_grad():
                mod.weight.add_(0.2 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.add_(0.2 * torch.randn(mod.bias.shape, generator=gen))


def build_repo(sd_repo, repo):
    sd = StableDiffusionPipeline.from_pretrained(
        sd_repo, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(100)
    gen = torch.Generator().manual_seed(101)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
        time_cond_proj_dim=COND_DIM,
    )
    perturb_norms(unet, gen)
    # PyTorch's default init leaves the projected embedding small next to the sinusoidal
    # timestep features it is added to; a larger cond_proj makes the guidance scale change
    # the result clearly (see the check in main).
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.mul_(COND_PROJ_GAIN)
    unet.eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(p.half().float())
    sched = LCMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        original_inference_steps=50,
        prediction_type="epsilon",
        set_alpha_to_one=True,
        steps_offset=1,
        timestep_scaling=10.0,
        timestep_spacing="leading",
        clip_sample=False,
    )
    pipe = LatentConsistencyModelPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    if os.path.lexists(repo):
        shutil.rmtree(repo)
    pipe.save_pretrained(repo)
    state = {k: v.half().contiguous() for k, v in unet.state_dict().items()}
    save_file(state, os.path.join(repo, "unet", "diffusion_pytorch_model.safetensors"))
    # The components shared with the tiny SD repository become links to it.
    rel = os.path.relpath(os.path.abspath(sd_repo), os.path.abspath(repo))
    for name in SHARED:
        shutil.rmtree(os.path.join(repo, name))
        os.symlink(os.path.join(rel, name), os.path.join(repo, name))


def main(sd_repo, repo, out):
    build_repo(sd_repo, repo)
    # Read back what was written, so the golden runs on the fixture's own files.
    pipe = LatentConsistencyModelPipeline.from_pretrained(
        repo, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.time_cond_proj_dim == COND_DIM
    assert type(pipe.scheduler).__name__ == "LCMScheduler"

    lat_shape = (1, 4, SIZE // 2, SIZE // 2)
    o = dict(prompt="a red dog on the grass", negative_prompt="", steps=4, guidance=8.0,
             solver=None, width=SIZE, height=SIZE, repo="tiny-lcm")
    lat0 = torch.randn(lat_shape, generator=torch.Generator().manual_seed(70))
    g = torch.Generator().manual_seed(71)
    draws = [torch.randn(lat_shape, generator=g) for _ in range(3)]

    def run(**kw):
        with torch.no_grad():
            return pipe(o["prompt"], height=SIZE, width=SIZE, num_inference_steps=o["steps"],
                        guidance_scale=o["guidance"], latents=lat0.clone(),
                        generator=torch.Generator().manual_seed(71), output_type="latent",
                        **kw).images

    # Capture the embedding the pipeline hands the UNet.
    seen = {}
    inner = pipe.unet.forward

    def spy(*args, **kw):
        seen.setdefault("timestep_cond", kw.get("timestep_cond"))
        return inner(*args, **kw)

    pipe.unet.forward = spy
    lat = run()
    pipe.unet.forward = inner
    w_embedding = seen["timestep_cond"]
    assert w_embedding.shape == (1, COND_DIM) and w_embedding.dtype == torch.float32

    # Without the guidance embedding (cond_proj zeroed, which is what skipping it computes)
    # the result must differ notably, or the golden could not catch a dropped cond_proj.
    saved = pipe.unet.time_embedding.cond_proj.weight.detach().clone()
    with torch.no_grad():
        pipe.unet.time_embedding.cond_proj.weight.zero_()
    lat_plain = run()
    with torch.no_grad():
        pipe.unet.time_embedding.cond_proj.weight.copy_(saved)
    rel = ((lat_plain - lat).abs().max() / lat.abs().max()).item()
    print(f"latents without the guidance embedding: max relative difference {rel:.3g}")
    assert rel > 0.05, rel

    with torch.no_grad():
        prompt_embeds, _ = pipe.encode_prompt(o["prompt"], "cpu", 1, False)
        image = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    ids = torch.tensor(
        pipe.tokenizer(o["prompt"], padding="max_length", max_length=77, truncation=True).input_ids,
        dtype=torch.float32,
    )
    tensors = {"init_latents": lat0, "latents": lat, "image": image,
               "prompt_embeds": prompt_embeds, "ids.cond": ids, "w_embedding": w_embedding}
    tensors.update({f"noise.{k}": d for k, d in enumerate(draws)})
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, "lcm_distilled.safetensors"))

    scales = torch.tensor(EMBED_SCALES, dtype=torch.float32)
    emb = {"scales": scales}
    for d in EMBED_DIMS:
        # As the pipeline calls it: w = guidance_scale - 1, float32.
        emb[f"dim.{d}"] = pipe.get_guidance_scale_embedding(scales - 1, embedding_dim=d)
    emb = {k: v.float().contiguous() for k, v in emb.items()}
    save_file(emb, os.path.join(out, "guidance_embedding.safetensors"))

    path = os.path.join(out, "cases.json")
    with open(path) as f:
        cases = json.load(f)
    cases["lcm_distilled"] = o
    with open(path, "w") as f:
        json.dump(cases, f, indent=1)
    print("wrote lcm_distilled, guidance_embedding")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
