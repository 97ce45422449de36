#!/usr/bin/env python3
"""Writes a ResNet-50 (torchvision's layout: a 7x7 stem, bottleneck blocks [3, 4, 6, 3], each
Conv followed by an unfused BatchNormalization, a 1000-way Gemm head) with seeded He-initialised
weights and BatchNorm statistics measured on the layer's real input (so activations stay in
range through 50 layers), for the benchmark: `bnfold resnet50.onnx` is what the issue's
"fold with verification within 2 s" is measured on. No torch needed.

    python3 scripts/make_resnet50.py OUT.onnx [--size 224]
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:
    import onnxruntime as ort
except ImportError:  # statistics then come from a unit-variance assumption
    ort = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    rng = np.random.default_rng(50)
    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def conv_bn(x, c_in, c_out, k, stride, relu=True):
        n = name("conv")
        w = rng.normal(0, np.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{n}.weight"))
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, f"{n}.weight"], [f"{n}.out"], name=n,
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[pad] * 4))
        b = name("bn")
        gamma = rng.uniform(0.5, 1.5, c_out).astype(np.float32)
        beta = rng.normal(0, 0.1, c_out).astype(np.float32)
        # Placeholders: the statistics are measured below.
        inits.extend([numpy_helper.from_array(gamma, f"{b}.scale"), numpy_helper.from_array(beta, f"{b}.bias"),
                      numpy_helper.from_array(np.zeros(c_out, np.float32), f"{b}.mean"),
                      numpy_helper.from_array(np.ones(c_out, np.float32), f"{b}.var")])
        nodes.append(helper.make_node("BatchNormalization",
                                      [f"{n}.out", f"{b}.scale", f"{b}.bias", f"{b}.mean", f"{b}.var"],
                                      [f"{b}.out"], name=b))
        stats.append((f"{n}.out", b))
        if not relu:
            return f"{b}.out"
        r = name("relu")
        nodes.append(helper.make_node("Relu", [f"{b}.out"], [r], name=r))
        return r

    stats = []
    x = conv_bn("input", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, c_in = "pool", 64
    for stage, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            c_out = width * 4
            y = conv_bn(x, c_in, width, 1, 1)
            y = conv_bn(y, width, width, 3, stride)
            y = conv_bn(y, width, c_out, 1, 1, relu=False)
            shortcut = conv_bn(x, c_in, c_out, 1, stride, relu=False) if block == 0 else x
            s = name("add")
            nodes.append(helper.make_node("Add", [y, shortcut], [s], name=s))
            r = name("relu")
            nodes.append(helper.make_node("Relu", [s], [r], name=r))
            x, c_in = r, c_out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    fc = rng.normal(0, np.sqrt(1.0 / 2048), (1000, 2048)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc.weight"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["output"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet50", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, args.size, args.size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if ort is not None:
        measure(model, stats, args.size, rng)
    onnx.save(model, args.out)


def measure(model, stats, size, rng):
    """Sets each BN's mean and variance to those of its input over a small batch, in graph
    order, so every layer sees normalised activations (as a trained network's do)."""
    by_name = {t.name: t for t in model.graph.initializer}
    x = rng.normal(0, 1, (2, 3, size, size)).astype(np.float32)
    for conv_out, bn in stats:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.append(helper.make_tensor_value_info(conv_out, TensorProto.FLOAT, None))
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        y = sess.run(None, {"input": x})[0]
        mean = y.mean(axis=(0, 2, 3)).astype(np.float32)
        var = y.var(axis=(0, 2, 3)).astype(np.float32)
        by_name[f"{bn}.mean"].CopyFrom(numpy_helper.from_array(mean, f"{bn}.mean"))
        by_name[f"{bn}.var"].CopyFrom(numpy_helper.from_array(var, f"{bn}.var"))


if __name__ == "__main__":
    main()
