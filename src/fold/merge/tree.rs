//! The shape of a merge: the Add tree and its branches, and each Conv's geometry.

use crate::attr;
use crate::error::Result;
use crate::graph::GraphIndex;
use crate::proto::NodeProto;

/// A branch of the Add tree: the tensor and the Add that reads it.
pub(super) struct Leaf {
    pub(super) tensor: String,
    pub(super) add: usize,
}

/// Whether node `i` is the root of an Add tree: an Add whose output does not go on to one Add
/// alone.
pub(in crate::fold) fn is_root_add(index: &GraphIndex, i: usize) -> bool {
    let node = index.node(i);
    if node.op_type() != "Add" || !matches!(node.domain(), "" | "ai.onnx") {
        return false;
    }
    let Some(out) = node.output.first() else {
        return false;
    };
    !matches!(index.consumers(out), [only] if !index.is_graph_output(out)
        && index.node(*only).op_type() == "Add")
}

/// The branches of the Add tree at `add`, and its Adds.
pub(super) fn collect(
    index: &GraphIndex,
    add: usize,
    leaves: &mut Vec<Leaf>,
    adds: &mut Vec<usize>,
) {
    adds.push(add);
    for input in &index.node(add).input {
        let inner = index.producer(input).filter(|&p| {
            let node = index.node(p);
            node.op_type() == "Add"
                && matches!(node.domain(), "" | "ai.onnx")
                && index.feeds_only(input, add)
                && !index.is_graph_output(input)
        });
        match inner {
            Some(p) => collect(index, p, leaves, adds),
            None => leaves.push(Leaf {
                tensor: input.clone(),
                add,
            }),
        }
    }
}

/// A Conv's geometry, from its attributes and weight.
pub(super) struct Geometry {
    pub(super) group: i64,
    pub(super) strides: Vec<i64>,
    pub(super) dilations: Vec<i64>,
    pub(super) pads: Vec<i64>,
    pub(super) dims: Vec<usize>,
}

pub(super) fn geometry(conv: &NodeProto, dims: &[usize]) -> Result<Option<Geometry>> {
    let spatial = dims.len().saturating_sub(2);
    let auto_pad = attr::string(conv, "auto_pad")?.unwrap_or_default();
    if spatial == 0 || !matches!(auto_pad.as_str(), "" | "NOTSET") {
        return Ok(None);
    }
    let list = |name: &str, default: i64, len: usize| -> Result<Vec<i64>> {
        Ok(attr::ints(conv, name)?.map_or_else(|| vec![default; len], <[i64]>::to_vec))
    };
    Ok(Some(Geometry {
        group: attr::int(conv, "group")?.unwrap_or(1).max(1),
        strides: list("strides", 1, spatial)?,
        dilations: list("dilations", 1, spatial)?,
        pads: list("pads", 0, 2 * spatial)?,
        dims: dims.to_vec(),
    }))
}
