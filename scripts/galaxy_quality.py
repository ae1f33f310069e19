#!/usr/bin/env python3
"""Galaxy sample quality vs steps per solver, against a 1,000-step reference (issue 7).

Runs the `webdiffusion` CLI on a converted galaxygrad model (scripts/setup-galaxy.sh) with
one seed, so every run starts from the same initial noise, and compares each run's raw
data-space samples (`--out x.npy`) with a 1,000-step DDIM run of the same seed (the
probability-flow ODE solved finely, which the ODE solvers converge to). Numbers printed
as a Markdown table:

- rms: root-mean-square difference to the reference, divided by the reference's std
  (data space y = ln(1 + x)/0.1): how far the solver's sample is from the ODE's solution;
- spectrum: mean over radial frequency bins of |log10 P(k) − log10 P_ref(k)|, P the
  radially averaged power spectrum of the flux x = e^(0.1·y) − 1, averaged over the batch;
- histogram: 1-D Wasserstein distance between the flux values of all pixels and the
  reference's, relative to the reference's flux std.

numpy only (the galaxy venv has it):
    .cache/galaxy-venv/bin/python scripts/galaxy_quality.py --bin target/release/webdiffusion
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np


def run(binary, model, solver, steps, seed, batch, out):
    cmd = [binary, "sample", "--model", model, "--solver", solver, "--steps", str(steps),
           "--seed", str(seed), "--batch", str(batch), "--out", out, "--force"]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    secs = time.monotonic() - t0
    return np.load(out).astype(np.float64), secs


def flux(y, scale):
    return np.expm1(scale * y)


def radial_spectrum(img):
    """Radially averaged power spectrum of one (H, W) image, bins 1..H/2."""
    h, w = img.shape
    f = np.fft.fftshift(np.fft.fft2(img - img.mean()))
    p = np.abs(f) ** 2
    yy, xx = np.indices((h, w))
    r = np.hypot(yy - h // 2, xx - w // 2).astype(int)
    sums = np.bincount(r.ravel(), weights=p.ravel())
    counts = np.bincount(r.ravel())
    prof = sums / np.maximum(counts, 1)
    return prof[1:h // 2]


def spectrum_distance(a, b):
    d = []
    for x, y in zip(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])):
        px, py = radial_spectrum(x), radial_spectrum(y)
        d.append(np.mean(np.abs(np.log10(px + 1e-30) - np.log10(py + 1e-30))))
    return float(np.mean(d))


def wasserstein(a, b):
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    return float(np.mean(np.abs(a - b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/webdiffusion")
    ap.add_argument("--model", default="models/galaxy/hsc32")
    ap.add_argument("--solvers", default="ddim,dpmpp_2m,unipc,euler")
    ap.add_argument("--steps", default="5,10,20,50")
    ap.add_argument("--reference-steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--transform-scale", type=float, default=0.1)
    ap.add_argument("--work", default="/tmp/galaxy-quality")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.model, "model.safetensors")):
        sys.exit(f"galaxy_quality: {args.model} has no model.safetensors: run scripts/setup-galaxy.sh")
    os.makedirs(args.work, exist_ok=True)

    ref, ref_s = run(args.bin, args.model, "ddim", args.reference_steps, args.seed, args.batch,
                     os.path.join(args.work, "ref.npy"))
    ref_flux = flux(ref, args.transform_scale)
    print(f"reference: ddim, {args.reference_steps} steps, batch {args.batch}, seed {args.seed}: "
          f"{ref_s:.1f} s; data std {ref.std():.3f}, flux std {ref_flux.std():.4f}")
    print()
    print("| solver | steps | rms / std | spectrum (dex) | histogram / std | s per sample |")
    print("|---|---:|---:|---:|---:|---:|")
    for solver in args.solvers.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            out = os.path.join(args.work, f"{solver}_{steps}.npy")
            x, secs = run(args.bin, args.model, solver, steps, args.seed, args.batch, out)
            xf = flux(x, args.transform_scale)
            rms = float(np.sqrt(np.mean((x - ref) ** 2)) / ref.std())
            spec = spectrum_distance(xf, ref_flux)
            hist = wasserstein(xf, ref_flux) / ref_flux.std()
            print(f"| {solver} | {steps} | {rms:.4f} | {spec:.4f} | {hist:.4f} | "
                  f"{secs / args.batch:.2f} |", flush=True)


if __name__ == "__main__":
    main()
