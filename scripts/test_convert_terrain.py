#!/usr/bin/env python3
"""Bad-input checks of scripts/convert_terrain.py on mutated copies of the real graph.

Run by tests/terrain.rs with the venv of scripts/setup-terrain.sh (onnx 1.23.2, numpy 2.3.5):
    .cache/terrain-venv/bin/python scripts/test_convert_terrain.py .cache/terrain/terrain.onnx
Each case mutates one node; the converter must stop with a GraphError naming that node.
"""

import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_terrain as ct  # noqa: E402


def expect_error(model, node_name, what):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mutated.onnx"
        onnx.save(model, str(path))
        try:
            ct.convert(path, Path(d) / "out")
        except ct.GraphError as e:
            msg = str(e)
            if node_name not in msg:
                sys.exit(f"FAIL {what}: error does not name node {node_name!r}: {msg}")
            print(f"ok   {what}: {msg}")
            return
    sys.exit(f"FAIL {what}: the converter accepted the mutated graph")


def main():
    src = sys.argv[1]
    # 1. The SiLU after a GroupNorm becomes a Tanh: the norm no longer reaches its conv
    #    through recognised ops.
    m = onnx.load(src)
    norm = next(n for n in m.graph.node if n.op_type == "InstanceNormalization")
    out = norm.output[0]
    cons = {i: n for n in m.graph.node for i in n.input}
    # Follow Reshape -> Mul -> Add to the first Sigmoid on the norm's path.
    node = cons[out]
    for _ in range(2):
        node = cons[node.output[0]]
    sig = next(n for n in m.graph.node if n.op_type == "Sigmoid" and n.input[0] == node.output[0])
    sig.op_type = "Tanh"
    expect_error(m, sig.name, "an unknown op after a GroupNorm")

    # 2. A GroupNorm whose InstanceNormalization has a non-identity affine.
    m = onnx.load(src)
    norm = next(n for n in m.graph.node if n.op_type == "InstanceNormalization")
    scale = next(t for t in m.graph.initializer if t.name == norm.input[1])
    arr = onnx.numpy_helper.to_array(scale).copy()
    arr[0] = 2.0
    new = onnx.numpy_helper.from_array(arr, name=scale.name + "_mut")
    m.graph.initializer.append(new)
    norm.input[1] = new.name
    expect_error(m, norm.name, "a GroupNorm with a non-identity instance-norm affine")

    # 3. The attention's qkv split into two parts instead of three (not the new QKV order).
    m = onnx.load(src)
    split = next(n for n in m.graph.node
                 if n.op_type == "Split" and len(n.output) == 3)
    split.output.pop()
    expect_error(m, split.name, "a qkv split that is not q, k, v")
    print("all converter bad-input cases passed")


if __name__ == "__main__":
    main()
