//! Folding a hand-built graph and reading the result back.

use bnfold::external::ExternalStore;
use bnfold::proto::ModelProto;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, Report, VerifyOptions};

/// Folds `model`, checks the result with `verify`, and returns the report and fused model.
pub fn fold_and_verify(model: ModelProto) -> (Report, Model) {
    let original = Model::from_proto(model, ExternalStore::none()).unwrap();
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    (report, fused)
}

/// The fused Conv's weight and bias values.
pub fn conv_tensors(fused: &Model) -> (Vec<f64>, Vec<f64>) {
    let graph = fused.proto.graph.as_ref().unwrap();
    let conv = graph.node.iter().find(|n| n.op_type() == "Conv").unwrap();
    let value = |name: &str| fused.initializer_value(name).unwrap().unwrap().data;
    (value(&conv.input[1]), value(&conv.input[2]))
}

/// The op types of the graph's nodes, in order.
pub fn op_types(model: &Model) -> Vec<String> {
    let graph = model.proto.graph.as_ref().unwrap();
    graph.node.iter().map(|n| n.op_type().to_string()).collect()
}

/// The codes and messages of the nodes left, after a fold that folds nothing.
pub fn skips(model: ModelProto) -> Vec<(String, String, String)> {
    let mut model = Model::from_proto(model, ExternalStore::none()).unwrap();
    let report = fold(&mut model, &FoldOptions::default()).unwrap();
    assert!(report.folds.is_empty(), "{:?}", report.folds);
    let skips = report.skips.iter();
    skips
        .map(|s| (s.node.clone(), s.reason.code(), s.message.clone()))
        .collect()
}
