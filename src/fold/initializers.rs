//! Weights as initializers, where quantizers look for them.
//!
//! - **Pattern**: a weight or bias of a Conv, ConvTranspose, Gemm or MatMul, or a parameter of
//!   a BatchNormalization, that is the output of a `Constant` node, or of a data-movement op
//!   (`Reshape`, `Transpose`, `Squeeze`, `Unsqueeze`, `Flatten`, `Identity`, `Cast`) on
//!   `Constant` nodes only (Paddle stores weights as `Constant` nodes, biases as
//!   `Reshape(Constant)`; torch's `Identity` of a shared initializer is a weight already).
//! - **Preconditions**: IR ≥ 4 (before it an initializer must also be a graph input, which
//!   anyone could override); the value is dense and held inline (not sparse, not external
//!   data); the tensor is not a graph output; a computed value is a float tensor and its
//!   producer has one output. Not with `--keep-constant-nodes`.
//! - **Rewrite**: an initializer under the tensor's own name holds the value; the `Constant`
//!   node (or the producer, and the constants only it read) goes. Every consumer reads the same
//!   name, so graph inputs, outputs and names are unchanged.
//! - **Math**: none. A `Constant`'s `value` is copied as stored; a computed value is computed
//!   by [`ConstEval`] exactly (data movement, and a `Cast` rounds to nearest as at run time).
//!
//! onnxruntime's quantizer treats a `Constant` node's output as an activation: one uint8 scale
//! per tensor even when per-channel is asked (PaddleOCR's recognizer: per-channel INT8 SQNR 7.3
//! dB at the logits with Constant weights, 10.9 dB as initializers).

use std::collections::BTreeSet;

use super::cleanup::{remove_dead, remove_nodes};
use super::options::PassContext;
use crate::attr;
use crate::consts::{constant_node_value, ConstEval};
use crate::error::Result;
use crate::graph::{from_constant_nodes, node_label, GraphIndex, OuterScope};
use crate::proto::{GraphProto, TensorProto};
use crate::report::InitializerRecord;
use crate::tensor;

/// The inputs of `op_type` that are weights, biases or parameters.
fn weight_inputs(op_type: &str) -> &'static [usize] {
    match op_type {
        "Conv" | "ConvTranspose" | "Gemm" => &[1, 2],
        "MatMul" => &[0, 1],
        "BatchNormalization" => &[1, 2, 3, 4],
        _ => &[],
    }
}

/// Ops whose output on constant inputs is exact data movement (or an exact `Cast`).
fn moves_data(op_type: &str) -> bool {
    matches!(
        op_type,
        "Reshape" | "Transpose" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity" | "Cast"
    )
}

/// One weight to store as an initializer: its value, and the node that computed it.
struct Candidate {
    tensor: TensorProto,
    producer: usize,
}

/// Stores every layer weight and BN parameter of `graph` that a `Constant` node (or data
/// movement on constants) computes as an initializer of the same name; returns what it did.
pub(super) fn store_weights_as_initializers(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
) -> Result<Vec<InitializerRecord>> {
    if ctx.options.keep_constant_nodes || ctx.ir_version < 4 {
        return Ok(Vec::new());
    }
    let candidates = {
        let index = GraphIndex::new(graph, outer);
        let eval = ConstEval::new(
            &index,
            ctx.store,
            ctx.opset,
            ctx.options.inputs_are_constants,
        );
        let mut seen = BTreeSet::new();
        let mut found = Vec::new();
        for node in &graph.node {
            if !matches!(node.domain(), "" | "ai.onnx") {
                continue;
            }
            for &i in weight_inputs(node.op_type()) {
                let Some(name) = node.input.get(i).filter(|n| !n.is_empty()) else {
                    continue;
                };
                if !seen.insert(name.clone()) || index.is_graph_output(name) {
                    continue;
                }
                if let Some(candidate) = candidate(graph, &index, &eval, ctx, name)? {
                    found.push(candidate);
                }
            }
        }
        found
    };
    let mut records = Vec::new();
    let mut removed = BTreeSet::new();
    for c in &candidates {
        let node = &graph.node[c.producer];
        records.push(InitializerRecord {
            graph: path.to_string(),
            tensor: c.tensor.name().to_string(),
            node: node_label(node),
            op_type: node.op_type().to_string(),
        });
        removed.insert(c.producer);
    }
    let inputs_of_removed = remove_nodes(graph, &removed)
        .into_iter()
        .flat_map(|node| node.input)
        .filter(|i| !i.is_empty())
        .collect();
    graph
        .initializer
        .extend(candidates.into_iter().map(|c| c.tensor));
    remove_dead(graph, inputs_of_removed, ctx);
    Ok(records)
}

/// The initializer for `name` when its producer is a `Constant` node or data movement on
/// constants, within the preconditions.
fn candidate(
    graph: &GraphProto,
    index: &GraphIndex,
    eval: &ConstEval,
    ctx: &PassContext,
    name: &str,
) -> Result<Option<Candidate>> {
    let Some(producer) = index.producer(name) else {
        return Ok(None);
    };
    let node = &graph.node[producer];
    if !matches!(node.domain(), "" | "ai.onnx") || node.output.len() != 1 {
        return Ok(None);
    }
    if node.op_type() == "Constant" {
        if let Some(stored) = attr::tensor(node, "value")? {
            if tensor::is_external(stored) {
                return Ok(None);
            }
            let mut tensor = stored.clone();
            tensor.name = Some(name.to_string());
            return Ok(Some(Candidate { tensor, producer }));
        }
        // value_float(s), value_int(s); sparse_value and strings stay.
        let Some(value) = constant_node_value(node, ctx.store)? else {
            return Ok(None);
        };
        return Ok(Some(Candidate {
            tensor: value.to_proto(name),
            producer,
        }));
    }
    // Data movement on `Constant` nodes only: an initializer read through an `Identity` (torch's
    // shared weights) is a weight already, and copying it would store it twice.
    if !moves_data(node.op_type()) || !from_constant_nodes(index, name) {
        return Ok(None);
    }
    let Ok(value) = eval.value(name)? else {
        return Ok(None);
    };
    if !value.dtype.is_float() {
        return Ok(None);
    }
    Ok(Some(Candidate {
        tensor: value.to_proto(name),
        producer,
    }))
}
