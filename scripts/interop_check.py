#!/usr/bin/env python3
"""Interoperability check run by .ci/run: every fixture folded by bnfold passes
onnx.checker.check_model(full_check=True), and onnxruntime (graph optimizations disabled, so it
does not fold by itself) gives the fused model the original's outputs."""
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


def feeds(sess, rng):
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(double)": np.float64}[i.type]
        out[i.name] = rng.standard_normal(shape).astype(dtype)
    return out


def main():
    manifest = json.load(open(os.path.join(ROOT, "fixtures", "manifest.json")))
    passed = failed = skipped = 0
    for name, expected in sorted(manifest.items()):
        src = os.path.join(ROOT, "fixtures", name)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "fused.onnx")
            run = subprocess.run([BIN, src, "-o", out, "-q", "--no-verify"], capture_output=True,
                                 text=True)
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
                    a.run(None, feeds(a, np.random.default_rng(0)))
                except Exception as e:  # noqa: BLE001
                    print(f"skip {name}: onnxruntime cannot run the original: {str(e)[:120]}")
                    skipped += 1
                    continue
                b = session(out)
                rng = np.random.default_rng(0)
                worst = 0.0
                for _ in range(2):
                    f = feeds(a, rng)
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
                print(f"ok   {name}: worst normalized error {worst:.2e}")
                passed += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported by name
                print(f"FAIL {name}: {e}")
                failed += 1
    print(f"interop: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
