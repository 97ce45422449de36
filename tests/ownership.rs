//! The model owns its folded weights: the protobuf holds no marker and no data for them, a clone
//! is independent, an initializer given data by hand is what is written, and folding again
//! reads the weights folded before.

mod common;

use bnfold::{fold, FoldOptions, Model};
use common::fixture;

fn folded(name: &str) -> Model {
    let mut model = Model::load(fixture(name)).unwrap();
    fold(&mut model, &FoldOptions::default()).unwrap();
    model
}

fn weight_name(model: &Model) -> String {
    let g = model.proto.graph.as_ref().unwrap();
    g.node.iter().find(|n| n.op_type() == "Conv").unwrap().input[1].clone()
}

#[test]
fn a_folded_initializer_holds_its_name_dtype_and_shape_only() {
    let model = folded("conv_bn.onnx");
    let name = weight_name(&model);
    let g = model.proto.graph.as_ref().unwrap();
    let t = g.initializer.iter().find(|t| t.name() == name).unwrap();
    assert!(t.external_data.is_empty() && t.raw_data.is_none() && t.float_data.is_empty());
    assert!(!t.dims.is_empty() && t.data_type.is_some());
    assert!(model.folded.get(&name).is_some());
    // Reading it through the protobuf alone fails, naming it, instead of giving other values.
    let err = bnfold::tensor::decode(t, &model.store)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&name), "{err}");
}

#[test]
fn a_clone_is_independent() {
    let model = folded("conv_bn.onnx");
    let bytes = model.to_bytes().unwrap();
    let mut clone = model.clone();
    let name = weight_name(&clone);
    clone.folded.remove(&name);
    assert!(model.folded.get(&name).is_some());
    assert_eq!(model.to_bytes().unwrap(), bytes);
    assert_ne!(clone.to_bytes().unwrap(), bytes);
}

#[test]
fn an_initializer_given_data_by_hand_is_what_is_written() {
    let mut model = folded("conv_bn.onnx");
    let name = weight_name(&model);
    let mut value = model.initializer_value(&name).unwrap().unwrap();
    value.data.iter_mut().for_each(|v| *v = 0.0);
    let g = model.proto.graph.as_mut().unwrap();
    let t = g.initializer.iter_mut().find(|t| t.name() == name).unwrap();
    *t = value.to_proto(&name);
    let written = Model::from_bytes(model.to_bytes().unwrap()).unwrap();
    let read = written.initializer_value(&name).unwrap().unwrap();
    assert!(read.data.iter().all(|&v| v == 0.0));
}

#[test]
fn folding_again_changes_nothing_and_reads_the_folded_weights() {
    let mut model = folded("torch_conv_bn_bn_op13.onnx");
    let bytes = model.to_bytes().unwrap();
    let report = fold(&mut model, &FoldOptions::default()).unwrap();
    assert!(report.folds.is_empty());
    assert_eq!(model.to_bytes().unwrap(), bytes);
}
