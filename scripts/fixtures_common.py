"""What every fixture group shares: the fixtures folder, the manifest being written, the save
that checks a model, writes it and records what bnfold must do with it, and for the torch groups
the BatchNorm statistics made random and the legacy export."""
import os

import onnx

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
manifest = {}


def record(name, folds, skips=(), verify=True, check=True):
    manifest[name] = {"folds": folds, "skips": sorted(skips), "verify": verify, "check": check}


def fill_output_types(model):
    """Graph outputs get their inferred types; intermediate value_info stays absent on purpose."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for out, inf in zip(model.graph.output, inferred.graph.output):
            if not out.type.tensor_type.HasField("shape"):
                out.type.CopyFrom(inf.type)
    except Exception:
        pass


def save(model, name, folds, skips=(), verify=True, check=True):
    fill_output_types(model)
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name))
    record(name, folds, skips, verify, check)


def randomize_batch_norms(model, gains=(0.5, 1.5), tiny_first_variance=False,
                          negative_even_gains=False):
    """Random running statistics and affine parameters for every BatchNorm of a torch `model`,
    so that folding is not trivial; the model in eval mode. `tiny_first_variance` makes epsilon
    matter in channel 0; `negative_even_gains` keeps a ReLU before the BN from commuting."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 2.0)
            if tiny_first_variance:
                m.running_var[0] = 1e-3
            m.weight.data.uniform_(*gains)
            if negative_even_gains:
                m.weight.data[::2] *= -1
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def export_legacy(model, x, name, opset, folds, skips=()):
    """`model` exported by the legacy TorchScript exporter as a training-mode graph (BN kept,
    nothing constant-folded), checked and recorded."""
    import torch

    path = os.path.join(OUT, name)
    torch.onnx.export(
        model, x, path, opset_version=opset, dynamo=False,
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        input_names=["input"], output_names=["output"],
    )
    onnx.checker.check_model(onnx.load(path))
    record(name, folds, skips)

