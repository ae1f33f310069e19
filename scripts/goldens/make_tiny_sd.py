"""A tiny random-weight Stable Diffusion repository and whole-pipeline goldens from diffusers.

Pinned environment (x86-64 CPU, float32): diffusers 0.42.1, transformers 5.23.0,
torch 2.9.1, numpy 2.3.5, safetensors (as in scripts/goldens/requirements.txt):

    python scripts/goldens/make_tiny_sd.py tests/fixtures/tiny-sd tests/goldens/sd

Writes

- `<repo>/`: a diffusers `StableDiffusionPipeline` folder laid out as SD 1.5's:
  `model_index.json`, `unet/` (UNet2DConditionModel, block_out_channels [32, 64],
  cross_attention_dim 32, attention_head_dim 8, layers_per_block 1, sample_size 8; stored
  as **f16** to exercise that path and halve the file: every parameter is rounded to f16
  first, so the golden is computed with exactly the weights the engine reads), `vae/`
  (AutoencoderKL [32, 64], 4 latent channels, f16 likewise: a VAE factor of 2),
  `text_encoder/` (CLIPTextModel, hidden 32, 2 layers, **f32**), `tokenizer/` (a hand-built byte-level BPE: CLIP's 512 byte symbols, the
  merges learned from a few words, and the two special tokens; loadable by
  `CLIPTokenizer`), `scheduler/` (SD 1.5's PNDMScheduler config). Norm weights and biases
  are perturbed away from (1, 0) so a dropped norm parameter changes the output.
- `<goldens>/<case>.safetensors` (f32) and `<goldens>/cases.json` (the options of each
  case). Each file holds `init_latents` (unit-variance latents fed to diffusers as
  `latents=`, or for img2img the two unit normals the pipeline draws), `noise.<k>` (the
  solver's own draws, in diffusers' order), `prompt_embeds` (uncond then cond, as the
  UNet sees them), `ids.cond`/`ids.uncond`, `latents` (the final latents, before the VAE)
  and `image` (the VAE decoder's output in [-1, 1], before diffusers' postprocessing).

Cases (16×16 pixels, 8×8 latents, so lavapipe runs each in seconds):
- `txt2img`: PNDM from scheduler/, 5 steps, CFG 7.5, prompt + negative prompt.
- `img2img`: DDIM (η = 0), 5 steps, strength 0.6 (3 steps run), CFG 7.5; the init image
  (`init_image`, [0, 1], exact multiples of 1/255 so its PNG `init.png` is lossless) is
  encoded with the posterior *sample* mean + std·e₁ and noised with e₂, both drawn from
  the pipeline's generator in that order (checked below against a run that skips the
  posterior draw).
- `lcm`: LCMScheduler (from the repo's config), 4 steps, guidance 1 (no CFG).
- `turbo`: EulerAncestral with trailing spacing, 1 step, guidance 0 (SD-Turbo's recipe).
"""

import json
import os
import sys
from collections import Counter

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SIZE = 16
CORPUS = "a photo of a cat , a red dog on the grass , blurry low quality , ugly , cat cat photo"
N_MERGES = 40


def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte → printable-character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer(out_dir):
    """CLIP's vocab layout: 256 byte symbols, the same with `</w>`, merges, specials."""
    b2u = bytes_to_unicode()
    base = list(b2u.values())
    vocab = base + [c + "</w>" for c in base]
    words = Counter(CORPUS.split())
    seqs = {w: [b2u[b] for b in w.encode()] for w in words}
    for w in seqs:
        seqs[w][-1] += "</w>"
    merges = []
    for _ in range(N_MERGES):
        pairs = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        # Most frequent, ties broken by the pair itself so the result is reproducible.
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab.append(a + b)
        for w, s in seqs.items():
            i, t = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    t.append(a + b)
                    i += 2
                else:
                    t.append(s[i])
                    i += 1
            seqs[w] = t
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    tok = CLIPTokenizer(
        os.path.join(out_dir, "vocab.json"),
        os.path.join(out_dir, "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )
    return tok, len(vocab)


def perturb_norms(model, gen):
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and mod.weight is not None:
            with torch.no_grad():
                mod.weight.add_(0.2 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.add_(0.2 * torch.randn(mod.bias.shape, generator=gen))


def build_pipeline(repo):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    tok, vocab_size = build_tokenizer(os.path.join(repo, "tokenizer"))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=SIZE,
    )
    te = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    )
    for m in (unet, vae, te):
        perturb_norms(m, gen)
        m.eval()
    # The UNet and the VAE are stored as f16: compute with exactly those values.
    with torch.no_grad():
        for p in list(unet.parameters()) + list(vae.parameters()):
            p.copy_(p.half().float())
    sched = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(repo)
    # Replace the UNet's and the VAE's f32 files by f16 (the same values).
    for name, m in (("unet", unet), ("vae", vae)):
        sd = {k: v.half().contiguous() for k, v in m.state_dict().items()}
        save_file(sd, os.path.join(repo, name, "diffusion_pytorch_model.safetensors"))
    return pipe


def randn(shape, g):
    return torch.randn(shape, generator=g, dtype=torch.float32)


def decode(pipe, latents):
    with torch.no_grad():
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample


def embeds(pipe, prompt, negative, cfg):
    with torch.no_grad():
        c, u = pipe.encode_prompt(prompt, "cpu", 1, cfg, negative)
    return torch.cat([u, c]) if cfg else c


def ids(pipe, text):
    return torch.tensor(
        pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids,
        dtype=torch.float32,
    )


def main(repo, out):
    os.makedirs(out, exist_ok=True)
    pipe = build_pipeline(repo)
    lat_shape = (1, 4, SIZE // 2, SIZE // 2)
    cases = {}

    def save(name, opts, tensors):
        tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
        save_file(tensors, os.path.join(out, f"{name}.safetensors"))
        cases[name] = opts

    # txt2img: the repo's PNDM, CFG with a negative prompt.
    o = dict(prompt="a photo of a cat", negative_prompt="blurry, ugly", steps=5,
             guidance=7.5, solver=None, width=SIZE, height=SIZE)
    lat0 = randn(lat_shape, torch.Generator().manual_seed(10))
    with torch.no_grad():
        lat = pipe(o["prompt"], negative_prompt=o["negative_prompt"], height=SIZE, width=SIZE,
                   num_inference_steps=5, guidance_scale=7.5, latents=lat0.clone(),
                   output_type="latent").images
    save("txt2img", o, {"init_latents": lat0, "latents": lat, "image": decode(pipe, lat),
                        "prompt_embeds": embeds(pipe, o["prompt"], o["negative_prompt"], True),
                        "ids.cond": ids(pipe, o["prompt"]),
                        "ids.uncond": ids(pipe, o["negative_prompt"])})

    # img2img: DDIM, strength 0.6.
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    i2i.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    i2i.set_progress_bar_config(disable=True)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    img8 = torch.stack([(xx * 16 + 7) % 256, (yy * 16 + 3) % 256, ((xx + yy) * 8 + 50) % 256])
    Image.fromarray(img8.permute(1, 2, 0).numpy().astype(np.uint8)).save(
        os.path.join(out, "init.png"))
    init = (img8.float() / 255.0)[None]
    o = dict(prompt="a red dog", negative_prompt="low quality", steps=5, guidance=7.5,
             strength=0.6, solver="ddim", width=SIZE, height=SIZE)
    g = torch.Generator().manual_seed(20)
    e1, e2 = randn(lat_shape, g), randn(lat_shape, g)
    with torch.no_grad():
        lat = i2i(o["prompt"], image=init, strength=0.6, negative_prompt=o["negative_prompt"],
                  num_inference_steps=5, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(20), output_type="latent").images
        # The draw order: the posterior sample (e1), then the forward noise (e2). Check it
        # by handing the pipeline the encoded latents (4 channels: no posterior draw) and a
        # generator whose next draw is e2.
        dist = pipe.vae.encode(init * 2 - 1).latent_dist
        enc = (dist.mean + dist.std * e1) * pipe.vae.config.scaling_factor
        g2 = torch.Generator().manual_seed(20)
        randn(lat_shape, g2)
        lat_check = i2i(o["prompt"], image=enc, strength=0.6,
                        negative_prompt=o["negative_prompt"], num_inference_steps=5,
                        guidance_scale=7.5, generator=g2, output_type="latent").images
    assert torch.allclose(lat, lat_check, atol=1e-6), "img2img draw order changed"
    save("img2img", o, {"init_image": init, "noise.posterior": e1, "noise.forward": e2,
                        "encoded": enc, "latents": lat, "image": decode(pipe, lat),
                        "prompt_embeds": embeds(pipe, o["prompt"], o["negative_prompt"], True)})

    # LCM: 4 steps, no CFG; the scheduler draws noise after every step but the last.
    lcm = StableDiffusionPipeline(**pipe.components, requires_safety_checker=False)
    lcm.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    lcm.set_progress_bar_config(disable=True)
    o = dict(prompt="a cat on the grass", negative_prompt="", steps=4, guidance=1.0,
             solver="lcm", width=SIZE, height=SIZE)
    lat0 = randn(lat_shape, torch.Generator().manual_seed(30))
    g = torch.Generator().manual_seed(31)
    draws = [randn(lat_shape, g) for _ in range(3)]
    with torch.no_grad():
        lat = lcm(o["prompt"], height=SIZE, width=SIZE, num_inference_steps=4,
                  guidance_scale=1.0, latents=lat0.clone(),
                  generator=torch.Generator().manual_seed(31), output_type="latent").images
    t = {"init_latents": lat0, "latents": lat, "image": decode(pipe, lat),
         "prompt_embeds": embeds(pipe, o["prompt"], None, False)}
    t.update({f"noise.{k}": d for k, d in enumerate(draws)})
    save("lcm", o, t)

    # Turbo-style: EulerAncestral, trailing spacing, one step, guidance 0.
    turbo = StableDiffusionPipeline(**pipe.components, requires_safety_checker=False)
    turbo.scheduler = EulerAncestralDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing")
    turbo.set_progress_bar_config(disable=True)
    o = dict(prompt="a photo of a dog", negative_prompt="", steps=1, guidance=0.0,
             solver="euler_ancestral", timestep_spacing="trailing", width=SIZE, height=SIZE)
    lat0 = randn(lat_shape, torch.Generator().manual_seed(40))
    g = torch.Generator().manual_seed(41)
    draws = [randn(lat_shape, g)]
    with torch.no_grad():
        lat = turbo(o["prompt"], height=SIZE, width=SIZE, num_inference_steps=1,
                    guidance_scale=0.0, latents=lat0.clone(),
                    generator=torch.Generator().manual_seed(41), output_type="latent").images
    save("turbo", o, {"init_latents": lat0, "latents": lat, "image": decode(pipe, lat),
                      "noise.0": draws[0],
                      "prompt_embeds": embeds(pipe, o["prompt"], None, False)})

    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
