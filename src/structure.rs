//! The structure half of the local proof: outside the rewritten regions, the original and the
//! fused main graphs are the same graph.
//!
//! With the regions' nodes set aside on both sides, the remaining nodes must be equal one for
//! one and in order (op, domain, name, inputs, outputs, attributes, subgraphs), every
//! initializer they read must hold the same values, and the graph outputs must be the same.
//! The fused graph may list extra graph inputs only for its own initializers (IR < 4), and drops
//! `value_info` freely (it is a declaration, not a computation). The original's `Constant`
//! nodes (and ops on them alone) that the fused graph does not keep are set aside too: an
//! initializer that took over one's output must hold, bit for bit, the value they compute.
//! Any other difference is named.

use std::collections::BTreeSet;

use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{from_constant_nodes, node_label, GraphIndex, OuterScope};
use crate::model::Model;
use crate::proto::{GraphProto, NodeProto};
use crate::tensor::decode;

/// The first difference outside the regions between graph `a` of `original` and graph `b` of
/// `fused`, said in one line; `None` when there is none. `orig_region` and `fused_region` are
/// the node indices of the regions in each graph. Subgraphs are not compared here: each pair of
/// them is a graph pair of its own (see [`crate::pairs`]).
pub fn first_difference(
    original: &Model,
    fused: &Model,
    (a, b): (&GraphProto, &GraphProto),
    orig_region: &[usize],
    fused_region: &[usize],
) -> Result<Option<String>> {
    let outside = |g: &GraphProto, region: &[usize]| -> Vec<usize> {
        (0..g.node.len()).filter(|i| !region.contains(i)).collect()
    };
    // The original's constant nodes whose outputs the fused graph no longer computes: gone (a
    // fold's parameters), or stored as initializers (their values are compared below).
    let produced_b: BTreeSet<&str> = b
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let index_a = GraphIndex::new(a, OuterScope::default());
    let dropped_constant = |i: usize| {
        let node = &a.node[i];
        node.output.iter().all(|o| !produced_b.contains(o.as_str()))
            && node.output.iter().all(|o| from_constant_nodes(&index_a, o))
    };
    let kept_a: Vec<usize> = outside(a, orig_region)
        .into_iter()
        .filter(|&i| !dropped_constant(i))
        .collect();
    let kept_b = outside(b, fused_region);
    for (k, (&i, &j)) in kept_a.iter().zip(&kept_b).enumerate() {
        let (na, nb) = (&a.node[i], &b.node[j]);
        if without_subgraphs(na) != without_subgraphs(nb) {
            return Ok(Some(format!(
                "node {} of the original ({} {}) is not the fused graph's node {} ({} {}) outside \
                 the folds (kept node {} of {})",
                i,
                na.op_type(),
                node_label(na),
                j,
                nb.op_type(),
                node_label(nb),
                k + 1,
                kept_a.len()
            )));
        }
    }
    if kept_a.len() != kept_b.len() {
        return Ok(Some(format!(
            "outside the folds the original has {} nodes, the fused graph {}",
            kept_a.len(),
            kept_b.len()
        )));
    }
    if a.output != b.output {
        return Ok(Some("the graph outputs differ".into()));
    }
    let b_initializers: Vec<&str> = b.initializer.iter().map(|t| t.name()).collect();
    for input in &b.input {
        if !a.input.contains(input) && !b_initializers.contains(&input.name()) {
            return Ok(Some(format!(
                "the fused graph has an input '{}' the original does not",
                input.name()
            )));
        }
    }
    for input in &a.input {
        let constant = a.initializer.iter().any(|t| t.name() == input.name());
        if !constant && !b.input.contains(input) {
            return Ok(Some(format!(
                "graph input '{}' of the original is gone or changed",
                input.name()
            )));
        }
    }
    let mut read: Vec<&str> = kept_b
        .iter()
        .flat_map(|&j| b.node[j].input.iter().map(String::as_str))
        .filter(|n| !n.is_empty())
        .collect();
    read.sort_unstable();
    read.dedup();
    for name in read {
        let Some(tb) = b.initializer.iter().find(|t| t.name() == name) else {
            continue;
        };
        let Some(ta) = a.initializer.iter().find(|t| t.name() == name) else {
            // A value the original computes from Constant nodes, now stored.
            if from_constant_nodes(&index_a, name) {
                let eval = ConstEval::new(&index_a, &original.store, original.opset(), true);
                let stored = decode(tb, &fused.store)?;
                let same = match eval.value(name)? {
                    Ok(computed) => {
                        computed.dtype == stored.dtype
                            && computed.dims == stored.dims
                            && computed
                                .data
                                .iter()
                                .zip(&stored.data)
                                .all(|(x, y)| x.to_bits() == y.to_bits())
                    }
                    Err(_) => false,
                };
                if same {
                    continue;
                }
                return Ok(Some(format!(
                    "initializer '{name}' does not hold what the original's Constant nodes \
                     computed for it"
                )));
            }
            return Ok(Some(format!(
                "'{name}', read outside the folds, is not an initializer of the original"
            )));
        };
        if ta.data_type() != tb.data_type() || ta.dims != tb.dims {
            return Ok(Some(format!(
                "initializer '{name}' changed its type or shape"
            )));
        }
        if !same_values(ta, tb, original, fused)? {
            return Ok(Some(format!("initializer '{name}' changed its values")));
        }
    }
    Ok(None)
}

/// The node with its subgraphs emptied (their attributes kept, with their names and types).
fn without_subgraphs(node: &NodeProto) -> std::borrow::Cow<'_, NodeProto> {
    if !node.attribute.iter().any(crate::graph::is_graph_attribute) {
        return std::borrow::Cow::Borrowed(node);
    }
    let mut node = node.clone();
    for a in &mut node.attribute {
        if a.g.is_some() {
            a.g = Some(Box::default());
        }
        let count = a.graphs.len();
        a.graphs = vec![GraphProto::default(); count];
    }
    std::borrow::Cow::Owned(node)
}

/// Whether two tensors have the same dtype and shape and hold the same values, bit for bit.
pub(crate) fn same_tensor(
    a: &crate::proto::TensorProto,
    b: &crate::proto::TensorProto,
    original: &Model,
    fused: &Model,
) -> Result<bool> {
    Ok(a.data_type() == b.data_type() && a.dims == b.dims && same_values(a, b, original, fused)?)
}

/// Whether two tensors hold the same values, bit for bit (compared decoded where bnfold
/// decodes the dtype, else by their stored bytes).
pub(crate) fn same_values(
    a: &crate::proto::TensorProto,
    b: &crate::proto::TensorProto,
    original: &Model,
    fused: &Model,
) -> Result<bool> {
    if a == b {
        return Ok(true);
    }
    if crate::tensor::Dtype::from_code(a.data_type()).is_none() {
        return Ok(false);
    }
    let (va, vb) = (decode(a, &original.store)?, decode(b, &fused.store)?);
    Ok(va.data.len() == vb.data.len()
        && va
            .data
            .iter()
            .zip(&vb.data)
            .all(|(x, y)| x.to_bits() == y.to_bits()))
}
