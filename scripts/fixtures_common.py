"""What every fixture group shares: the fixtures folder, the manifest being written, and the
save that checks a model, writes it and records what bnfold must do with it."""
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
