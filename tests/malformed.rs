//! The malformed and hostile corpus in `tests/malformed/` (written by
//! `scripts/make_malformed.py`): every file gives exit code 2, a one-line error that names the
//! problem, no output file and no panic, under a 1 GiB address-space limit so that no allocation
//! sized from an unchecked field can succeed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const ADDRESS_SPACE_KIB: u64 = 1 << 20;

#[test]
fn every_malformed_input_is_a_one_line_error_with_exit_2_and_no_output() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let expected: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(corpus.join("expected.json")).unwrap())
            .unwrap();
    assert!(
        expected.len() >= 50,
        "the corpus has {} cases",
        expected.len()
    );
    let out_dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (case, needle) in &expected {
        let out = out_dir.path().join("out.onnx");
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {ADDRESS_SPACE_KIB}; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_bnfold"))
            .arg(corpus.join(case))
            .arg("-o")
            .arg(&out)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let problem = if o.status.code() != Some(2) {
            Some(format!("exit code {:?}", o.status.code()))
        } else if lines.len() != 1 || !lines[0].starts_with("bnfold: error: ") {
            Some("not one error line".into())
        } else if !lines[0].contains(needle.as_str()) {
            Some(format!("does not say '{needle}'"))
        } else if out.exists() {
            Some("an output file was written".into())
        } else {
            None
        };
        if let Some(problem) = problem {
            failures.push(format!("{case}: {problem}: {stderr}"));
        }
        let _ = std::fs::remove_file(&out);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_corpus_names_the_file_in_every_error() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let o = Command::new(env!("CARGO_BIN_EXE_bnfold"))
        .arg(corpus.join("raw_data_short.onnx"))
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("raw_data_short.onnx") && stderr.contains("tensor 'w'"),
        "{stderr}"
    );
}
