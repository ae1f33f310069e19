"""Exports a diffusers UNet2DModel (default: the bundled digit model, models/mnist) to ONNX
for the ONNX Runtime peers of the benchmark (scripts/bench_peers.py on the CPU, the browser
bench page with onnxruntime-web's WebGPU execution provider).

Pinned versions: scripts/bench-requirements.txt (torch 2.9.1, diffusers 0.42.1, onnx,
onnxruntime). scripts/bench.sh creates the venv and calls this.

    python scripts/export_unet_onnx.py [--model models/mnist] [--out .cache/onnx] [--batch 1,4]

Writes, per batch size B, `unet_b{B}.onnx` (float32, opset 17, static shapes) with inputs
`sample` [B, C, H, W] float32, `timestep` [B] float32 and, for a class-conditional model,
`class_labels` [B] int64, and output `out` [B, C_out, H, W]; plus `export.json` (versions,
shapes and the parity below). The exported graph is run with onnxruntime's CPU EP on a
random input and compared with the diffusers forward; the script fails when they differ by
more than 1e-4 relative to the output's largest magnitude.
"""

import argparse
import json
import pathlib
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from diffusers import UNet2DModel

import diffusers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OPSET = 17
TOLERANCE = 1e-4


class Forward(torch.nn.Module):
    """The UNet as a function of plain tensors (diffusers returns a dataclass)."""

    def __init__(self, unet, conditional):
        super().__init__()
        self.unet = unet
        self.conditional = conditional

    def forward(self, sample, timestep, class_labels=None):
        return self.unet(sample, timestep, class_labels=class_labels).sample


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=pathlib.Path, default=ROOT / "models" / "mnist")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / ".cache" / "onnx")
    ap.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
    args = ap.parse_args()

    if not (args.model / "config.json").is_file():
        sys.exit(
            f"export: {args.model} has no config.json; give a diffusers UNet2DModel folder "
            "(config.json + safetensors weights) with --model"
        )
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        sys.exit(f"export: --batch must be comma-separated integers, got {args.batch!r}")
    if not batches or min(batches) < 1:
        sys.exit(f"export: every --batch size must be at least 1, got {args.batch!r}")

    # The tracer's notes on diffusers' shape asserts and the legacy-exporter notice are
    # expected here (static shapes, one graph per batch size).
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    unet = UNet2DModel.from_pretrained(args.model, low_cpu_mem_usage=False).float().eval()
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    conditional = cfg.num_class_embeds is not None
    model = Forward(unet, conditional).eval()
    args.out.mkdir(parents=True, exist_ok=True)

    gen = torch.Generator().manual_seed(0)
    files = []
    for b in batches:
        x = torch.randn(b, cfg.in_channels, size, size, generator=gen)
        t = torch.linspace(999.0, 1.0, b)
        inputs = (x, t)
        names = ["sample", "timestep"]
        if conditional:
            labels = torch.arange(b, dtype=torch.long) % cfg.num_class_embeds
            inputs = (x, t, labels)
            names.append("class_labels")
        path = args.out / f"unet_b{b}.onnx"
        with torch.inference_mode():
            reference = model(*inputs).numpy()
        # The TorchScript exporter: static shapes, one graph per batch size.
        torch.onnx.export(
            model,
            inputs,
            str(path),
            input_names=names,
            output_names=["out"],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        onnx.checker.check_model(str(path))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {n: v.numpy() for n, v in zip(names, inputs)}
        got = sess.run(["out"], feed)[0]
        diff = float(np.abs(got - reference).max())
        rel = diff / float(np.abs(reference).max())
        ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
        print(
            f"{path}: batch {b}, {path.stat().st_size} bytes, opset {OPSET}; "
            f"onnxruntime vs diffusers max |Δ| = {diff:.3e} ({rel:.3e} of max |out|)"
        )
        if not rel <= TOLERANCE:
            sys.exit(
                f"export: the ONNX graph for batch {b} differs from diffusers by {rel:.3e} "
                f"(relative), more than {TOLERANCE}; the export is wrong"
            )
        files.append(
            {
                "batch": b,
                "file": path.name,
                "bytes": path.stat().st_size,
                "inputs": {n: list(v.shape) for n, v in zip(names, inputs)},
                "max_abs_diff_vs_diffusers": diff,
                "rel_diff_vs_diffusers": rel,
                "op_types": ops,
            }
        )
    meta = {
        "model": str(args.model.resolve().relative_to(ROOT))
        if args.model.resolve().is_relative_to(ROOT)
        else str(args.model),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "opset": OPSET,
        "sample_size": size,
        "in_channels": cfg.in_channels,
        "num_class_embeds": cfg.num_class_embeds,
        "files": files,
    }
    (args.out / "export.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
