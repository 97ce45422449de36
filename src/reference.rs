//! A second opinion on a whole-model output that differs from the original's by more than the
//! fixed tolerance: is the candidate worse than the original's own float error, or only
//! different? Deep networks compound rounding, so a correct fold of one can miss a fixed
//! fraction of the output while being as exact as the original.
//!
//! - **Exact** where tract runs the original in f64 (every float tensor, input and `Cast` to a
//!   float widened; Gemm spelled as MatMul and Add, as tract's f64 Gemm multiplies by an f32
//!   `beta`): the candidate passes when `max|candidate − exact| ≤ 4·max|original − exact|` plus
//!   four units of rounding of the exact output's largest value.
//! - **Sensitivity** otherwise (tract lacks Sigmoid, HardSwish and more in f64): the original
//!   is run again with every parameter the folds read (of every BatchNormalization and the
//!   layers beside it) moved by one ulp in a seeded random direction, which is what rounding
//!   them once more does; the candidate passes when it is within four times that run's distance
//!   from the original.

use schemars::JsonSchema;
use serde::Serialize;

use crate::certificate::ulps::unit;
use crate::error::Result;
use crate::external::ExternalStore;
use crate::model::Model;
use crate::proto::{tensor_proto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::tensor::{decode, Dtype, Tensor};

/// The candidate may be this many times as far from the reference as the original.
pub const FACTOR: f64 = 4.0;

/// How a whole-model output was judged a second time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceKind {
    /// Against the original evaluated in f64.
    Exact,
    /// Against the original's own spread under a one-ulp move of the folded parameters.
    Sensitivity,
}

/// The second opinion on one output.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct ReferenceCheck {
    /// Exact (f64) or sensitivity.
    pub kind: ReferenceKind,
    /// Exact: `max|candidate − exact|`; sensitivity: `max|candidate − original|`.
    pub candidate_error: f64,
    /// Exact: `max|original − exact|`; sensitivity: `max|perturbed original − original|`.
    pub original_error: f64,
    /// `4 × original_error` (exact: plus 4 units of rounding of `max|exact|`).
    pub bound: f64,
    /// Whether `candidate_error ≤ bound`.
    pub passed: bool,
}

/// The original in f64, or why it cannot be written so (a float tensor inside a subgraph, a
/// Gemm whose B is not a constant).
pub(crate) fn widened(original: &Model) -> Result<std::result::Result<Model, String>> {
    let mut proto = original.materialized()?;
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(Err("no graph".into()));
    };
    if let Err(why) = widen_graph(graph) {
        return Ok(Err(why));
    }
    Ok(Model::from_proto(proto, ExternalStore::none()).map_err(|e| e.to_string()))
}

fn widen_graph(graph: &mut GraphProto) -> std::result::Result<(), String> {
    let none = ExternalStore::none();
    for t in &mut graph.initializer {
        widen_tensor(t, &none)?;
    }
    let mut constants: Vec<(String, crate::tensor::Tensor)> = Vec::new();
    for node in &mut graph.node {
        for a in &mut node.attribute {
            if a.g.is_some() || !a.graphs.is_empty() {
                return Err(format!("node '{}' has a subgraph", node.name()));
            }
            if let Some(t) = a.t.as_deref_mut() {
                widen_tensor(t, &none)?;
            }
        }
        if node.op_type() == "Cast" {
            for a in &mut node.attribute {
                let float = [Dtype::F32, Dtype::F16, Dtype::Bf16].map(Dtype::code);
                if a.name() == "to" && float.contains(&(a.i() as i32)) {
                    a.i = Some(i64::from(Dtype::F64.code()));
                }
            }
        }
    }
    for t in &graph.initializer {
        if matches!(Dtype::from_code(t.data_type()), Some(Dtype::F64)) {
            let used_by_gemm = graph
                .node
                .iter()
                .any(|n| n.op_type() == "Gemm" && n.input.iter().skip(1).any(|i| i == t.name()));
            if used_by_gemm {
                constants.push((
                    t.name().to_string(),
                    decode(t, &none).map_err(|e| e.to_string())?,
                ));
            }
        }
    }
    if graph.node.iter().any(|n| n.op_type() == "Gemm") {
        let nodes = std::mem::take(&mut graph.node);
        let before = constants.len();
        let spelled = spell_gemms(nodes, &mut constants).map_err(|e| e.to_string())?;
        if spelled.iter().any(|n| n.op_type() == "Gemm") {
            return Err("a Gemm whose B is not a constant".into());
        }
        graph.node = spelled;
        for (name, t) in constants.drain(before..) {
            graph.initializer.push(t.to_proto(&name));
        }
    }
    let widen_value = |v: &mut ValueInfoProto| {
        if let Some(crate::proto::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if Dtype::from_code(t.elem_type()).is_some_and(Dtype::is_float) {
                t.elem_type = Some(Dtype::F64.code());
            }
        }
    };
    graph.input.iter_mut().for_each(widen_value);
    graph.output.iter_mut().for_each(widen_value);
    graph.value_info.clear();
    Ok(())
}

fn widen_tensor(t: &mut TensorProto, store: &ExternalStore) -> std::result::Result<(), String> {
    match Dtype::from_code(t.data_type()) {
        Some(d) if d.is_float() && d != Dtype::F64 => {
            if t.data_location() == tensor_proto::DataLocation::External {
                return Err(format!("'{}' is external", t.name()));
            }
            let value = decode(t, store).map_err(|e| e.to_string())?;
            let name = t.name().to_string();
            *t = crate::tensor::Tensor::new(Dtype::F64, value.dims, value.data).to_proto(&name);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The original with every float parameter read by a BatchNormalization, or by a node that
/// produces a BN's input or consumes its output, moved by one ulp of its dtype in a direction
/// drawn from `seed`.
pub(crate) fn perturbed(original: &Model, seed: u64) -> Result<Model> {
    let mut proto: ModelProto = original.materialized()?;
    let Some(graph) = proto.graph.as_mut() else {
        return Model::from_proto(proto, ExternalStore::none());
    };
    let mut read: Vec<&str> = Vec::new();
    for bn in graph
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization")
    {
        read.extend(bn.input.iter().skip(1).map(String::as_str));
        let beside = graph.node.iter().filter(|n| {
            n.output.iter().any(|o| bn.input.first() == Some(o))
                || n.input.iter().any(|i| bn.output.first() == Some(i))
        });
        read.extend(beside.flat_map(|n| n.input.iter().skip(1).map(String::as_str)));
    }
    let read: std::collections::HashSet<String> = read.into_iter().map(str::to_string).collect();
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let none = ExternalStore::none();
    for t in graph
        .initializer
        .iter_mut()
        .filter(|t| read.contains(t.name()))
    {
        let Some(dtype) = Dtype::from_code(t.data_type()).filter(|d| d.is_float()) else {
            continue;
        };
        let mut value = decode(t, &none)?;
        for v in &mut value.data {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let step = unit(dtype, *v);
            *v += if state >> 63 == 1 { step } else { -step };
        }
        let name = t.name().to_string();
        *t = value.to_proto(&name);
    }
    Model::from_proto(proto, ExternalStore::none())
}

/// Judges one output from the largest errors seen (see the module's header).
pub(crate) fn judge(
    kind: ReferenceKind,
    candidate_error: f64,
    original_error: f64,
    reference_magnitude: f64,
    dtype: Dtype,
) -> ReferenceCheck {
    let floor = match kind {
        ReferenceKind::Exact => 4.0 * 0.5 * unit(dtype, reference_magnitude),
        ReferenceKind::Sensitivity => 0.0,
    };
    let bound = FACTOR * original_error + floor;
    ReferenceCheck {
        kind,
        candidate_error,
        original_error,
        bound,
        passed: candidate_error <= bound,
    }
}

/// In f64, tract's Gemm multiplies by an f32 `beta` (and on a region's magnitudes a negative
/// `alpha` or `beta` would subtract), so those models spell each Gemm
/// `(Transpose(A))? · B″ (+ C″)` with `B″ = alpha·B` (transposed when `transB`) and
/// `C″ = beta·C` computed in f64 (rounded at 2⁻⁵³, far below any dtype's own rounding).
/// `constants` holds the region's constants by name; new ones are added to it.
pub(crate) fn spell_gemms(
    nodes: Vec<NodeProto>,
    constants: &mut Vec<(String, Tensor)>,
) -> crate::error::Result<Vec<NodeProto>> {
    let mut out = Vec::new();
    for node in nodes {
        let constant = |name: &str| constants.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let (Some(b), Some(output)) = (
            node.input.get(1).and_then(|n| constant(n)),
            node.output.first().cloned(),
        ) else {
            out.push(node);
            continue;
        };
        if node.op_type() != "Gemm" || b.dims.len() != 2 {
            out.push(node);
            continue;
        }
        let alpha = f64::from(crate::attr::float(&node, "alpha")?.unwrap_or(1.0));
        let beta = f64::from(crate::attr::float(&node, "beta")?.unwrap_or(1.0));
        let trans_a = crate::attr::int(&node, "transA")?.unwrap_or(0) != 0;
        let trans_b = crate::attr::int(&node, "transB")?.unwrap_or(0) != 0;
        let (rows, cols) = (b.dims[0], b.dims[1]);
        let b_scaled = if trans_b {
            let mut data = vec![0.0; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    data[c * rows + r] = alpha * b.data[r * cols + c];
                }
            }
            Tensor::new(b.dtype, vec![cols, rows], data)
        } else {
            Tensor::new(
                b.dtype,
                b.dims.clone(),
                b.data.iter().map(|v| alpha * v).collect(),
            )
        };
        let c = match node.input.get(2).filter(|n| !n.is_empty()) {
            Some(name) => match constant(name) {
                Some(c) => Some(Tensor::new(
                    c.dtype,
                    c.dims.clone(),
                    c.data.iter().map(|v| beta * v).collect(),
                )),
                // A C computed in the graph: the Gemm stays as it is.
                None => {
                    out.push(node);
                    continue;
                }
            },
            None => None,
        };
        let simple = |op: &str, inputs: Vec<String>, output: String| NodeProto {
            op_type: Some(op.into()),
            input: inputs,
            output: vec![output],
            ..Default::default()
        };
        let mut data = node.input[0].clone();
        if trans_a {
            let transposed = format!("{output}#gemm_a");
            out.push(simple("Transpose", vec![data], transposed.clone()));
            data = transposed;
        }
        let b_name = format!("{output}#gemm_b");
        constants.push((b_name.clone(), b_scaled));
        match c {
            Some(c) => {
                let (product, c_name) = (format!("{output}#gemm_ab"), format!("{output}#gemm_c"));
                constants.push((c_name.clone(), c));
                out.push(simple("MatMul", vec![data, b_name], product.clone()));
                out.push(simple("Add", vec![product, c_name], output));
            }
            None => out.push(simple("MatMul", vec![data, b_name], output)),
        }
    }
    Ok(out)
}
