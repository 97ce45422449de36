#!/usr/bin/env python3
"""Writes a model larger than 2 GB with its weights in external data files, for the benchmark:
a stack of 1x1 Conv -> BatchNormalization -> Relu layers on [1, C, 2, 2].

    python3 scripts/make_large_model.py OUT_DIR [--gib 2.2] [--channels 4096] [--files 2]

Weights are written straight to the data files a layer at a time (never the whole model in
memory); `--files` spreads them over several data files, as some exporters do."""
import argparse
import os

import numpy as np
from onnx import TensorProto, helper


def external_tensor(name, dims, location, offset, length):
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--gib", type=float, default=2.2)
    ap.add_argument("--channels", type=int, default=4096)
    ap.add_argument("--files", type=int, default=2)
    args = ap.parse_args()
    c = args.channels
    layer_bytes = c * c * 4
    layers = max(1, int(args.gib * (1 << 30) / layer_bytes) + 1)
    os.makedirs(args.out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    files = [open(os.path.join(args.out_dir, f"large.data{k}"), "wb") for k in range(args.files)]
    offsets = [0] * args.files
    inits, nodes = [], []
    x = "x"
    for i in range(layers):
        k = i % args.files
        location = f"large.data{k}"
        w = (rng.standard_normal((c, c, 1, 1), dtype=np.float32) / np.sqrt(c)).astype(np.float32)
        files[k].write(w.tobytes())
        inits.append(external_tensor(f"w{i}", [c, c, 1, 1], location, offsets[k], w.nbytes))
        offsets[k] += w.nbytes
        for name, values in (
            (f"g{i}", rng.uniform(0.5, 1.5, c)),
            (f"b{i}", rng.uniform(-0.5, 0.5, c)),
            (f"m{i}", rng.uniform(-0.5, 0.5, c)),
            (f"v{i}", rng.uniform(0.5, 2.0, c)),
        ):
            inits.append(helper.make_tensor(name, TensorProto.FLOAT, [c], values.astype(np.float32).tobytes(), raw=True))
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"),
            helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"], name=f"bn{i}"),
            helper.make_node("Relu", [f"n{i}"], [f"y{i}"], name=f"relu{i}"),
        ]
        x = f"y{i}"
    for f in files:
        f.close()
    graph = helper.make_graph(
        nodes, "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 2, 2])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, 2, 2])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = os.path.join(args.out_dir, "large.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    total = sum(offsets)
    print(f"{path}: {layers} layers, {total / (1 << 30):.2f} GiB in {args.files} data files, largest tensor {layer_bytes >> 20} MiB")


if __name__ == "__main__":
    main()
