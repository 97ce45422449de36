//! Backward folds: `start → step* → end`, the chain walked back from its end ([`super::chain`])
//! to a Conv, ConvTranspose, Gemm or MatMul whose output feeds the chain alone (or to a `Concat`
//! of such layers, [`super::concat`]). The chain composes into one per-channel map and the rule
//! of the layer's kind (in [`super::rules`]) gives the shape checks and the rewrite, so a whole
//! chain folds at once and its bias is rounded once.

use super::chain::{batch_norm_maps, compose, only_adds, step_constants, walk_back, Start, Step};
use super::layer::{fold_layer, read_layer, sole_direct_consumer};
use super::options::PassContext;
use super::plan::{Backward, ChainPlan};
use super::rules::SkipReason;
use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::GraphIndex;

/// The read-only step: everything about one chain ending at node `end_index`, or why it does
/// not fold.
pub(super) fn plan_chain(
    index: &GraphIndex,
    eval: &ConstEval,
    end_index: usize,
    ctx: &PassContext,
) -> Result<std::result::Result<Backward, SkipReason>> {
    let (steps, start) = or_skip!(walk_back(index, eval, end_index, ctx)?);
    Ok(match start {
        Start::Layer(producer) => plan_layer_chain(index, eval, ctx, end_index, &steps, producer)?
            .map(|plan| Backward::Layer(Box::new(plan))),
        Start::Concat(concat) => {
            super::concat::plan(index, eval, ctx, end_index, &steps, concat)?.map(Backward::Concat)
        }
    })
}

/// The chain `layer → steps → end`.
fn plan_layer_chain(
    index: &GraphIndex,
    eval: &ConstEval,
    ctx: &PassContext,
    end_index: usize,
    steps: &[Step],
    producer: usize,
) -> Result<std::result::Result<ChainPlan, SkipReason>> {
    let bn_maps = or_skip!(batch_norm_maps(index, eval, steps)?);
    let layer = or_skip!(read_layer(index, eval, ctx, producer)?);
    let channels = match bn_maps.first() {
        Some(bn) => bn.channels(),
        None => or_skip!(layer.channels.clone()),
    };
    let affine = or_skip!(compose(index, eval, steps, bn_maps, &layer.axis(channels))?);
    let fold = or_skip!(fold_layer(index, ctx, &layer, &affine, only_adds(steps))?);
    let mut detached = step_constants(index, steps);
    detached.extend(layer.detached(&fold));
    let end = index.node(end_index);
    Ok(Ok(ChainPlan {
        bn: end_index,
        passthrough: steps[1..].iter().map(|s| s.node).collect(),
        layer: fold,
        detached,
        followed_by: sole_direct_consumer(index, &end.output[0]),
    }))
}
