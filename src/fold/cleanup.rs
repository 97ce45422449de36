//! After a round: nodes and initializers nothing reads any more, IR < 4 initializer inputs,
//! and `value_info` entries of names that are gone.

use std::collections::BTreeSet;

use foldhash::HashSet;

use super::options::PassContext;
use crate::graph::{GraphIndex, OuterScope};
use crate::proto::{GraphProto, NodeProto, TensorProto, TypeProto, ValueInfoProto};

/// Removes initializers and nodes that nothing uses any more, starting from `candidates`.
pub(super) fn remove_dead(graph: &mut GraphProto, candidates: Vec<String>, ctx: &PassContext) {
    let mut work = candidates;
    // One index per round: the dead initializers and nodes among `work`; the inputs of the nodes
    // removed are the next round's candidates.
    while !work.is_empty() {
        let (dead_initializers, dead_nodes) = {
            let index = GraphIndex::new(graph, OuterScope::default());
            let mut initializers = HashSet::default();
            let mut nodes = BTreeSet::new();
            for name in &work {
                if !index.consumers(name).is_empty()
                    || index.is_graph_output(name)
                    || (index.is_graph_input(name) && ctx.ir_version >= 4)
                {
                    continue;
                }
                let Some(p) = index.producer(name) else {
                    initializers.insert(name.clone());
                    continue;
                };
                let node = &graph.node[p];
                let unused = node.output.iter().all(|o| {
                    o.is_empty() || (index.consumers(o).is_empty() && !index.is_graph_output(o))
                });
                if unused && matches!(node.domain(), "" | "ai.onnx") {
                    nodes.insert(p);
                }
            }
            (initializers, nodes)
        };
        graph
            .initializer
            .retain(|t| !dead_initializers.contains(t.name()));
        if ctx.ir_version < 4 {
            graph
                .input
                .retain(|v| !dead_initializers.contains(v.name()));
        }
        work = remove_nodes(graph, &dead_nodes)
            .into_iter()
            .flat_map(|node| node.input)
            .filter(|i| !i.is_empty())
            .collect();
    }
}

/// Removes the nodes at `indices` in one pass, the others keeping their order, and returns them
/// in graph order. Not a removal per node, each shifting the nodes after it: a phase that drops
/// a node per fold (detached `Constant`s, weights made initializers) would cost the square of
/// the graph.
pub(super) fn remove_nodes(graph: &mut GraphProto, indices: &BTreeSet<usize>) -> Vec<NodeProto> {
    let nodes = std::mem::take(&mut graph.node);
    let mut removed = Vec::with_capacity(indices.len());
    graph
        .node
        .reserve(nodes.len().saturating_sub(indices.len()));
    for (i, node) in nodes.into_iter().enumerate() {
        match indices.contains(&i) {
            true => removed.push(node),
            false => graph.node.push(node),
        }
    }
    removed
}

/// IR < 4 requires every initializer to be listed in `graph.input`.
pub(super) fn list_initializers_as_inputs(graph: &mut GraphProto) {
    let listed: HashSet<String> = graph.input.iter().map(|v| v.name().to_string()).collect();
    let missing: Vec<ValueInfoProto> = graph
        .initializer
        .iter()
        .filter(|t| !listed.contains(t.name()))
        .map(value_info_of)
        .collect();
    graph.input.extend(missing);
}

pub(super) fn value_info_of(t: &TensorProto) -> ValueInfoProto {
    use crate::proto::{tensor_shape_proto::dimension, tensor_shape_proto::Dimension, type_proto};
    ValueInfoProto {
        name: Some(t.name().to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: t.data_type,
                shape: Some(crate::proto::TensorShapeProto {
                    dim: t
                        .dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
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

/// `value_info` entries for tensors that no longer exist.
pub(super) fn drop_stale_value_info(graph: &mut GraphProto) {
    if graph.value_info.is_empty() {
        return;
    }
    let live: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.initializer.iter().map(|t| t.name()))
        .chain(graph.input.iter().map(|v| v.name()))
        .collect();
    graph.value_info.retain(|v| live.contains(v.name()));
}
