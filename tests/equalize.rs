//! `--equalize`: cross-layer equalization of Conv pairs, exact. Checked against the formula (the
//! products of the balanced ranges), against the original with the verification (which proves
//! each pair as a divergence run against the exact reference), on hand-built pairs and on a real
//! Paddle export; what is not positively homogeneous between two Convs ends no pair.

mod common;

use bnfold::external::ExternalStore;
use bnfold::verify::Status;
use bnfold::{verify, Model, VerifyOptions};
use common::build::Graph;
use common::edited;
use common::equalizing::{equalized, equalized_model, fixture_model, passes};

/// `x → Conv(a: 4 channels, ranges 1, 50, 0.02, 3) → act → Conv(b) → y`, 3 × 3 kernels, padded.
fn pair(activation: &str) -> Graph {
    let ranges = [1.0f32, 50.0, 0.02, 3.0];
    let a: Vec<f32> = (0..4 * 2 * 9)
        .map(|k| ranges[k / 18] * (((k * 7) % 13) as f32 / 6.0 - 1.0))
        .collect();
    let b: Vec<f32> = (0..3 * 4 * 9)
        .map(|k| ((k * 5) % 11) as f32 / 5.0 - 1.0)
        .collect();
    let graph = Graph::new(13)
        .input("x0", &[1, 2, 6, 6])
        // Something before the pair, so that its region is bounded by tensors inside the graph
        // (a difference from the graph's inputs to its outputs is the whole-model run's to judge).
        .node("Sigmoid", &["x0"], &["x"])
        .init("wa", &[4, 2, 3, 3], &a)
        .init("ba", &[4], &[0.5, -1.0, 0.25, 2.0])
        .init("wb", &[3, 4, 3, 3], &b)
        .init("slope", &[4, 1, 1], &[0.1, -0.5, 0.25, 2.0])
        .node("Conv", &["x", "wa", "ba"], &["ca"])
        .ints("pads", &[1, 1, 1, 1]);
    let graph = match activation {
        "PRelu" => graph.node("PRelu", &["ca", "slope"], &["r"]),
        "Clip" => graph.init("lo", &[], &[0.0]).init("hi", &[], &[6.0]).node(
            "Clip",
            &["ca", "lo", "hi"],
            &["r"],
        ),
        op => graph.node(op, &["ca"], &["r"]),
    };
    graph
        .node("Conv", &["r", "wb"], &["y"])
        .ints("pads", &[1, 1, 1, 1])
        .output("y")
}

fn conv_weights(model: &Model) -> Vec<bnfold::tensor::Tensor> {
    let graph = model.proto.graph.as_ref().unwrap();
    graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Conv")
        .map(|n| model.initializer_value(&n.input[1]).unwrap().unwrap())
        .collect()
}

#[test]
fn an_unbalanced_pair_ends_with_equal_ranges_on_both_sides_and_is_proven() {
    let (original, fused, report) = equalized(pair("Relu").model());
    assert_eq!(report.equalizations.len(), 1, "{:?}", report.equalizations);
    let e = &report.equalizations[0];
    assert_eq!(e.activation.as_deref(), Some("Relu"));
    // The narrowest channel (range 0.02 of 50) kept under a step; balanced, the spread is its
    // square root (√2500 = 50×) and the channel keeps several bits.
    assert!(
        e.worst_channel_after_db > e.worst_channel_before_db + 10.0,
        "{e:?}"
    );
    // After: max |W_a[i]| = max |W_b[:, i]| for every channel i (each is √(r_a,i · r_b,i)).
    let w = conv_weights(&fused);
    for i in 0..4 {
        let ra = w[0].data[i * 18..(i + 1) * 18]
            .iter()
            .fold(0.0, |m: f64, v| m.max(v.abs()));
        let rb = (0..3)
            .flat_map(|o| &w[1].data[(o * 4 + i) * 9..(o * 4 + i + 1) * 9])
            .fold(0.0, |m: f64, v| m.max(v.abs()));
        assert!(
            (ra / rb - 1.0).abs() < 1e-5,
            "channel {i}: {ra} against {rb}"
        );
    }
    // The record's ranges are the weights' own, before and after.
    let channel_ranges = |w: &bnfold::tensor::Tensor| -> Vec<f64> {
        (0..4)
            .map(|i| {
                w.data[i * 18..(i + 1) * 18]
                    .iter()
                    .fold(0.0, |m: f64, v| m.max(v.abs()))
            })
            .collect()
    };
    let close = |got: &[f64], want: &[f64]| {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| (g / w - 1.0).abs() < 1e-6)
    };
    let before = channel_ranges(&conv_weights(&original)[0]);
    assert!(close(&e.first_ranges_before, &before), "{e:?}");
    assert!(
        close(&e.first_ranges_after, &channel_ranges(&w[0])),
        "{e:?}"
    );
    // The tensors between now hold x / s: new names.
    let graph = fused.proto.graph.as_ref().unwrap();
    assert!(graph.node[1].output[0].ends_with("_equalized"));
    assert_eq!(graph.node[3].output, ["y"]);
    passes(&original, &fused);
}

#[test]
fn prelu_leaky_relu_and_identity_are_positively_homogeneous() {
    for activation in ["PRelu", "LeakyRelu", "Identity"] {
        let (original, fused, report) = equalized(pair(activation).model());
        assert_eq!(report.equalizations.len(), 1, "{activation}");
        passes(&original, &fused);
    }
}

#[test]
fn clip_sigmoid_and_hard_swish_end_no_pair() {
    for activation in ["Clip", "Sigmoid", "HardSwish"] {
        let model = pair(activation).model();
        let (_, fused, report) = equalized(model.clone());
        assert!(report.equalizations.is_empty(), "{activation}");
        let plain = Model::from_proto(model, ExternalStore::none()).unwrap();
        assert_eq!(
            fused.to_bytes().unwrap(),
            plain.to_bytes().unwrap(),
            "{activation}: the model is as it was"
        );
    }
}

#[test]
fn a_wrong_outer_tap_of_an_equalized_weight_is_caught() {
    let (original, fused, _) = equalized(pair("Relu").model());
    let graph = fused.proto.graph.as_ref().unwrap();
    let second = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Conv")
        .nth(1)
        .unwrap();
    // Tap 0 of a 3 × 3 kernel: it reads data only where the input is larger than 1 × 1.
    let tampered = edited(&fused, &second.input[1].clone(), |data, _, _| {
        data[9] *= 1.001
    });
    let v = verify(&original, &tampered, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
}

#[test]
fn a_depthwise_triple_equalizes_as_two_pairs() {
    let dw: Vec<f32> = (0..4 * 9)
        .map(|k| ((k * 3) % 7) as f32 / 3.0 - 1.0)
        .collect();
    let c: Vec<f32> = (0..2 * 4).map(|k| (k as f32 - 3.5) / 2.0).collect();
    let model = pair("Relu")
        .init("wd", &[4, 1, 3, 3], &dw)
        .init("wc", &[2, 4, 1, 1], &c)
        .model();
    // Rebuild: a → Relu → depthwise → Relu → c.
    let mut model = model;
    let graph = model.graph.as_mut().unwrap();
    graph.node.truncate(3);
    graph.output.clear();
    let model = Graph::from_model(model)
        .node_with("Conv", &["r", "wd"], &["d"], &[("group", 4)])
        .ints("pads", &[1, 1, 1, 1])
        .node("Relu", &["d"], &["rd"])
        .node("Conv", &["rd", "wc"], &["y"])
        .output("y")
        .model();
    let (original, fused, report) = equalized(model);
    assert_eq!(report.equalizations.len(), 2, "{:?}", report.equalizations);
    passes(&original, &fused);
}

#[test]
fn the_paddle_classifier_equalizes_and_is_proven() {
    let (original, fused, report) =
        equalized_model(fixture_model("paddle/ppocr_mobile_v2_cls_op11.onnx"));
    assert_eq!(report.equalizations.len(), 15);
    // Hard-swish (Mul/Clip/Div) ends pairs: only Relu and direct pairs.
    assert!(report
        .equalizations
        .iter()
        .all(|e| matches!(e.activation.as_deref(), None | Some("Relu"))));
    passes(&original, &fused);
}

#[test]
fn a_pair_whose_weight_would_overflow_is_left_out() {
    // γ = 4e31: the folded weights sit near float32's limit, and equalizing would push one past.
    let (original, fused, report) = equalized_model(fixture_model(
        "regressions/bn_gamma_4e31_overflows_fused_accumulation.onnx",
    ));
    assert!(
        report.equalizations.is_empty(),
        "{:?}",
        report.equalizations
    );
    assert!(!report.folds.is_empty());
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
}
