"""Stable Diffusion component goldens (CLIP tokenizer, CLIPTextModel, AutoencoderKL) for
tests/sd_components.rs.

Pinned environment: scripts/goldens/requirements.txt (diffusers 0.42.1, torch 2.9.1,
numpy 2.3.5) plus transformers 5.23.0 (tokenizers 0.23.3), x86-64 CPU, float32:

    python scripts/goldens/make_sd_component_goldens.py tests/fixtures tests/goldens/sd

What it writes:

- `<fixtures>/tiny-clip-tokenizer/{vocab.json,merges.txt}`: a byte-level BPE vocabulary in
  CLIP's layout (the 256 byte symbols, the same with `</w>`, then merges, then the two
  special tokens), its merges learnt here by plain pair counting over a small word list (a
  real CLIP vocabulary is 49,408 tokens and not reachable offline).
- `<goldens>/tokenizer.json`: `{"prompts": [...], "ids": [[77 ids], ...], "truncated":
  [...]}` from `CLIPTokenizer(vocab, merges)(prompt, padding="max_length", max_length=77,
  truncation=True)`, and the same with `pad_token="!"` (SD 2's convention) under
  `ids_pad_bang`.
- `<fixtures>/tiny-clip-text/{config.json,model.safetensors}`: a random `CLIPTextModel`
  (hidden 32, 3 layers, 4 heads, quick_gelu; weights rounded to float16 and stored so, under
  the `text_model.` names of SD checkpoints), and
  `<goldens>/clip_text.safetensors`: `ids` (2, 77) as f32, `last` (the model's
  `last_hidden_state`), `skip1`, `skip2` (diffusers' `clip_skip` 1 and 2:
  `final_layer_norm(hidden_states[-(k + 1)])`).
- `<fixtures>/tiny-vae/{config.json,diffusion_pytorch_model.safetensors}`: a random
  `AutoencoderKL` (block_out_channels (16, 32), 1 layer per block, 8 norm groups, latent 4,
  f16 weights), and `<goldens>/vae.safetensors`: `latents` (1, 4, 4, 6) raw (as the sampler
  leaves them), `decoded` = `vae.decode(latents / scaling_factor).sample`, `image` (1, 3, 8,
  12) in [-1, 1], `mean` = posterior mean × scaling_factor, `noise`, `sampled` = (mean + std
  · noise) × scaling_factor.

Norm weights are perturbed away from (1, 0) so that a dropped norm parameter changes the
output.
"""

import json
import os
import sys
from collections import Counter

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def bytes_to_unicode():
    # GPT-2 / CLIP byte-to-symbol table: printable bytes map to themselves, the rest to
    # code points from 256 up, so every byte is one visible symbol.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


WORDS = (
    "a photo of an astronaut riding a horse on the moon, highly detailed, 4k, trending on "
    "artstation. portrait of a cat wearing a hat; oil painting by the old masters! it's "
    "don't we'll they're i've you'd she'll landscape mountain river forest sunset sunrise "
    "city street night rain neon lights cyberpunk fantasy dragon castle knight sword "
    "beautiful woman man child dog bird flower garden ocean beach sky clouds stars galaxy "
    "café naïve über straße photography cinematic lighting masterpiece best quality"
).split()


def learn_merges(n_merges):
    b2u = bytes_to_unicode()
    words = Counter()
    for w in WORDS:
        w = w.lower().strip(".,;!")
        syms = [b2u[b] for b in w.encode("utf-8")]
        if not syms:
            continue
        syms[-1] += "</w>"
        words[tuple(syms)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        # Highest count, ties by the pair itself, so the list is reproducible.
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    return merges


def write_tokenizer(out_dir):
    b2u = bytes_to_unicode()
    symbols = list(b2u.values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges = learn_merges(160)
    for a, b in merges:
        vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab)}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return vocab


PROMPTS = [
    "",
    "a photo of an astronaut riding a horse on the moon",
    "A Photo   of an ASTRONAUT,riding a horse!!! on the moon...",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nmixed",
    "it's don't we'll they're i've you'd she'll I'M",
    "numbers 1234 and 3.14159 and 1,000,000",
    "punctuation: (parens) [brackets] {braces} <angle> \"quotes\" 'single' -- ... ?!",
    "café naïve über straße",
    "cafe\u0301 decomposed (NFC makes it café)",
    "日本語のテキスト and 中文 mixed",
    "emoji 🐱🚀 and ✨sparkles✨",
    "Ελληνικά κείμενο και Русский текст",
    "a <|endoftext|> in the middle <|startoftext|>",
    "masterpiece, best quality, (highly detailed:1.2), cinematic lighting, 8k",
    "oil painting of a dragon castle at sunset " * 8,
    "x" * 300,
    "ǅungla İstanbul ΣΑΣ",
]


def tokenizer_goldens(tok_dir, goldens):
    tok = CLIPTokenizer(
        vocab=os.path.join(tok_dir, "vocab.json"), merges=os.path.join(tok_dir, "merges.txt")
    )
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    bang = CLIPTokenizer.from_pretrained(tok_dir, pad_token="!")
    ids, ids_bang, truncated = [], [], []
    for p in PROMPTS:
        e = tok(p, padding="max_length", max_length=77, truncation=True)
        ids.append(e["input_ids"])
        ids_bang.append(bang(p, padding="max_length", max_length=77, truncation=True)["input_ids"])
        full = tok(p)["input_ids"]
        truncated.append(len(full) > 77)
    with open(os.path.join(goldens, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"prompts": PROMPTS, "ids": ids, "ids_pad_bang": ids_bang, "truncated": truncated},
            f,
            ensure_ascii=False,
        )
    return ids


def perturb_and_round(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            p.copy_(p.half().float())


def half_state(model):
    return {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}


def text_goldens(vocab, ids, fixtures, goldens):
    torch.manual_seed(1)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=44,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    model = CLIPTextModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # CLIP's init (std 0.02) leaves the states close to the embeddings.
    perturb_and_round(model)
    d = os.path.join(fixtures, "tiny-clip-text")
    os.makedirs(d, exist_ok=True)
    cfg.save_pretrained(d)
    # transformers 5 names the tensors without the `text_model.` prefix that Stable
    # Diffusion checkpoints (saved by transformers 4) carry; store them as SD does.
    state = {"text_model." + k: v for k, v in half_state(model).items()}
    save_file(state, os.path.join(d, "model.safetensors"))
    x = torch.tensor([ids[2], ids[14]])
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        fl = model.final_layer_norm
        res = {
            "ids": x.float(),
            "last": out.last_hidden_state,
            "skip1": fl(out.hidden_states[-2]),
            "skip2": fl(out.hidden_states[-3]),
        }
    save_file({k: v.contiguous() for k, v in res.items()}, os.path.join(goldens, "clip_text.safetensors"))


def vae_goldens(fixtures, goldens):
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=0.18215,
    ).eval()
    perturb_and_round(vae)
    d = os.path.join(fixtures, "tiny-vae")
    os.makedirs(d, exist_ok=True)
    vae.save_config(d)
    save_file(half_state(vae), os.path.join(d, "diffusion_pytorch_model.safetensors"))
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 4, 6, generator=g) * 0.8
    image = torch.rand(1, 3, 8, 12, generator=g) * 2 - 1
    noise = torch.randn(1, 4, 4, 6, generator=g)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        decoded = vae.decode(latents / sf).sample
        dist = vae.encode(image).latent_dist
        res = {
            "latents": latents,
            "decoded": decoded,
            "image": image,
            "mean": dist.mean * sf,
            "noise": noise,
            "sampled": (dist.mean + dist.std * noise) * sf,
        }
    save_file({k: v.contiguous() for k, v in res.items()}, os.path.join(goldens, "vae.safetensors"))


def main():
    fixtures, goldens = sys.argv[1], sys.argv[2]
    os.makedirs(goldens, exist_ok=True)
    tok_dir = os.path.join(fixtures, "tiny-clip-tokenizer")
    vocab = write_tokenizer(tok_dir)
    ids = tokenizer_goldens(tok_dir, goldens)
    text_goldens(vocab, ids, fixtures, goldens)
    vae_goldens(fixtures, goldens)


if __name__ == "__main__":
    main()
