//! Which weights the layer figures measure: each layer (a Conv, ConvTranspose, Gemm or MatMul
//! of the main graph, in graph order) whose weight is a float initializer becomes a job per
//! initializer, read from the model's sources; a weight computed by `Constant` nodes is
//! evaluated and measured at once.

use std::collections::HashMap;

use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{GraphIndex, OuterScope};
use crate::model::Model;
use crate::proto::{GraphProto, NodeProto, TensorProto};
use crate::tensor::{self, Dtype};

use super::jobs::{Job, Slot, Source};
use super::layout::Elements;
use super::{output_axis, stats, LayerReadiness};

/// The figures of weights computed by constants (measured now), and a job (with its size in
/// bytes) per initializer that is some layer's weight, in the order of the initializers.
#[allow(clippy::type_complexity)]
pub(super) fn plan(model: &Model) -> Result<(Vec<(usize, LayerReadiness)>, Vec<(usize, Job)>)> {
    let mut wanted: HashMap<String, (usize, Vec<Slot>)> = HashMap::new();
    let mut computed = Vec::new();
    let mut jobs = Vec::new();
    let Some(graph) = &model.proto.graph else {
        return Ok((computed, jobs));
    };
    let layers = layers(graph);
    let initializers: HashMap<&str, &TensorProto> = match layers.is_empty() {
        true => HashMap::new(),
        false => graph.initializer.iter().map(|t| (t.name(), t)).collect(),
    };
    let index = std::cell::OnceCell::new();
    let eval = std::cell::OnceCell::new();
    for (order, node, axis) in layers {
        let name = &node.input[1];
        let slot = slot(order, node, axis)?;
        match initializers.get(name.as_str()) {
            Some(t) if Dtype::from_code(t.data_type()).is_some() => {
                let (dtype, dims) = (tensor::proto_dtype(t)?, tensor::proto_dims(t)?);
                if measurable(dtype, &dims) {
                    let bytes = dims.iter().product::<usize>() * dtype.size();
                    let entry = wanted.entry(name.clone()).or_insert((bytes, Vec::new()));
                    entry.1.push(slot);
                }
            }
            _ => {
                // Weights computed by Constant nodes go through the evaluator.
                let eval = eval.get_or_init(|| {
                    let index = index.get_or_init(|| GraphIndex::new(graph, OuterScope::default()));
                    ConstEval::new(index, &model.store, model.opset(), true)
                });
                if let Ok(w) = eval.value(name)? {
                    if measurable(w.dtype, &w.dims) {
                        let layout = slot.layout(&w.dims);
                        let values = Elements::Values(&w.data);
                        computed.push((order, stats::layer(node, name, &layout, values)));
                    }
                }
            }
        }
    }
    for t in &graph.initializer {
        let Some((bytes, slots)) = wanted.remove(t.name()) else {
            continue;
        };
        let source = match model.folded.of(t) {
            Some(folded) => Source::Scaled(Box::new(folded.value.clone())),
            None => Source::Stored(Box::new(t.clone())),
        };
        let name = t.name().to_string();
        jobs.push((
            bytes,
            Job {
                slots,
                name,
                source,
            },
        ));
    }
    Ok((computed, jobs))
}

/// Each layer of `graph` (a node whose weight has an axis of output channels): its place among
/// the layers, the node, and that axis.
pub(super) fn layers(graph: &GraphProto) -> Vec<(usize, &NodeProto, usize)> {
    graph
        .node
        .iter()
        .filter_map(|n| output_axis(n).map(|axis| (n, axis)))
        .enumerate()
        .map(|(order, (n, axis))| (order, n, axis))
        .collect()
}

/// The layer `node`, the `order`-th, whose weight's output channels lie on `axis`.
pub(super) fn slot(order: usize, node: &NodeProto, axis: usize) -> Result<Slot> {
    Ok(Slot {
        order,
        node: node_head(node),
        axis,
        group: crate::attr::int(node, "group")?.unwrap_or(1).max(1) as usize,
    })
}

/// A float weight with at least one element and one axis.
fn measurable(dtype: Dtype, dims: &[usize]) -> bool {
    dtype.is_float() && !dims.is_empty() && dims.iter().product::<usize>() > 0
}

/// What the figures need of a node: its name, outputs and op type (not its attributes, which may
/// hold large tensors).
fn node_head(node: &NodeProto) -> NodeProto {
    NodeProto {
        name: node.name.clone(),
        op_type: node.op_type.clone(),
        output: node.output.first().cloned().into_iter().collect(),
        ..Default::default()
    }
}
