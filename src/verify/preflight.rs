//! What is known of two models before either runs: whether the whole-model run is attempted at
//! all, whether their interfaces agree, their declared output types, and whether they fit in
//! memory together.

use crate::model::Model;
use crate::proto::type_proto;
use crate::tensor::Dtype;

/// Above this many nodes (subgraphs included) the whole-model run is not attempted: tract's
/// typing is superlinear in the node count and would take minutes.
pub const MAX_WHOLE_MODEL_NODES: usize = 20_000;

/// Why the whole-model run is not attempted on `model`: more nodes than
/// [`MAX_WHOLE_MODEL_NODES`], said in one line.
pub fn too_large_to_run(model: &Model) -> Option<String> {
    let nodes = model.proto.graph.as_ref().map_or(0, node_count);
    (nodes > MAX_WHOLE_MODEL_NODES).then(|| {
        format!(
            "the model has {nodes} nodes; tract's typing of a graph grows faster than its size \
             (10,000 nodes 0.7 s, 30,000 nodes 7.6 s), so the whole-model run is skipped above \
             {MAX_WHOLE_MODEL_NODES}"
        )
    })
}

fn node_count(g: &crate::proto::GraphProto) -> usize {
    g.node.len()
        + g.node
            .iter()
            .flat_map(|n| &n.attribute)
            .flat_map(|a| a.g.as_deref().into_iter().chain(&a.graphs))
            .map(node_count)
            .sum::<usize>()
}

/// The first graph input (of `data_inputs`) or output whose declared element type or rank
/// differs between the two graphs, said in one line; ranks are compared where both declare one.
pub(super) fn interface_difference(
    a: &crate::proto::GraphProto,
    b: &crate::proto::GraphProto,
    data_inputs: &[String],
) -> Option<String> {
    use crate::proto::type_proto::Value;
    fn declared<'g>(
        values: &'g [crate::proto::ValueInfoProto],
        name: &str,
    ) -> Option<&'g crate::proto::type_proto::Tensor> {
        let v = values.iter().find(|v| v.name() == name)?;
        match v.r#type.as_ref()?.value.as_ref()? {
            Value::TensorType(t) => Some(t),
            _ => None,
        }
    }
    let type_name = |code: Option<i32>| match code.and_then(Dtype::from_code) {
        Some(d) => d.name().to_string(),
        None => format!("type {}", code.unwrap_or(0)),
    };
    let inputs = data_inputs
        .iter()
        .map(|n| ("input", n.as_str(), &a.input, &b.input));
    let outputs = a
        .output
        .iter()
        .map(|o| ("output", o.name(), &a.output, &b.output));
    for (kind, name, in_a, in_b) in inputs.chain(outputs) {
        let (Some(ta), Some(tb)) = (declared(in_a, name), declared(in_b, name)) else {
            continue;
        };
        if ta.elem_type != tb.elem_type {
            return Some(format!(
                "graph {kind} '{name}' is {} in the original and {} in the candidate",
                type_name(ta.elem_type),
                type_name(tb.elem_type)
            ));
        }
        let rank = |t: &crate::proto::type_proto::Tensor| t.shape.as_ref().map(|s| s.dim.len());
        if let (Some(ra), Some(rb)) = (rank(ta), rank(tb)) {
            if ra != rb {
                return Some(format!(
                    "graph {kind} '{name}' has rank {ra} in the original and {rb} in the candidate"
                ));
            }
        }
    }
    None
}

pub(crate) fn declared_dtype_of(model: &Model, name: &str) -> Option<Dtype> {
    declared_dtype(model.proto.graph.as_ref()?, name)
}

pub(super) fn declared_dtype(graph: &crate::proto::GraphProto, name: &str) -> Option<Dtype> {
    graph
        .output
        .iter()
        .chain(&graph.value_info)
        .find(|v| v.name() == name)
        .and_then(|v| match v.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => Dtype::from_code(t.elem_type()),
            _ => None,
        })
}

/// Above this many bytes of weights in the two models together, verification holds one model
/// in tract at a time.
pub(super) const LOCKSTEP_WEIGHT_BYTES: usize = 256 << 20;

/// The bytes of every tensor stored in the model, external data included.
pub(super) fn weight_bytes(model: &Model) -> usize {
    let mut total = 0usize;
    if let Some(g) = &model.proto.graph {
        crate::walk::visit_tensors(g, &mut |t| {
            let count = crate::tensor::proto_dims(t)
                .map(|d| d.iter().product::<usize>())
                .unwrap_or(0);
            let size = Dtype::from_code(t.data_type()).map_or(8, Dtype::size);
            total = total.saturating_add(count.saturating_mul(size));
        });
    }
    total
}
