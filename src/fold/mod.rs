//! The fold pass, phase by phase, each graph on its own (subgraphs first, then the graph that
//! holds them):
//!
//! 1. **Subgraphs** (`fold_subgraphs`): the graphs of `If`, `Loop` and `Scan` bodies, with
//!    the enclosing graphs' initializers in scope.
//! 2. **Backward rounds** (`backward.rs`): every BatchNormalization whose input comes from a
//!    foldable producer is planned against one index; the plans that share no node are applied
//!    (`apply.rs`, through `edits.rs`) and the graph is cleaned (`cleanup.rs`); again until a round
//!    plans nothing (a fold can make the next BN foldable: BN → BN).
//! 3. **Forward rounds** (`forward.rs`): the BatchNormalizations that fold nowhere backward, into
//!    the one layer they feed, in rounds the same way.
//! 4. **Merge branches** (`--merge-branches`, `merge/`): each `Add` of parallel Conv, BN and
//!    identity branches of one tensor becomes one Conv.
//! 5. **Decompose** (`--decompose-standalone`): each BatchNormalization left becomes a `Mul` and
//!    an `Add`.
//! 6. **The skip report**: why each one left did not fold, backward and forward.
//! 7. **Weights as initializers** (`initializers.rs`): a layer weight or BN parameter still
//!    computed by a `Constant` node is stored as an initializer (unless
//!    `--keep-constant-nodes`).
//! 8. **Equalize** (`--equalize`, `equalize/`, main graph): consecutive Convs' channel ranges
//!    balanced, exactly.
//!
//! Matching is read-only and returns a plan or a named [`SkipReason`]; the rules of each layer
//! kind live in [`rules`]; `apply.rs` is the one place that mutates a graph.

use foldhash::HashMap;

use crate::consts::ConstEval;
use crate::error::Result;
use crate::folded::FoldedWeights;
use crate::graph::{is_graph_attribute, node_label, GraphIndex, OuterScope};
use crate::proto::{GraphProto, NodeProto, TensorProto};
use crate::report::{Direction, NormalizationRecord, SkipRecord};
use backward::plan_chain;
use chain::may_end_chain;
use cleanup::drop_stale_value_info;
use forward::{allows_forward, plan_forward};
use rules::SkipReason;

/// In a plan function returning `Result<Result<_, SkipReason>>`: skip with `$reason` if `$cond`.
macro_rules! skip_if {
    ($cond:expr, $reason:expr) => {
        if $cond {
            return Ok(Err($reason));
        }
    };
}

/// In a plan function: the value of a `Result<_, SkipReason>`, or skip with its reason.
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason)),
        }
    };
}

mod apply;
mod backward;
mod chain;
mod cleanup;
mod concat;
mod decompose;
mod edits;
mod equalize;
mod forward;
mod initializers;
mod layer;
mod merge;
mod options;
mod plan;
mod rounds;
pub mod rules;
#[cfg(test)]
mod tests;

pub use equalize::{apply_absorption, BatchNormStatistics};
pub use options::{FoldOptions, PassContext, PassOutcome};

use rounds::rounds;

/// Folds every foldable BatchNormalization of `graph` and of its subgraphs. The weights folded
/// in `graph` join `folded` (and are computed when the model is written); those of its
/// subgraphs are written into them inline as each is left.
pub fn fold_graph(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    folded: &mut FoldedWeights,
    out: &mut PassOutcome,
) -> Result<()> {
    fold_subgraphs(graph, ctx, path, outer, out)?;
    if !graph.node.iter().any(may_end_chain) {
        // Nothing to fold, decompose or report here: no index of a large graph is built.
        list_other_normalizations(graph, path, out);
        return last_phases(graph, ctx, path, outer, folded, out);
    }
    let changes = |out: &PassOutcome| out.folds.len() + out.merges.len() + out.decompositions.len();
    let before = changes(out);
    rounds(graph, ctx, path, outer, Direction::Backward, folded, out)?;
    check_phase(graph, path, "backward folds", changes(out) != before)?;
    // Forward folds, where backward ones do not apply.
    let before = changes(out);
    rounds(graph, ctx, path, outer, Direction::Forward, folded, out)?;
    check_phase(graph, path, "forward folds", changes(out) != before)?;
    if ctx.options.merge_branches {
        let before = changes(out);
        merge::merge_branches(graph, ctx, path, outer, folded, &mut out.merges)?;
        check_phase(graph, path, "branch merging", changes(out) != before)?;
    }
    if ctx.options.decompose_standalone {
        let before = changes(out);
        decompose::decompose_remaining(graph, ctx, path, outer, folded, out)?;
        check_phase(graph, path, "decomposition", changes(out) != before)?;
    }
    report_skips(graph, ctx, path, outer, folded, out)?;
    list_other_normalizations(graph, path, out);
    last_phases(graph, ctx, path, outer, folded, out)
}

/// Phases 7 and 8, which apply to a graph with nothing to fold too.
fn last_phases(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    folded: &mut FoldedWeights,
    out: &mut PassOutcome,
) -> Result<()> {
    weights_as_initializers(graph, ctx, path, outer, out)?;
    if ctx.options.equalize && path == "main" {
        let (equalized, absorption) = equalize::equalize(graph, ctx, folded)?;
        let changed = !equalized.is_empty();
        out.equalizations.extend(equalized);
        out.absorption = absorption;
        check_phase(graph, path, "equalization", changed)?;
    }
    drop_stale_value_info(graph);
    Ok(())
}

/// Phase 7, validated like the others.
fn weights_as_initializers(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    out: &mut PassOutcome,
) -> Result<()> {
    let stored = initializers::store_weights_as_initializers(graph, ctx, path, outer)?;
    let changed = !stored.is_empty();
    out.initializers.extend(stored);
    check_phase(graph, path, "weights as initializers", changed)
}

/// After a phase that changed the main graph: its structure is whole (every input defined
/// before use, names unique), or an error that names the phase, since that is a bug of bnfold's.
fn check_phase(graph: &GraphProto, path: &str, phase: &str, changed: bool) -> Result<()> {
    if !changed || path != "main" {
        return Ok(());
    }
    crate::validate::graph_structure(graph, &Default::default()).map_err(|e| {
        crate::error::Error::InvalidGraph(format!(
            "bnfold left an invalid graph after its {phase} (a bug of bnfold's; please report \
             it): {e}"
        ))
    })
}

/// Why each BatchNormalization left did not fold, backward and forward where that was tried;
/// and each `Mul`, `Add`, `Sub` or `Div` after a layer whose constant is not per channel (other
/// element-wise ops are no near miss, so they are not listed).
fn report_skips(
    graph: &GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    folded: &FoldedWeights,
    out: &mut PassOutcome,
) -> Result<()> {
    let index = GraphIndex::new(graph, outer);
    let eval =
        ConstEval::new(&index, ctx.store, ctx.opset, inputs_are_constants(ctx)).with_folded(folded);
    for (i, node) in graph.node.iter().enumerate() {
        if is_batch_norm(node) {
            if let Err(reason) = plan_chain(&index, &eval, i, ctx)? {
                if let Some(add) = merging_root(&index, &eval, ctx, node)? {
                    let reason = SkipReason::MergeableBranch { add };
                    out.skips.push(backward_only(path, node, reason));
                    continue;
                }
                let forward = if allows_forward(&reason) {
                    plan_forward(&index, &eval, i, ctx)?.err()
                } else {
                    None
                };
                out.skips.push(SkipRecord {
                    graph: path.to_string(),
                    node: node_label(node),
                    message: reason.message(),
                    reason,
                    forward_message: forward.as_ref().map(SkipReason::message),
                    forward,
                });
            }
        } else if may_end_chain(node) && !feeds_a_chain_end(&index, node) {
            if let Err(reason @ SkipReason::ConstantNotPerChannel { .. }) =
                plan_chain(&index, &eval, i, ctx)?
            {
                out.skips.push(backward_only(path, node, reason));
            }
        }
    }
    Ok(())
}

/// The record of a node left for `reason`, with no forward attempt.
fn backward_only(path: &str, node: &NodeProto, reason: SkipReason) -> SkipRecord {
    SkipRecord {
        graph: path.to_string(),
        node: node_label(node),
        message: reason.message(),
        reason,
        forward_message: None,
        forward: None,
    }
}

/// Without `--merge-branches`: the root of the Add tree that `bn` is a branch of, when that tree
/// would merge into one Conv.
fn merging_root(
    index: &GraphIndex,
    eval: &ConstEval,
    ctx: &PassContext,
    bn: &NodeProto,
) -> Result<Option<String>> {
    if ctx.options.merge_branches {
        return Ok(None);
    }
    let mut tensor = bn.output[0].as_str();
    let mut root = None;
    while let [only] = index.consumers(tensor) {
        let node = index.node(*only);
        if node.op_type() != "Add" || index.is_graph_output(tensor) {
            break;
        }
        root = Some(*only);
        tensor = &node.output[0];
    }
    let Some(root) = root.filter(|&r| merge::is_root_add(index, r)) else {
        return Ok(None);
    };
    Ok(merge::plan_merge(index, eval, ctx, root)?.map(|_| node_label(index.node(root))))
}

/// Whether `node`'s output goes on to one node that may end a chain, whose record (or fold) then
/// speaks for it.
fn feeds_a_chain_end(index: &GraphIndex, node: &NodeProto) -> bool {
    let Some(output) = node.output.first() else {
        return false;
    };
    match index.consumers(output) {
        [only] => !index.is_graph_output(output) && may_end_chain(index.node(*only)),
        _ => false,
    }
}

/// Records the normalizations whose statistics come from the input, which never fold.
fn list_other_normalizations(graph: &GraphProto, path: &str, out: &mut PassOutcome) {
    for node in &graph.node {
        if matches!(
            node.op_type(),
            "LayerNormalization" | "GroupNormalization" | "InstanceNormalization"
        ) {
            out.normalizations.push(NormalizationRecord {
                graph: path.to_string(),
                node: node_label(node),
                op_type: node.op_type().to_string(),
            });
        }
    }
}

fn inputs_are_constants(ctx: &PassContext) -> bool {
    ctx.options.inputs_are_constants || ctx.ir_version < 4
}

fn is_batch_norm(node: &NodeProto) -> bool {
    node.op_type() == "BatchNormalization" && matches!(node.domain(), "" | "ai.onnx")
}

fn fold_subgraphs(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    out: &mut PassOutcome,
) -> Result<()> {
    if !graph
        .node
        .iter()
        .any(|n| n.attribute.iter().any(is_graph_attribute))
    {
        return Ok(());
    }
    let mut visible: HashMap<String, TensorProto> = outer
        .initializers
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for t in &graph.initializer {
        visible.insert(t.name().to_string(), t.clone());
    }
    let scope = OuterScope {
        initializers: Some(&visible),
    };
    for node in &mut graph.node {
        let label = node_label(node);
        for a in &mut node.attribute {
            let sub_path = format!("{path}/{label}/{}", a.name());
            if let Some(g) = a.g.as_mut() {
                fold_subgraph(g, ctx, &sub_path, scope, out)?;
            }
            for (k, g) in a.graphs.iter_mut().enumerate() {
                fold_subgraph(g, ctx, &format!("{sub_path}[{k}]"), scope, out)?;
            }
        }
    }
    Ok(())
}

/// Folds a subgraph and writes its folded weights into it, inline.
fn fold_subgraph(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    out: &mut PassOutcome,
) -> Result<()> {
    let mut folded = FoldedWeights::default();
    fold_graph(graph, ctx, path, outer, &mut folded, out)?;
    for t in &mut graph.initializer {
        folded.inline(t, ctx.store)?;
    }
    Ok(())
}
