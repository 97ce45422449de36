use std::rc::Rc;

use super::kernels::{binary, broadcast_to, concat, gather, slice, transpose};
use crate::tensor::{Dtype, Tensor};

fn t(dims: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(Dtype::F32, dims.to_vec(), data.to_vec())
}

/// The values of a result, when there is one.
fn data(t: Option<Tensor>) -> Option<Vec<f64>> {
    t.map(|t| t.data)
}

#[test]
fn transpose_swaps_rows_and_columns() {
    let m = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    assert_eq!(
        transpose(&m, None),
        Some(t(&[3, 2], &[1., 4., 2., 5., 3., 6.]))
    );
}

#[test]
fn slice_takes_the_first_dim_of_a_shape() {
    let shape = Tensor::new(Dtype::I64, vec![4], vec![16., 3., 3., 3.]);
    let first = slice(&shape, &[0], &[1], Some(vec![0]), None);
    assert_eq!(data(first), Some(vec![16.]));
    let rev = slice(&shape, &[-1], &[i64::MIN], None, Some(vec![-1]));
    assert_eq!(data(rev), Some(vec![3., 3., 3., 16.]));
}

#[test]
fn expand_broadcasts_a_scalar() {
    let z = Tensor::scalar(Dtype::F32, 0.5);
    assert_eq!(data(broadcast_to(&z, &[3])), Some(vec![0.5; 3]));
    let col = t(&[2, 1], &[1., 2.]);
    assert_eq!(
        data(broadcast_to(&col, &[2, 2])),
        Some(vec![1., 1., 2., 2.])
    );
}

#[test]
fn gather_and_concat_follow_numpy() {
    let m = t(&[2, 2], &[1., 2., 3., 4.]);
    let idx = Tensor::new(Dtype::I64, vec![1], vec![-1.]);
    assert_eq!(gather(&m, &idx, 1), Some(t(&[2, 1], &[2., 4.])));
    let c = concat(&[Rc::new(m.clone()), Rc::new(m)], 1);
    assert_eq!(c, Some(t(&[2, 4], &[1., 2., 1., 2., 3., 4., 3., 4.])));
}

#[test]
fn a_backward_slice_starts_at_its_start() {
    let v = Tensor::new(Dtype::I64, vec![5], vec![0., 1., 2., 3., 4.]);
    let by_two = slice(&v, &[4], &[0], None, Some(vec![-2]));
    assert_eq!(data(by_two), Some(vec![4., 2.]));
    let clamped = slice(&v, &[3], &[-10], None, Some(vec![-2]));
    assert_eq!(data(clamped), Some(vec![3., 1.]));
    let empty = slice(&v, &[1], &[3], None, Some(vec![-1]));
    assert_eq!(empty.map(|e| e.dims), Some(vec![0]));
    assert_eq!(slice(&v, &[0], &[5], None, Some(vec![0])), None);
}

#[test]
fn gather_with_a_matrix_of_indices_nests_them() {
    let v = t(&[3], &[10., 20., 30.]);
    let idx = Tensor::new(Dtype::I64, vec![2, 2], vec![0., 2., -1., 1.]);
    assert_eq!(gather(&v, &idx, 0), Some(t(&[2, 2], &[10., 30., 30., 20.])));
    let out_of_range = Tensor::new(Dtype::I64, vec![1], vec![3.]);
    assert_eq!(gather(&v, &out_of_range, 0), None);
}

#[test]
fn arithmetic_broadcasts_both_ways_and_rounds_into_the_dtype() {
    let col = t(&[2, 1], &[1., 2.]);
    let row = t(&[3], &[0.1, 0.2, 0.3]);
    let f32_sum = |a: f64, b: f64| f64::from(a as f32 + b as f32);
    let want: Vec<f64> = [1.0, 2.0]
        .iter()
        .flat_map(|&c| [0.1, 0.2, 0.3].map(|r| f32_sum(c, r)))
        .collect();
    assert_eq!(binary(&col, &row, "Add"), Some(t(&[2, 3], &want)));
    let ints = Tensor::new(Dtype::I64, vec![2], vec![7., -7.]);
    let two = Tensor::scalar(Dtype::I64, 2.0);
    assert_eq!(data(binary(&ints, &two, "Div")), Some(vec![3., -3.]));
    assert_eq!(binary(&t(&[2], &[1., 2.]), &row, "Mul"), None);
}

#[test]
fn concat_rejects_parts_that_disagree_off_its_axis() {
    let a = t(&[2, 2], &[1., 2., 3., 4.]);
    let b = t(&[3, 1], &[5., 6., 7.]);
    assert_eq!(concat(&[Rc::new(a.clone()), Rc::new(b)], 1), None);
    let joined = concat(&[Rc::new(a.clone()), Rc::new(a)], -2);
    assert_eq!(joined, Some(t(&[4, 2], &[1., 2., 3., 4., 1., 2., 3., 4.])));
}

#[test]
fn a_value_read_once_is_the_value_and_is_not_kept() {
    use super::{ConstEval, NotConstant};
    use crate::external::ExternalStore;
    use crate::graph::{GraphIndex, OuterScope};
    use crate::proto::{GraphProto, ValueInfoProto};

    let gamma = t(&[3], &[0.5, -2., 4.]);
    let graph = GraphProto {
        initializer: vec![gamma.to_proto("gamma"), gamma.to_proto("overridable")],
        input: vec![ValueInfoProto {
            name: Some("overridable".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let index = GraphIndex::new(&graph, OuterScope::default());
    let store = ExternalStore::none();
    let eval = ConstEval::new(&index, &store, 17, false);
    let once = eval.value_once("gamma").unwrap().unwrap();
    assert_eq!(*once, gamma);
    assert!(!eval.cache.borrow().contains_key("gamma"));
    // Looked up before: the kept value is the one given.
    let kept = eval.value("gamma").unwrap().unwrap();
    assert!(Rc::ptr_eq(
        &kept,
        &eval.value_once("gamma").unwrap().unwrap()
    ));
    // Why a value is not constant is the same either way.
    let not = Err(NotConstant::OverridableInput("overridable".into()));
    assert_eq!(eval.value_once("overridable").unwrap(), not);
    assert_eq!(eval.value("overridable").unwrap(), not);
    assert_eq!(
        eval.value_once("computed").unwrap(),
        Err(NotConstant::Runtime("computed".into()))
    );
}

#[test]
fn a_rank_is_inferred_however_deep_its_producer_chain_runs() {
    // 300 Relu and Add nodes after a rank-4 input, no value_info (as exported): the last
    // output has rank 4, the Add's per-channel constant broadcasting into it; a name nothing
    // produces or declares has no rank.
    use super::ConstEval;
    use crate::external::ExternalStore;
    use crate::graph::{GraphIndex, OuterScope};
    use crate::proto::{
        tensor_shape_proto::Dimension, type_proto, GraphProto, NodeProto, TensorShapeProto,
        TypeProto, ValueInfoProto,
    };

    let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let dims = [1, 4, 8, 8].map(|d| Dimension {
        value: Some(crate::proto::tensor_shape_proto::dimension::Value::DimValue(d)),
        ..Default::default()
    });
    let input = ValueInfoProto {
        name: Some("x0".into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let nodes = (0..300).map(|i| match i % 2 {
        0 => node("Relu", &[&format!("x{i}")], &format!("x{}", i + 1)),
        _ => node("Add", &[&format!("x{i}"), "shift"], &format!("x{}", i + 1)),
    });
    let graph = GraphProto {
        node: nodes.collect(),
        initializer: vec![t(&[4, 1, 1], &[0.5; 4]).to_proto("shift")],
        input: vec![input],
        ..Default::default()
    };
    let index = GraphIndex::new(&graph, OuterScope::default());
    let store = ExternalStore::none();
    let eval = ConstEval::new(&index, &store, 17, false);
    assert_eq!(eval.rank("x300"), Some(4));
    assert_eq!(eval.rank("x151"), Some(4));
    assert_eq!(eval.rank("shift"), Some(3));
    assert_eq!(eval.rank("nowhere"), None);
}
