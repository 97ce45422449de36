//! BatchNorm after Concat (MixNet), and arithmetic chains folded forward: each fold checked
//! against the formula computed here and proven by `verify`; each skip names its reason.

mod common;

use bnfold::external::ExternalStore;
use bnfold::proto::ModelProto;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::build::Graph;
use common::chains::{conv_tensors, fold_and_verify, op_types};

/// `x [1, 2, 4, 4]` into Conv `a` (2 → 2 channels) and Conv `b` (2 → 3, padded 3×3), their
/// outputs concatenated along `axis` into `cat`.
fn two_convs_concat(axis: i64) -> Graph {
    let wa: Vec<f32> = (0..4).map(|i| 0.5 + i as f32 * 0.25).collect();
    let wb: Vec<f32> = (0..54).map(|i| ((i * 7) % 11) as f32 / 8.0 - 0.6).collect();
    Graph::new(13)
        .input("x", &[1, 2, 4, 4])
        .init("wa", &[2, 2, 1, 1], &wa)
        .init("ba", &[2], &[0.5, -0.5])
        .init("wb", &[3, 2, 3, 3], &wb)
        .node("Conv", &["x", "wa", "ba"], &["a"])
        .node("Conv", &["x", "wb"], &["b"])
        .ints("pads", &[1, 1, 1, 1])
        .node_with("Concat", &["a", "b"], &["cat"], &[("axis", axis)])
}

#[test]
fn a_batch_norm_after_concat_splits_into_the_concat_layers() {
    for axis in [1, -3] {
        let model = two_convs_concat(axis)
            .bn_params("bn", 5)
            .bn("bn", "cat", "y")
            .node("Relu", &["y"], &["out"])
            .output("out")
            .model();
        let (report, fused) = fold_and_verify(model);
        assert_eq!(report.folds.len(), 2, "{:?}", report.folds);
        for (fold, producer) in report.folds.iter().zip(["a", "b"]) {
            assert_eq!(fold.producer, producer);
            assert_eq!((fold.batch_norm.as_str(), fold.output.as_str()), ("y", "y"));
            assert_eq!(fold.passthrough, ["cat"]);
        }
        assert_eq!(op_types(&fused), ["Conv", "Conv", "Concat", "Relu"]);
        // Channel k of the BN is channel k of a (k < 2), channel k − 2 of b: scale γ/√(1+ε),
        // γ = k + 1; shift 0.5 − 0.25·scale; b had no bias.
        let scale = |k: usize| (k + 1) as f64 / (1.0f64 + 1e-5).sqrt();
        let graph = fused.proto.graph.as_ref().unwrap();
        let value = |name: &str| fused.initializer_value(name).unwrap().unwrap().data;
        let b_conv = &graph.node[1];
        let bias_b = value(&b_conv.input[2]);
        for (o, got) in bias_b.iter().enumerate() {
            let k = o + 2;
            let want = (0.5 - 0.25 * scale(k)) as f32 as f64;
            assert_eq!(*got, want, "b's bias {o}");
        }
        let weight_b = value(&b_conv.input[1]);
        let wb: Vec<f64> = (0..54)
            .map(|i| (((i * 7) % 11) as f32 / 8.0 - 0.6) as f64)
            .collect();
        for (i, got) in weight_b.iter().enumerate() {
            let want = (scale(i / 18 + 2) * wb[i]) as f32 as f64;
            assert_eq!(*got, want, "b's weight {i}");
        }
    }
}

#[test]
fn a_concat_input_that_does_not_fold_is_named_with_its_cause() {
    // b through a Relu; a also a graph output; and a Concat along the height.
    let relu = Graph::new(13)
        .input("x", &[1, 2, 4, 4])
        .init("wa", &[2, 2, 1, 1], &[1.0, 0.5, -0.5, 2.0])
        .node("Conv", &["x", "wa"], &["a"])
        .node("Relu", &["x"], &["r"])
        .node_with("Concat", &["a", "r"], &["cat"], &[("axis", 1)])
        .bn_params("bn", 4)
        .bn("bn", "cat", "y")
        .output("y")
        .model();
    let mut model = Model::from_proto(relu, ExternalStore::none()).unwrap();
    let report = fold(&mut model, &FoldOptions::default()).unwrap();
    assert!(report.folds.is_empty());
    let skip = &report.skips[0];
    assert_eq!(skip.reason.code(), "concat_input_not_foldable");
    assert!(
        skip.message.contains("input 'r'") && skip.message.contains("Relu"),
        "{}",
        skip.message
    );
    let json = serde_json::to_value(&skip.reason).unwrap();
    assert_eq!(json["cause"]["code"], "unsupported_producer", "{json}");

    let exposed = two_convs_concat(1)
        .bn_params("bn", 5)
        .bn("bn", "cat", "y")
        .output("y")
        .output("a")
        .model();
    let mut model = Model::from_proto(exposed, ExternalStore::none()).unwrap();
    let report = fold(&mut model, &FoldOptions::default()).unwrap();
    let json = serde_json::to_value(&report.skips[0].reason).unwrap();
    assert_eq!(json["code"], "concat_input_not_foldable");
    assert_eq!(json["tensor"], "a");
    assert_eq!(json["cause"]["code"], "producer_output_is_graph_output");

    let height = two_convs_concat(2)
        .bn_params("bn", 2)
        .bn("bn", "cat", "y")
        .output("y")
        .model();
    let mut model = Model::from_proto(height, ExternalStore::none()).unwrap();
    let report = fold(&mut model, &FoldOptions::default()).unwrap();
    assert_eq!(report.skips[0].reason.code(), "concat_not_on_channels");
}

#[test]
fn a_moved_weight_in_the_second_concat_layer_is_caught() {
    let model = two_convs_concat(1)
        .bn_params("bn", 5)
        .bn("bn", "cat", "y")
        .output("y")
        .model();
    let original = Model::from_proto(model, ExternalStore::none()).unwrap();
    let mut fused = original.clone();
    fold(&mut fused, &FoldOptions::default()).unwrap();
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    let certs = bnfold::certificate::certify(&original, &fused).unwrap();
    assert_eq!(certs.len(), 2, "{certs:?}");
    assert!(certs.iter().all(|c| c.passed()), "{certs:?}");
    // b's first element ×1.001.
    let name = fused.proto.graph.as_ref().unwrap().node[1].input[1].clone();
    let tampered = common::edited(&fused, &name, |data, _, _| data[0] *= 1.001);
    let certs = bnfold::certificate::certify(&original, &tampered).unwrap();
    let failing: Vec<_> = certs.iter().filter(|c| !c.passed()).collect();
    assert_eq!(failing.len(), 1, "{certs:?}");
    assert_eq!(failing[0].node, "b");
    let v = verify(&original, &tampered, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
}

/// `x [1, 2, 4, 4]` through a Relu into `r`, then `steps` (each `(op, constant, dims, values)`
/// on the previous output), then a 3×3 Conv padded by `pad`, then a Relu into `out`.
fn forward_chain(steps: &[(&str, &str, &[i64], &[f32])], pad: i64) -> ModelProto {
    let w: Vec<f32> = (0..36).map(|i| ((i * 5) % 9) as f32 / 4.0 - 1.0).collect();
    let mut g = Graph::new(13)
        .input("x", &[1, 2, 4, 4])
        .init("w", &[2, 2, 3, 3], &w)
        .init("b", &[2], &[0.25, -0.75])
        .node("Relu", &["x"], &["r"]);
    let mut data = "r".to_string();
    for (k, (op, constant, dims, values)) in steps.iter().enumerate() {
        let out = format!("s{k}");
        g = g
            .init(constant, dims, values)
            .node(op, &[&data, constant], &[&out]);
        data = out;
    }
    g.node("Conv", &[&data, "w", "b"], &["c"])
        .ints("pads", &[pad, pad, pad, pad])
        .node("Relu", &["c"], &["out"])
        .output("out")
        .model()
}

#[test]
fn an_input_normalization_folds_forward_keeping_its_shift_under_padding() {
    // (x − mean) / std before a padded Conv: the scale 1/std goes into the weight, the shift
    // stays as one Add of −mean before the Conv (padded zeros are not normalized zeros).
    let steps: [(&str, &str, &[i64], &[f32]); 2] = [
        ("Sub", "mean", &[1, 2, 1, 1], &[0.5, -0.25]),
        ("Div", "std", &[1, 2, 1, 1], &[2.0, 0.5]),
    ];
    let (report, fused) = fold_and_verify(forward_chain(&steps, 1));
    assert_eq!(report.folds.len(), 1, "{:?}", report.skips);
    assert_eq!(report.folds[0].passthrough, ["s0"]);
    assert_eq!(op_types(&fused), ["Relu", "Add", "Conv", "Relu"]);
    let graph = fused.proto.graph.as_ref().unwrap();
    let shift = fused
        .initializer_value(&graph.node[1].input[1])
        .unwrap()
        .unwrap();
    assert_eq!(shift.data, [-0.5, 0.25]);
    let (weight, bias) = conv_tensors(&fused);
    let w: Vec<f64> = (0..36)
        .map(|i| ((i * 5) % 9) as f32 as f64 / 4.0 - 1.0)
        .collect();
    for (k, got) in weight.iter().enumerate() {
        let input_channel = (k / 9) % 2;
        assert_eq!(
            *got,
            (w[k] / [2.0, 0.5][input_channel]) as f32 as f64,
            "{k}"
        );
    }
    assert_eq!(bias, [0.25, -0.75]);
}

#[test]
fn a_scale_and_shift_fold_forward_entirely_into_an_unpadded_conv() {
    let steps: [(&str, &str, &[i64], &[f32]); 2] = [
        ("Mul", "k", &[1, 2, 1, 1], &[2.0, -1.0]),
        ("Add", "d", &[2, 1, 1], &[0.5, 1.0]),
    ];
    let (report, fused) = fold_and_verify(forward_chain(&steps, 0));
    assert_eq!(report.folds.len(), 1);
    assert_eq!(op_types(&fused), ["Relu", "Conv", "Relu"]);
}

#[test]
fn a_shift_alone_before_a_padded_conv_stays_where_it_is() {
    // It would only become another Add: nothing folds, nothing loops.
    let steps: [(&str, &str, &[i64], &[f32]); 1] = [("Add", "d", &[1, 2, 1, 1], &[0.5, 1.0])];
    let model = forward_chain(&steps, 1);
    let mut m = Model::from_proto(model, ExternalStore::none()).unwrap();
    let report = fold(&mut m, &FoldOptions::default()).unwrap();
    assert!(report.folds.is_empty(), "{:?}", report.folds);
    assert_eq!(op_types(&m), ["Relu", "Add", "Conv", "Relu"]);
}
