//! Weights as initializers: a layer weight or BatchNormalization parameter that a `Constant`
//! node (or data movement on `Constant` nodes) computes is stored as an initializer of the same
//! name, its bytes as stored, and nothing else changes; each precondition keeps them.

mod common;

use bnfold::external::ExternalStore;
use bnfold::proto::tensor_proto::DataType;
use bnfold::proto::{ModelProto, TensorProto};
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::build::Graph;

const W: [f32; 8] = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 0.125, 3.0];

fn folded(model: ModelProto, options: &FoldOptions) -> (Model, Model, bnfold::Report) {
    let original = Model::from_proto(model, ExternalStore::none()).unwrap();
    let mut fused = original.clone();
    let report = fold(&mut fused, options).unwrap();
    (original, fused, report)
}

fn op_types(model: &Model) -> Vec<String> {
    let graph = model.proto.graph.as_ref().unwrap();
    graph.node.iter().map(|n| n.op_type().to_string()).collect()
}

fn initializer<'m>(model: &'m Model, name: &str) -> Option<&'m TensorProto> {
    let graph = model.proto.graph.as_ref().unwrap();
    graph.initializer.iter().find(|t| t.name() == name)
}

/// `x → Conv(w) → y`, nothing to fold, the weight a Constant node.
fn constant_weight_conv(opset: i64) -> Graph {
    Graph::new(opset)
        .input("x", &[1, 2, 3, 3])
        .constant("w", &[4, 2, 1, 1], &W)
        .node("Conv", &["x", "w"], &["y"])
        .output("y")
}

#[test]
fn a_constant_weight_becomes_an_initializer_of_the_same_name_with_its_bytes() {
    let (original, fused, report) =
        folded(constant_weight_conv(13).model(), &FoldOptions::default());
    assert_eq!(op_types(&fused), ["Conv"]);
    let stored = initializer(&fused, "w").expect("w is an initializer");
    assert_eq!(stored.dims, [4, 2, 1, 1]);
    assert_eq!(stored.data_type, Some(DataType::Float as i32));
    assert_eq!(stored.float_data, W);
    let conv = &fused.proto.graph.as_ref().unwrap().node[0];
    assert_eq!(conv.input, ["x", "w"]);
    assert_eq!(report.initializers_from_constants.len(), 1);
    let record = &report.initializers_from_constants[0];
    assert_eq!(
        (
            record.tensor.as_str(),
            record.node.as_str(),
            record.op_type.as_str()
        ),
        ("w", "w_constant", "Constant")
    );
    // tract runs both: the same outputs.
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
}

#[test]
fn a_reshaped_constant_bias_becomes_an_initializer_and_its_constants_go() {
    let model = Graph::new(13)
        .input("x", &[1, 2, 3, 3])
        .constant("w", &[4, 2, 1, 1], &W)
        .constant("b_flat", &[1, 4], &[0.5, 1.0, -1.0, 2.0])
        .tensor(TensorProto {
            name: Some("shape".into()),
            dims: vec![1],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![4],
            ..Default::default()
        })
        .node("Reshape", &["b_flat", "shape"], &["b"])
        .node("Conv", &["x", "w", "b"], &["y"])
        .output("y")
        .model();
    // The shape is an initializer here: Reshape reads one, so its output stays computed.
    let (_, fused, _) = folded(model.clone(), &FoldOptions::default());
    assert_eq!(op_types(&fused), ["Constant", "Reshape", "Conv"]);
    assert!(initializer(&fused, "w").is_some());
    // With the shape a Constant node too (Paddle's form), the bias is computed and stored.
    let mut model = model;
    let graph = model.graph.as_mut().unwrap();
    graph.initializer.retain(|t| t.name() != "shape");
    graph.node.insert(
        0,
        bnfold::proto::NodeProto {
            op_type: Some("Constant".into()),
            name: Some("shape_constant".into()),
            output: vec!["shape".into()],
            attribute: vec![bnfold::proto::AttributeProto {
                name: Some("value_ints".into()),
                r#type: Some(bnfold::proto::attribute_proto::AttributeType::Ints as i32),
                ints: vec![4],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let (original, fused, report) = folded(model, &FoldOptions::default());
    assert_eq!(op_types(&fused), ["Conv"]);
    let bias = initializer(&fused, "b").expect("b is an initializer");
    assert_eq!(bias.dims, [4]);
    let values = bnfold::tensor::decode(bias, &ExternalStore::none()).unwrap();
    assert_eq!(values.data, [0.5, 1.0, -1.0, 2.0]);
    let ops: Vec<&str> = report
        .initializers_from_constants
        .iter()
        .map(|r| r.op_type.as_str())
        .collect();
    assert_eq!(ops, ["Constant", "Reshape"]);
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
}

#[test]
fn keep_constant_nodes_leaves_them() {
    let options = FoldOptions {
        keep_constant_nodes: true,
        ..FoldOptions::default()
    };
    let (_, fused, report) = folded(constant_weight_conv(13).model(), &options);
    assert_eq!(op_types(&fused), ["Constant", "Conv"]);
    assert!(report.initializers_from_constants.is_empty());
}

#[test]
fn before_ir_4_constant_nodes_stay() {
    // IR 3 (opset 9 here): an initializer must also be a graph input, which anyone can override.
    let (_, fused, report) = folded(constant_weight_conv(9).model(), &FoldOptions::default());
    assert_eq!(fused.proto.ir_version(), 3);
    assert_eq!(op_types(&fused), ["Constant", "Conv"]);
    assert!(report.initializers_from_constants.is_empty());
}

#[test]
fn a_constant_that_is_a_graph_output_or_read_by_other_ops_only_stays() {
    let model = constant_weight_conv(13)
        .constant("k", &[1], &[2.0])
        .node("Mul", &["y", "k"], &["z"])
        .output("w")
        .output("z")
        .model();
    let (_, fused, report) = folded(model, &FoldOptions::default());
    assert_eq!(op_types(&fused), ["Constant", "Conv", "Constant", "Mul"]);
    assert!(report.initializers_from_constants.is_empty());
}

#[test]
fn an_identity_of_an_initializer_is_a_weight_already_and_is_not_copied() {
    // torch writes a shared weight as Identity(initializer).
    let model = Graph::new(13)
        .input("x", &[1, 2, 3, 3])
        .init("shared", &[4, 2, 1, 1], &W)
        .node("Identity", &["shared"], &["w"])
        .node("Conv", &["x", "w"], &["y"])
        .node("Conv", &["x", "shared"], &["y2"])
        .output("y")
        .output("y2")
        .model();
    let (_, fused, report) = folded(model, &FoldOptions::default());
    assert_eq!(op_types(&fused), ["Identity", "Conv", "Conv"]);
    assert!(report.initializers_from_constants.is_empty());
}

#[test]
fn bn_parameters_of_a_bn_left_in_place_become_initializers() {
    // A BN on a graph input folds nowhere; its Constant parameters still move.
    let model = Graph::new(13)
        .input("x", &[1, 2, 3, 3])
        .constant("g", &[2], &[1.0, 2.0])
        .constant("b", &[2], &[0.5, 0.5])
        .constant("m", &[2], &[0.0, 1.0])
        .constant("v", &[2], &[1.0, 4.0])
        .node("BatchNormalization", &["x", "g", "b", "m", "v"], &["y"])
        .node("Relu", &["y"], &["z"])
        .output("z")
        .model();
    let (original, fused, report) = folded(model, &FoldOptions::default());
    assert_eq!(op_types(&fused), ["BatchNormalization", "Relu"]);
    assert_eq!(report.initializers_from_constants.len(), 4);
    assert_eq!(report.skips.len(), 1);
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
}

#[test]
fn a_stored_weight_that_differs_from_its_constant_is_caught() {
    let (original, mut fused, _) =
        folded(constant_weight_conv(13).model(), &FoldOptions::default());
    let graph = fused.proto.graph.as_mut().unwrap();
    let w = graph
        .initializer
        .iter_mut()
        .find(|t| t.name() == "w")
        .unwrap();
    w.float_data[0] *= 1.001;
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_ne!(v.status, Status::Passed, "{v:?}");
    let difference = v.structure_difference.unwrap_or_default();
    assert!(
        difference.contains("'w' does not hold what the original's Constant nodes computed"),
        "{difference}"
    );
}
