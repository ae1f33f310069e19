#!/usr/bin/env python3
"""Parity goldens for the galaxygrad 0.2.1 score networks: an independent numpy forward.

No JAX or equinox: the forward below follows galaxygrad/models_eqx.py and equinox's layer
definitions literally, in float64, on the leaves read straight from the wheel's .eqx files
(not from our converted safetensors), so the converter's naming and reshaping are checked
too. ConvTranspose2d is computed the way equinox computes it: the input dilated by the
stride, padded by k − 1 − p, and cross-correlated with the kernel as stored (equinox does not
flip it; src/models/mixer.rs flips it at load to use a standard transposed convolution).

Pinned: Python 3.11, numpy 2.3.5 (scripts/setup-galaxy.sh installs numpy into
.cache/galaxy-venv); the wheel is galaxygrad 0.2.1 (sha256 56fd8f02...8a97).

Inputs are not stored: tests/galaxy.rs regenerates them from SEED with the splitmix64 stream
of tests/ops/common.rs (`Rng::uniform(-1, 1)`): sample b is y = 4·(1 + sin(2π·i/H)·cos(2π·j/W))
·α_b + σ_b·√3·u with α_b = e^(−t_b/2), σ_b = √(1 − e^(−t_b)) at t = 0.01, 1, 10 (a smooth
positive image, diffused). Written into tests/goldens/galaxy/:
  hsc32_score.npy   (3, 1, 32, 32) float32, the raw ScoreNet output (the score in y-space)
  hsc64_score.npy   (3, 1, 16, 16) float32, every 4th pixel of the 64 px output (size: KBs)
  cases.json

    .cache/galaxy-venv/bin/python scripts/goldens/make_galaxy_goldens.py [--wheel WHEEL]
"""

import argparse
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WHEEL = ROOT / ".cache/galaxy/galaxygrad-0.2.1-py3-none-any.whl"
OUT = ROOT / "tests/goldens/galaxy"
SEED = 11
TIMES = [0.01, 1.0, 10.0]
M64 = (1 << 64) - 1
EPS = 1e-5  # equinox LayerNorm default
PATCH = 4


def splitmix_uniform(seed, n):
    """tests/ops/common.rs `Rng::uniform(-1, 1)`: (next_u64 >> 40) / 2^24 in float32."""
    out = np.empty(n, dtype=np.float32)
    state = seed
    for k in range(n):
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        u = np.float32(z >> 40) / np.float32(1 << 24)
        out[k] = np.float32(-1.0) + np.float32(2.0) * u
    return out


def inputs(size):
    n = size * size
    u = splitmix_uniform(SEED, len(TIMES) * n).reshape(len(TIMES), 1, size, size)
    i = np.arange(size, dtype=np.float64)[:, None]
    j = np.arange(size, dtype=np.float64)[None, :]
    base = 4.0 * (1.0 + np.sin(2 * math.pi * i / size) * np.cos(2 * math.pi * j / size))
    x = np.empty_like(u)
    for b, t in enumerate(TIMES):
        a, s = math.exp(-t / 2), math.sqrt(-math.expm1(-t))
        x[b, 0] = (a * base + s * math.sqrt(3.0) * u[b, 0].astype(np.float64)).astype(np.float32)
    return x


def leaves(wheel, member):
    with zipfile.ZipFile(wheel) as z:
        f = io.BytesIO(z.read(member))
    recs = []
    while f.tell() < len(f.getbuffer()):
        recs.append(np.load(f, allow_pickle=False).astype(np.float64))
    return recs


def layer_norm(x, w, b):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / np.sqrt(var + EPS) * w + b


def mlp(x, w0, b0, w1, b1):
    # eqx.nn.MLP(depth=1): Linear, relu, Linear (no final activation); applied per row.
    return np.maximum(x @ w0.T + b0, 0.0) @ w1.T + b1


def conv_patch(x, w, b):
    """eqx.nn.Conv2d, kernel = stride = 4, no padding: a cross-correlation."""
    c, h, wd = x.shape
    k = w.shape[-1]
    out = np.zeros((w.shape[0], h // k, wd // k))
    for i in range(h // k):
        for j in range(wd // k):
            patch = x[:, i * k:(i + 1) * k, j * k:(j + 1) * k]
            out[:, i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2]))
    return out + b


def conv_transpose_eqx(x, w, b, stride):
    """eqx.nn.ConvTranspose2d (padding 0): lhs-dilate by the stride, pad k − 1, correlate."""
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    dil = np.zeros((c, (h - 1) * stride + 1, (wd - 1) * stride + 1))
    dil[:, ::stride, ::stride] = x
    pad = np.pad(dil, ((0, 0), (k - 1, k - 1), (k - 1, k - 1)))
    ho, wo = pad.shape[1] - k + 1, pad.shape[2] - k + 1
    out = np.zeros((o, ho, wo))
    for u in range(k):
        for v in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, u, v], pad[:, u:u + ho, v:v + wo])
    return out + b


def forward(recs, y, t):
    """galaxygrad ScoreNet.__call__ for one image y (1, H, W) at time t."""
    t1 = float(recs[-1])
    _, h, w = y.shape
    inp = np.concatenate([y, np.full((1, h, w), t / t1)])
    z = conv_patch(inp, recs[0], recs[1])
    c, ph, pw = z.shape
    z = z.reshape(c, ph * pw)
    r = 4
    for _ in range(4):
        pm, hm = recs[r:r + 4], recs[r + 4:r + 8]
        n1w, n1b, n2w, n2b = recs[r + 8:r + 12]
        r += 12
        z = z + mlp(layer_norm(z, n1w, n1b), *pm)
        z = z.T
        z = z + mlp(layer_norm(z, n2w, n2b), *hm)
        z = z.T
    z = layer_norm(z, recs[r], recs[r + 1])
    z = z.reshape(c, ph, pw)
    return conv_transpose_eqx(z, recs[2], recs[3], PATCH)


def corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", type=Path, default=WHEEL)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    cases = {"seed": SEED, "times": TIMES, "numpy": np.__version__, "models": {}}
    for name, member, size, sub in [
        ("hsc32", "galaxygrad/eqx_hsc_ScoreNet32.eqx", 32, 1),
        ("hsc64", "galaxygrad/eqx_hsc_ScoreNet64.eqx", 64, 4),
    ]:
        recs = leaves(args.wheel, member)
        x = inputs(size).astype(np.float64)
        out = np.stack([forward(recs, x[b], t) for b, t in enumerate(TIMES)])
        # Sanity: at t = 10 the input is almost pure noise, whose score is −x/σ.
        s = math.sqrt(-math.expm1(-TIMES[-1]))
        c = corr(out[-1], -x[-1] / s)
        # The same check with the kernel flipped tells which orientation the weights want.
        flipped = recs[:2] + [recs[2][:, :, ::-1, ::-1]] + recs[3:]
        cf = corr(forward(flipped, x[-1], TIMES[-1]), -x[-1] / s)
        print(f"{name}: corr(score, -x/sigma) at t=10: {c:.5f} (kernel flipped: {cf:.5f}); "
              f"max |score| per t {np.abs(out).reshape(3, -1).max(1)}")
        np.save(OUT / f"{name}_score.npy", out[:, :, ::sub, ::sub].astype(np.float32))
        cases["models"][name] = {"member": member, "size": size, "subsample": sub,
                                 "corr_t10": c, "corr_t10_flipped_kernel": cf}
    (OUT / "cases.json").write_text(json.dumps(cases, indent=2) + "\n")


if __name__ == "__main__":
    main()
