#!/usr/bin/env python3
"""Convert the terrain consistency model's ONNX graph to a safetensors file + our config.

The ONNX file ships inside the `adaptive-terrain-diffusion==0.4.2` wheel (MIT). It holds an
OpenAI guided-diffusion / consistency-models `UNetModel` with the EDM wrapper of Karras et
al. (2022) around it. The parameters keep their PyTorch names (`network.input_blocks.1.0.
in_layers.2.weight`, ...) except the 139 GroupNorm affine pairs, which the exporter turned
into anonymous constants (`val_45`, `val_47`, ...) once it lowered GroupNorm to
InstanceNormalization + Mul + Add. We recover each pair's name from the convolution the norm
feeds (`X.in_layers.2` <- `X.in_layers.0`, `X.out_layers.3` <- `X.out_layers.0`, `X.qkv` <-
`X.norm`, `out.2` <- `out.0`).

Everything we rely on is checked against the graph instead of assumed: the GroupNorm pattern
(group count, eps, an identity InstanceNormalization affine), the EDM constants (σ_min,
σ_data, the 250 of c_noise, the clip), the timestep frequencies, the attention's QKV order
(split into three equal chunks, the "new" order) and the output clip. A node that does not
fit the expected structure stops the conversion with its name.

Output (into --out): `model.safetensors` (guided-diffusion names, no `network.` prefix) and
`config.json` (our format, read by `src/models/guided.rs`).

Pinned: Python 3.11, onnx 1.23.2, numpy 2.3.5 (scripts/setup-terrain.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


class GraphError(Exception):
    pass


def fail(node, what):
    name = node.name if node is not None else "<graph>"
    op = node.op_type if node is not None else ""
    raise GraphError(f"unrecognised ONNX structure at node '{name}' ({op}): {what}")


class Graph:
    def __init__(self, model):
        g = model.graph
        self.g = g
        self.init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.init[n.output[0]] = numpy_helper.to_array(a.t)
        self.consumers = defaultdict(list)
        self.producer = {}
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
            for o in n.output:
                self.producer[o] = n

    def const(self, name, node):
        if name not in self.init:
            fail(node, f"input '{name}' is not a constant")
        return self.init[name]

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default


# Ops a GroupNorm output may pass through before reaching the convolution it feeds.
PASS_THROUGH = {"Mul", "Add", "Sigmoid", "Reshape", "AveragePool", "Resize", "Unsqueeze"}

NORM_OF_CONV = [
    (re.compile(r"^(.*)\.in_layers\.2$"), r"\1.in_layers.0"),
    (re.compile(r"^(.*)\.out_layers\.3$"), r"\1.out_layers.0"),
    (re.compile(r"^(.*)\.qkv$"), r"\1.norm"),
    (re.compile(r"^out\.2$"), "out.0"),
]

PREFIX = "network."


def strip(name):
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def group_norms(gr: Graph):
    """Yields (norm name, weight, bias, groups, eps) for every InstanceNormalization."""
    for n in gr.g.node:
        if n.op_type != "InstanceNormalization":
            continue
        eps = gr.attr(n, "epsilon")
        scale = gr.const(n.input[1], n)
        shift = gr.const(n.input[2], n)
        if not (np.all(scale == 1) and np.all(shift == 0)):
            fail(n, "InstanceNormalization with a non-identity affine (expected GroupNorm lowering)")
        pre = gr.producer.get(n.input[0])
        if pre is None or pre.op_type != "Reshape":
            fail(n, "input is not a Reshape to (N, groups, -1)")
        shape = gr.const(pre.input[1], pre)
        if shape.tolist()[0] != 0 or shape.tolist()[2] != -1 or len(shape) != 3:
            fail(pre, f"GroupNorm reshape {shape.tolist()} is not [0, groups, -1]")
        groups = int(shape[1])
        back = gr.consumers[n.output[0]]
        if len(back) != 1 or back[0].op_type != "Reshape":
            fail(n, "output is not reshaped back to the input's shape")
        mul = gr.consumers[back[0].output[0]]
        if len(mul) != 1 or mul[0].op_type != "Mul":
            fail(back[0], "GroupNorm weight Mul missing")
        mul = mul[0]
        add = gr.consumers[mul.output[0]]
        if len(add) != 1 or add[0].op_type != "Add":
            fail(mul, "GroupNorm bias Add missing")
        add = add[0]
        weight = gr.const(mul.input[1], mul)
        bias = gr.const(add.input[1], add)
        if weight.ndim != 3 or weight.shape[1:] != (1, 1) or bias.shape != weight.shape:
            fail(mul, f"GroupNorm affine shapes {weight.shape}, {bias.shape} are not (C, 1, 1)")
        conv = feeding_conv(gr, add)
        target = strip(conv.input[1])
        if not target.endswith(".weight"):
            fail(conv, f"conv weight '{conv.input[1]}' has no '.weight' name")
        target = target[: -len(".weight")]
        for pattern, repl in NORM_OF_CONV:
            if pattern.match(target):
                yield pattern.sub(repl, target), weight.reshape(-1), bias.reshape(-1), groups, eps, n
                break
        else:
            fail(conv, f"a GroupNorm feeds conv '{target}', which is not in_layers.2, "
                       "out_layers.3, qkv or out.2")


def feeding_conv(gr: Graph, start):
    """The one Conv reached from `start` through elementwise and reshaping ops only."""
    found = {}
    seen = set()
    stack = [start]
    while stack:
        node = stack.pop()
        for out in node.output:
            for c in gr.consumers[out]:
                if id(c) in seen:
                    continue
                seen.add(id(c))
                if c.op_type == "Conv":
                    # Only as the data input: a norm must not be a conv's weight.
                    if c.input[0] != out:
                        fail(c, "a GroupNorm output reaches a Conv's weight input")
                    found[c.name] = c
                elif c.op_type in PASS_THROUGH:
                    stack.append(c)
                elif c.op_type == "Concat":
                    continue  # a skip path into an output block: not the norm's consumer
                else:
                    fail(c, f"a GroupNorm output flows into {c.op_type}")
    if len(found) != 1:
        fail(start, f"GroupNorm output reaches {len(found)} convolutions, expected 1")
    return next(iter(found.values()))


def check_edm(gr: Graph):
    """Finds the EDM constants by following the graph's inputs; returns them."""
    by_op = defaultdict(list)
    for n in gr.g.node:
        by_op[n.op_type].append(n)
    # c_noise = scale · ln σ
    if len(by_op["Log"]) != 1:
        fail(None, "expected one Log (c_noise)")
    log = by_op["Log"][0]
    if log.input[0] != "sigma":
        fail(log, "Log does not take the sigma input")
    (mul,) = gr.consumers[log.output[0]]
    c_noise = float(gr.const(mul.input[1], mul))
    # σ − σ_min
    subs = by_op["Sub"]
    if len(subs) != 1 or subs[0].input[0] != "sigma":
        fail(subs[0] if subs else None, "expected one Sub sigma − sigma_min")
    sigma_min = float(gr.const(subs[0].input[1], subs[0]))
    # c_skip: σ_d² / ((σ − σ_min)² + σ_d²): the Add after the Pow of the Sub
    pow1 = [c for c in gr.consumers[subs[0].output[0]] if c.op_type == "Pow"]
    if len(pow1) != 1:
        fail(subs[0], "σ − σ_min is not squared (c_skip)")
    (add,) = gr.consumers[pow1[0].output[0]]
    sd2 = float(gr.const(add.input[1], add))
    sigma_data = math.sqrt(sd2)
    clip = by_op["Clip"]
    if len(clip) != 1 or clip[0].output[0] not in [o.name for o in gr.g.output]:
        fail(clip[0] if clip else None, "the output is not one Clip")
    lo = float(gr.const(clip[0].input[1], clip[0]))
    hi = float(gr.const(clip[0].input[2], clip[0]))
    # The timestep frequencies: (1, half) constant multiplied with c_noise.
    freqs = None
    for n in by_op["Mul"]:
        for i in n.input:
            if i in gr.init and gr.init[i].ndim == 2 and gr.init[i].shape[0] == 1:
                freqs = gr.init[i].reshape(-1)
    if freqs is None:
        fail(None, "no timestep frequency table found")
    half = freqs.size
    max_period = float(np.exp(-np.log(freqs[1]) * half)) if half > 1 else 10000.0
    expect = np.exp(-math.log(round(max_period)) * np.arange(half, dtype=np.float64) / half)
    if np.max(np.abs(freqs - expect) / expect) > 1e-6:
        fail(None, f"timestep frequencies are not exp(−ln(P)·j/{half}): {freqs[:4]}")
    cat = None
    for n in by_op["Concat"]:
        ins = [gr.producer.get(i) for i in n.input]
        if all(p is not None for p in ins) and [p.op_type for p in ins] == ["Cos", "Sin"]:
            cat = n
    if cat is None:
        fail(None, "timestep embedding is not cat(cos, sin)")
    return {
        "sigma_min": round(sigma_min, 9),
        "sigma_data": round(sigma_data, 9),
        "c_noise_scale": c_noise,
        # Not in the graph: the σ the package's generator starts from (generator.py).
        "sigma_max": 80.0,
        "clip": [lo, hi],
        "max_period": round(max_period),
        "flip_sin_to_cos": True,
    }


def check_attention(gr: Graph, names):
    """Every qkv conv's output is split into three equal chunks (QKVAttention, new order)."""
    heads = {}
    for n in gr.g.node:
        if n.op_type != "Conv" or not n.input[1].endswith(".qkv.weight"):
            continue
        (view,) = gr.consumers[n.output[0]]
        if view.op_type != "Reshape":
            fail(view, "qkv output is not reshaped to (B, 3C, T)")
        (split,) = gr.consumers[view.output[0]]
        if split.op_type != "Split" or len(split.output) != 3 or gr.attr(split, "axis") != 1:
            fail(split, "qkv is not split into q, k, v along channels (new QKV order)")
        # q is scaled and reshaped to (B·H, ch, T): the reshape's second entry is ch.
        (qmul,) = gr.consumers[split.output[0]]
        scale = float(gr.const(qmul.input[1], qmul))
        ch = round(scale ** -4)
        c = int(names[strip(n.input[1])].shape[1])
        if abs(scale - ch ** -0.25) > 1e-6 or c % ch:
            fail(qmul, f"q scale {scale} is not head_dim^(-1/4) for {c} channels")
        heads[strip(n.input[1])[: -len(".qkv.weight")]] = ch
    return heads


def infer_arch(w):
    """The UNetModel hyperparameters implied by the parameter names and shapes."""
    mc = w["input_blocks.0.0.weight"].shape[0]
    in_ch = w["input_blocks.0.0.weight"].shape[1]
    out_ch = w["out.2.weight"].shape[0]
    n_in = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("input_blocks."))
    # ResBlock widths per input block; down-sampling resblocks keep their width.
    widths, downs = [], []
    for i in range(1, n_in):
        widths.append(w[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
    # Levels: runs of blocks; a level ends with a down block unless it is the last.
    # With num_res_blocks r and L levels: n_in − 1 = L·r + (L − 1).
    for r in range(1, n_in):
        if (n_in - 1 + 1) % (r + 1) == 0:
            levels = (n_in - 1 + 1) // (r + 1)
            mult = [widths[l * (r + 1)] // mc for l in range(levels)]
            ok = all(widths[l * (r + 1) + j] == mult[l] * mc for l in range(levels)
                     for j in range(r))
            n_out = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("output_blocks."))
            if ok and n_out == levels * (r + 1):
                break
    else:
        raise GraphError("cannot infer num_res_blocks / channel_mult from input_blocks")
    attn = set()
    for l in range(levels):
        for j in range(r):
            if f"input_blocks.{1 + l * (r + 1) + j}.1.qkv.weight" in w:
                attn.add(2 ** l)
    return {
        "in_channels": int(in_ch),
        "out_channels": int(out_ch),
        "model_channels": int(mc),
        "channel_mult": [int(m) for m in mult],
        "num_res_blocks": int(r),
        "attention_resolutions": sorted(attn),
        "time_embed_dim": int(w["time_embed.0.weight"].shape[0]),
        "label_dim": int(w["label_emb.0.weight"].shape[1]) if "label_emb.0.weight" in w else 0,
    }


def write_safetensors(path: Path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "pt", "source": "adaptive-terrain-diffusion 0.4.2 ONNX"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    tmp.replace(path)


def convert(onnx_path: Path, out: Path):
    model = onnx.load(str(onnx_path))
    gr = Graph(model)
    ins = [i.name for i in gr.g.input]
    if ins != ["noisy", "sigma", "difficulty"]:
        fail(None, f"inputs are {ins}, expected ['noisy', 'sigma', 'difficulty']")
    weights = {strip(k): v for k, v in gr.init.items() if k.startswith(PREFIX)}
    groups = set()
    eps = set()
    for name, wt, b, g, e, node in group_norms(gr):
        for suffix, arr in (("weight", wt), ("bias", b)):
            key = f"{name}.{suffix}"
            if key in weights:
                fail(node, f"two GroupNorms map to '{name}'")
            weights[key] = arr
        groups.add(g)
        eps.add(round(float(e), 9))
    if len(groups) != 1 or len(eps) != 1:
        fail(None, f"GroupNorms disagree: groups {groups}, eps {eps}")
    arch = infer_arch(weights)
    heads = check_attention(gr, weights)
    head_dims = set(heads.values())
    if len(head_dims) != 1:
        fail(None, f"attention blocks use different head dims {head_dims}")
    edm = check_edm(gr)
    config = {
        "_class_name": "GuidedUNetModel",
        "_source": "adaptive-terrain-diffusion 0.4.2 (MIT), converted by scripts/convert_terrain.py",
        **arch,
        "num_head_channels": head_dims.pop(),
        "use_scale_shift_norm": True,
        "resblock_updown": True,
        "use_new_attention_order": True,
        "norm_groups": groups.pop(),
        "norm_eps": eps.pop(),
        "sample_size": int(gr.g.input[0].type.tensor_type.shape.dim[2].dim_value),
        "condition": {"name": "difficulty", "min": 0.0, "max": 1.0},
        "edm": edm,
        "render": "relief",
    }
    # The structure our Rust model expects is checked when it loads (missing or extra
    # tensors are errors there); here we only make sure every GroupNorm was recovered.
    n_norms = sum(1 for k in weights if re.search(r"(layers\.0|\.norm|^out\.0)\.weight$", k))
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "model.safetensors", weights)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    total = sum(int(np.prod(v.shape)) for v in weights.values())
    print(f"convert_terrain: {len(weights)} tensors ({total} parameters, {n_norms} group norms) "
          f"-> {out}/model.safetensors, config.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        convert(args.onnx, args.out)
    except GraphError as e:
        print(f"convert_terrain: {args.onnx}: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
