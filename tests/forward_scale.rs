//! A chain that only scales (a hard-swish's `Div` by 6, as Paddle exports it) folded forward into
//! a padded Conv that also takes a BatchNormalization backward: no shift `Add` is left, and the
//! verification proves the doubly folded Conv (by the divergence check, with a symbolic batch
//! that varies between samples) without a false alarm, and catches a wrong weight.

mod common;

use bnfold::verify::Status;
use bnfold::{verify, VerifyOptions};
use common::build::Graph;
use common::chains::{fold_and_verify, op_types};
use common::edited;

/// `x[N,2,4,4] → Conv(w1) → BN(a) → Relu → Div(6) → Conv(w2, 3×3, pads 1) → BN(b) → y`.
fn scale_then_padded_conv() -> bnfold::proto::ModelProto {
    let w1: Vec<f32> = (0..8).map(|i| 0.25 * i as f32 - 0.75).collect();
    let w2: Vec<f32> = (0..72).map(|i| ((i * 7) % 11) as f32 / 8.0 - 0.6).collect();
    Graph::new(13)
        .batched_input("x", &[2, 4, 4])
        .init("w1", &[4, 2, 1, 1], &w1)
        .bn_params("a", 4)
        .init("six", &[], &[6.0])
        .init("w2", &[2, 4, 3, 3], &w2)
        .bn_params("b", 2)
        .node("Conv", &["x", "w1"], &["c1"])
        .bn("a", "c1", "n1")
        .node("Relu", &["n1"], &["r"])
        .node("Div", &["r", "six"], &["d"])
        .node("Conv", &["d", "w2"], &["c2"])
        .ints("pads", &[1, 1, 1, 1])
        .ints("kernel_shape", &[3, 3])
        .bn("b", "c2", "y")
        .output("y")
        .model()
}

#[test]
fn a_scale_folds_forward_into_a_padded_conv_without_an_add_and_is_proven() {
    let model = scale_then_padded_conv();
    let (report, fused) = fold_and_verify(model.clone());
    assert_eq!(op_types(&fused), ["Conv", "Relu", "Conv"]);
    assert_eq!(report.folds.len(), 3, "{:?}", report.folds);
    assert!(report.folds.iter().all(|f| f.shift_kept_as.is_none()));
    let original = bnfold::Model::from_proto(model, Default::default()).unwrap();
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(v.proven_locally, "{v:?}");
    // The doubly folded Conv is a divergence run against the exact reference, typed for each
    // sample's batch.
    assert!(
        v.divergences
            .iter()
            .any(|d| d.op_type == "Conv" && d.status == Status::Passed),
        "{:?}",
        v.divergences
    );
    assert!(v.divergences.iter().all(|d| d.status == Status::Passed));
}

#[test]
fn a_wrong_weight_of_the_doubly_folded_conv_is_caught() {
    let model = scale_then_padded_conv();
    let (_, fused) = fold_and_verify(model.clone());
    let graph = fused.proto.graph.as_ref().unwrap();
    let conv = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Conv")
        .nth(1)
        .unwrap();
    let tampered = edited(&fused, &conv.input[1].clone(), |data, _, _| {
        data[5] *= 1.001
    });
    let original = bnfold::Model::from_proto(model, Default::default()).unwrap();
    let v = verify(&original, &tampered, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
}
