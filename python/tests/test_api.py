"""bnfold.fold, bnfold.verify and bnfold.inspect, checked against onnx, onnxruntime, the
report's JSON schema and the Rust binary (an independent build of the same engine)."""

import json
import os
import shutil
import subprocess
import threading
import time

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import bnfold
from conftest import ROOT, fixture, random_feeds, run_onnxruntime

TORCH_EXPORTS = [
    "torch_preact_block_op13.onnx",
    "torch_dynamo_conv_bn_op18.onnx",
    "torch_conv_bn_bn_op13.onnx",
    "torch_head_bn_flatten_linear_op13.onnx",
    "torch_frozen_bn_resnet_op13.onnx",
]


def schema_validator():
    with open(os.path.join(ROOT, "schema", "report.schema.json")) as f:
        return jsonschema.Draft202012Validator(json.load(f))


@pytest.mark.parametrize("name", TORCH_EXPORTS)
def test_fold_a_model_proto_gives_a_checked_model_proto_with_the_original_outputs(name):
    original = onnx.load(fixture(name))
    fused, report = bnfold.fold(original)
    assert isinstance(fused, onnx.ModelProto)
    onnx.checker.check_model(fused, full_check=True)
    assert report["folds"], "the fixture has BatchNormalization to fold"
    assert report["verification"]["status"] == "passed"
    assert report["ops_after"].get("BatchNormalization", 0) < report["ops_before"].get(
        "BatchNormalization", 1
    ) or name.startswith("torch_frozen")
    feeds = random_feeds(original)
    for want, got in zip(run_onnxruntime(original, feeds), run_onnxruntime(fused, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert len(fused.graph.node) < len(original.graph.node)


def test_bytes_path_and_model_proto_give_the_bytes_the_rust_binary_writes(tmp_path, rust_bin):
    path = fixture("torch_preact_block_op13.onnx")
    with open(path, "rb") as f:
        data = f.read()
    from_bytes, report_bytes = bnfold.fold(data)
    from_path, report_path = bnfold.fold(path)
    from_pathlike, _ = bnfold.fold(pathlib_path(path))
    from_proto, _ = bnfold.fold(onnx.load(path))
    assert isinstance(from_bytes, bytes) and isinstance(from_path, bytes)
    assert from_bytes == from_path == from_pathlike
    # protobuf orders fields its own way when it serializes: compare the messages.
    assert from_proto == onnx.ModelProto.FromString(from_bytes)
    out = tmp_path / "fused.onnx"
    subprocess.run([rust_bin, path, "-o", str(out), "-q"], check=True)
    assert out.read_bytes() == from_bytes
    assert report_bytes["input"] == "<bytes>" and report_path["input"] == path
    assert report_bytes["folds"] == report_path["folds"]


def pathlib_path(path):
    import pathlib

    return pathlib.Path(path)


def test_output_is_written_atomically_and_never_over_a_file_unasked(tmp_path, rust_bin):
    source = tmp_path / "model.onnx"
    shutil.copy(fixture("conv_bn.onnx"), source)
    before = source.read_bytes()
    out = tmp_path / "fused.onnx"
    fused, report = bnfold.fold(source, output=out)
    assert fused is None and report["output"] == str(out)
    expected = tmp_path / "by_rust.onnx"
    subprocess.run([rust_bin, str(source), "-o", str(expected), "-q"], check=True)
    assert out.read_bytes() == expected.read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        bnfold.fold(source, output=out)
    bnfold.fold(source, output=out, force=True)
    with pytest.raises(FileExistsError):
        bnfold.fold(source, output=source, force=True)
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by_rust.onnx", "fused.onnx", "model.onnx"]


def test_external_data_goes_by_path_and_is_written_beside_the_output(tmp_path):
    shutil.copytree(fixture("external"), tmp_path / "in")
    model = tmp_path / "in" / "conv_bn_external.onnx"
    with pytest.raises(ValueError, match="output="):
        bnfold.fold(model)
    out = tmp_path / "out" / "fused.onnx"
    out.parent.mkdir()
    fused, report = bnfold.fold(model, output=out)
    assert fused is None and report["verification"]["status"] == "passed"
    stored = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    written = onnx.load(str(out))
    original = onnx.load(str(model))
    feeds = random_feeds(original)
    np.testing.assert_allclose(
        run_onnxruntime(written, feeds)[0], run_onnxruntime(original, feeds)[0], rtol=1e-4, atol=1e-5
    )


def test_a_truncated_model_raises_invalid_model_naming_the_tensor(tmp_path):
    data = open(fixture("conv_bn.onnx"), "rb").read()
    cut = data[:300]
    with pytest.raises(bnfold.InvalidModel, match=r"cut short.*initializer 'w'"):
        bnfold.fold(cut)
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(cut)
    with pytest.raises(bnfold.InvalidModel, match=str(truncated)):
        bnfold.fold(truncated)
    assert isinstance(bnfold.InvalidModel("x"), ValueError)
    shutil.copytree(fixture("external"), tmp_path / "ext")
    data_file = tmp_path / "ext" / "conv_bn_external.data"
    # The weight 'w' comes first in the data file: half of it is left.
    data_file.write_bytes(data_file.read_bytes()[:432])
    with pytest.raises(bnfold.InvalidModel, match=r"tensor 'w'.*past the end"):
        bnfold.fold(tmp_path / "ext" / "conv_bn_external.onnx", output=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(FileNotFoundError):
        bnfold.fold(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="model"):
        bnfold.fold(42)


def tampered(fused: onnx.ModelProto, factor: float = 1.001) -> onnx.ModelProto:
    """The fused model with its first Conv's weight scaled: what a wrong fold would write."""
    model = onnx.ModelProto()
    model.CopyFrom(fused)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    for i, t in enumerate(model.graph.initializer):
        if t.name == conv.input[1]:
            w = numpy_helper.to_array(t) * np.float32(factor)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w.astype(np.float32), t.name))
    return model


def test_a_tampered_model_raises_verification_failed_with_the_report():
    original = onnx.load(fixture("torch_preact_block_op13.onnx"))
    fused, _ = bnfold.fold(original)
    assert bnfold.verify(original, fused)["verification"]["status"] == "passed"
    with pytest.raises(bnfold.VerificationFailed) as caught:
        bnfold.verify(original, tampered(fused))
    report = caught.value.report
    assert report["verification"]["status"] == "failed"
    assert report["verification"]["reason"] in str(caught.value)
    schema_validator().validate(report)


def test_reports_validate_against_the_schema():
    validator = schema_validator()
    _, report = bnfold.fold(fixture("torch_preact_block_op13.onnx"))
    validator.validate(report)
    _, merged = bnfold.fold(fixture("timm_repvgg_blocks_op13.onnx"), merge_branches=True)
    assert merged["merges"]
    validator.validate(merged)
    _, equalized = bnfold.fold(fixture("torch_preact_block_op13.onnx"), equalize=True)
    assert equalized["equalizations"]
    validator.validate(equalized)
    _, absorbed = bnfold.fold(fixture("paddle/ppocr_mobile_v2_cls_op11.onnx"), equalize="absorb")
    assert absorbed["high_bias_absorption"]["status"] == "passed"
    validator.validate(absorbed)
    validator.validate(bnfold.inspect(fixture("torch_conv_bn_bn_op13.onnx")))
    validator.validate(bnfold.verify(fixture("conv_bn.onnx"), fixture("conv_bn.onnx")))


def test_the_report_is_the_rust_binarys_json_report(tmp_path, rust_bin):
    path = fixture("torch_conv_bn_bn_op13.onnx")
    out = tmp_path / "fused.onnx"
    printed = subprocess.run(
        [rust_bin, path, "-o", str(out), "--report", "json"], check=True, capture_output=True
    ).stdout
    _, report = bnfold.fold(path, output=tmp_path / "by_python.onnx")
    rust = json.loads(printed)
    rust["output"] = report["output"]
    assert report == rust
    inspected = subprocess.run(
        [rust_bin, "inspect", path, "--report", "json"], check=True, capture_output=True
    ).stdout
    assert bnfold.inspect(path) == json.loads(inspected)


def test_keyword_options_mirror_the_command_line_flags():
    path = fixture("conv_bn.onnx")
    _, report = bnfold.fold(path, only=["gemm"])
    assert not report["folds"] and report["skips"][0]["reason"] == "kind_excluded"
    _, report = bnfold.fold(path, skip_nodes=["bn"])
    assert not report["folds"] and report["skips"][0]["reason"] == "node_excluded"
    _, report = bnfold.fold(path, verify=False, readiness=False)
    assert report["verification"] is None and report["quantization_readiness"] is None
    _, report = bnfold.fold(path, seed=7, samples=2)
    assert report["verification"]["seed"] == 7
    assert report["verification"]["samples"] == 2
    _, report = bnfold.fold(fixture("torch_bn1d_input_linear_op13.onnx"), inputs_are_constants=True)
    _, report = bnfold.fold(fixture("torch_add_bn_standalone_op13.onnx"), decompose_standalone=True)
    assert report["decompositions"]
    with pytest.raises(ValueError, match="skip-node nope"):
        bnfold.fold(path, skip_nodes=["nope"])
    with pytest.raises(ValueError, match="only: 'fc'"):
        bnfold.fold(path, only=["fc"])
    with pytest.raises(TypeError):
        bnfold.fold(path, samples="three")


def test_real_input_data_from_arrays_and_npy_files(tmp_path):
    model = onnx.load(fixture("conv_bn.onnx"))
    feeds = random_feeds(model, seed=3)
    (name, array), = feeds.items()
    _, report = bnfold.fold(model, inputs={name: array})
    assert report["verification"]["status"] == "passed"
    npy = tmp_path / "x.npy"
    np.save(npy, array)
    _, from_file = bnfold.fold(model, inputs={name: npy})
    assert from_file["verification"] == report["verification"]
    with pytest.raises(ValueError, match="inputs"):
        bnfold.fold(model, inputs={name: tmp_path / "missing.npy"})


def too_large_to_run() -> onnx.ModelProto:
    """A Conv with a per-channel Mul/Add (folds, no BatchNormalization) and 20,001 Relus after:
    above the whole-model run's node limit and with no BatchNormalization for the local proof,
    so verification does not run."""
    from onnx import TensorProto, helper

    initializers = [
        numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.full((2, 1, 1), 1.5, np.float32), "s"),
        numpy_helper.from_array(np.full((2, 1, 1), 0.25, np.float32), "t"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "s"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "t"], ["r0"], name="add"),
    ]
    count = 20001
    nodes += [helper.make_node("Relu", [f"r{i}"], [f"r{i + 1}"]) for i in range(count)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info(f"r{count}", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_not_verified_warns_and_require_verify_raises(tmp_path):
    model = too_large_to_run()
    with pytest.warns(bnfold.NotVerifiedWarning, match="20004 nodes"):
        fused, report = bnfold.fold(model)
    assert report["verification"]["status"] == "not_verified"
    assert [f["kind"] for f in report["folds"]] == ["conv"]
    assert isinstance(fused, onnx.ModelProto)
    out = tmp_path / "fused.onnx"
    with pytest.raises(bnfold.VerificationFailed, match="not verified") as caught:
        bnfold.fold(model, output=out, require_verify=True)
    assert caught.value.report["output"] is None
    assert not out.exists()


def test_the_gil_is_released_while_a_model_folds():
    data = open(fixture("timm_mixnet_s_quarter_op13.onnx"), "rb").read()
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=bnfold.fold(data)))
    ticks = 0
    started = time.perf_counter()
    worker.start()
    while worker.is_alive():
        ticks += 1
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    assert result["r"][1]["folds"]
    # Held GIL: this thread would wake once, when the fold returns.
    assert elapsed < 0.05 or ticks > 10, (ticks, elapsed)


def test_equalize_takes_a_bool_or_a_mode():
    path = fixture("paddle/ppocr_mobile_v2_cls_op11.onnx")
    _, exact = bnfold.fold(path, equalize="exact", verify=False, readiness=False)
    assert exact["equalizations"] and "high_bias_absorption" not in exact
    fused, absorbed = bnfold.fold(path, equalize="absorb", verify=False, readiness=False)
    assert absorbed["high_bias_absorption"]["pairs"] == 2
    assert absorbed["high_bias_absorption"]["status"] == "not_verified"
    with pytest.raises(ValueError, match="equalize"):
        bnfold.fold(path, equalize="approximate")
