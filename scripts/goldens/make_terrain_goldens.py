#!/usr/bin/env python3
"""Parity goldens for the terrain consistency model: onnxruntime on the original ONNX graph.

Pinned (scripts/setup-terrain.sh installs them into .cache/terrain-venv): Python 3.11,
onnxruntime 1.31.1 (CPUExecutionProvider), onnx 1.23.2, numpy 2.3.5; the graph is
`terrain_consistency_unet_difficulty100.onnx` from adaptive-terrain-diffusion 0.4.2
(wheel sha256 dd803be2...c84d).

Inputs are not stored: tests/terrain.rs regenerates them from SEED with the same splitmix64
stream as tests/ops/common.rs (`Rng::uniform`): for sample b and pixel (i, j)
    x = 0.5·sin(2π·i/128)·cos(2π·j/128) + σ_b·√3·u,   u uniform in [−1, 1)
(unit-variance noise on a smooth surface), with σ = 80, 2, 0.1 and difficulty 0.5, 0, 1.
Written: tests/goldens/terrain/denoised.npy (3, 1, 128, 128) float32 and cases.json.

    .cache/terrain-venv/bin/python scripts/goldens/make_terrain_goldens.py [--bench]
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / ".cache/terrain/terrain.onnx"
OUT = ROOT / "tests/goldens/terrain"
SEED = 7
SIGMAS = [80.0, 2.0, 0.1]
DIFFICULTY = [0.5, 0.0, 1.0]
SIZE = 128
M64 = (1 << 64) - 1


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


def inputs():
    n = SIZE * SIZE
    u = splitmix_uniform(SEED, len(SIGMAS) * n).reshape(len(SIGMAS), 1, SIZE, SIZE)
    i = np.arange(SIZE, dtype=np.float64)[:, None]
    j = np.arange(SIZE, dtype=np.float64)[None, :]
    base = 0.5 * np.sin(2 * math.pi * i / SIZE) * np.cos(2 * math.pi * j / SIZE)
    x = np.empty_like(u)
    for b, s in enumerate(SIGMAS):
        x[b, 0] = (base + s * math.sqrt(3.0) * u[b, 0].astype(np.float64)).astype(np.float32)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true", help="also time batches 1 and 3")
    args = ap.parse_args()
    sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    x = inputs()
    feeds = {
        "noisy": x,
        "sigma": np.array(SIGMAS, dtype=np.float32),
        "difficulty": np.array(DIFFICULTY, dtype=np.float32),
    }
    (y,) = sess.run(["denoised"], feeds)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / "denoised.npy", y.astype(np.float32))
    (OUT / "cases.json").write_text(json.dumps({
        "seed": SEED, "sigmas": SIGMAS, "difficulty": DIFFICULTY, "size": SIZE,
        "onnxruntime": ort.__version__,
    }, indent=2) + "\n")
    print("max |y| per sample:", np.abs(y).reshape(len(SIGMAS), -1).max(1))
    if args.bench:
        for batch in (1, 3, 8):
            f = {
                "noisy": np.resize(x, (batch, 1, SIZE, SIZE)).astype(np.float32),
                "sigma": np.full(batch, 80.0, np.float32),
                "difficulty": np.full(batch, 0.5, np.float32),
            }
            sess.run(["denoised"], f)
            t = time.perf_counter()
            reps = 3
            for _ in range(reps):
                sess.run(["denoised"], f)
            dt = (time.perf_counter() - t) / reps
            print(f"onnxruntime CPU ({ort.get_device()}), batch {batch}: {dt * 1000:.0f} ms per forward")


if __name__ == "__main__":
    main()
