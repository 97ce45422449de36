#!/usr/bin/env python3
"""BatchNorm in its arithmetic forms, on real exports: how many Mul/Add/Sub/Div nodes each tool
leaves, run on demand (not a test; needs torch, torchvision, onnx, onnxruntime, onnxsim,
onnxslim, all from PyPI).

    python3 scripts/compare_forms.py [--bnfold target/release/bnfold] [--work DIR]

Exports torchvision's resnet18 and resnet50 with FrozenBatchNorm2d (as its detection models
build them), with and without constant folding, and the resnet18 FPN backbone of its detection
models; folds each with bnfold, onnxsim, onnxslim and onnxruntime's basic level; prints the
element-wise arithmetic nodes left (the residual Adds, which no tool can fold, included) and the
largest output difference against the original under onnxruntime."""
import argparse
import collections
import os
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

ARITH = ("Mul", "Add", "Sub", "Div")


def export(work):
    import torch
    import torchvision
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)

    def statistics(model):
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        return model.eval()

    x = torch.randn(1, 3, 224, 224)
    out = []
    for name, build in [
        ("resnet18", lambda: torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d)),
        ("resnet50", lambda: torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)),
    ]:
        model = statistics(build())
        for folding in (True, False):
            path = os.path.join(work, f"{name}_frozen_bn{'' if folding else '_unfolded'}.onnx")
            torch.onnx.export(model, x, path, opset_version=17, dynamo=False,
                              do_constant_folding=folding, input_names=["input"])
            out.append(path)
    fpn = statistics(resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                         norm_layer=FrozenBatchNorm2d, trainable_layers=0))
    path = os.path.join(work, "resnet18_fpn_backbone_frozen_bn.onnx")
    torch.onnx.export(fpn, x, path, opset_version=17, dynamo=False, input_names=["input"])
    out.append(path)
    return out


def arithmetic_left(path):
    counts = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    return sum(counts[op] for op in ARITH)


def run_tool(tool, src, dst, bnfold):
    start = time.perf_counter()
    if tool == "bnfold":
        subprocess.run([bnfold, src, "-o", dst, "--no-verify", "--force", "-q"], check=True)
    elif tool == "onnxsim":
        import onnxsim
        model, ok = onnxsim.simplify(onnx.load(src))
        onnx.save(model, dst)
    elif tool == "onnxslim":
        import onnxslim
        onnx.save(onnxslim.slim(onnx.load(src)), dst)
    else:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = dst
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return time.perf_counter() - start


def outputs(path, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bnfold", default="target/release/bnfold")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bnfold-forms-")
    os.makedirs(work, exist_ok=True)
    models = export(work)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    tools = ["bnfold", "onnxsim", "onnxslim", "onnxruntime"]
    print("| model | arithmetic nodes | " + " | ".join(tools) + " |")
    print("|---|---:|" + "---:|" * len(tools))
    for src in models:
        reference = outputs(src, x)
        cells = []
        for tool in tools:
            dst = os.path.join(work, f"{os.path.basename(src)[:-5]}.{tool}.onnx")
            try:
                seconds = run_tool(tool, src, dst, args.bnfold)
                got = outputs(dst, x)
                error = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, got))
                cells.append(f"{arithmetic_left(dst)} left, {seconds:.2f} s, max diff {error:.1e}")
            except Exception as e:  # a peer that fails on a model is a result too
                cells.append(f"failed: {type(e).__name__}")
        print(f"| {os.path.basename(src)} | {arithmetic_left(src)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
