#!/usr/bin/env python3
"""A long model for the benchmark's scaling run: N blocks of Conv (4 channels, 1x1, no bias) ->
BatchNormalization -> Relu (backward folds), or with --forward BatchNormalization -> Conv -> Relu
(forward folds), or with --identity N Identity nodes and nothing to fold (a structure-only graph),
opset 13, seeded weights. With --constant-nodes every weight and BatchNormalization parameter is
the output of a Constant node, as torch's dynamo exporter and Paddle write them, instead of an
initializer. Needs onnx and numpy.

    python3 scripts/make_chain_model.py N OUT.onnx [--forward | --identity] [--constant-nodes]"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    blocks, out = int(sys.argv[1]), sys.argv[2]
    forward = "--forward" in sys.argv[3:]
    if "--identity" in sys.argv[3:]:
        return identity_chain(blocks, out)
    channels = 4
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    x = "x"
    for i in range(blocks):
        weight = f"conv{i}.weight"
        initializers.append(numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32), weight))
        params = []
        for k in ("scale", "bias", "mean", "var"):
            initializers.append(numpy_helper.from_array((rng.random(channels) + 0.5).astype(np.float32), f"bn{i}.{k}"))
            params.append(f"bn{i}.{k}")
        if forward:
            nodes.append(helper.make_node("BatchNormalization", [x] + params, [f"bn{i}"], name=f"bn{i}"))
            nodes.append(helper.make_node("Conv", [f"bn{i}", weight], [f"conv{i}"], name=f"conv{i}"))
            last = f"conv{i}"
        else:
            nodes.append(helper.make_node("Conv", [x, weight], [f"conv{i}"], name=f"conv{i}"))
            nodes.append(helper.make_node("BatchNormalization", [f"conv{i}"] + params, [f"bn{i}"], name=f"bn{i}"))
            last = f"bn{i}"
        nodes.append(helper.make_node("Relu", [last], [f"relu{i}"], name=f"relu{i}"))
        x = f"relu{i}"
    shape = [1, channels, 4, 4]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
        initializers,
    )
    if "--constant-nodes" in sys.argv[3:]:
        constants = [helper.make_node("Constant", [], [t.name], value=t, name=f"{t.name}.constant") for t in graph.initializer]
        nodes = constants + list(graph.node)
        del graph.initializer[:], graph.node[:]
        graph.node.extend(nodes)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, out)


def identity_chain(count, out):
    nodes = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(count)]
    graph = helper.make_graph(
        nodes,
        "identities",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(f"t{count}", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, out)


if __name__ == "__main__":
    main()
