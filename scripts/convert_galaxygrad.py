#!/usr/bin/env python3
"""Convert galaxygrad 0.2.1's equinox score networks to safetensors + a config of ours.

The wheel (`pip download --no-deps galaxygrad==0.2.1`, checked against its sha256 by
scripts/setup-galaxy.sh) declares no licence, so the weights are converted on the user's
machine and never committed. Each `eqx_*.eqx` is `equinox.tree_serialise_leaves` output: one
`np.save` record per array leaf of the `ScoreNet` pytree, in dataclass field order
(galaxygrad/models_eqx.py):

    conv_in.weight (C, in+1, p, p), conv_in.bias (C, 1, 1),
    conv_out.weight (in, C, p, p), conv_out.bias (in, 1, 1),
    blocks[b]: patch_mixer  (MLP P→M→P: (M, P), (M,), (P, M), (P,)),
               hidden_mixer (MLP C→K→C: (K, C), (K,), (C, K), (C,)),
               norm1 (C, P) weight and bias, norm2 (P, C) weight and bias,
    norm (C, P) weight and bias, t1 (a float64 scalar).

The records are read with `np.load(allow_pickle=False)` only (no JAX or equinox needed), each
checked against the shape the architecture implies; a mismatch or a missing / extra record
names the record index and what was expected there.

Output per network (into OUT/<name>/): `model.safetensors` with equinox's names
(`blocks.0.patch_mixer.layers.0.weight`, ...; biases flattened to vectors; `conv_out.weight`
kept in equinox's (out, in, kh, kw) layout and orientation: src/models/mixer.rs flips it at
load) and `config.json` (`_class_name: "GalaxyScoreNet"`, read by src/models/mixer.rs).

    python3 scripts/convert_galaxygrad.py WHEEL --out models/galaxy [--models hsc32,hsc64]

Pinned: Python 3.11, numpy 2.3.5.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

# name -> (file in the wheel, image size); all four wrap their net in y = ln(1 + x)/0.1.
MODELS = {
    "hsc32": ("galaxygrad/eqx_hsc_ScoreNet32.eqx", 32),
    "hsc64": ("galaxygrad/eqx_hsc_ScoreNet64.eqx", 64),
    "ztf32": ("galaxygrad/eqx_ZTF_ScoreNet32.eqx", 32),
    "ztf64": ("galaxygrad/eqx_ZTF_ScoreNet64.eqx", 64),
}
# galaxygrad/scorenet.py's constructor arguments (the same for every network).
PATCH = 4
HIDDEN = 64
MIX_PATCH = 512
MIX_HIDDEN = 512
BLOCKS = 4
IN_CHANNELS = 1
T1 = 10.0
# The HSC/ZTF wrappers: x_ = log(x + 1)/sigma with sigma = 0.1.
TRANSFORM_SCALE = 0.1


class RecordError(Exception):
    pass


def expected_records(size):
    """(name, shape) of every leaf in tree_serialise_leaves order."""
    p = (size // PATCH) ** 2
    c, m, k = HIDDEN, MIX_PATCH, MIX_HIDDEN
    recs = [
        ("conv_in.weight", (c, IN_CHANNELS + 1, PATCH, PATCH)),
        ("conv_in.bias", (c, 1, 1)),
        ("conv_out.weight", (IN_CHANNELS, c, PATCH, PATCH)),
        ("conv_out.bias", (IN_CHANNELS, 1, 1)),
    ]
    for b in range(BLOCKS):
        pre = f"blocks.{b}"
        recs += [
            (f"{pre}.patch_mixer.layers.0.weight", (m, p)),
            (f"{pre}.patch_mixer.layers.0.bias", (m,)),
            (f"{pre}.patch_mixer.layers.1.weight", (p, m)),
            (f"{pre}.patch_mixer.layers.1.bias", (p,)),
            (f"{pre}.hidden_mixer.layers.0.weight", (k, c)),
            (f"{pre}.hidden_mixer.layers.0.bias", (k,)),
            (f"{pre}.hidden_mixer.layers.1.weight", (c, k)),
            (f"{pre}.hidden_mixer.layers.1.bias", (c,)),
            (f"{pre}.norm1.weight", (c, p)),
            (f"{pre}.norm1.bias", (c, p)),
            (f"{pre}.norm2.weight", (p, c)),
            (f"{pre}.norm2.bias", (p, c)),
        ]
    recs += [("norm.weight", (c, p)), ("norm.bias", (c, p)), ("t1", ())]
    return recs


def read_records(blob: bytes, what: str):
    """Every np.save record in `blob`, in order."""
    f = io.BytesIO(blob)
    out = []
    while f.tell() < len(blob):
        try:
            out.append(np.load(f, allow_pickle=False))
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise RecordError(f"{what}: record {len(out)} is not a numpy array ({e})") from e
    return out


def load_leaves(blob: bytes, size: int, what: str):
    recs = read_records(blob, what)
    want = expected_records(size)
    for i, (name, shape) in enumerate(want):
        if i >= len(recs):
            raise RecordError(
                f"{what}: {len(recs)} records, expected {len(want)}: record {i} ({name} "
                f"{shape}) is missing - not galaxygrad 0.2.1's {size}x{size} ScoreNet")
        got = recs[i]
        if tuple(got.shape) != shape or got.dtype.kind != "f":
            raise RecordError(
                f"{what}: record {i} should be {name} with shape {shape} (float), got shape "
                f"{tuple(got.shape)} dtype {got.dtype} - not galaxygrad 0.2.1's "
                f"{size}x{size} ScoreNet")
    if len(recs) != len(want):
        raise RecordError(
            f"{what}: {len(recs)} records, expected {len(want)} (record {len(want)} onwards "
            f"is extra) - not galaxygrad 0.2.1's {size}x{size} ScoreNet")
    t1 = float(recs[-1])
    if t1 != T1:
        raise RecordError(f"{what}: record {len(want) - 1} (t1) is {t1}, expected {T1}")
    return {name: recs[i] for i, (name, _) in enumerate(want[:-1])}


def write_safetensors(path: Path, tensors, source: str):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "equinox", "source": source}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    tmp.replace(path)


def convert(wheel: Path, out: Path, names):
    with zipfile.ZipFile(wheel) as z:
        members = set(z.namelist())
        for name in names:
            member, size = MODELS[name]
            if member not in members:
                raise RecordError(f"{wheel} has no {member}: not galaxygrad 0.2.1's layout")
            leaves = load_leaves(z.read(member), size, f"{wheel.name}:{member}")
            # equinox keeps biases as (C, 1, 1) to broadcast over images; ours are vectors.
            for k in ("conv_in.bias", "conv_out.bias"):
                leaves[k] = leaves[k].reshape(-1)
            dest = out / name
            dest.mkdir(parents=True, exist_ok=True)
            source = f"galaxygrad 0.2.1 {member} (no licence declared: do not redistribute)"
            write_safetensors(dest / "model.safetensors", leaves, source)
            config = {
                "_class_name": "GalaxyScoreNet",
                "_source": source + ", converted by scripts/convert_galaxygrad.py",
                "in_channels": IN_CHANNELS,
                "sample_size": size,
                "patch_size": PATCH,
                "hidden_size": HIDDEN,
                "mix_patch_size": MIX_PATCH,
                "mix_hidden_size": MIX_HIDDEN,
                "num_blocks": BLOCKS,
                "norm_eps": 1e-5,
                "t1": T1,
                "beta": 1.0,
                "transform_scale": TRANSFORM_SCALE,
                "render": "asinh",
            }
            (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            total = sum(int(np.prod(v.shape)) for v in leaves.values())
            print(f"convert_galaxygrad: {name}: {len(leaves)} tensors ({total} parameters) "
                  f"-> {dest}/")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="hsc32,hsc64,ztf32,ztf64",
                    help=f"comma separated, from {', '.join(MODELS)}")
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n]
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        ap.error(f"--models {args.models}: valid names are {', '.join(MODELS)}")
    try:
        convert(args.wheel, args.out, names)
    except (RecordError, zipfile.BadZipFile) as e:
        print(f"convert_galaxygrad: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
