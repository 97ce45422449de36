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

/// `conv_bn.onnx` with the Conv weight's first value set to `weight` and the BN's first gamma to
/// `gamma`, written to `dir`.
fn conv_bn_with(dir: &Path, weight: f64, gamma: f64) -> PathBuf {
    let mut model = bnfold::Model::load(fixture("conv_bn.onnx")).unwrap();
    let store = model.store.clone();
    let graph = model.proto.graph.as_mut().unwrap();
    let conv = graph.node.iter().find(|n| n.op_type() == "Conv").unwrap();
    let bn = graph
        .node
        .iter()
        .find(|n| n.op_type() == "BatchNormalization")
        .unwrap();
    let edits = [
        (conv.input[1].clone(), weight),
        (bn.input[1].clone(), gamma),
    ];
    for (name, value) in edits {
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name() == name)
            .unwrap();
        let mut decoded = bnfold::tensor::decode(t, &store).unwrap();
        decoded.data[0] = value;
        *t = decoded.to_proto(&name);
    }
    let path = dir.join("edited.onnx");
    model.save(&path, Default::default()).unwrap();
    path
}

#[test]
fn an_f32_weight_that_overflows_when_written_is_an_error_naming_it_and_no_output() {
    // A scale of ~100 is not checked before writing (see ScaledTensor::fits); the one rounding
    // at write time finds the overflow.
    let dir = tempfile::tempdir().unwrap();
    let input = conv_bn_with(dir.path(), 3.0e37, 100.0);
    let out = dir.path().join("fused.onnx");
    let o = bnfold(&[
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--no-verify",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'w'") && err.contains("is not finite in float32"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".bnfold"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_f32_fold_whose_scale_could_overflow_is_checked_before_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let input = conv_bn_with(dir.path(), 3.0e37, 1.0e9);
    let out = dir.path().join("fused.onnx");
    let o = bnfold(&[
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--no-verify",
        "--report",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["folds"].as_array().unwrap().len(), 0);
    assert_eq!(
        report["skips"][0]["reason"], "folded_value_out_of_range",
        "{report}"
    );
    assert_eq!(report["skips"][0]["details"]["tensor"], "w", "{report}");
}

#[test]
fn a_quiet_run_writes_the_same_model_and_a_report_beside_it_keeps_the_readiness_figures() {
    // Whether a quiet run computes the figures cannot be seen from outside (the predicate has
    // its own unit test in `cli/args.rs`); what can: the same model is written, and any report
    // asked for alongside `-q` has the figures, as it has without `-q`.
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("torch_conv_bn_bn_op13.onnx");
    let written = |name: &str, flags: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec![
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--no-verify",
        ];
        args.extend(flags);
        let o = bnfold(&args);
        assert_eq!(o.status.code(), Some(0), "{flags:?}: {}", stderr(&o));
        (std::fs::read(&out).unwrap(), o)
    };
    let (shown, o) = written("shown.onnx", &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("INT8 readiness"));
    let (quiet, o) = written("quiet.onnx", &["-q"]);
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
    assert_eq!(quiet, shown);
    let file = dir.path().join("report.json");
    let (_, o) = written(
        "file.onnx",
        &["-q", "--report-file", file.to_str().unwrap()],
    );
    assert!(o.stdout.is_empty());
    let (_, o) = written("stdout.onnx", &["-q", "--report", "json"]);
    for report in [std::fs::read(&file).unwrap(), o.stdout] {
        let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
        let layers = &report["quantization_readiness"]["layers"];
        assert_eq!(layers.as_array().map(Vec::len), Some(1), "{report}");
    }
}
