//! Every fixture folds as `fixtures/manifest.json` says, and the fused model computes what the
//! original computes, checked by tract (an engine independent of the fold) and, for the values
//! themselves, by the BatchNormalization formula written out here.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bnfold::tensor::{decode, Dtype};
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::bn_count;

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
