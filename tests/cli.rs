//! The real binary: exit codes, one-line errors, atomic output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn bnfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bnfold"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn folding_writes_the_model_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fused.onnx");
    let o = bnfold(&[
        fixture("torch_conv_bn_bn_op13.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("verification: passed"), "{text}");
    assert!(out.exists());
}

#[test]
fn check_exits_1_when_bn_would_fold_and_0_when_nothing_is_left() {
    let o = bnfold(&[fixture("conv_bn.onnx").to_str().unwrap(), "--check"]);
    assert_eq!(o.status.code(), Some(1));
    let o = bnfold(&[
        fixture("torch_relu_bn_op13.onnx").to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn bad_input_is_a_one_line_error_with_exit_2_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\xff\xff\xff not a model at all").unwrap();
    let out = dir.path().join("out.onnx");
    for input in [junk.clone(), dir.path().join("missing.onnx")] {
        let o = bnfold(&[input.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(input.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn the_input_is_never_overwritten_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    std::fs::copy(fixture("conv_bn.onnx"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let o = bnfold(&[input.to_str().unwrap(), "-o", input.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&input).unwrap(), before);
    let o = bnfold(&[
        input.to_str().unwrap(),
        "-o",
        input.to_str().unwrap(),
        "--in-place",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_ne!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn json_report_is_versioned_and_identical_across_runs() {
    let run = || {
        let o = bnfold(&[
            fixture("torch_linear_bn1d_op13.onnx").to_str().unwrap(),
            "--dry-run",
            "--report",
            "json",
        ]);
        assert_eq!(o.status.code(), Some(0));
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_object_mut().unwrap().remove("seconds");
        v
    };
    let a = run();
    assert_eq!(a["schema"], 1);
    assert_eq!(a["folds"][0]["kind"], "gemm");
    assert_eq!(a, run());
}

#[test]
fn an_unknown_skip_node_is_an_error() {
    let o = bnfold(&[
        fixture("conv_bn.onnx").to_str().unwrap(),
        "--check",
        "--skip-node",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope"));
}

#[test]
fn verify_subcommand_compares_two_models() {
    let o = bnfold(&[
        "verify",
        fixture("conv_bn.onnx").to_str().unwrap(),
        fixture("conv_bn.onnx").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
