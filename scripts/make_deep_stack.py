#!/usr/bin/env python3
"""A deep stack for the proof's no-false-alarm test: 128 blocks of Conv (8 channels, 3x3, pad 1,
no bias) -> BatchNormalization -> Relu on a [1, 8, 8, 8] input, with realistic statistics: each
BN's running mean and variance are measured on the real input of its layer (a batch of 16
propagated through the stack in float64), then perturbed (mean by 5% of the std, variance by
+-20%); every eighth layer has one channel with near-zero weights, so its variance is close to
epsilon, and a small gamma, as training leaves a channel that carries nothing. The network is
numerically tame: onnxruntime with and without its own optimizations agrees to ~1e-6. Writes fixtures/deep_stack_conv_bn_128.onnx and adds it to
fixtures/manifest.json. Needs onnx and numpy; seeded, so it writes the same bytes every time.

    python3 scripts/make_deep_stack.py"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures")
NAME = "deep_stack_conv_bn_128.onnx"
BLOCKS, CHANNELS, SIZE, BATCH, EPS = 128, 8, 8, 16, 1e-5


def conv3x3(x, w):
    """Same-padded 3x3 convolution of [N, C, H, W] by [O, C, 3, 3], in float64."""
    n, c, h, wd = x.shape
    padded = np.zeros((n, c, h + 2, wd + 2))
    padded[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, w.shape[0], h, wd))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, dy:dy + h, dx:dx + wd], w[:, :, dy, dx])
    return out


def main():
    rng = np.random.default_rng(128)
    x = rng.standard_normal((BATCH, CHANNELS, SIZE, SIZE))
    nodes, inits = [], []
    data = "x"
    for i in range(BLOCKS):
        # Close to the identity, as the layers of a trained deep network are close to smooth
        # maps: a random deep ReLU stack with batch statistics is chaotic (its own float error
        # grows to O(1), so no comparison of outputs means anything).
        w = rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) * (0.3 / np.sqrt(CHANNELS * 9))
        w[:, :, 1, 1] += np.eye(CHANNELS)
        dead = rng.integers(CHANNELS) if i % 8 == 0 else None
        if dead is not None:
            w[dead] *= 1e-3  # a nearly dead channel: its variance is near epsilon
        w = w.astype(np.float32)
        y = conv3x3(x, w.astype(np.float64))
        mean, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
        mean = mean + 0.05 * np.sqrt(var) * rng.standard_normal(CHANNELS)
        var = var * rng.uniform(0.8, 1.2, CHANNELS)
        gamma = rng.normal(1.0, 0.1, CHANNELS)
        if dead is not None:
            gamma[dead] = 0.01  # as training leaves a channel that carries nothing
        beta = rng.normal(1.0, 0.1, CHANNELS)  # most units alive after the ReLU, as in trained nets
        inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
        params = []
        for k, v in (("scale", gamma), ("bias", beta), ("mean", mean), ("var", var)):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"bn{i}.{k}"))
            params.append(f"bn{i}.{k}")
        nodes.append(helper.make_node("Conv", [data, f"conv{i}.weight"], [f"conv{i}"], name=f"conv{i}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}"] + params, [f"bn{i}"],
                                      name=f"bn{i}", epsilon=EPS))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        y = (y - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + EPS)
        x = np.maximum(gamma[None, :, None, None] * y + beta[None, :, None, None], 0.0)
        data = f"relu{i}"
    shape = [1, CHANNELS, SIZE, SIZE]
    graph = helper.make_graph(nodes, "deep_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(data, TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, NAME))
    path = os.path.join(OUT, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest[NAME] = {"check": True, "folds": BLOCKS, "skips": [], "verify": True}
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {NAME}: final activations mean {x.mean():.3f}, std {x.std():.3f}")


if __name__ == "__main__":
    main()
