//! What bnfold writes, reads and prints under hostile conditions: no file the input reads is
//! ever written, existing files are replaced only with `--force`, the report is committed with
//! the model, signals leave nothing behind, names are printed as data, and valid models with
//! data types bnfold does not decode pass through.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A folder with `m.onnx`, its weight in `w.bin` and its BN parameters in `fused.w.bin`: the
/// name a fold to `fused.onnx` beside it would give its copy of `w.bin`.
fn model_with_two_data_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    externalize(&mut model, dir.path(), "w", "w.bin");
    for name in ["bn.gamma", "bn.beta", "bn.mean", "bn.var", "b"] {
        externalize(&mut model, dir.path(), name, "fused.w.bin");
    }
    write(&dir.path().join("m.onnx"), &model);
    dir
}

#[test]
fn a_data_file_of_the_input_is_never_written_even_with_force() {
    let dir = model_with_two_data_files();
    let before = files(dir.path());
    let input = dir.path().join("m.onnx");
    let out = dir.path().join("fused.onnx");
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec![s(&input), "-o", s(&out)];
        args.extend_from_slice(extra);
        let o = bnfold(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("fused.w.bin") && err.contains("a data file of the input model"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(files(dir.path()), before, "a file changed or appeared");
    }
    let o = bnfold(&[s(&input), "-o", s(&dir.path().join("w.bin")), "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a data file of the input model"));
    assert_eq!(files(dir.path()), before);
}

#[test]
fn an_unrelated_existing_data_file_is_replaced_only_with_force() {
    let input_dir = model_with_two_data_files();
    let input = input_dir.path().join("m.onnx");
    let out_dir = tempfile::tempdir().unwrap();
    std::fs::write(out_dir.path().join("w.bin"), b"someone else's").unwrap();
    let before = files(out_dir.path());
    let out = out_dir.path().join("fused.onnx");
    let o = bnfold(&[s(&input), "-o", s(&out)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("w.bin") && err.contains("exists"), "{err}");
    assert_eq!(files(out_dir.path()), before);
    let o = bnfold(&[s(&input), "-o", s(&out), "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(bnfold::Model::load(&out).is_ok());
}

#[test]
fn the_report_never_replaces_an_input_or_the_model_and_fails_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    std::fs::copy(fixture("conv_bn.onnx"), &input).unwrap();
    let out = dir.path().join("fused.onnx");
    let before = files(dir.path());
    for report in [&input, &out] {
        for force in [false, true] {
            let mut args = vec![s(&input), "-o", s(&out), "--report-file", s(report)];
            if force {
                args.push("--force");
            }
            let o = bnfold(&args);
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            assert_eq!(files(dir.path()), before, "--report-file {report:?}");
        }
    }
    for subcommand in [
        vec!["inspect", s(&input)],
        vec!["verify", s(&input), s(&input)],
    ] {
        let mut args = subcommand.clone();
        args.extend(["--report-file", s(&input), "--force"]);
        let o = bnfold(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert_eq!(files(dir.path()), before);
    }
    // A report that cannot be written: no model either.
    let nowhere = dir.path().join("no-such-folder").join("r.json");
    let o = bnfold(&[s(&input), "-o", s(&out), "--report-file", s(&nowhere)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--report-file"), "{}", stderr(&o));
    assert_eq!(files(dir.path()), before);
}

#[test]
fn an_existing_report_is_replaced_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    std::fs::write(&report, b"keep").unwrap();
    let input = fixture("conv_bn.onnx");
    let o = bnfold(&[s(&input), "--check", "--report-file", s(&report)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read(&report).unwrap(), b"keep");
    let o = bnfold(&[s(&input), "--check", "--report-file", s(&report), "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(written["schema"], 1);
}

fn staging_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".bnfold-"))
        .collect()
}

#[test]
fn sigint_and_sigterm_remove_the_staged_output_and_exit_130_and_143() {
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fused.onnx");
        // Enough samples that verification is still running when the signal comes.
        let mut child = Command::new(env!("CARGO_BIN_EXE_bnfold"))
            .args([s(&fixture("conv_bn.onnx")), "-o", s(&out), "-q"])
            .args(["--samples", "1000000"])
            .spawn()
            .unwrap();
        let started = Instant::now();
        while staging_entries(dir.path()).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(60), "never staged");
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        assert!(staging_entries(dir.path()).is_empty(), "SIG{signal}");
        assert!(!out.exists());
    }
}

#[test]
fn a_later_run_removes_staging_left_by_a_dead_run_and_keeps_a_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir
        .path()
        .join(format!(".bnfold-{}-5-abcdef", u32::MAX - 3));
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("fused.onnx"), vec![0u8; 4096]).unwrap();
    let me = std::process::id();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let live = dir.path().join(format!(".bnfold-{me}-{start}-ghijkl"));
    std::fs::write(&live, b"in use").unwrap();
    let out = dir.path().join("fused.onnx");
    let o = bnfold(&[s(&fixture("conv_bn.onnx")), "-o", s(&out), "--no-verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!dead.exists());
    assert_eq!(std::fs::read(&live).unwrap(), b"in use");
}

#[test]
fn control_characters_in_names_are_printed_escaped_in_the_report_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    node_mut(&mut model, "BatchNormalization").name =
        Some("bn\u{1b}[2J\u{1b}[H\nwrote fused.onnx\r\u{0}".into());
    let input = dir.path().join("m.onnx");
    write(&input, &model);
    let o = bnfold(&[s(&input), "--dry-run", "--no-verify", "--no-readiness"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.lines().any(|l| l
            == "  Conv conv ← BatchNormalization bn\\u{1b}[2J\\u{1b}[H\\nwrote fused.onnx\\r\\0"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\0'));
    let o = bnfold(&["inspect", s(&input)]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with(
            "  BatchNormalization bn\\u{1b}[2J\\u{1b}[H\\nwrote fused.onnx\\r\\0: folds"
        )),
        "{text}"
    );
    // JSON keeps the name exact.
    let o = bnfold(&[s(&input), "--dry-run", "--no-verify", "--report", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["folds"][0]["batch_norm"],
        "bn\u{1b}[2J\u{1b}[H\nwrote fused.onnx\r\u{0}"
    );
}

#[test]
fn control_characters_in_an_error_are_printed_escaped_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    externalize(&mut model, dir.path(), "w", "w.bin");
    let location = "w\u{0}\u{1b}[2J\nbnfold: wrote fused.onnx.bin";
    initializer(&mut model, "w").external_data[0].value = Some(location.into());
    let input = dir.path().join("m.onnx");
    write(&input, &model);
    let o = bnfold(&[s(&input), "--check"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("location 'w\\0\\u{1b}[2J\\nbnfold: wrote fused.onnx.bin' refused"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}') && !err.contains('\0'));
}

#[test]
fn an_int4_tensor_in_external_data_passes_through_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    // INT4 (22), five elements packed into three bytes.
    add_passthrough_tensor(
        &mut model,
        dir.path(),
        22,
        &[5],
        &[0x21, 0x43, 0x05],
        "q.bin",
    );
    let input = dir.path().join("m.onnx");
    write(&input, &model);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("fused.onnx");
    let o = bnfold(&[s(&input), "-o", s(&out), "--no-verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let fused = bnfold::Model::load(&out).unwrap();
    let q = fused
        .proto
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name() == "q")
        .unwrap();
    let r = bnfold::external::external_ref(q).unwrap();
    let data = std::fs::read(out_dir.path().join(&r.location)).unwrap();
    let at = r.offset as usize;
    assert_eq!(&data[at..at + 3], &[0x21, 0x43, 0x05]);
    assert_eq!(r.length, Some(3));
}

#[test]
fn external_locations_are_checked_for_every_dtype_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("secret.bin"), [7u8; 16]).unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    let mut model = conv_bn();
    // FLOAT8E4M3FN (17), four elements.
    add_passthrough_tensor(&mut model, &model_dir, 17, &[4], &[1, 2, 3, 4], "q.bin");
    initializer(&mut model, "q").external_data[0].value = Some("../secret/secret.bin".into());
    let input = model_dir.join("m.onnx");
    write(&input, &model);
    for args in [
        vec!["inspect", s(&input)],
        vec![s(&input), "--check"],
        vec!["verify", s(&input), s(&input)],
    ] {
        let o = bnfold(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("'../secret/secret.bin' refused"), "{err}");
    }
}

#[test]
fn a_non_regular_input_is_refused_at_once() {
    let started = Instant::now();
    let o = bnfold(&["/dev/zero", "-o", "/nonexistent/x.onnx"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.onnx");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let o = bnfold(&[s(&fifo), "--check"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn above_the_node_limit_the_whole_model_run_is_skipped_and_the_local_proof_decides() {
    use bnfold::proto::NodeProto;
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    let graph = model.graph.as_mut().unwrap();
    let last = graph.output[0].name().to_string();
    let extra = bnfold::verify::MAX_WHOLE_MODEL_NODES;
    for i in 0..extra {
        let input = if i == 0 {
            last.clone()
        } else {
            format!("id{}", i - 1)
        };
        graph.node.push(NodeProto {
            op_type: Some("Identity".into()),
            name: Some(format!("identity{i}")),
            input: vec![input],
            output: vec![format!("id{i}")],
            ..Default::default()
        });
    }
    graph.output[0].name = Some(format!("id{}", extra - 1));
    let input = dir.path().join("long.onnx");
    write(&input, &model);
    let o = bnfold(&[s(&input), "--dry-run", "--report", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["folds"].as_array().unwrap().len(), 1);
    // No whole-model run; the local proof (structure, region, certificate) decides.
    assert_eq!(report["verification"]["status"], "passed", "{report}");
    assert_eq!(report["verification"]["proven_locally"], true);
    let reason = report["verification"]["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("{} nodes", extra + 2)), "{reason}");
    // The fold is still proven where it is.
    assert_eq!(report["verification"]["regions"][0]["status"], "passed");
    assert!(report["verification"]["certificates"][0]["unproven"].is_null());
}
