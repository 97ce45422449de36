//! `--equalize=absorb`: high-bias absorption, planned with equalization and applied on a copy of
//! the exact model. Checked against the formula (`c = max(0, (β − 3|γ|) / s)` out of the first
//! layer's bias, `Σ W_B · c` into the second's), against the original where the approximation
//! is exact (every pre-activation above its shift, a 1 × 1 second layer: the verification
//! passes), on a real Paddle export (the change measured, the exact model proven), and on what
//! does not absorb.

mod common;

use bnfold::external::ExternalStore;
use bnfold::proto::ModelProto;
use bnfold::report::Report;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::build::Graph;
use common::equalizing::fixture_model;
use common::{bnfold, edited, fixture};

/// BatchNormalization shifts β and scales γ of the pair's three channels: channels 0 and 1 sit
/// far above zero (`β − 3γ > 0`), channel 2 does not.
const BETA: [f32; 3] = [5.0, 4.0, 0.1];
const GAMMA: [f32; 3] = [0.1, 0.2, 0.05];

/// `x0 [1, 2, 4, 4] → Sigmoid → Conv A (1 × 1, [3, 2]) → BN → activation → Conv B (1 × 1,
/// [2, 3], bias) → y`. A's outputs stay within one unit of the BN's mean (0), so each channel's
/// pre-activation lies within `0.2·γ` of β: above `β − 3γ`, where absorption is exact.
fn absorbable(activation: &str) -> Graph {
    Graph::new(13)
        .input("x0", &[1, 2, 4, 4])
        .node("Sigmoid", &["x0"], &["x"])
        .init("wa", &[3, 2, 1, 1], &[0.1, -0.05, 0.02, 0.08, -0.1, 0.1])
        .init("bn.scale", &[3], &GAMMA)
        .init("bn.bias", &[3], &BETA)
        .init("bn.mean", &[3], &[0.0; 3])
        .init("bn.var", &[3], &[1.0; 3])
        .init("wb", &[2, 3, 1, 1], &[0.5, -0.25, 1.0, 0.75, 0.1, -1.0])
        .init("bb", &[2], &[0.5, -0.5])
        .node("Conv", &["x", "wa"], &["ca"])
        .bn("bn", "ca", "n")
        .node(activation, &["n"], &["r"])
        .node("Conv", &["r", "wb", "bb"], &["y"])
        .output("y")
}

/// `model` folded with `--equalize=absorb`: the exact model (read back from its bytes), the
/// absorbed one, and the report with the change measured.
fn absorbed(original: &Model) -> (Model, Model, Report) {
    let mut exact = original.clone();
    let options = FoldOptions {
        equalize: true,
        absorb_high_bias: true,
        ..FoldOptions::default()
    };
    let mut report = fold(&mut exact, &options).unwrap();
    let exact = Model::from_bytes(exact.to_bytes().unwrap()).unwrap();
    let mut absorbed = exact.clone();
    let measure = Some((&exact, &VerifyOptions::default()));
    bnfold::absorb(&mut absorbed, &mut report, measure).unwrap();
    let absorbed = Model::from_bytes(absorbed.to_bytes().unwrap()).unwrap();
    (exact, absorbed, report)
}

fn model(proto: ModelProto) -> Model {
    Model::from_proto(proto, ExternalStore::none()).unwrap()
}

/// The value of input `k` of the `nth` Conv.
fn conv_input(model: &Model, nth: usize, k: usize) -> Vec<f64> {
    let graph = model.proto.graph.as_ref().unwrap();
    let conv = graph.node.iter().filter(|n| n.op_type() == "Conv").nth(nth);
    let name = &conv.unwrap().input[k];
    model.initializer_value(name).unwrap().unwrap().data
}

#[test]
fn shifts_follow_the_formula_and_are_exact_where_every_pre_activation_lies_above_them() {
    let original = model(absorbable("Relu").model());
    let (exact, absorbed, report) = absorbed(&original);
    let e = &report.equalizations[0];
    let a = e.absorption.as_ref().expect("an absorption");
    assert_eq!(a.channels, 2, "{a:?}");
    // s_i, the equalization factor of A's channel i: the folded weight (W·γ/√(1 + ε)) over the
    // exact model's.
    let (wa, wa_exact) = (
        [0.1, -0.05, 0.02, 0.08, -0.1, 0.1],
        conv_input(&exact, 0, 1),
    );
    let sigma = (1.0f64 + 1e-5).sqrt();
    let c: Vec<f64> = (0..3)
        .map(|i| {
            let s = wa[2 * i] * GAMMA[i] as f64 / sigma / wa_exact[2 * i];
            ((BETA[i] as f64 - 3.0 * GAMMA[i] as f64) / s).max(0.0)
        })
        .collect();
    assert!(c[0] > 0.0 && c[1] > 0.0 && c[2] == 0.0, "{c:?}");
    assert!(
        (a.largest_shift / c[0].max(c[1]) - 1.0).abs() < 1e-6,
        "{a:?} {c:?}"
    );
    // A's bias: less c; B's: plus Σ_i W_B[o, i]·c_i (B's weight as equalized).
    let (ba_exact, ba) = (conv_input(&exact, 0, 2), conv_input(&absorbed, 0, 2));
    for i in 0..3 {
        assert!((ba_exact[i] - c[i] - ba[i]).abs() < 1e-5, "A's bias {i}");
    }
    let (wb, bb_exact, bb) = (
        conv_input(&exact, 1, 1),
        conv_input(&exact, 1, 2),
        conv_input(&absorbed, 1, 2),
    );
    for o in 0..2 {
        let compensation: f64 = (0..3).map(|i| wb[o * 3 + i] * c[i]).sum();
        assert!(
            (bb_exact[o] + compensation - bb[o]).abs() < 1e-5,
            "B's bias {o}"
        );
    }
    // Exact here: the absorbed model passes the verification against the original.
    let v = verify(&original, &absorbed, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    let check = report.absorption_check.as_ref().unwrap();
    assert_eq!((check.pairs, &check.status), (1, &Status::Passed));
    assert!(check.output_change.unwrap() < 1e-5, "{check:?}");
    assert!(a.float_change.unwrap() < 1e-5, "{a:?}");
}

#[test]
fn a_real_export_absorbs_its_measured_change_with_the_exact_model_proven() {
    let original = fixture_model("paddle/ppocr_mobile_v2_cls_op11.onnx");
    let (exact, _, report) = absorbed(&original);
    let v = verify(&original, &exact, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    let pairs: Vec<_> = report
        .equalizations
        .iter()
        .filter_map(|e| e.absorption.as_ref())
        .collect();
    assert_eq!(pairs.len(), 2, "{pairs:?}");
    assert!(pairs
        .iter()
        .all(|a| a.float_change.is_some_and(|c| c > 0.0)));
    let check = report.absorption_check.as_ref().unwrap();
    assert_eq!(check.status, Status::Passed, "{check:?}");
    // A real change (Paddle's classifier: AIMET's absorption moves it by 7e-3), bounded.
    let change = check.output_change.unwrap();
    assert!(change > 1e-4 && change < 0.05, "{check:?}");
}

#[test]
fn nothing_absorbs_without_relu_statistics_a_conv_or_gemm_second_or_the_option() {
    let leaky = absorbable("LeakyRelu").model();
    // No BatchNormalization: no statistics for A's output.
    let mut plain = absorbable("Relu").model();
    let graph = plain.graph.as_mut().unwrap();
    graph.node.retain(|n| n.op_type() != "BatchNormalization");
    graph.node.iter_mut().for_each(|n| {
        for i in n.input.iter_mut().filter(|i| *i == "n") {
            *i = "ca".into();
        }
    });
    for (what, proto) in [("LeakyRelu", leaky), ("no BN", plain)] {
        let (_, _, report) = absorbed(&model(proto));
        assert_eq!(report.equalizations.len(), 1, "{what}");
        assert!(report.absorption.is_empty(), "{what}");
        assert!(report.equalizations[0].absorption.is_none(), "{what}");
        assert!(report.absorption_check.is_none(), "{what}");
    }
    // A ConvTranspose second (its constant's contribution varies with the stride's phase).
    let mut transposed = absorbable("Relu").model();
    let graph = transposed.graph.as_mut().unwrap();
    graph.node.last_mut().unwrap().op_type = Some("ConvTranspose".into());
    let wb = graph
        .initializer
        .iter_mut()
        .find(|t| t.name() == "wb")
        .unwrap();
    wb.dims = vec![3, 2, 1, 1];
    let (_, _, report) = absorbed(&model(transposed));
    assert_eq!(report.equalizations.len(), 1);
    assert!(report.absorption.is_empty());
    // Exact mode plans nothing.
    let mut fused = model(absorbable("Relu").model());
    let options = FoldOptions {
        equalize: true,
        ..FoldOptions::default()
    };
    let report = fold(&mut fused, &options).unwrap();
    assert!(report.absorption.is_empty() && report.equalizations[0].absorption.is_none());
}

#[test]
fn a_change_beyond_the_absorbed_biases_fails_the_check() {
    let original = fixture_model("paddle/ppocr_mobile_v2_cls_op11.onnx");
    let (exact, absorbed, mut report) = absorbed(&original);
    // One element of a weight no absorption touches.
    let graph = absorbed.proto.graph.as_ref().unwrap();
    let last_conv = graph.node.iter().rfind(|n| n.op_type() == "Conv").unwrap();
    let tampered = edited(&absorbed, &last_conv.input[1].clone(), |data, _, _| {
        data[0] *= 1.01
    });
    bnfold::absorption::check(&exact, &tampered, &mut report, &VerifyOptions::default()).unwrap();
    let check = report.absorption_check.clone().unwrap();
    assert_eq!(check.status, Status::Failed, "{check:?}");
    assert!(check.reason.unwrap().contains("beyond the absorbed biases"));
    // The weight of a layer whose bias was absorbed into: its node differs from the exact one
    // anyway (its bias), and the weight is still held to the exact model's.
    let second = &report.equalizations.iter().find(|e| e.absorption.is_some());
    let second = &second.unwrap().second;
    let node = graph
        .node
        .iter()
        .find(|n| &bnfold::graph::node_label(n) == second)
        .unwrap();
    let tampered = edited(&absorbed, &node.input[1].clone(), |data, _, _| {
        data[0] *= 1.0001
    });
    bnfold::absorption::check(&exact, &tampered, &mut report, &VerifyOptions::default()).unwrap();
    let check = report.absorption_check.unwrap();
    assert_eq!(check.status, Status::Failed, "{check:?}");
    assert!(check.reason.unwrap().starts_with("initializer"));
}

#[test]
fn the_command_line_writes_the_absorbed_model_and_reports_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("absorbed.onnx");
    let input = fixture("paddle/ppocr_mobile_v2_cls_op11.onnx");
    // The fixture folded into `out` with `extra` flags; the run succeeds.
    let fold_with = |extra: &[&str]| {
        let mut args = vec![
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--force",
        ];
        args.extend(extra);
        let o = bnfold(&args);
        assert!(o.status.success(), "{extra:?}: {}", common::stderr(&o));
        o
    };
    let json = |mode: &str| {
        let o = fold_with(&[mode, "--report", "json"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let report = json("--equalize=absorb");
    assert_eq!(report["verification"]["status"], "passed");
    let check = &report["high_bias_absorption"];
    assert_eq!(
        (check["pairs"].as_u64(), check["status"].as_str()),
        (Some(2), Some("passed"))
    );
    assert!(check["output_change"].as_f64().unwrap() > 1e-4);
    // The model written is the absorbed one: it differs from the original by that change.
    let written = Model::load(&out).unwrap();
    let original = fixture_model("paddle/ppocr_mobile_v2_cls_op11.onnx");
    let v = verify(&original, &written, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(
        v.status,
        Status::Failed,
        "an approximation, not an equivalent model"
    );
    // The page says it too: the summary, and a column of what each pair absorbed.
    let page = dir.path().join("report.html");
    fold_with(&["--equalize=absorb", "--report-html", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("High bias absorbed into 2 pairs"), "{html}");
    assert!(html.contains("<th>high bias absorbed</th>"));
    assert!(html.contains("3 channels, change"));
    // Without verification nothing is measured, and the text says so.
    let o = fold_with(&["--equalize=absorb", "--no-verify"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "float change at the outputs not measured, against the exact model \
             (not verified: not measured (verification off))"
        ),
        "{text}"
    );
    // `--equalize` alone is exact: no absorption.
    let report = json("--equalize");
    assert!(report.get("high_bias_absorption").is_none());
    assert!(report["equalizations"][0].get("absorption").is_none());
}
