//! Rounds, the same for both directions: plan every BatchNormalization (backward, every node that
//! may end a per-channel chain) against one index, then
//! apply the plans whose nodes no other plan of the round took; node removals and insertions are
//! made at the round's end, so the indices the plans were made with hold throughout. A BN that a
//! fold just made foldable (BN → BN) waits for the next round; rounds go on until one plans
//! nothing. Backward plans are applied from the end of the graph back (the order new names were
//! always handed out in), forward ones in graph order.

use foldhash::HashSet;

use crate::consts::ConstEval;
use crate::error::Result;
use crate::folded::FoldedWeights;
use crate::graph::{GraphIndex, OuterScope};
use crate::proto::GraphProto;
use crate::report::{Direction, FoldRecord};

use super::apply::{apply, apply_concat, apply_forward};
use super::backward::plan_chain;
use super::chain::may_end_chain;
use super::cleanup::{list_initializers_as_inputs, remove_dead};
use super::edits::{GraphNames, NodeEdits};
use super::forward::{allows_forward, plan_forward};
use super::plan::{Backward, ForwardPlan};
use super::{inputs_are_constants, PassContext, PassOutcome};

/// A fold planned in either direction.
enum Plan {
    Backward(Backward),
    Forward(Box<ForwardPlan>),
}

impl Plan {
    /// The nodes the plan reads or changes.
    fn nodes(&self) -> Vec<usize> {
        match self {
            Plan::Backward(plan) => plan.nodes(),
            Plan::Forward(plan) => [plan.bn, plan.consumer]
                .into_iter()
                .chain(plan.flatten)
                .chain(plan.steps.iter().copied())
                .collect(),
        }
    }

    /// Applies the plan; the tensors it detached go to `detached`.
    fn apply(
        self,
        graph: &mut GraphProto,
        path: &str,
        names: &mut GraphNames,
        edits: &mut NodeEdits,
        detached: &mut Vec<String>,
    ) -> Result<Vec<FoldRecord>> {
        match self {
            Plan::Backward(Backward::Layer(plan)) => {
                Ok(vec![apply(graph, *plan, path, names, edits, detached)?])
            }
            Plan::Backward(Backward::Concat(plan)) => {
                apply_concat(graph, plan, path, names, edits, detached)
            }
            Plan::Forward(plan) => {
                let (record, gone) = apply_forward(graph, *plan, path, names, edits)?;
                detached.extend(gone);
                Ok(vec![record])
            }
        }
    }
}

/// Folds in `direction` until a round plans nothing.
pub(super) fn rounds(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    direction: Direction,
    folded: &mut FoldedWeights,
    out: &mut PassOutcome,
) -> Result<()> {
    loop {
        let plans = plan_round(graph, ctx, outer, direction, folded)?;
        if plans.is_empty() {
            return Ok(());
        }
        let mut names = GraphNames::new(graph, folded);
        let mut edits = NodeEdits::new(graph.node.len());
        let mut taken = HashSet::default();
        let mut detached = Vec::new();
        let mut records = Vec::new();
        let ordered: Box<dyn Iterator<Item = Plan>> = match direction {
            Direction::Backward => Box::new(plans.into_iter().rev()),
            Direction::Forward => Box::new(plans.into_iter()),
        };
        for plan in ordered {
            if !claim(&mut taken, &plan.nodes()) {
                continue;
            }
            let applied = plan.apply(graph, path, &mut names, &mut edits, &mut detached)?;
            match direction {
                // Records are reversed at the end of a backward round: a Concat's parts keep
                // their order.
                Direction::Backward => records.extend(applied.into_iter().rev()),
                Direction::Forward => records.extend(applied),
            }
        }
        edits.finish(graph);
        remove_dead(graph, detached, ctx);
        folded.retain_initializers_of(graph);
        if ctx.ir_version < 4 {
            list_initializers_as_inputs(graph);
        }
        if direction == Direction::Backward {
            records.reverse();
        }
        out.folds.extend(records);
    }
}

/// Every fold in `direction` that applies now, in graph order. A BN is planned forward only when
/// it does not fold backward, for a reason that lets it fold forward.
fn plan_round(
    graph: &GraphProto,
    ctx: &PassContext,
    outer: OuterScope,
    direction: Direction,
    folded: &FoldedWeights,
) -> Result<Vec<Plan>> {
    let index = GraphIndex::new(graph, outer);
    let eval =
        ConstEval::new(&index, ctx.store, ctx.opset, inputs_are_constants(ctx)).with_folded(folded);
    let mut plans = Vec::new();
    for i in 0..graph.node.len() {
        let node = &graph.node[i];
        if !may_end_chain(node) {
            continue;
        }
        match (plan_chain(&index, &eval, i, ctx)?, direction) {
            (Ok(plan), Direction::Backward) => plans.push(Plan::Backward(plan)),
            (Err(reason), Direction::Forward) if allows_forward(&reason) => {
                if let Ok(plan) = plan_forward(&index, &eval, i, ctx)? {
                    plans.push(Plan::Forward(Box::new(plan)));
                }
            }
            _ => {}
        }
    }
    Ok(plans)
}

/// Marks `nodes` as taken by a rewrite of this round; false (and nothing marked) when an earlier
/// rewrite of the round already took one of them.
fn claim(taken: &mut HashSet<usize>, nodes: &[usize]) -> bool {
    if nodes.iter().any(|n| taken.contains(n)) {
        return false;
    }
    taken.extend(nodes);
    true
}
