"""Shared paths and helpers of the Python package's tests (run by .ci/run after the wheel is
installed into a fresh virtual environment)."""

import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "fixtures")
#: The Rust binary the console script must match (built by `cargo test`).
RUST_BIN = os.path.abspath(os.environ.get("BNFOLD", os.path.join(ROOT, "target", "debug", "bnfold")))

ort.set_default_logger_severity(3)


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


def console_script() -> str:
    """The `bnfold` the wheel installed beside this interpreter."""
    path = os.path.join(os.path.dirname(sys.executable), "bnfold")
    return path if os.path.exists(path) else shutil.which("bnfold")


def run_onnxruntime(model: onnx.ModelProto, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in initializers:
            continue
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


@pytest.fixture
def rust_bin() -> str:
    if not os.path.exists(RUST_BIN):
        pytest.fail(f"the Rust binary {RUST_BIN} is missing: run cargo build first (or set BNFOLD)")
    return RUST_BIN
