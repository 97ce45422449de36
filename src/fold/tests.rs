//! The reasons a chain of `Add`s alone declines to fold. No report shows them (such a chain holds
//! no BatchNormalization to report, and its constants are per channel), so they are asserted on
//! the matchers themselves: a `MatMul`'s bias `Add` at an opset without a Gemm to take it, and a
//! shift before a padded Conv, which would stay an `Add`.

use super::backward::plan_chain;
use super::forward::plan_forward;
use super::{FoldOptions, PassContext};
use crate::consts::ConstEval;
use crate::external::ExternalStore;
use crate::graph::{GraphIndex, OuterScope};
use crate::proto::tensor_shape_proto::{dimension, Dimension};
use crate::proto::{
    type_proto, AttributeProto, GraphProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::report::SkipReason;
use crate::tensor::{Dtype, Tensor};

/// An f32 tensor of `dims` named `name`, every element `value`.
fn constant(name: &str, dims: &[usize], value: f64) -> crate::proto::TensorProto {
    let len = dims.iter().product();
    Tensor::new(Dtype::F32, dims.to_vec(), vec![value; len]).to_proto(name)
}

/// An f32 graph input or output `name` of `dims`.
fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op_type: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: Some(op_type.into()),
        name: Some(output.into()),
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// The backward and forward answers for the chain ending at node `end` of `graph`.
fn plans(graph: &GraphProto, opset: i64, end: usize) -> (Option<SkipReason>, Option<SkipReason>) {
    let store = ExternalStore::none();
    let options = FoldOptions::default();
    let ctx = PassContext {
        store: &store,
        opset,
        ir_version: 8,
        options: &options,
        statistics: None,
    };
    let index = GraphIndex::new(graph, OuterScope { initializers: None });
    let eval = ConstEval::new(&index, &store, opset, false);
    let backward = plan_chain(&index, &eval, end, &ctx).unwrap().err();
    let forward = plan_forward(&index, &eval, end, &ctx).unwrap().err();
    (backward, forward)
}

#[test]
fn a_matmul_bias_add_at_an_opset_without_gemm_keeps_its_add() {
    // Opset 6 has no Gemm with a broadcast C, so the MatMul's fold would write its bias as an
    // Add again: one Add traded for another.
    let graph = GraphProto {
        node: vec![
            node("MatMul", &["x", "w"], "p"),
            node("Add", &["p", "bias"], "y"),
        ],
        initializer: vec![constant("w", &[3, 2], 0.5), constant("bias", &[2], 0.25)],
        input: vec![value_info("x", &[4, 3])],
        output: vec![value_info("y", &[4, 2])],
        ..Default::default()
    };
    let (backward, _) = plans(&graph, 6, 1);
    assert_eq!(backward, Some(SkipReason::MatMulKeepsBiasAdd { opset: 6 }));
    // From opset 7 the Add goes into a Gemm's C.
    assert_eq!(plans(&graph, 7, 1).0, None);
}

#[test]
fn a_shift_before_a_padded_conv_stays_an_add() {
    // The padding sees zeros where the shifted input would not be zero, so the shift cannot
    // move into the bias; it would stay an Add after the Conv, for the one it replaced.
    let padded = |pad: i64| {
        let mut conv = node("Conv", &["a", "w"], "y");
        conv.attribute.push(AttributeProto {
            name: Some("pads".into()),
            r#type: Some(crate::proto::attribute_proto::AttributeType::Ints as i32),
            ints: vec![pad; 4],
            ..Default::default()
        });
        GraphProto {
            node: vec![node("Add", &["x", "shift"], "a"), conv],
            initializer: vec![
                constant("shift", &[1, 2, 1, 1], 0.5),
                constant("w", &[3, 2, 3, 3], 0.1),
            ],
            input: vec![value_info("x", &[1, 2, 4, 4])],
            output: vec![value_info("y", &[1, 3, 4, 4])],
            ..Default::default()
        }
    };
    let (_, forward) = plans(&padded(1), 13, 0);
    assert_eq!(forward, Some(SkipReason::ShiftStaysAsAdd));
    // Unpadded, the shift folds into the bias.
    assert_eq!(plans(&padded(0), 13, 0).1, None);
}
