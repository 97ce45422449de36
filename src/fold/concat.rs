//! Concat → BatchNormalization (MixNet's mixed kernels: split → Convs → Concat → BN).
//!
//! **Pattern**: `Concat(L₁(…), …, Lₙ(…), axis = 1) → step* → end`, each `Lᵢ` a Conv or
//! ConvTranspose.
//!
//! **Preconditions**: the Concat is along the channels; every input is produced by a layer whose
//! output feeds the Concat alone, once, and is not a graph output; the layers' output channels
//! add up to the chain's; each layer's own fold applies. Otherwise the skip names the input that
//! blocks it and why.
//!
//! **Rewrite**: each layer takes its range of the chain's channels (`Cᵢ` channels from
//! `C₁ + … + Cᵢ₋₁`); the Concat stays and takes over the end's output name; the steps go.
//!
//! **Math**: the chain is per channel and the Concat only places channels side by side, so
//! `y[c] = S[c]·x[c] + T[c]` on the Concat's output is, for the channels of `Lᵢ`, the fold of
//! `(S, T)[offsetᵢ .. offsetᵢ + Cᵢ]` into `Lᵢ`, exactly as a chain after `Lᵢ` alone.

use super::chain::{batch_norm_maps, compose, only_adds, step_constants, Step};
use super::layer::{fold_layer, read_layer, sole_direct_consumer};
use super::options::PassContext;
use super::plan::{ConcatPlan, LayerFold};
use super::rules::{Affine, FoldKind, SkipReason};
use crate::attr;
use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::GraphIndex;

/// The chain `Concat → steps → end`, folded into the Concat's layers.
pub(super) fn plan(
    index: &GraphIndex,
    eval: &ConstEval,
    ctx: &PassContext,
    end_index: usize,
    steps: &[Step],
    concat_index: usize,
) -> Result<std::result::Result<ConcatPlan, SkipReason>> {
    let concat = index.node(concat_index);
    let bn_maps = or_skip!(batch_norm_maps(index, eval, steps)?);
    let mut layers = Vec::with_capacity(concat.input.len());
    for name in &concat.input {
        let blocked = |cause: SkipReason| SkipReason::ConcatInputNotFoldable {
            tensor: name.clone(),
            cause: Box::new(cause),
        };
        let uses = concat.input.iter().filter(|i| *i == name).count();
        let cause = if name.is_empty() {
            Some(SkipReason::NoProducer)
        } else if index.is_graph_output(name) {
            Some(SkipReason::ProducerOutputIsGraphOutput {
                tensor: name.clone(),
            })
        } else if uses > 1 || !index.feeds_only(name, concat_index) {
            Some(SkipReason::ProducerOutputShared {
                tensor: name.clone(),
            })
        } else {
            None
        };
        if let Some(cause) = cause {
            return Ok(Err(blocked(cause)));
        }
        let Some(producer) = index.producer(name) else {
            return Ok(Err(blocked(SkipReason::NoProducer)));
        };
        let layer = index.node(producer);
        let kind = FoldKind::from_op_type(layer.op_type())
            .filter(|_| matches!(layer.domain(), "" | "ai.onnx"));
        if !matches!(kind, Some(FoldKind::Conv | FoldKind::ConvTranspose)) {
            return Ok(Err(blocked(SkipReason::UnsupportedProducer {
                op_type: layer.op_type().to_string(),
            })));
        }
        match read_layer(index, eval, ctx, producer)? {
            Ok(params) => match params.channels.clone() {
                Ok(channels) => layers.push((name, params, channels)),
                Err(cause) => return Ok(Err(blocked(cause))),
            },
            Err(cause) => return Ok(Err(blocked(cause))),
        }
    }
    let Some(rank) = layers.first().map(|(_, params, _)| params.axis(0).rank) else {
        return Ok(Err(SkipReason::NoProducer));
    };
    let axis = attr::int(concat, "axis")?.unwrap_or(1);
    let normalized = if axis < 0 { axis + rank as i64 } else { axis };
    skip_if!(normalized != 1, SkipReason::ConcatNotOnChannels { axis });
    let total: usize = layers.iter().map(|(_, _, c)| c).sum();
    let channels = bn_maps.first().map_or(total, Affine::channels);
    skip_if!(
        channels != total,
        SkipReason::ShapeMismatch {
            tensor: concat.output[0].clone(),
            detail: format!(
                "the Concat's layers have {total} output channels, the chain {channels}"
            ),
        }
    );
    let affine = or_skip!(compose(
        index,
        eval,
        steps,
        bn_maps,
        &layers[0].1.axis(channels)
    )?);
    let mut parts: Vec<LayerFold> = Vec::with_capacity(layers.len());
    let mut detached = step_constants(index, steps);
    let mut offset = 0;
    for (name, params, channels) in &layers {
        let range = offset..offset + channels;
        offset += channels;
        let share = Affine {
            scale: affine.scale[range.clone()].to_vec(),
            shift: affine.shift[range].to_vec(),
        };
        match fold_layer(index, ctx, params, &share, only_adds(steps))? {
            Ok(fold) => {
                detached.extend(params.detached(&fold));
                parts.push(fold);
            }
            Err(cause) => {
                return Ok(Err(SkipReason::ConcatInputNotFoldable {
                    tensor: (*name).clone(),
                    cause: Box::new(cause),
                }))
            }
        }
    }
    let end = index.node(end_index);
    Ok(Ok(ConcatPlan {
        end: end_index,
        passthrough: steps[1..].iter().map(|s| s.node).collect(),
        concat: concat_index,
        parts,
        detached,
        followed_by: sole_direct_consumer(index, &end.output[0]),
    }))
}
