//! A real Paddle export (`fixtures/paddle/`, PaddleOCR's classifier): every BatchNormalization
//! and per-channel chain folds, the Constant-node weights become initializers, the verification
//! passes without a false alarm (it failed on this model before the doubly folded Convs were
//! left to the divergence check) and catches a wrong weight in a doubly folded Conv.

mod common;

use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::edited;

fn classifier() -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/paddle/ppocr_mobile_v2_cls_op11.onnx");
    Model::load(path).unwrap()
}

fn count(model: &Model, op_type: &str) -> usize {
    let graph = model.proto.graph.as_ref().unwrap();
    graph.node.iter().filter(|n| n.op_type() == op_type).count()
}

#[test]
fn the_classifier_folds_every_batch_norm_and_stores_its_weights_as_initializers() {
    let original = classifier();
    assert_eq!(original.proto.graph.as_ref().unwrap().initializer.len(), 0);
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    assert_eq!(count(&original, "BatchNormalization"), 35);
    assert_eq!(count(&fused, "BatchNormalization"), 0);
    assert!(report.skips.is_empty(), "{:?}", report.skips);
    // 53 Convs, 35 BNs, Conv biases as Add(Reshape(Constant)), Div by 6 forward: 62 folds.
    assert_eq!(report.folds.len(), 62);
    // Every Conv reads its weight from an initializer now.
    let graph = fused.proto.graph.as_ref().unwrap();
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    for conv in graph.node.iter().filter(|n| n.op_type() == "Conv") {
        assert!(initializers.contains(&conv.input[1].as_str()), "{conv:?}");
    }
    assert_eq!(count(&fused, "Reshape"), 1);
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(v.proven_locally, "{v:?}");
    assert!(v.divergences.iter().all(|d| d.status == Status::Passed));
}

#[test]
fn a_wrong_element_in_a_doubly_folded_conv_of_the_classifier_is_caught() {
    let original = classifier();
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    // A Conv that took a Div forward and a BN backward.
    let forward = report
        .folds
        .iter()
        .find(|f| f.direction == bnfold::report::Direction::Forward)
        .unwrap();
    let graph = fused.proto.graph.as_ref().unwrap();
    let conv = graph
        .node
        .iter()
        .find(|n| n.name() == forward.producer)
        .unwrap();
    let tampered = edited(&fused, &conv.input[1].clone(), |data, _, _| {
        data[5] *= 1.001
    });
    let v = verify(&original, &tampered, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
}
