"""PyTorch + diffusers on the CPU, timed like `webdiffusion bench`, on the same model weights.

Pinned: torch 2.9.1, diffusers 0.42.1, numpy 2.3.5 (the project's golden venv).

    target/release/webdiffusion bench --json bench.json
    python scripts/bench_peers.py --ours bench.json [--json peers.json] [--quick]

Times the UNet forward per batch size (median of repeats after a warm-up, float32, no
autograd) and full sampling per image with diffusers' schedulers for the same solvers and
steps as the engine's JSON, then prints both side by side with the ratio ours / theirs
(< 1: the engine is faster). Run it right after the bench, on an otherwise idle machine if
possible: both use every core.
"""

import argparse
import json
import pathlib
import statistics
import time

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The engine's solver names and the diffusers schedulers they mirror.
SCHEDULERS = {
    "dpmpp_2m": lambda cfg: DPMSolverMultistepScheduler.from_config(
        cfg, algorithm_type="dpmsolver++", solver_order=2
    ),
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "unipc": lambda cfg: UniPCMultistepScheduler.from_config(cfg),
}


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", type=pathlib.Path, help="JSON from `webdiffusion bench --json`")
    ap.add_argument("--model", type=pathlib.Path, default=ROOT / "models" / "mnist")
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    ours = json.loads(args.ours.read_text()) if args.ours else None
    unet = UNet2DModel.from_pretrained(args.model).float().eval()
    sched_cfg = DDIMScheduler.load_config(args.model)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    if args.quick:
        batches = [1]
    elif ours:
        batches = [f["batch"] for f in ours["unet_forward"]]
    else:
        batches = [1, 4]
    repeats = 2 if args.quick else 5
    solvers = [s["solver"] for s in ours["sampling"]] if ours else list(SCHEDULERS)
    steps = ours["sampling"][0]["steps"] if ours else (4 if args.quick else 20)
    gen = torch.Generator().manual_seed(0)

    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "unet_forward": [],
        "sampling": [],
    }
    with torch.inference_mode():
        for b in batches:
            x = torch.randn(b, cfg.in_channels, size, size, generator=gen)
            labels = torch.zeros(b, dtype=torch.long) if cfg.num_class_embeds else None
            t = torch.tensor(500)
            ms = median_ms(lambda: unet(x, t, class_labels=labels), repeats)
            result["unet_forward"].append({"batch": b, "wall_ms_median": ms})
        labels = torch.zeros(1, dtype=torch.long) if cfg.num_class_embeds else None
        for name in solvers:
            if name not in SCHEDULERS:
                print(f"skipping {name}: no diffusers scheduler mapped in bench_peers.py")
                continue

            def run():
                s = SCHEDULERS[name](sched_cfg)
                s.set_timesteps(steps)
                x = torch.randn(1, cfg.in_channels, size, size, generator=gen)
                x = x * s.init_noise_sigma
                for t in s.timesteps:
                    eps = unet(s.scale_model_input(x, t), t, class_labels=labels).sample
                    x = s.step(eps, t, x).prev_sample
                return x

            ms = median_ms(run, 1 if args.quick else 2)
            result["sampling"].append({"solver": name, "steps": steps, "ms_per_image_median": ms})

    def ours_value(part, key, value, field):
        rows = ours[part] if ours else []
        return next((g[field] for g in rows if g[key] == value), None)

    def row(label, o, theirs):
        ratio = f"{o / theirs:.2f}" if o else "n/a"
        print(f"{label:<14} {o or float('nan'):>10.1f} {theirs:>10.1f} {ratio:>11}")

    print(f"PyTorch {torch.__version__} on the CPU, {torch.get_num_threads()} threads")
    print(f"{'UNet forward':<14} {'ours ms':>10} {'torch ms':>10} {'ours/torch':>11}")
    for f in result["unet_forward"]:
        o = ours_value("unet_forward", "batch", f["batch"], "wall_ms_median")
        row(f"batch {f['batch']}", o, f["wall_ms_median"])
    print(f"{'sampling':<14} {'ours ms':>10} {'torch ms':>10} {'ours/torch':>11}")
    for s in result["sampling"]:
        o = ours_value("sampling", "solver", s["solver"], "ms_per_image_median")
        row(s["solver"], o, s["ms_per_image_median"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
