//! Each readiness warning on the smallest model that calls for it, and its absence where it
//! does not apply.

mod common;

use bnfold::external::ExternalStore;
use bnfold::pipeline::{run, RunOptions};
use bnfold::proto::ModelProto;
use bnfold::{FoldOptions, Model};
use common::build::Graph;

/// The warning codes of the fused model's readiness, each with its nodes.
fn warnings(model: ModelProto, fold: FoldOptions) -> Vec<(String, Vec<String>, String)> {
    let model = Model::from_proto(model, ExternalStore::none()).unwrap();
    let options = RunOptions {
        fold,
        readiness: true,
        verify: None,
    };
    let (_, report) = run(model, &options).unwrap();
    let readiness = report.readiness.unwrap();
    readiness
        .warnings
        .into_iter()
        .map(|w| (w.code.to_string(), w.nodes, w.message))
        .collect()
}

fn codes(found: &[(String, Vec<String>, String)]) -> Vec<&str> {
    found.iter().map(|(c, _, _)| c.as_str()).collect()
}

/// `x → Conv(w, 4 output channels) → y`, the weight balanced or not.
fn conv(opset: i64, weight: &[f32]) -> Graph {
    Graph::new(opset)
        .input("x", &[1, 2, 3, 3])
        .init("w", &[4, 2, 1, 1], weight)
        .node("Conv", &["x", "w"], &["y"])
        .output("y")
}

const BALANCED: [f32; 8] = [0.9, -0.7, 0.8, 1.0, -0.95, 0.6, 0.85, -0.75];
/// One channel 200 times the range of the others.
const UNBALANCED: [f32; 8] = [200.0, -150.0, 0.9, -0.7, 0.8, 1.0, -0.95, 0.6];

#[test]
fn a_balanced_layer_at_opset_13_has_no_warning() {
    assert!(warnings(conv(13, &BALANCED).model(), FoldOptions::default()).is_empty());
}

#[test]
fn before_opset_13_per_channel_int8_cannot_be_written() {
    let found = warnings(conv(11, &BALANCED).model(), FoldOptions::default());
    assert_eq!(codes(&found), ["per_channel_needs_opset_13"]);
    assert!(found[0].2.contains("opset 11"), "{}", found[0].2);
    assert!(
        found[0].2.contains("convert_version(model, 13)"),
        "{}",
        found[0].2
    );
}

#[test]
fn a_layer_far_better_per_channel_is_named_as_a_candidate() {
    let found = warnings(conv(13, &UNBALANCED).model(), FoldOptions::default());
    assert_eq!(codes(&found), ["per_tensor_far_below_per_channel"]);
    assert_eq!(found[0].1, ["y"]);
    assert!(
        found[0].2.contains("quantize them per channel"),
        "{}",
        found[0].2
    );
}

#[test]
fn after_equalize_the_loss_warning_says_what_equalization_did() {
    // Paddle's classifier: its two losing layers are in no exact pair (hard-swish beside them).
    let model = common::equalizing::fixture_model("paddle/ppocr_mobile_v2_cls_op11.onnx");
    let run_with = |equalize: bool| {
        let fold = FoldOptions {
            equalize,
            ..FoldOptions::default()
        };
        let options = RunOptions {
            fold,
            readiness: true,
            verify: None,
        };
        let (_, report) = run(model.clone(), &options).unwrap();
        let warnings = report.readiness.unwrap().warnings;
        let loss = warnings
            .into_iter()
            .find(|w| w.code.to_string() == "per_tensor_far_below_per_channel");
        loss.unwrap().message
    };
    let plain = run_with(false);
    assert!(
        plain.contains("cross-layer equalization balances"),
        "{plain}"
    );
    let equalized = run_with(true);
    assert!(
        !equalized.contains("cross-layer equalization balances"),
        "{equalized}"
    );
    assert!(
        equalized.contains("--equalize found no exact rescaling for them"),
        "{equalized}"
    );
}

#[test]
fn weights_kept_as_constant_nodes_are_named() {
    let model = Graph::new(13)
        .input("x", &[1, 2, 3, 3])
        .constant("w", &[4, 2, 1, 1], &BALANCED)
        .node("Conv", &["x", "w"], &["y"])
        .output("y")
        .model();
    let keep = FoldOptions {
        keep_constant_nodes: true,
        ..FoldOptions::default()
    };
    let found = warnings(model.clone(), keep);
    assert_eq!(codes(&found), ["constant_node_weights"]);
    assert_eq!(found[0].1, ["y"]);
    assert!(
        found[0].2.contains("--keep-constant-nodes"),
        "{}",
        found[0].2
    );
    // By default the weight is an initializer, and the warning goes.
    assert!(warnings(model, FoldOptions::default()).is_empty());
}

#[test]
fn dead_channels_and_variances_below_epsilon_are_counted_per_batch_norm() {
    let model = conv(13, &BALANCED)
        .init("g", &[4], &[1.0, 0.0, 1.0, 1.0])
        .init("b", &[4], &[0.5; 4])
        .init("m", &[4], &[0.0; 4])
        .init("v", &[4], &[1.0, 1.0, 1e-9, 1e-9])
        .node("BatchNormalization", &["y", "g", "b", "m", "v"], &["z"])
        .output("z")
        .model();
    let found = warnings(model, FoldOptions::default());
    assert_eq!(codes(&found), ["dead_channels", "variance_below_epsilon"]);
    assert!(
        found[0].2.starts_with("1 channel in 1 BatchNormalization"),
        "{}",
        found[0].2
    );
    assert!(
        found[1].2.starts_with("2 channels in 1 BatchNormalization"),
        "{}",
        found[1].2
    );
    assert_eq!(found[0].1, ["z"]);
}
