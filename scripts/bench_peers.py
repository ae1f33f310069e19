"""The engine's peers on the CPU, timed like `webdiffusion bench`, on the same model weights:
PyTorch + diffusers, and ONNX Runtime's CPU execution provider running the UNet exported by
scripts/export_unet_onnx.py (the scheduler maths from diffusers' schedulers in both).

Pinned: scripts/bench-requirements.txt (torch 2.9.1, diffusers 0.42.1, numpy 2.3.5, onnx,
onnxruntime). scripts/bench.sh runs all of it in one command.

    target/release/webdiffusion bench --json bench.json
    python scripts/export_unet_onnx.py                      # .cache/onnx/unet_b{1,4}.onnx
    python scripts/bench_peers.py --ours bench.json [--onnx .cache/onnx] [--json peers.json] [--quick]

Times the UNet forward per batch size (median of repeats after a warm-up, float32, no
autograd) and full sampling per image with diffusers' schedulers for the same solvers and
steps as the engine's JSON, then prints them side by side with the ratios ours / theirs
(< 1: the engine is faster). Without --onnx (or when its folder lacks unet_b{B}.onnx for a
batch) the ONNX Runtime column is left out and said so. Both peers get the same number of
threads (torch's default, the core count). Run it right after the bench, on an otherwise
idle machine if possible: every run uses every core.
"""

import argparse
import json
import pathlib
import statistics
import sys
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


class OrtUnet:
    """The exported UNet of one batch size through onnxruntime's CPU EP, called like the
    diffusers model (returns the noise prediction as a torch tensor)."""

    def __init__(self, path, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = {i.name for i in self.sess.get_inputs()}

    def __call__(self, x, t, labels):
        b = x.shape[0]
        feed = {
            "sample": x.numpy(),
            "timestep": torch.full((b,), float(t), dtype=torch.float32).numpy(),
        }
        if "class_labels" in self.names:
            feed["class_labels"] = labels.numpy()
        return torch.from_numpy(self.sess.run(["out"], feed)[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ours", type=pathlib.Path, help="JSON from `webdiffusion bench --json`")
    ap.add_argument("--model", type=pathlib.Path, default=ROOT / "models" / "mnist")
    ap.add_argument(
        "--onnx",
        type=pathlib.Path,
        help="folder with unet_b{B}.onnx from scripts/export_unet_onnx.py (ONNX Runtime peer)",
    )
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    if args.ours and not args.ours.is_file():
        sys.exit(f"bench_peers: {args.ours} does not exist; run `webdiffusion bench --json {args.ours}` first")
    if args.onnx and not args.onnx.is_dir():
        sys.exit(f"bench_peers: {args.onnx} is not a folder; run scripts/export_unet_onnx.py --out {args.onnx}")
    ours = json.loads(args.ours.read_text()) if args.ours else None
    unet = UNet2DModel.from_pretrained(args.model, low_cpu_mem_usage=False).float().eval()
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
    sample_repeats = 1 if args.quick else 2
    solvers = [s["solver"] for s in ours["sampling"]] if ours else list(SCHEDULERS)
    steps = ours["sampling"][0]["steps"] if ours and ours["sampling"] else (4 if args.quick else 20)
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)

    peers = {"torch": lambda x, t, labels: unet(x, t, class_labels=labels).sample}
    ort_sessions = {}
    result = {"torch": torch.__version__, "threads": threads, "unet_forward": [], "sampling": []}
    if args.onnx:
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
        for b in batches:
            path = args.onnx / f"unet_b{b}.onnx"
            if path.is_file():
                ort_sessions[b] = OrtUnet(path, threads)
            else:
                print(f"no {path}: ONNX Runtime left out at batch {b} (export it with --batch {b})")
        if ort_sessions:
            peers["ort"] = lambda x, t, labels: ort_sessions[x.shape[0]](x, t, labels)

    with torch.inference_mode():
        for b in batches:
            x = torch.randn(b, cfg.in_channels, size, size, generator=gen)
            labels = torch.zeros(b, dtype=torch.long) if cfg.num_class_embeds else None
            row = {"batch": b}
            for peer, f in peers.items():
                if peer == "ort" and b not in ort_sessions:
                    continue
                row[f"{peer}_ms_median"] = median_ms(lambda: f(x, 500, labels), repeats)
            result["unet_forward"].append(row)
        labels = torch.zeros(1, dtype=torch.long) if cfg.num_class_embeds else None
        for name in solvers:
            if name not in SCHEDULERS:
                print(f"skipping {name}: no diffusers scheduler mapped in bench_peers.py")
                continue
            row = {"solver": name, "steps": steps}
            for peer, f in peers.items():
                if peer == "ort" and 1 not in ort_sessions:
                    continue

                def run():
                    s = SCHEDULERS[name](sched_cfg)
                    s.set_timesteps(steps)
                    x = torch.randn(1, cfg.in_channels, size, size, generator=gen)
                    x = x * s.init_noise_sigma
                    for t in s.timesteps:
                        eps = f(s.scale_model_input(x, t), t, labels)
                        x = s.step(eps, t, x).prev_sample
                    return x

                row[f"{peer}_ms_per_image_median"] = median_ms(run, sample_repeats)
            result["sampling"].append(row)

    def ours_value(part, key, value, field):
        rows = ours[part] if ours else []
        return next((g[field] for g in rows if g[key] == value), None)

    names = [p for p in peers]
    head = f"{'':<16} {'ours ms':>10}" + "".join(f" {p + ' ms':>10}" for p in names)
    head += "".join(f" {'ours/' + p:>10}" for p in names)

    def line(label, o, theirs):
        cells = f"{label:<16} " + (f"{o:>10.1f}" if o is not None else f"{'n/a':>10}")
        cells += "".join(f" {v:>10.1f}" if v is not None else f" {'n/a':>10}" for v in theirs)
        cells += "".join(
            f" {o / v:>10.2f}" if (o is not None and v) else f" {'n/a':>10}" for v in theirs
        )
        print(cells)
        return {p: (o / v if (o is not None and v) else None) for p, v in zip(names, theirs)}

    print(f"\nPyTorch {torch.__version__}" + (f", onnxruntime {result['onnxruntime']} (CPU EP)" if "onnxruntime" in result else "") + f" on the CPU, {threads} threads")
    print("UNet forward" + head[12:])
    for f in result["unet_forward"]:
        o = ours_value("unet_forward", "batch", f["batch"], "wall_ms_median")
        f["ours_ms_median"] = o
        f["ratio_ours_over"] = line(f"batch {f['batch']}", o, [f.get(f"{p}_ms_median") for p in names])
    print(f"sampling, {steps} st" + head[len(f"sampling, {steps} st"):])
    for s in result["sampling"]:
        o = ours_value("sampling", "solver", s["solver"], "ms_per_image_median")
        s["ours_ms_per_image_median"] = o
        s["ratio_ours_over"] = line(s["solver"], o, [s.get(f"{p}_ms_per_image_median") for p in names])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
