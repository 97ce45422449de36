//! What a person and a CI step see: the real binary's exit code, stdout and stderr together,
//! snapshotted with insta (temporary and fixture paths filtered); and the JSON report checked
//! against its published schema.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

/// Runs bnfold in `dir` with colours off and returns exit code, stdout and stderr as one text.
fn transcript(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bnfold"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("CLICOLOR_FORCE")
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "exit code: {}\n----- stdout -----\n{}----- stderr -----\n{}",
        out.status.code().map_or("signal".into(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.replace(&fixtures().display().to_string(), "[FIXTURES]")
        .replace(&dir.display().to_string(), "[TMP]")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn fold() {
    let dir = tmp();
    let input = fixture("torch_conv_bn_bn_op13.onnx");
    insta::assert_snapshot!(transcript(dir.path(), &[&input, "-o", "fused.onnx"], &[]));
    assert!(dir.path().join("fused.onnx").exists());
}

#[test]
fn check_that_fails() {
    let dir = tmp();
    let input = fixture("torch_conv2d_grouped_depthwise_op11.onnx");
    insta::assert_snapshot!(transcript(dir.path(), &[&input, "--check"], &[]));
}

#[test]
fn check_that_passes() {
    let dir = tmp();
    let input = fixture("torch_relu_bn_op13.onnx");
    insta::assert_snapshot!(transcript(dir.path(), &[&input, "--check"], &[]));
}

#[test]
fn verification_failure() {
    let dir = tmp();
    let mut tampered = bnfold::Model::load(fixtures().join("conv_bn.onnx")).unwrap();
    bnfold::fold(&mut tampered, &bnfold::FoldOptions::default()).unwrap();
    let mut values = tampered.initializer_value("w").unwrap().unwrap();
    let graph = tampered.proto.graph.as_mut().unwrap();
    let weight = graph
        .initializer
        .iter_mut()
        .find(|t| t.name() == "w")
        .unwrap();
    values.data.iter_mut().for_each(|v| *v *= 1.001);
    *weight = values.to_proto("w");
    tampered
        .save(dir.path().join("tampered.onnx"), Default::default())
        .unwrap();
    let original = fixture("conv_bn.onnx");
    insta::assert_snapshot!(transcript(
        dir.path(),
        &["verify", &original, "tampered.onnx"],
        &[]
    ));
}

#[test]
fn missing_file() {
    let dir = tmp();
    insta::assert_snapshot!(transcript(
        dir.path(),
        &["missing.onnx", "-o", "out.onnx"],
        &[]
    ));
    assert!(!dir.path().join("out.onnx").exists());
}

#[test]
fn not_an_onnx_file() {
    let dir = tmp();
    std::fs::write(dir.path().join("notes.onnx"), "these are not the weights\n").unwrap();
    insta::assert_snapshot!(transcript(
        dir.path(),
        &["notes.onnx", "-o", "out.onnx"],
        &[]
    ));
    assert!(!dir.path().join("out.onnx").exists());
}

#[test]
fn help() {
    insta::assert_snapshot!(transcript(tmp().path(), &["--help"], &[]));
}

#[test]
fn colours_only_when_forced_and_never_with_no_color() {
    let dir = tmp();
    let input = fixture("conv_bn.onnx");
    let plain = transcript(dir.path(), &[&input, "--dry-run"], &[]);
    assert!(!plain.contains('\x1b'), "{plain}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bnfold"));
    let forced = cmd
        .args([&input, "--dry-run"])
        .env_remove("NO_COLOR")
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&forced.stdout).contains("\x1b[32m"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bnfold"));
    let both = cmd
        .args([&input, "--dry-run"])
        .env("NO_COLOR", "1")
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&both.stdout).contains('\x1b'));
}

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/report.schema.json"),
    )
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn json_of(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bnfold"))
        .args(args)
        .args(["--report", "json"])
        .current_dir(dir)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_json_report_validates_against_the_schema() {
    let validator = schema();
    let dir = tmp();
    let manifest: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for name in manifest.keys() {
        let report = json_of(dir.path(), &[&fixture(name), "--dry-run", "--samples", "1"]);
        let errors: Vec<String> = validator
            .iter_errors(&report)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        checked += 1;
    }
    assert_eq!(checked, manifest.len());
    let fused = json_of(dir.path(), &[&fixture("conv_bn.onnx"), "-o", "fused.onnx"]);
    assert!(validator.is_valid(&fused), "{fused:#}");
    let check = json_of(dir.path(), &[&fixture("conv_bn.onnx"), "--check"]);
    assert!(validator.is_valid(&check), "{check:#}");
    let verified = json_of(
        dir.path(),
        &["verify", &fixture("conv_bn.onnx"), "fused.onnx"],
    );
    assert!(validator.is_valid(&verified), "{verified:#}");
    let inspected = json_of(
        dir.path(),
        &["inspect", &fixture("torch_preact_block_op13.onnx")],
    );
    assert!(validator.is_valid(&inspected), "{inspected:#}");
    let decomposed = json_of(
        dir.path(),
        &[
            &fixture("torch_add_bn_standalone_op13.onnx"),
            "--dry-run",
            "--decompose-standalone",
        ],
    );
    assert!(validator.is_valid(&decomposed), "{decomposed:#}");
    let merged = json_of(
        dir.path(),
        &[
            &fixture("timm_repvgg_blocks_op13.onnx"),
            "--dry-run",
            "--merge-branches",
        ],
    );
    assert_eq!(
        merged["merges"].as_array().map(Vec::len),
        Some(4),
        "{merged:#}"
    );
    let errors: Vec<String> = validator
        .iter_errors(&merged)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        decomposed["decompositions"].as_array().map(Vec::len),
        Some(1)
    );
    let mut broken = fused.clone();
    broken["folds"][0]["kind"] = "batchnorm".into();
    assert!(
        !validator.is_valid(&broken),
        "the schema must reject an unknown fold kind"
    );
}

#[test]
fn same_input_gives_byte_identical_json_and_model() {
    let dir = tmp();
    let input = fixture("torch_dynamo_conv_bn_op18.onnx");
    let run = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_bnfold"))
            .args([&input, "-o", out, "--report", "json"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let (a, b) = (run("a.onnx"), run("b.onnx"));
    let strip_output = |o: &std::process::Output, name: &str| {
        String::from_utf8_lossy(&o.stdout).replace(name, "OUT")
    };
    assert_eq!(strip_output(&a, "a.onnx"), strip_output(&b, "b.onnx"));
    assert_eq!(
        std::fs::read(dir.path().join("a.onnx")).unwrap(),
        std::fs::read(dir.path().join("b.onnx")).unwrap()
    );
}
