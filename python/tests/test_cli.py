"""The `bnfold` console script and `python -m bnfold` are the Rust binary's command line: the
same stdout, stderr, written bytes and exit codes, case by case."""

import os
import shutil
import subprocess
import sys

import onnx
import pytest

from conftest import console_script, fixture
from test_api import tampered

CASES = {
    "fold": (["model.onnx", "-o", "fused.onnx"], 0),
    "fold_json": (["model.onnx", "-o", "fused.onnx", "--report", "json"], 0),
    "fold_merge_branches": (["repvgg.onnx", "-o", "fused.onnx", "--merge-branches", "-q"], 0),
    "check_finds_a_fold": (["model.onnx", "--check"], 1),
    "dry_run": (["model.onnx", "--dry-run", "--report", "json"], 0),
    "inspect": (["inspect", "model.onnx"], 0),
    "verify_tampered": (["verify", "model.onnx", "tampered.onnx"], 1),
    "truncated": (["cut.onnx", "-o", "fused.onnx"], 2),
    "missing": (["missing.onnx", "-o", "fused.onnx"], 2),
    "output_is_input": (["model.onnx", "-o", "model.onnx"], 2),
    "bad_flag": (["model.onnx", "--no-such-flag"], 2),
    "help": (["--help"], 0),
    "version": (["--version"], 0),
}


def workspace(folder):
    """The same files in a fresh folder for each command, so outputs can be compared."""
    os.makedirs(folder)
    shutil.copy(fixture("torch_preact_block_op13.onnx"), os.path.join(folder, "model.onnx"))
    shutil.copy(fixture("timm_repvgg_blocks_op13.onnx"), os.path.join(folder, "repvgg.onnx"))
    with open(fixture("conv_bn.onnx"), "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "cut.onnx"), "wb") as f:
        f.write(data[:300])
    import bnfold

    fused, _ = bnfold.fold(onnx.load(os.path.join(folder, "model.onnx")))
    onnx.save(tampered(fused), os.path.join(folder, "tampered.onnx"))
    return folder


def run(command, args, folder):
    done = subprocess.run(command + args, cwd=folder, capture_output=True, timeout=300)
    files = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            files[name] = f.read()
    return done.returncode, done.stdout, done.stderr, files


@pytest.mark.parametrize("case", sorted(CASES))
def test_console_script_and_python_m_match_the_rust_binary(case, tmp_path, rust_bin):
    args, code = CASES[case]
    commands = {
        "rust": [rust_bin],
        "console_script": [console_script()],
        "python_m": [sys.executable, "-m", "bnfold"],
    }
    results = {
        name: run(command, args, workspace(str(tmp_path / name)))
        for name, command in commands.items()
    }
    rust = results.pop("rust")
    assert rust[0] == code, rust[2].decode()
    for name, result in results.items():
        assert result[0] == rust[0], (name, result[2].decode())
        assert result[1] == rust[1], name
        assert result[2] == rust[2], name
        assert result[3] == rust[3], name
    if code == 2 and case != "bad_flag":
        assert rust[2].startswith(b"bnfold: error: ") and rust[2].count(b"\n") == 1
