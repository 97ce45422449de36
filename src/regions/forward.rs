//! Forward folds found from the two graphs: the fused layer, the original's BN (and Flatten or
//! Reshape) before the same kind of layer, and the fused nodes that replace them.

use super::Region;
use crate::graph::GraphIndex;

/// Forward folds: a fused Conv, ConvTranspose or Gemm whose output the original computes with
/// the same kind of layer from a BatchNormalization (directly, or through one Flatten or
/// Reshape), and which reads that BN's input (through the `Add` that keeps a shift, and the
/// same Flatten or Reshape).
pub(super) fn forward_targets<'g>(
    orig_index: &GraphIndex<'g>,
    fused_index: &GraphIndex<'g>,
) -> Vec<Region<'g>> {
    let orig_producer = |name: &str| orig_index.producer(name).map(|i| orig_index.node(i));
    let fused_producer = |name: &str| fused_index.producer(name).map(|i| fused_index.node(i));
    let mut found = Vec::new();
    for node in &fused_index.graph.node {
        if !matches!(node.op_type(), "Conv" | "ConvTranspose" | "Gemm") {
            continue;
        }
        let Some(consumer) = node.output.first().and_then(|o| orig_producer(o)) else {
            continue;
        };
        let same_kind = consumer.op_type() == node.op_type()
            || (consumer.op_type() == "MatMul" && node.op_type() == "Gemm");
        let Some(mut before) = consumer.input.first().and_then(|i| orig_producer(i)) else {
            continue;
        };
        if !same_kind {
            continue;
        }
        let mut orig_nodes = vec![consumer];
        if matches!(before.op_type(), "Flatten" | "Reshape") {
            orig_nodes.push(before);
            match before.input.first().and_then(|i| orig_producer(i)) {
                Some(p) => before = p,
                None => continue,
            }
        }
        if before.op_type() != "BatchNormalization" {
            continue;
        }
        let bn = before;
        let through_flatten = orig_nodes.len() == 2;
        orig_nodes.push(bn);
        orig_nodes.reverse();
        let data = bn.input[0].clone();
        let mut fused_nodes = vec![node];
        let mut current = node.input[0].clone();
        while current != data {
            match fused_producer(&current) {
                Some(p) if matches!(p.op_type(), "Add" | "Flatten" | "Reshape") => {
                    fused_nodes.push(p);
                    current = p.input[0].clone();
                }
                _ => break,
            }
        }
        if current != data {
            continue;
        }
        fused_nodes.reverse();
        let channels = orig_index
            .initializer(&bn.input[1])
            .and_then(|t| t.dims.first().copied())
            .unwrap_or(0)
            .max(0) as usize;
        found.push(Region {
            node,
            bn,
            layer: consumer,
            orig_nodes,
            fused_nodes,
            data,
            forward: Some((channels, through_flatten)),
            decomposed: false,
        });
    }
    found
}
