//! `bnfold verify A B` on two models that differ outside any fold: each differing region of B
//! runs alone on A's own values of its inputs, so a correct rewrite deep in a 128-layer network
//! passes, and a wrong one is named as the first divergent node, on the command line too.

mod common;

use bnfold::proto::{ModelProto, NodeProto};
use bnfold::tensor::{Dtype, Tensor};
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::*;

fn deep_stack() -> Model {
    Model::load(fixture("deep_stack_conv_bn_128.onnx")).unwrap()
}

/// `model` with the Relu named `relu` replaced by `replacement` (same input and output).
fn replaced(
    model: &Model,
    relu: &str,
    replacement: impl Fn(&NodeProto) -> Vec<NodeProto>,
) -> Model {
    let mut proto: ModelProto = model.materialized().unwrap();
    let g = proto.graph.as_mut().unwrap();
    let at = g.node.iter().position(|n| n.name() == relu).unwrap();
    let old = g.node.remove(at);
    for (k, n) in replacement(&old).into_iter().enumerate() {
        g.node.insert(at + k, n);
    }
    if !g.initializer.iter().any(|t| t.name() == "zero") {
        g.initializer
            .push(Tensor::new(Dtype::F32, vec![], vec![0.0]).to_proto("zero"));
    }
    Model::from_proto(proto, bnfold::external::ExternalStore::none()).unwrap()
}

fn max_with_zero(relu: &NodeProto) -> Vec<NodeProto> {
    vec![NodeProto {
        op_type: Some("Max".into()),
        name: Some("max_instead".into()),
        input: vec![relu.input[0].clone(), "zero".into()],
        output: relu.output.clone(),
        ..Default::default()
    }]
}

fn leaky(relu: &NodeProto) -> Vec<NodeProto> {
    let mut n = NodeProto {
        op_type: Some("LeakyRelu".into()),
        name: Some("leaky_instead".into()),
        input: relu.input.clone(),
        output: relu.output.clone(),
        ..Default::default()
    };
    bnfold::attr::set_float(&mut n, "alpha", 0.01);
    vec![n]
}

#[test]
fn an_equivalent_rewrite_deep_in_a_network_is_proven_by_its_region() {
    let original = deep_stack();
    let candidate = replaced(&original, "relu90", max_with_zero);
    let v = verify(&original, &candidate, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{:?}", v.reason);
    let [d] = v.divergences.as_slice() else {
        panic!("{:?}", v.divergences)
    };
    assert_eq!(
        (d.first_node.as_str(), d.op_type.as_str()),
        ("max_instead", "Max")
    );
    assert_eq!(d.inputs, ["bn90"]);
    assert_eq!(d.status, Status::Passed);
    assert!(
        v.proven_locally && v.structure_difference.is_none(),
        "{v:?}"
    );
    // With the folds too: 128 regions and one divergence.
    let mut fused = candidate.clone();
    fold(&mut fused, &FoldOptions::default()).unwrap();
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{:?}", v.reason);
    assert_eq!((v.regions.len(), v.divergences.len()), (128, 1));
}

#[test]
fn a_wrong_rewrite_is_named_as_the_first_divergent_node() {
    let original = deep_stack();
    let candidate = replaced(&original, "relu40", leaky);
    let v = verify(&original, &candidate, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed);
    let reason = v.reason.unwrap();
    assert!(
        reason.starts_with("first divergent node: LeakyRelu leaky_instead of the candidate"),
        "{reason}"
    );
    assert!(
        reason.contains("'relu40' ")
            && reason.contains("from the original's nodes evaluated in f64"),
        "{reason}"
    );
}

#[test]
fn bnfold_verify_names_the_first_divergent_node_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    let original = deep_stack();
    // Two wrong rewrites: the earlier one in graph order is named, the other counted.
    let candidate = replaced(&replaced(&original, "relu100", leaky), "relu7", |r| {
        let mut n = leaky(r);
        n[0].name = Some("early_leaky".into());
        n
    });
    std::fs::write(&a, original.to_bytes().unwrap()).unwrap();
    std::fs::write(&b, candidate.to_bytes().unwrap()).unwrap();
    let o = bnfold(&["verify", s(&a), s(&b)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let line = err.lines().next().unwrap();
    assert!(
        line.starts_with(
            "bnfold: error: verification failed: first divergent node: LeakyRelu early_leaky"
        ) && line.contains("(and 1 other divergent regions)"),
        "{line}"
    );
}

#[test]
fn one_weight_element_moved_by_3e_5_outside_any_fold_is_caught_against_the_exact_value() {
    // Far below the tolerance of one layer (1e-4 of the output's largest value), far above what
    // the original's own arithmetic is off by.
    let original = deep_stack();
    let mut proto: ModelProto = original.materialized().unwrap();
    let t = initializer(&mut proto, "conv60.weight");
    let mut w = bnfold::tensor::decode(t, &bnfold::external::ExternalStore::none()).unwrap();
    let k = (0..w.data.len())
        .max_by(|&a, &b| w.data[a].abs().total_cmp(&w.data[b].abs()))
        .unwrap();
    w.data[k] *= 1.00003;
    *t = w.to_proto("conv60.weight");
    let candidate = Model::from_proto(proto, bnfold::external::ExternalStore::none()).unwrap();
    let v = verify(&original, &candidate, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
    let [d] = v.divergences.as_slice() else {
        panic!("{:?}", v.divergences)
    };
    assert_eq!(
        (d.first_node.as_str(), d.op_type.as_str()),
        ("conv60", "Conv")
    );
    let out = &d.outputs[0];
    assert!(
        out.max_abs_error <= out.atol,
        "the fixed tolerance alone misses it: {out:?}"
    );
    let exact = out.reference.as_ref().unwrap();
    assert!(exact.candidate_error > 5.0 * exact.bound, "{exact:?}");
    assert!(v
        .reason
        .unwrap()
        .starts_with("first divergent node: Conv conv60 of the candidate"));
}
