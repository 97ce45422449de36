#!/usr/bin/env python3
"""The quantization benchmark, run by hand (never in CI): onnxruntime's static INT8 quantization
(QDQ, MinMax, per-tensor and per-channel) of real trained models from PyPI wheels, as exported,
as bnfold folds them, and as bnfold folds them keeping Constant-node weights
(--keep-constant-nodes), folded and equalized (--equalize), and as AIMET's `equalize_model`
(BN fold, ReLU6 → ReLU, cross-layer scaling, high-bias absorption) leaves them, with the INT8
model's SQNR at the outputs and at the logits (the last Softmax's input) against the float
original, and each pipeline's float change: the
unquantized model's largest output difference from the original, relative to the output's
largest magnitude.

    python3 scripts/quant_bench.py [--bnfold target/release/bnfold] [--samples 16]
                                   [--aimet-python PATH | --no-aimet]

Needs onnx, onnxruntime, numpy and Pillow (pip). The models come from the `rapidocr-onnxruntime` wheel
(PaddleOCR's detector, recognizer and direction classifier, paddle2onnx exports: every weight a
Constant node), downloaded once into ~/.cache/bnfold-quant-bench. Inputs are synthesized: text
lines of random strokes, dark on light, normalized as PaddleOCR does ((x/255 - 0.5)/0.5);
calibration and evaluation inputs are disjoint. onnxruntime quantizes a weight stored as a Constant
node as an activation (one asymmetric grid per tensor, even per channel) and an initializer as a
weight (symmetric), so bnfold's output (initializers) and AIMET's (Constant nodes, as Paddle
exports them) are each measured in the other's storage too, like for like. The detector gets pages of rendered words instead
(Pillow, its own font), normalized as PaddleOCR's detector expects; its "logits" are the input
of its last Sigmoid (the probability map before it). Per-channel QDQ needs opset 13 (DequantizeLinear
has no axis before it), so every model is converted to opset 13 before quantizing, each
pipeline alike. AIMET (aimet-onnx, which pulls torch) is installed by this script into its own
virtual environment under the cache on first use (several GB), unless --aimet-python names a
Python that has it; it runs on the CPU."""
import argparse
import glob
import logging
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CACHE = os.path.expanduser("~/.cache/bnfold-quant-bench")
WHEEL = "rapidocr-onnxruntime==1.4.4"
AIMET = "aimet-onnx==2.42.0"
#: run by AIMET's Python: equalize_model on argv[1], written to argv[2]
AIMET_EQUALIZE = """
import logging, sys
import onnx
logging.disable(logging.WARNING)
from aimet_onnx.cross_layer_equalization import equalize_model
model = onnx.load(sys.argv[1])
equalize_model(model)
onnx.save(model, sys.argv[2])
"""
#: the pipeline quantized with onnxruntime's asymmetric weight grid
ASYMMETRIC = "bnfold --equalize, asymmetric weight grid"
#: model file in the wheel -> (name, input shape)
MODELS = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": ("ppocr cls v2", [1, 3, 48, 192]),
    "ch_PP-OCRv4_rec_infer.onnx": ("ppocr rec v4", [1, 3, 48, 320]),
    "ch_PP-OCRv4_det_infer.onnx": ("ppocr det v4", [1, 3, 320, 320]),
}

ort.set_default_logger_severity(3)
logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice, per bias


def fetch_models():
    os.makedirs(CACHE, exist_ok=True)
    wheels = glob.glob(os.path.join(CACHE, "rapidocr_onnxruntime-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL,
                        "-d", CACHE], check=True)
        wheels = glob.glob(os.path.join(CACHE, "rapidocr_onnxruntime-*.whl"))
    paths = {}
    with zipfile.ZipFile(wheels[0]) as z:
        for member in z.namelist():
            base = os.path.basename(member)
            if base in MODELS:
                path = os.path.join(CACHE, base)
                if not os.path.exists(path):
                    with open(path, "wb") as f:
                        f.write(z.read(member))
                paths[base] = path
    return paths


def aimet_python(requested):
    """A Python with aimet-onnx: `requested`, or a virtual environment made under the cache."""
    if requested:
        return requested
    venv = os.path.join(CACHE, "aimet-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", AIMET], check=True)
    return python


def with_logits(path, out):
    """The model at `path` with the input of its last Softmax as one more output ("logits"),
    or, without one, the input of the last Sigmoid (a detector's probability map), written to
    `out`; None when it has neither."""
    model = onnx.load(path)
    last = ([n for n in model.graph.node if n.op_type == "Softmax"]
            or [n for n in model.graph.node if n.op_type == "Sigmoid"])
    if not last:
        return None
    logits = last[-1].input[0]
    if logits not in [o.name for o in model.graph.output]:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(logits))
    onnx.save(model, out)
    return out


def weights_to_initializers(src, dst):
    """The model at `src` with every Constant node that a Conv, ConvTranspose, Gemm or MatMul
    reads as its weight stored as an initializer instead (what bnfold writes), to `dst`."""
    model = onnx.load(src)
    weights = {n.input[1] for n in model.graph.node
               if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in weights:
            value = next(a.t for a in node.attribute if a.name == "value")
            value.name = node.output[0]
            model.graph.initializer.append(value)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, dst)


def initializers_to_constants(src, dst):
    """The model at `src` with every initializer stored as a Constant node instead (what AIMET
    leaves of a Paddle export), to `dst`."""
    model = onnx.load(src)
    constants = [onnx.helper.make_node("Constant", [], [t.name], value=t)
                 for t in model.graph.initializer]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, dst)


def float_change(reference, candidate):
    """max |candidate - reference| / max |reference| over every output of every input."""
    diff = max(float(np.max(np.abs(c.astype(np.float64) - r.astype(np.float64))))
               for rs, cs in zip(reference, candidate) for r, c in zip(rs, cs))
    scale = max(float(np.max(np.abs(r))) for rs in reference for r in rs)
    return diff / scale if scale > 0 else diff


def text_lines(shape, count, seed):
    """Synthetic text lines: light background, dark strokes of glyph-like sizes, some noise."""
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    out = []
    for _ in range(count):
        img = np.full((h, w), rng.uniform(200, 250), np.float32)
        x = int(rng.integers(2, 8))
        glyph_h = int(rng.integers(h // 2, h - 4))
        top = (h - glyph_h) // 2
        while x < w - 6:
            gw = int(rng.integers(4, max(5, glyph_h)))
            for _ in range(int(rng.integers(2, 5))):  # strokes of one glyph
                if rng.random() < 0.5:
                    col = x + int(rng.integers(0, gw))
                    img[top:top + glyph_h, col:col + 2] = rng.uniform(10, 60)
                else:
                    row = top + int(rng.integers(0, glyph_h))
                    img[row:row + 2, x:x + gw] = rng.uniform(10, 60)
            x += gw + int(rng.integers(2, 6))
        img += rng.normal(0, 4, img.shape).astype(np.float32)
        rgb = np.stack([img] * c)
        out.append(((np.clip(rgb, 0, 255) / 255.0 - 0.5) / 0.5)[None].astype(np.float32))
    return out


def text_pages(shape, count, seed):
    """Synthetic pages for a text detector: lines of words in Pillow's own font at random
    places and sizes, dark on light, normalized with ImageNet's mean and deviation as
    PaddleOCR's detector expects."""
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    words = ["invoice", "TOTAL", "2026-12-06", "quantize", "receipt", "No. 4417", "ONNX",
             "batch", "norm", "fold", "layer", "channel", "Hello", "world", "12.50", "EUR"]
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:c, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:c, None, None]
    out = []
    for _ in range(count):
        shade = int(rng.integers(215, 250))
        page = Image.new("RGB", (w, h), (shade, shade, shade - 5))
        draw = ImageDraw.Draw(page)
        y = int(rng.integers(2, 12))
        while y < h - 12:
            size = int(rng.integers(10, 24))
            font = ImageFont.load_default(size=size)
            text = " ".join(rng.choice(words, int(rng.integers(1, 4))))
            ink = int(rng.integers(0, 70))
            draw.text((int(rng.integers(0, w // 2)), y), text, fill=(ink, ink, ink), font=font)
            y += size + int(rng.integers(4, 20))
        x = np.asarray(page, np.float32).transpose(2, 0, 1)[:c] / 255.0
        x += rng.normal(0, 0.01, x.shape).astype(np.float32)
        out.append(((x - mean) / std)[None].astype(np.float32))
    return out


class Reader(CalibrationDataReader):
    def __init__(self, name, inputs):
        self.items = iter([{name: x} for x in inputs])

    def get_next(self):
        return next(self.items, None)


def session(path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def sqnr(reference, quantized):
    ref = np.concatenate([r.astype(np.float64).ravel() for r in reference])
    q = np.concatenate([r.astype(np.float64).ravel() for r in quantized])
    noise = np.sum((ref - q) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(ref ** 2) / noise)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bnfold", default=os.path.join(ROOT, "target", "release", "bnfold"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--aimet-python", help="a Python with aimet-onnx installed")
    parser.add_argument("--no-aimet", action="store_true", help="leave AIMET out")
    args = parser.parse_args()
    paths = fetch_models()
    aimet = None if args.no_aimet else aimet_python(args.aimet_python)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for file, (name, shape) in MODELS.items():
            src = paths[file]
            pipelines = {"as exported": src}
            for label, flags in [("bnfold", []), ("bnfold --keep-constant-nodes", ["--keep-constant-nodes"]),
                                 ("bnfold --equalize", ["--equalize"]),
                                 ("bnfold --equalize=absorb", ["--equalize=absorb"]),
                                 ("bnfold --equalize --keep-constant-nodes", ["--equalize", "--keep-constant-nodes"])]:
                out = os.path.join(tmp, f"{file}.{len(pipelines)}.onnx")
                subprocess.run([args.bnfold, src, "-o", out, "-q", "--no-readiness", "--no-verify"] + flags, check=True)
                pipelines[label] = out
            # onnxruntime quantizes a weight stored as a Constant node as an activation (one
            # asymmetric grid per tensor, even when per-channel is asked) and an initializer as a
            # weight (symmetric): each storage is measured for both tools, like for like.
            constants = os.path.join(tmp, f"{file}.equalize.constants.onnx")
            initializers_to_constants(pipelines["bnfold --equalize"], constants)
            pipelines["bnfold --equalize, weights as Constant nodes"] = constants
            # The same model quantized with an asymmetric weight grid (onnxruntime's
            # WeightSymmetric=False): what a Constant node's weight gets, kept as a weight.
            pipelines[ASYMMETRIC] = pipelines["bnfold --equalize"]
            if aimet:
                out = os.path.join(tmp, f"{file}.aimet.onnx")
                subprocess.run([aimet, "-c", AIMET_EQUALIZE, src, out], check=True)
                pipelines["AIMET equalize_model"] = out
                stored = os.path.join(tmp, f"{file}.aimet.initializers.onnx")
                weights_to_initializers(out, stored)
                pipelines["AIMET equalize_model, weights as initializers"] = stored
            # Every pipeline measured with the last Softmax's input as an extra output.
            for label, path in list(pipelines.items()):
                pipelines[label] = with_logits(path, path + ".logits.onnx") or path
            input_name = session(src).get_inputs()[0].name
            inputs = text_pages if "det" in file else text_lines
            calibration = inputs(shape, args.samples, seed=1)
            evaluation = inputs(shape, args.samples, seed=2)
            float_session = session(pipelines["as exported"])
            reference = [float_session.run(None, {input_name: x}) for x in evaluation]
            for label, path in pipelines.items():
                plain = session(path)
                change = float_change(reference, [plain.run(None, {input_name: x}) for x in evaluation])
                model = onnx.load(path)
                if model.opset_import[0].version < 13:
                    model = version_converter.convert_version(model, 13)
                at13 = os.path.join(tmp, "at13.onnx")
                onnx.save(model, at13)
                figures = []
                extra = {"WeightSymmetric": False} if label == ASYMMETRIC else {}
                for per_channel in (False, True):
                    q = os.path.join(tmp, "q.onnx")
                    quantize_static(at13, q, Reader(input_name, calibration), quant_format=QuantFormat.QDQ,
                                    per_channel=per_channel, activation_type=QuantType.QInt8,
                                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                                    extra_options=extra)
                    qs = session(q)
                    got = [qs.run(None, {input_name: x}) for x in evaluation]
                    # The model's own outputs, then the logits (the last output).
                    figures.append(np.mean([sqnr(r[:-1], g[:-1]) for r, g in zip(reference, got)]))
                    figures.append(np.mean([sqnr(r[-1:], g[-1:]) for r, g in zip(reference, got)]))
                rows.append((name, label, *figures, change))
                print(f"{name:14} {label:46} outputs {figures[0]:6.2f} / {figures[2]:6.2f} dB  logits"
                      f" {figures[1]:6.2f} / {figures[3]:6.2f} dB (per tensor / per channel)"
                      f"  float change {change:.1e}", flush=True)
    print("\n| model | pipeline | outputs, per tensor | outputs, per channel | logits, per tensor "
          "| logits, per channel | float change |")
    print("|---|---|---|---|---|---|---|")
    for name, label, out_t, logit_t, out_c, logit_c, change in rows:
        print(f"| {name} | {label} | {out_t:.2f} dB | {out_c:.2f} dB | {logit_t:.2f} dB | {logit_c:.2f} dB "
              f"| {change:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
