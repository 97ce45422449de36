#!/usr/bin/env python3
"""Regenerates every model in fixtures/ (run by hand; needs torch, torchvision, onnx, onnxscript,
numpy; `--forward-only`, `--forms-only` and `--equalize-only` add one group to the manifest).

Real exporter output: torch.onnx.export, legacy TorchScript exporter with
training=TrainingMode.PRESERVE and do_constant_folding=False, and the dynamo exporter with
optimize=False, at several opsets, BN statistics randomized so folding is not trivial.
Hand-built graphs (onnx.helper) cover what exporters rarely emit. fixtures/manifest.json records
for each file how many BatchNormalization nodes must fold and which skip reasons must remain.
"""
import json
import os
import sys

from fixtures_common import OUT, manifest
from fixtures_forward_equalize import (equalize_fixtures, equalize_more_fixtures,
                                       forward_fixtures)
from fixtures_hand import hand_fixtures
from fixtures_torch import affine_fixtures, torch_fixtures


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    # One group added to the manifest without touching the other fixtures.
    for flag, group in (("--forward-only", forward_fixtures), ("--forms-only", affine_fixtures),
                        ("--equalize-only", equalize_fixtures),
                        ("--equalize-more-only", equalize_more_fixtures)):
        if flag in sys.argv:
            with open(os.path.join(OUT, "manifest.json")) as f:
                manifest.update(json.load(f))
            group()
            with open(os.path.join(OUT, "manifest.json"), "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.write("\n")
            sys.exit(0)
    if "--no-torch" in sys.argv:
        # The torch-made fixtures stay as committed, and so do their manifest entries.
        with open(os.path.join(OUT, "manifest.json")) as f:
            manifest.update(json.load(f))
    else:
        torch_fixtures()
        forward_fixtures()
        affine_fixtures()
        equalize_fixtures()
        equalize_more_fixtures()
    hand_fixtures()
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(manifest)} fixtures")
