//! Every fixture folds as `fixtures/manifest.json` says, and the fused model computes what the
//! original computes, checked by tract (an engine independent of the fold) and, for the values
//! themselves, by the BatchNormalization formula written out here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bnfold::tensor::{decode, Dtype};
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, SaveOptions, VerifyOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[derive(serde::Deserialize)]
struct Expectation {
    folds: usize,
    skips: Vec<String>,
    verify: bool,
}

fn manifest() -> BTreeMap<String, Expectation> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bn_count(model: &Model) -> usize {
    bnfold::op_counts(model.proto.graph.as_ref().unwrap())
        .get("BatchNormalization")
        .copied()
        .unwrap_or(0)
}

/// The labels (name, or first output) of every BatchNormalization in `graph` and its subgraphs.
fn collect_bn_labels(graph: &bnfold::proto::GraphProto, out: &mut Vec<String>) {
    for n in &graph.node {
        if n.op_type() == "BatchNormalization" {
            out.push(match n.name() {
                "" => n.output[0].clone(),
                name => name.to_string(),
            });
        }
        for a in &n.attribute {
            a.g.iter()
                .map(|g| &**g)
                .chain(&a.graphs)
                .for_each(|g| collect_bn_labels(g, out));
        }
    }
}

#[test]
fn every_fixture_folds_and_skips_as_expected_and_verifies_with_tract() {
    let mut failures = Vec::new();
    let mut figures = BTreeMap::new();
    for (name, expected) in manifest() {
        let original = Model::load(fixtures().join(&name)).unwrap();
        let mut fused = original.clone();
        let report = fold(&mut fused, &FoldOptions::default()).unwrap();
        let mut codes: Vec<String> = report.skips.iter().map(|s| s.reason.code()).collect();
        codes.sort();
        if report.folds.len() != expected.folds || codes != expected.skips {
            failures.push(format!(
                "{name}: {} folds, skips {codes:?}; expected {} and {:?}",
                report.folds.len(),
                expected.folds,
                expected.skips
            ));
            continue;
        }
        // Every BN a fold names (at the end of its chain or passed through) is gone, no other.
        let mut bn_labels = Vec::new();
        collect_bn_labels(original.proto.graph.as_ref().unwrap(), &mut bn_labels);
        let is_bn = |label: &&String| bn_labels.contains(*label);
        let named_bns: std::collections::BTreeSet<&String> = report
            .folds
            .iter()
            .flat_map(|f| std::iter::once(&f.batch_norm).chain(&f.passthrough))
            .filter(|label| is_bn(label))
            .collect();
        let named_bns = named_bns.len();
        assert_eq!(bn_count(&original) - bn_count(&fused), named_bns, "{name}");
        if expected.verify {
            let chains: Vec<String> = report.folds.iter().map(|f| f.output.clone()).collect();
            let v = verify(&original, &fused, &chains, &VerifyOptions::default()).unwrap();
            if v.status != Status::Passed {
                failures.push(format!(
                    "{name}: verification {:?}: {:?}",
                    v.status, v.reason
                ));
            }
            figures.insert(name, rounded_figures(&v));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    insta::assert_json_snapshot!("verification_figures", figures);
}

/// The verification figures in the terms that do not move with the processor. tract picks its
/// kernels by instruction set, and their last bits move every error: under `qemu-x86_64 -cpu
/// Haswell` and `-cpu Nehalem` against AVX-512 (session 23), normalized errors moved by up to
/// 3.2x (a decade boundary crossed on 26 outputs) and output magnitudes by up to 3.7e-6
/// relative (one value lies 3.3e-6 from a three-digit rounding boundary). So an error is shown
/// as its class, exact or below 1e-4, 1e-2 or 1 of its tolerance (the largest is 1.9e-3, f16,
/// against 1e-2; f32's 8.3e-6 against 1e-4), and a magnitude to two significant digits (the
/// nearest boundary 1.2e-4 away). The largest relative error is left out: it is taken over
/// elements near the absolute tolerance, whose last bits move the most.
fn rounded_figures(v: &bnfold::Verification) -> serde_json::Value {
    let class = |x: f64| match x {
        0.0 => "exact",
        x if x < 1e-4 => "<1e-4",
        x if x < 1e-2 => "<1e-2",
        x if x < 1.0 => "<1",
        _ => ">=1",
    };
    let sig2 = |x: f64| format!("{x:.1e}");
    let outputs: Vec<serde_json::Value> = v
        .outputs
        .iter()
        .map(|o| {
            serde_json::json!({
                "name": o.name,
                "graph_output": o.graph_output,
                "passed": o.passed,
                "normalized_error": class(o.normalized_error),
                "max_magnitude": sig2(o.max_magnitude),
                "atol": sig2(o.atol),
                "rtol": sig2(o.rtol),
            })
        })
        .collect();
    let regions: Vec<serde_json::Value> = v
        .regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "node": r.node,
                "status": r.status,
                "input_shape": r.input_shape,
                "normalized_error": r.check.as_ref().map(|c| class(c.normalized_error)),
            })
        })
        .collect();
    let certified = v.certificates.iter().filter(|c| c.passed()).count();
    serde_json::json!({
        "status": v.status,
        "samples": v.samples,
        "guessed_dims": v.guessed_dims,
        "outputs": outputs,
        "regions": regions,
        "certified_nodes": certified,
    })
}

/// `s = γ/√(σ²+ε)`, `W' = s·W`, `b' = s·(b − μ) + β`, straight from the definition.
fn expected_conv_fold(model: &Model) -> (Vec<f64>, Vec<f64>) {
    let g = model.proto.graph.as_ref().unwrap();
    let get = |n: &str| {
        let t = g.initializer.iter().find(|t| t.name() == n).unwrap();
        decode(t, &model.store).unwrap()
    };
    let (w, gamma, beta, mean, var) = (
        get("w"),
        get("bn.gamma"),
        get("bn.beta"),
        get("bn.mean"),
        get("bn.var"),
    );
    let b = g
        .initializer
        .iter()
        .any(|t| t.name() == "b")
        .then(|| get("b").data)
        .unwrap_or(vec![0.0; gamma.len()]);
    let eps = 1e-5f32 as f64;
    let per = w.len() / gamma.len();
    let mut weight = Vec::new();
    for (i, v) in w.data.iter().enumerate() {
        let c = i / per;
        weight.push(gamma.data[c] / (var.data[c] + eps).sqrt() * v);
    }
    let bias = (0..gamma.len())
        .map(|c| gamma.data[c] / (var.data[c] + eps).sqrt() * (b[c] - mean.data[c]) + beta.data[c])
        .collect();
    (weight, bias)
}

fn folded_conv_params(model: &Model) -> (bnfold::tensor::Tensor, bnfold::tensor::Tensor) {
    let g = model.proto.graph.as_ref().unwrap();
    let conv = g.node.iter().find(|n| n.op_type() == "Conv").unwrap();
    let get = |n: &str| model.initializer_value(n).unwrap().unwrap();
    (get(&conv.input[1]), get(&conv.input[2]))
}

#[test]
fn folded_values_are_the_bn_formula_rounded_once_in_each_dtype() {
    for (file, dtype) in [
        ("conv_bn.onnx", Dtype::F32),
        ("conv_bn_f16.onnx", Dtype::F16),
        ("conv_bn_f64.onnx", Dtype::F64),
        ("conv_bn_bf16.onnx", Dtype::Bf16),
    ] {
        let original = Model::load(fixtures().join(file)).unwrap();
        let (weight, bias) = expected_conv_fold(&original);
        let mut fused = original.clone();
        fold(&mut fused, &FoldOptions::default()).unwrap();
        let (w, b) = folded_conv_params(&fused);
        assert_eq!(w.dtype, dtype, "{file}: the weight keeps its dtype");
        assert_eq!(b.dtype, dtype, "{file}: the bias takes the weight's dtype");
        let round = |v: f64| match dtype {
            Dtype::F32 => v as f32 as f64,
            Dtype::F16 => half::f16::from_f32(v as f32).to_f64(),
            Dtype::Bf16 => half::bf16::from_f32(v as f32).to_f64(),
            _ => v,
        };
        let close = |a: f64, b: f64| a == b || (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        for (got, want) in w.data.iter().zip(&weight) {
            assert!(
                close(*got, round(*want)),
                "{file}: weight {got} != {}",
                round(*want)
            );
        }
        for (got, want) in b.data.iter().zip(&bias) {
            assert!(
                close(*got, round(*want)),
                "{file}: bias {got} != {}",
                round(*want)
            );
        }
    }
}

#[test]
fn a_weight_shared_with_another_node_is_copied_not_edited() {
    let original = Model::load(fixtures().join("conv_shared_weight.onnx")).unwrap();
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    assert!(!report.folds[0].weight_in_place);
    let g = fused.proto.graph.as_ref().unwrap();
    let old = g.initializer.iter().find(|t| t.name() == "w").unwrap();
    let before = original
        .proto
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name() == "w")
        .unwrap();
    assert_eq!(old, before, "the shared tensor is left alone");
    let twin = g.node.iter().find(|n| n.name() == "conv_twin").unwrap();
    assert_eq!(twin.input[1], "w");
    let conv = g.node.iter().find(|n| n.name() == "conv").unwrap();
    assert_eq!(conv.input[1], "w_bnfold");
}

#[test]
fn graph_output_names_never_change() {
    for (name, _) in manifest() {
        let original = Model::load(fixtures().join(&name)).unwrap();
        let mut fused = original.clone();
        fold(&mut fused, &FoldOptions::default()).unwrap();
        let names = |m: &Model| -> Vec<String> {
            m.proto
                .graph
                .as_ref()
                .unwrap()
                .output
                .iter()
                .map(|o| o.name().to_string())
                .collect()
        };
        assert_eq!(names(&original), names(&fused), "{name}");
    }
}

#[test]
fn folding_is_deterministic_to_the_byte() {
    for name in [
        "torch_conv2d_grouped_depthwise_op11.onnx",
        "gemm_transb1_c_3x6.onnx",
        "matmul_transposed_weight_bn.onnx",
    ] {
        let run = || {
            let mut m = Model::load(fixtures().join(name)).unwrap();
            fold(&mut m, &FoldOptions::default()).unwrap();
            m.to_bytes().unwrap()
        };
        assert_eq!(run(), run(), "{name}");
    }
}

#[test]
fn overridable_initializers_fold_when_the_user_says_they_are_constants() {
    let mut m = Model::load(fixtures().join("bn_param_overridable.onnx")).unwrap();
    let options = FoldOptions {
        inputs_are_constants: true,
        ..FoldOptions::default()
    };
    assert_eq!(fold(&mut m, &options).unwrap().folds.len(), 1);
}

#[test]
fn only_and_skip_node_leave_bn_in_place_with_their_reasons() {
    let mut m = Model::load(fixtures().join("conv_bn.onnx")).unwrap();
    let only = FoldOptions {
        only: Some([bnfold::FoldKind::Gemm].into()),
        ..FoldOptions::default()
    };
    let r = fold(&mut m, &only).unwrap();
    assert_eq!(r.skips[0].reason.code(), "kind_excluded");
    let skip = FoldOptions {
        skip_nodes: ["bn".to_string()].into(),
        ..FoldOptions::default()
    };
    let r = fold(&mut m, &skip).unwrap();
    assert_eq!(r.skips[0].reason, bnfold::SkipReason::NodeExcluded);
}

#[test]
fn external_data_is_read_folded_and_written_beside_the_output() {
    let original = Model::load(fixtures().join("external/conv_bn_external.onnx")).unwrap();
    assert!(original.has_external_data());
    let mut fused = original.clone();
    fold(&mut fused, &FoldOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fused.onnx");
    fused.save(&out, SaveOptions::default()).unwrap();
    assert!(dir.path().join("conv_bn_external.data").exists());
    let reloaded = Model::load(&out).unwrap();
    assert!(reloaded.has_external_data());
    assert_eq!(bn_count(&reloaded), 0);
    let v = verify(&original, &reloaded, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{:?}", v.reason);
}

/// A model whose weights are spread over two data files, as some exporters write them, keeps
/// that layout: each folded tensor goes back to a file of the same name, and the result verifies.
#[test]
fn several_external_data_files_keep_their_layout() {
    use bnfold::proto::{tensor_proto::DataLocation, StringStringEntryProto};
    let src = tempfile::tempdir().unwrap();
    let mut m = Model::load(fixtures().join("conv_bn.onnx")).unwrap();
    let graph = m.proto.graph.as_mut().unwrap();
    for (k, t) in graph.initializer.iter_mut().enumerate() {
        let raw = decode(t, &Default::default())
            .unwrap()
            .to_proto(t.name())
            .raw_data
            .unwrap();
        let location = format!("part{}.bin", k % 2);
        let path = src.path().join(&location);
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, &raw).unwrap();
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.raw_data = None;
        t.float_data.clear();
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![
            entry("location", location),
            entry("offset", offset.to_string()),
            entry("length", raw.len().to_string()),
        ];
    }
    let model_path = src.path().join("split.onnx");
    std::fs::write(&model_path, prost::Message::encode_to_vec(&m.proto)).unwrap();
    let original = Model::load(&model_path).unwrap();
    let mut fused = original.clone();
    assert_eq!(
        fold(&mut fused, &FoldOptions::default())
            .unwrap()
            .folds
            .len(),
        1
    );
    let out = tempfile::tempdir().unwrap();
    fused
        .save(out.path().join("fused.onnx"), SaveOptions::default())
        .unwrap();
    assert!(out.path().join("part0.bin").exists() && out.path().join("part1.bin").exists());
    let reloaded = Model::load(out.path().join("fused.onnx")).unwrap();
    assert_eq!(bn_count(&reloaded), 0);
    let v = verify(&original, &reloaded, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{:?}", v.reason);
}

#[test]
fn writing_beside_the_input_never_touches_the_input_data_file() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["conv_bn_external.onnx", "conv_bn_external.data"] {
        std::fs::copy(fixtures().join("external").join(f), dir.path().join(f)).unwrap();
    }
    let data_before = std::fs::read(dir.path().join("conv_bn_external.data")).unwrap();
    let mut m = Model::load(dir.path().join("conv_bn_external.onnx")).unwrap();
    fold(&mut m, &FoldOptions::default()).unwrap();
    m.save(dir.path().join("fused.onnx"), SaveOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("conv_bn_external.data")).unwrap(),
        data_before
    );
    assert!(dir.path().join("fused.conv_bn_external.data").exists());
    let original = Model::load(dir.path().join("conv_bn_external.onnx")).unwrap();
    let fused = Model::load(dir.path().join("fused.onnx")).unwrap();
    assert_eq!(
        verify(&original, &fused, &[], &VerifyOptions::default())
            .unwrap()
            .status,
        Status::Passed
    );
}

#[test]
fn external_locations_that_escape_the_model_folder_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::load(fixtures().join("external/conv_bn_external.onnx")).unwrap();
    for loc in ["../conv_bn_external.data", "/etc/passwd"] {
        for t in &mut m.proto.graph.as_mut().unwrap().initializer {
            for e in &mut t.external_data {
                if e.key() == "location" {
                    e.value = Some(loc.to_string());
                }
            }
        }
        let path = dir.path().join("hostile.onnx");
        std::fs::write(&path, prost::Message::encode_to_vec(&m.proto)).unwrap();
        let err = Model::load(&path).unwrap_err();
        assert!(
            matches!(err, bnfold::Error::ExternalData { .. }),
            "{loc}: {err}"
        );
    }
}

#[test]
fn a_model_newer_than_the_vendored_schema_is_refused() {
    let mut m = Model::load(fixtures().join("conv_bn.onnx")).unwrap();
    m.proto.ir_version = Some(bnfold::model::SUPPORTED_IR_VERSION + 1);
    let bytes = prost::Message::encode_to_vec(&m.proto);
    let err = Model::from_bytes(bytes).unwrap_err();
    assert!(
        matches!(err, bnfold::Error::UnsupportedIrVersion { .. }),
        "{err}"
    );
}

#[test]
fn verification_catches_a_weight_altered_by_one_part_in_a_thousand() {
    let original = Model::load(fixtures().join("torch_conv_bn_bn_op13.onnx")).unwrap();
    let mut fused = original.clone();
    fold(&mut fused, &FoldOptions::default()).unwrap();
    let g = fused.proto.graph.as_ref().unwrap();
    let conv = g.node.iter().find(|n| n.op_type() == "Conv").unwrap().input[1].clone();
    let mut w = fused.initializer_value(&conv).unwrap().unwrap();
    let g = fused.proto.graph.as_mut().unwrap();
    let t = g.initializer.iter_mut().find(|t| t.name() == conv).unwrap();
    w.data.iter_mut().for_each(|v| *v *= 1.001);
    *t = w.to_proto(&conv);
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed);
}

#[test]
fn verification_catches_renamed_outputs_and_passes_identical_models_with_zero_error() {
    let original = Model::load(fixtures().join("conv_bn.onnx")).unwrap();
    let v = verify(&original, &original, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed);
    assert!(v.outputs.iter().all(|o| o.max_abs_error == 0.0));
    let mut renamed = original.clone();
    let g = renamed.proto.graph.as_mut().unwrap();
    g.output[0].name = Some("renamed".into());
    g.node.last_mut().unwrap().output[0] = "renamed".into();
    let v = verify(&original, &renamed, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed);
    let mut input_renamed = original.clone();
    let g = input_renamed.proto.graph.as_mut().unwrap();
    let old = g.input[0].name().to_string();
    g.input[0].name = Some("other".into());
    for n in &mut g.node {
        n.input
            .iter_mut()
            .filter(|i| **i == old)
            .for_each(|i| *i = "other".into());
    }
    let v = verify(&original, &input_renamed, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed);
    assert!(v.reason.unwrap().contains("graph inputs differ"));
}

/// Large models are verified one model at a time (the original's outputs kept): the figures
/// are the same as when both models run side by side.
#[test]
fn one_model_at_a_time_gives_the_same_figures() {
    for name in ["torch_conv_bn_bn_op13.onnx", "matmul_rank_inferred_bn.onnx"] {
        let original = Model::load(fixtures().join(name)).unwrap();
        let mut fused = original.clone();
        let report = fold(&mut fused, &FoldOptions::default()).unwrap();
        let chains: Vec<String> = report.folds.iter().map(|f| f.output.clone()).collect();
        let run = |sequential: bool| {
            let options = VerifyOptions {
                one_model_at_a_time: Some(sequential),
                ..VerifyOptions::default()
            };
            verify(&original, &fused, &chains, &options).unwrap()
        };
        let (side_by_side, sequential) = (run(false), run(true));
        assert_eq!(side_by_side.status, Status::Passed, "{name}");
        assert_eq!(side_by_side, sequential, "{name}");
    }
}

#[test]
fn a_model_tract_cannot_run_is_reported_not_verified_naming_the_op() {
    let mut m = Model::load(fixtures().join("no_bn.onnx")).unwrap();
    let g = m.proto.graph.as_mut().unwrap();
    g.node[0].op_type = Some("FancyCustomOp".into());
    g.node[0].domain = Some("com.example".into());
    m.proto
        .opset_import
        .push(bnfold::proto::OperatorSetIdProto {
            domain: Some("com.example".into()),
            version: Some(1),
        });
    // Against itself: the whole model cannot run, but the two graphs are the same, which the
    // local proof shows; the reason still names the op.
    let v = verify(&m, &m, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(v.proven_locally);
    assert!(
        v.reason
            .as_deref()
            .unwrap_or_default()
            .contains("FancyCustomOp"),
        "{:?}",
        v.reason
    );
    // Against a different model it cannot say.
    let other = Model::load(fixtures().join("conv_bn.onnx")).unwrap();
    let v = verify(&m, &other, &[], &VerifyOptions::default()).unwrap();
    assert_ne!(v.status, Status::Passed, "{v:?}");
}

#[test]
fn folds_in_a_model_with_an_op_tract_lacks_are_proven_locally() {
    let mut original = Model::load(fixtures().join("torch_conv_bn_bn_op13.onnx")).unwrap();
    let g = original.proto.graph.as_mut().unwrap();
    let out = g.output[0].name().to_string();
    g.node.push(bnfold::proto::NodeProto {
        op_type: Some("FancyCustomOp".into()),
        domain: Some("com.example".into()),
        name: Some("far_away".into()),
        input: vec![out],
        output: vec!["custom_out".into()],
        ..Default::default()
    });
    g.output[0].name = Some("custom_out".into());
    original
        .proto
        .opset_import
        .push(bnfold::proto::OperatorSetIdProto {
            domain: Some("com.example".into()),
            version: Some(1),
        });
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    // Conv → BN → BN: one fold, the first BN passed through.
    assert_eq!(report.folds.len(), 1);
    assert_eq!(report.folds[0].passthrough, ["/1/BatchNormalization"]);
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(v.proven_locally && v.structure_difference.is_none());
    assert!(v.reason.unwrap().contains("FancyCustomOp"));
    assert!(v.regions.iter().all(|r| r.status == Status::Passed) && !v.regions.is_empty());
    // One weight element off: the local proof fails it although the whole model cannot run.
    let mut tampered = fused.proto.clone();
    let w = &report.folds[0].weight;
    let t = tampered
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name() == w)
        .unwrap();
    let mut value = decode(t, &Default::default()).unwrap();
    value.data[0] *= 1.001;
    *t = value.to_proto(w);
    let tampered = Model::from_proto(tampered, Default::default()).unwrap();
    let v = verify(&original, &tampered, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
}
