//! Random models for the property tests: Conv / ConvTranspose / Gemm / MatMul →
//! BatchNormalization (→ Relu) with random shapes, groups, strides, padding, dtypes and
//! statistics, from a seeded generator (the same cases on every machine), and a direct f64
//! evaluation of the matrix graphs, independent of the fold and of tract.
#![allow(dead_code)]

use bnfold::proto::attribute_proto::AttributeType;
use bnfold::proto::tensor_shape_proto::{dimension, Dimension};
use bnfold::proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use bnfold::tensor::{Dtype, Tensor};
use bnfold::Model;

/// splitmix64: the cases are the same on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn values(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

pub fn value_info(name: &str, dtype: Dtype, dims: &[usize]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype.code()),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

pub fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

pub fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

/// One random case: the producer, its input shape and the channel count the BN sees.
pub struct Case {
    pub description: String,
    pub producer: NodeProto,
    pub input_dims: Vec<usize>,
    pub channels: usize,
    pub initializers: Vec<(String, Tensor)>,
}

pub fn conv_case(rng: &mut Rng, dtype: Dtype, transpose: bool) -> Case {
    let spatial = rng.range(1, 3);
    let group = rng.range(1, 3);
    let depthwise = !transpose && rng.below(4) == 0;
    let (c_in, c_out) = if depthwise {
        let c = rng.range(1, 4);
        (c, c * rng.range(1, 2))
    } else {
        (group * rng.range(1, 3), group * rng.range(1, 3))
    };
    let group = if depthwise { c_in } else { group };
    let kernel: Vec<usize> = (0..spatial).map(|_| rng.range(1, 3)).collect();
    let strides: Vec<usize> = (0..spatial).map(|_| rng.range(1, 2)).collect();
    let pads: Vec<usize> = (0..2 * spatial).map(|_| rng.below(2)).collect();
    let size: Vec<usize> = (0..spatial).map(|_| rng.range(3, 6)).collect();
    let weight_dims: Vec<usize> = if transpose {
        [c_in, c_out / group]
            .into_iter()
            .chain(kernel.clone())
            .collect()
    } else {
        [c_out, c_in / group]
            .into_iter()
            .chain(kernel.clone())
            .collect()
    };
    let n: usize = weight_dims.iter().product();
    let mut initializers = vec![(
        "w".to_string(),
        Tensor::new(dtype, weight_dims.clone(), rng.values(n, -1.0, 1.0)),
    )];
    let bias = rng.coin();
    if bias {
        initializers.push((
            "b".into(),
            Tensor::new(dtype, vec![c_out], rng.values(c_out, -1.0, 1.0)),
        ));
    }
    let inputs: Vec<&str> = if bias {
        vec!["x", "w", "b"]
    } else {
        vec!["x", "w"]
    };
    let op = if transpose { "ConvTranspose" } else { "Conv" };
    let producer = node(
        op,
        "producer",
        &inputs,
        "p",
        vec![
            ints("kernel_shape", &kernel),
            ints("strides", &strides),
            ints("pads", &pads),
            int("group", group as i64),
        ],
    );
    Case {
        description: format!(
            "{op} {dtype:?} weight {weight_dims:?} group {group} strides {strides:?} pads {pads:?} bias {bias}"
        ),
        producer,
        input_dims: [1, c_in].into_iter().chain(size).collect(),
        channels: c_out,
        initializers,
    }
}

pub fn gemm_case(rng: &mut Rng, dtype: Dtype) -> Case {
    let (m, k, n) = (rng.range(1, 3), rng.range(1, 6), rng.range(1, 6));
    let trans_b = rng.coin();
    let weight_dims = if trans_b { vec![n, k] } else { vec![k, n] };
    let mut initializers = vec![(
        "w".to_string(),
        Tensor::new(dtype, weight_dims.clone(), rng.values(k * n, -1.0, 1.0)),
    )];
    let c_dims: Option<Vec<usize>> = match rng.below(5) {
        0 => None,
        1 => Some(vec![]),
        2 => Some(vec![n]),
        3 => Some(vec![1, n]),
        _ => Some(vec![m, n]),
    };
    if let Some(dims) = &c_dims {
        let count = dims.iter().product();
        initializers.push((
            "c".into(),
            Tensor::new(dtype, dims.clone(), rng.values(count, -1.0, 1.0)),
        ));
    }
    let (alpha, beta) = (rng.uniform(0.25, 2.0) as f32, rng.uniform(0.25, 2.0) as f32);
    let inputs: Vec<&str> = if c_dims.is_some() {
        vec!["x", "w", "c"]
    } else {
        vec!["x", "w"]
    };
    Case {
        description: format!(
            "Gemm {dtype:?} [{m},{k}]x{weight_dims:?} transB {trans_b} C {c_dims:?} alpha {alpha} beta {beta}"
        ),
        producer: node(
            "Gemm",
            "producer",
            &inputs,
            "p",
            vec![int("transB", trans_b as i64), float("alpha", alpha), float("beta", beta)],
        ),
        input_dims: vec![m, k],
        channels: n,
        initializers,
    }
}

pub fn matmul_case(rng: &mut Rng, dtype: Dtype) -> Case {
    let (m, k, n) = (rng.range(1, 3), rng.range(1, 6), rng.range(1, 6));
    Case {
        description: format!("MatMul {dtype:?} [{m},{k}]x[{k},{n}]"),
        producer: node("MatMul", "producer", &["x", "w"], "p", vec![]),
        input_dims: vec![m, k],
        channels: n,
        initializers: vec![(
            "w".into(),
            Tensor::new(dtype, vec![k, n], rng.values(k * n, -1.0, 1.0)),
        )],
    }
}

pub fn model(case: &Case, rng: &mut Rng, dtype: Dtype, relu: bool) -> ModelProto {
    let c = case.channels;
    let eps = rng.uniform(1e-5, 1e-2) as f32;
    let mut initializers: Vec<_> = case
        .initializers
        .iter()
        .map(|(name, t)| t.to_proto(name))
        .collect();
    let gamma: Vec<f64> = (0..c)
        .map(|_| rng.uniform(0.1, 2.0) * if rng.coin() { 1.0 } else { -1.0 })
        .collect();
    for (name, values) in [
        ("gamma", gamma),
        ("beta", rng.values(c, -1.0, 1.0)),
        ("mean", rng.values(c, -1.0, 1.0)),
        ("var", rng.values(c, 1e-3, 3.0)),
    ] {
        initializers.push(Tensor::new(dtype, vec![c], values).to_proto(name));
    }
    let mut nodes = vec![
        case.producer.clone(),
        node(
            "BatchNormalization",
            "bn",
            &["p", "gamma", "beta", "mean", "var"],
            if relu { "n" } else { "y" },
            vec![float("epsilon", eps)],
        ),
    ];
    if relu {
        nodes.push(node("Relu", "relu", &["n"], "y", vec![]));
    }
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("property".into()),
            node: nodes,
            initializer: initializers,
            input: vec![value_info("x", dtype, &case.input_dims)],
            output: vec![ValueInfoProto {
                name: Some("y".into()),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: Some(dtype.code()),
                        shape: None,
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A direct f64 evaluation of the matrix graphs generated here (Gemm, MatMul,
/// BatchNormalization, Relu) on the input `x`: independent of the fold and of tract.
pub fn evaluate(model: &Model, x: &[f64]) -> Vec<f64> {
    let graph = model.proto.graph.as_ref().unwrap();
    let tensor = |name: &str| model.initializer_value(name).unwrap().unwrap();
    let attr =
        |node: &NodeProto, name: &str| node.attribute.iter().find(|a| a.name() == name).cloned();
    let x_dims: Vec<usize> = match &graph.input[0].r#type.as_ref().unwrap().value {
        Some(type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| match d.value {
                Some(dimension::Value::DimValue(v)) => v as usize,
                _ => unreachable!(),
            })
            .collect(),
        _ => unreachable!(),
    };
    let (m, k) = (x_dims[0], x_dims[1]);
    let mut value = x.to_vec();
    let mut cols = k;
    for node in &graph.node {
        match node.op_type() {
            "Gemm" | "MatMul" => {
                let w = tensor(&node.input[1]);
                let trans_b = attr(node, "transB").and_then(|a| a.i).unwrap_or(0) == 1;
                let alpha = attr(node, "alpha").and_then(|a| a.f).unwrap_or(1.0) as f64;
                let beta = attr(node, "beta").and_then(|a| a.f).unwrap_or(1.0) as f64;
                let n = if trans_b { w.dims[0] } else { w.dims[1] };
                let c = node
                    .input
                    .get(2)
                    .filter(|c| !c.is_empty())
                    .map(|c| tensor(c));
                let mut out = vec![0.0; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0.0;
                        for l in 0..cols {
                            let wv = if trans_b {
                                w.data[j * cols + l]
                            } else {
                                w.data[l * n + j]
                            };
                            acc += value[i * cols + l] * wv;
                        }
                        let bias = match &c {
                            None => 0.0,
                            Some(c) => match c.dims.as_slice() {
                                [] => c.data[0],
                                [1] => c.data[0],
                                [len] if *len == n => c.data[j],
                                [1, 1] => c.data[0],
                                [1, len] if *len == n => c.data[j],
                                [rows, 1] if *rows == m => c.data[i],
                                _ => c.data[i * n + j],
                            },
                        };
                        out[i * n + j] = alpha * acc + beta * bias;
                    }
                }
                value = out;
                cols = n;
            }
            "BatchNormalization" => {
                let (g, b, mu, var) = (
                    tensor(&node.input[1]),
                    tensor(&node.input[2]),
                    tensor(&node.input[3]),
                    tensor(&node.input[4]),
                );
                let eps = attr(node, "epsilon").and_then(|a| a.f).unwrap_or(1e-5) as f64;
                for (i, v) in value.iter_mut().enumerate() {
                    let ch = i % cols;
                    *v = g.data[ch] * (*v - mu.data[ch]) / (var.data[ch] + eps).sqrt() + b.data[ch];
                }
            }
            "Relu" => value.iter_mut().for_each(|v| *v = v.max(0.0)),
            other => panic!("the evaluator does not know {other}"),
        }
    }
    value
}
