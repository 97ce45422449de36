#!/usr/bin/env python3
"""Interoperability check run by .ci/run: every fixture folded by bnfold passes
onnx.checker.check_model(full_check=True), and onnxruntime (graph optimizations disabled, so it
does not fold by itself) gives the fused model the original's outputs. The quantization-readiness
figures of `bnfold inspect` are recomputed here with numpy from the fused model's weights."""
import json
import os
import subprocess
import sys
import warnings

warnings.filterwarnings("ignore", category=RuntimeWarning)
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.environ.get("BNFOLD", os.path.join(ROOT, "target", "debug", "bnfold"))
TOL = {np.float32: 1e-4, np.float16: 1e-2, np.float64: 1e-9}


ort.set_default_logger_severity(3)


def session(path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


#: Real exports outside the manifest (fixtures/paddle/README.md), with the input shapes they
#: expect where the graph leaves them symbolic.
REAL_EXPORTS = {"paddle/ppocr_mobile_v2_cls_op11.onnx": {"x": [1, 3, 48, 192]}}


def feeds(sess, rng, shapes=None):
    out = {}
    for i in sess.get_inputs():
        shape = (shapes or {}).get(i.name) or [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(double)": np.float64}[i.type]
        out[i.name] = rng.standard_normal(shape).astype(dtype)
    return out


def np_layer(node, weights):
    """Per-output-channel rows of a weight, the way the readiness report defines channels."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    w = weights[node.input[1]].astype(np.float64)
    if node.op_type == "Conv":
        rows = w.reshape(w.shape[0], -1)
    elif node.op_type == "ConvTranspose":
        g = attrs.get("group", 1)
        cin, cog = w.shape[0], w.shape[1]
        rows = w.reshape(g, cin // g, cog, -1).transpose(0, 2, 1, 3).reshape(g * cog, -1)
    elif node.op_type == "Gemm":
        rows = w if attrs.get("transB", 0) == 1 else w.T
    else:
        rows = np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)
    r = np.abs(rows).max(axis=1)
    step = r.max() / 127

    def q(x, s):
        return np.clip(np.round(x / s), -127, 127) * s if s > 0 else np.zeros_like(x)

    signal = np.sum(rows ** 2)
    noise_t = np.sum((rows - q(rows, step)) ** 2)
    noise_c = sum(np.sum((row - q(row, rc / 127)) ** 2) for row, rc in zip(rows, r))
    db = lambda n: None if n == 0 else 10 * np.log10(signal / n)  # noqa: E731
    starved = int(np.sum((r > 0) & (np.log2(np.where(r > 0, r, 1) / step) + 1 < 4)))
    return {"ranges": r, "spread": r.max() / np.median(r), "tensor": db(noise_t), "channel": db(noise_c),
            "starved": starved, "zero": int(np.sum(r == 0))}


def check_readiness(src, fused_path):
    """bnfold inspect's per-layer figures against numpy on the fused model's weights."""
    run = subprocess.run([BIN, "inspect", src, "--report", "json"], capture_output=True, text=True)
    report = json.loads(run.stdout)["quantization_readiness"]
    model = onnx.load(fused_path)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {(n.name or n.output[0]): n for n in model.graph.node}
    checked = 0
    for layer in report["layers"]:
        node = nodes[layer["node"]]
        if node.input[1] not in weights:
            continue
        want = np_layer(node, weights)
        close = lambda a, b: (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b)))  # noqa: E731
        ok = (close(layer["sqnr_per_tensor_db"], want["tensor"])
              and close(layer["sqnr_per_channel_db"], want["channel"])
              and close(layer["range_spread"], want["spread"])
              and layer["starved_channels"] == want["starved"] and layer["zero_channels"] == want["zero"]
              and np.allclose(layer["channel_ranges"], want["ranges"], rtol=1e-12, atol=0))
        if not ok:
            raise AssertionError(f"readiness of {layer['node']}: bnfold {layer}, numpy {want}")
        checked += 1
    return checked


def main():
    manifest = json.load(open(os.path.join(ROOT, "fixtures", "manifest.json")))
    passed = failed = skipped = 0
    runs = [(name, expected, []) for name, expected in sorted(manifest.items())]
    # The re-parameterizable blocks once more, merged into one Conv each.
    runs += [(name, expected, ["--merge-branches"]) for name, expected in sorted(manifest.items())
             if "repvgg" in name or "mobileone" in name]
    runs += [(name, {"check": True, "verify": True, "shapes": shapes}, flags)
             for name, shapes in REAL_EXPORTS.items() for flags in ([], ["--equalize"])]
    # Equalized: exact, so onnxruntime must agree as after a fold.
    runs += [(name, expected, ["--equalize"]) for name, expected in sorted(manifest.items())
             if name.startswith(("torch_preact", "torch_conv2d_grouped", "timm_mixnet", "deep_stack",
                                 "torch_mlp", "torch_decoder"))]
    for name, expected, flags in runs:
        src = os.path.join(ROOT, "fixtures", name)
        if flags:
            name = f"{name} {' '.join(flags)}"
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "fused.onnx")
            run = subprocess.run([BIN, src, "-o", out, "-q", "--no-verify"] + flags,
                                 capture_output=True, text=True)
            if run.returncode != 0:
                print(f"FAIL {name}: bnfold exit {run.returncode}: {run.stderr.strip()}")
                failed += 1
                continue
            if not expected["check"] or not expected["verify"] or "bf16" in name:
                skipped += 1
                continue
            try:
                onnx.checker.check_model(out, full_check=True)
                try:
                    a = session(src)
                    a.run(None, feeds(a, np.random.default_rng(0), expected.get("shapes")))
                except Exception as e:  # noqa: BLE001
                    print(f"skip {name}: onnxruntime cannot run the original: {str(e)[:120]}")
                    skipped += 1
                    continue
                b = session(out)
                rng = np.random.default_rng(0)
                worst = 0.0
                for _ in range(2):
                    f = feeds(a, rng, expected.get("shapes"))
                    for x, y in zip(a.run(None, f), b.run(None, f)):
                        tol = TOL.get(x.dtype.type, 1e-4)
                        scale = max(float(np.max(np.abs(x))), 1e-30)
                        x64, y64 = x.astype(np.float64), y.astype(np.float64)
                        same = (x64 == y64) | (np.isnan(x64) & np.isnan(y64))
                        diff = np.where(same, 0.0, np.abs(x64 - y64))
                        scale = max(float(np.nanmax(np.abs(np.where(np.isfinite(x64), x64, 0)))), 1e-30)
                        err = float(np.max(diff)) / scale
                        worst = max(worst, err)
                        if not err <= 2 * tol:
                            raise AssertionError(f"normalized error {err:.3e} > {2 * tol:.1e}")
                # `bnfold inspect` reports on the default fold: a merged model has other layers.
                plain = not flags and "f16" not in name and "f64" not in name
                layers = check_readiness(src, out) if plain else 0
                print(f"ok   {name}: worst normalized error {worst:.2e}, readiness of {layers} layers agrees with numpy")
                passed += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported by name
                print(f"FAIL {name}: {e}")
                failed += 1
    print(f"interop: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
