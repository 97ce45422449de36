//! Which fused nodes the certificate and the regions look at: those that took over the output
//! of a chain's end in the original (a layer, or a Concat's layers).

use super::chain_folded_before;
use crate::graph::GraphIndex;
use crate::proto::NodeProto;

/// Every node of the fused graph that took over a BatchNormalization's output in the original,
/// with that BN: a Conv, ConvTranspose or Gemm, or the `Add` after a MatMul.
pub(crate) fn fold_targets<'g>(
    orig_index: &GraphIndex<'g>,
    fused_index: &GraphIndex<'g>,
) -> Vec<(&'g NodeProto, &'g NodeProto)> {
    let mut found = Vec::new();
    for node in &fused_index.graph.node {
        let Some(output) = node.output.first() else {
            continue;
        };
        let Some(bn) = orig_index.producer(output).map(|i| orig_index.node(i)) else {
            continue;
        };
        let takes_over = match node.op_type() {
            "Conv" | "ConvTranspose" | "Gemm" => true,
            // A MatMul fold before opset 7 (a decomposed BN's Add follows a Mul instead).
            "Add" => node.input.iter().any(|i| {
                fused_index
                    .producer(i)
                    .is_some_and(|p| fused_index.node(p).op_type() == "MatMul")
            }),
            _ => false,
        };
        // The same op under the same output is the original node itself, not a fold (a
        // MatMul's bias Add that nothing folded into).
        let itself = node.op_type() == bn.op_type();
        if !takes_over || itself {
            continue;
        }
        let Some(layer) = chain_layer(orig_index, bn) else {
            continue;
        };
        // A layer that also took a chain forward is proven by the divergence check.
        let took_a_chain_before = node.op_type() != "Add"
            && chain_folded_before(orig_index, fused_index, layer, node).is_some();
        if !took_a_chain_before {
            found.push((node, bn));
        }
    }
    found
}

/// The layer a chain ending at `node` starts from (see [`ends_chain`]).
fn chain_layer<'g>(index: &GraphIndex<'g>, node: &'g NodeProto) -> Option<&'g NodeProto> {
    if !ends_chain(index, node, false) {
        return None;
    }
    let mut current = node;
    for _ in 0..index.graph.node.len() + 1 {
        if matches!(
            current.op_type(),
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul"
        ) {
            return Some(current);
        }
        let data = current
            .input
            .iter()
            .find(|i| !from_constants(index, i, 0))?;
        current = index.node(index.producer(data)?);
    }
    None
}

/// Whether `node` ends a chain that a fold can have replaced: walking back from it through
/// BatchNormalizations, Identities and `Mul`, `Add`, `Sub`, `Div` with exactly one operand
/// computed from constants alone, a layer (or a Concat, when `concat`) is reached. An `Add` of
/// two computed branches (what `--merge-branches` merges) is no step.
fn ends_chain(index: &GraphIndex, node: &NodeProto, concat: bool) -> bool {
    let mut current = node;
    for _ in 0..index.graph.node.len() + 1 {
        let data = match current.op_type() {
            "BatchNormalization" | "Identity" => current.input.first(),
            "Add" | "Mul" | "Sub" | "Div" if current.input.len() == 2 => {
                let constant: Vec<bool> = current
                    .input
                    .iter()
                    .map(|i| from_constants(index, i, 0))
                    .collect();
                match constant[..] {
                    [true, false] => current.input.get(1),
                    [false, true] => current.input.first(),
                    _ => return false,
                }
            }
            _ => return false,
        };
        let Some(p) = data.and_then(|d| index.producer(d)) else {
            return false;
        };
        current = index.node(p);
        match current.op_type() {
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul" => return !concat,
            "Concat" => return concat,
            _ => {}
        }
    }
    false
}

/// Whether `name` is an initializer or computed from initializers and `Constant` nodes alone.
fn from_constants(index: &GraphIndex, name: &str, depth: usize) -> bool {
    if index.initializer(name).is_some() {
        return true;
    }
    let Some(p) = index.producer(name) else {
        return false;
    };
    let node = index.node(p);
    depth < 64
        && (node.op_type() == "Constant"
            || (!node.input.is_empty()
                && node
                    .input
                    .iter()
                    .all(|i| i.is_empty() || from_constants(index, i, depth + 1))))
}

/// Every `Concat` of the fused graph that took over the output of a chain's end (a
/// BatchNormalization, or a `Mul`, `Add`, `Sub` or `Div`) in the original, with that node: a
/// chain folded into the Concat's layers.
pub(crate) fn concat_targets<'g>(
    orig_index: &GraphIndex<'g>,
    fused_index: &GraphIndex<'g>,
) -> Vec<(&'g NodeProto, &'g NodeProto)> {
    let mut found = Vec::new();
    for node in &fused_index.graph.node {
        let Some(output) = node.output.first().filter(|_| node.op_type() == "Concat") else {
            continue;
        };
        let Some(end) = orig_index.producer(output).map(|i| orig_index.node(i)) else {
            continue;
        };
        if ends_chain(orig_index, end, true) {
            found.push((node, end));
        }
    }
    found
}
