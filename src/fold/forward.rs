//! Forward folds: `chain → (Flatten | Reshape)? → consumer`, the chain a BatchNormalization or
//! per-channel `Mul`/`Add`/`Sub`/`Div` steps (mixed, walked back as far as each step's input
//! feeds it alone), where the consumer is the only reader of the chain's output and its padding
//! (if any) keeps the shift exact.

use super::chain::{
    batch_norm_maps, compose, constant_channels, only_adds, step_constants, walk_back_forward,
};
use super::options::PassContext;
use super::plan::{float_constant, layer_weight, scale_within_range, ForwardPlan};
use super::rules::{self, ChannelAxis, FoldKind, ForwardInput, SkipReason};
use crate::attr::{self};
use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{node_label, GraphIndex};

/// Whether a BN left by the backward folds may fold forward: its own preconditions hold.
pub(super) fn allows_forward(reason: &SkipReason) -> bool {
    !matches!(
        reason,
        SkipReason::NodeExcluded
            | SkipReason::TrainingMode
            | SkipReason::ExtraOutputsUsed
            | SkipReason::NotSpatial
    )
}

/// The read-only step of a forward fold: the BN's one consumer (through a Flatten for Gemm)
/// and what it becomes, or why not.
pub(super) fn plan_forward(
    index: &GraphIndex,
    eval: &ConstEval,
    bn_index: usize,
    ctx: &PassContext,
) -> Result<std::result::Result<ForwardPlan, SkipReason>> {
    let bn = index.node(bn_index);
    let (steps, data_in) = or_skip!(walk_back_forward(index, eval, bn_index, ctx)?);
    let sole_consumer = |tensor: &str| -> std::result::Result<usize, SkipReason> {
        let consumers = index.consumers(tensor);
        if index.is_graph_output(tensor) || consumers.is_empty() {
            return Err(SkipReason::NoConsumer);
        }
        match consumers {
            [only] => Ok(*only),
            _ => Err(SkipReason::ConsumerOutputShared {
                tensor: tensor.to_string(),
            }),
        }
    };
    let mut consumer = or_skip!(sole_consumer(&bn.output[0]));
    let mut flatten = None;
    let mut data = bn.output[0].as_str();
    let first = index.node(consumer);
    let flattens = match (first.op_type(), first.domain()) {
        ("Flatten", "" | "ai.onnx") => Some(attr::int(first, "axis")?.unwrap_or(1) == 1),
        ("Reshape", "" | "ai.onnx") if first.input.len() == 2 && first.input[0] == bn.output[0] => {
            Some(reshape_keeps_rows(index, eval, &data_in, &first.input[1])?)
        }
        _ => None,
    };
    if let Some(keeps_rows) = flattens {
        skip_if!(
            !keeps_rows,
            SkipReason::ReshapeMixesChannels {
                op_type: first.op_type().to_string()
            }
        );
        flatten = Some(consumer);
        data = &first.output[0];
        consumer = or_skip!(sole_consumer(data));
    }
    let node = index.node(consumer);
    let kind = match (node.op_type(), flatten) {
        ("Conv", None) => FoldKind::Conv,
        ("ConvTranspose", None) => FoldKind::ConvTranspose,
        ("Gemm", _) => FoldKind::Gemm,
        ("MatMul", _) => FoldKind::MatMul,
        (op, _) => {
            return Ok(Err(SkipReason::ConsumerNotFoldable {
                op_type: op.to_string(),
            }))
        }
    };
    if kind == FoldKind::MatMul {
        if flatten.is_none() {
            let rank = eval.rank(&data_in);
            skip_if!(rank != Some(2), SkipReason::MatMulRank { rank });
        }
        let bf16 = eval.dtype(&node.input[1]) == Some(crate::tensor::Dtype::Bf16);
        skip_if!(
            ctx.opset < 7 || (bf16 && ctx.opset < 13),
            SkipReason::NoBroadcastGemm { opset: ctx.opset }
        );
    }
    skip_if!(
        !matches!(node.domain(), "" | "ai.onnx") || node.input.len() < 2 || node.input[0] != data,
        SkipReason::ConsumerNotOnDataInput {
            op_type: node.op_type().to_string()
        }
    );
    if let Some(only) = &ctx.options.only {
        skip_if!(!only.contains(&kind), SkipReason::KindExcluded { kind });
    }
    let bn_maps = or_skip!(batch_norm_maps(index, eval, &steps)?);
    let weight_name = node.input[1].clone();
    let checked = !ctx.options.defer_weight_check;
    let weight = or_skip!(layer_weight(index, eval, &weight_name, checked)?);
    let group = attr::int(node, "group")?.unwrap_or(1).max(1) as usize;
    // The chain's channels: what its constants show, else the consumer's input channels (a
    // chain of scalars before a Flatten is one map for every channel).
    let consumer_channels = match (kind, flatten) {
        (_, Some(_)) => Some(1),
        (FoldKind::Conv, None) => weight.dims.get(1).map(|d| d * group),
        (FoldKind::ConvTranspose, None) => weight.dims.first().copied(),
        (FoldKind::Gemm, None) => match attr::int(node, "transB")?.unwrap_or(0) != 0 {
            true => weight.dims.get(1).copied(),
            false => weight.dims.first().copied(),
        },
        (FoldKind::MatMul, None) => weight.dims.first().copied(),
    };
    let channels = constant_channels(index, eval, &steps, &bn_maps)?.or(consumer_channels);
    let Some(channels) = channels else {
        return Ok(Err(SkipReason::ShapeMismatch {
            tensor: weight_name,
            detail: format!("a weight of shape {:?} has no input channels", weight.dims),
        }));
    };
    let rank = match (kind, flatten) {
        (FoldKind::Conv | FoldKind::ConvTranspose, None) => Some(weight.dims.len()),
        (FoldKind::Gemm | FoldKind::MatMul, None) => Some(2),
        (_, Some(_)) => eval.rank(&data_in),
    };
    let axis = ChannelAxis {
        rank: rank.unwrap_or(0),
        axis: 1,
        channels,
    };
    let affine = or_skip!(compose(index, eval, &steps, bn_maps, &axis)?);
    let weight_values = weight.decode(ctx.store)?;
    let bias_name = node.input.get(2).filter(|b| !b.is_empty()).cloned();
    let bias = match &bias_name {
        Some(b) => Some(or_skip!(float_constant(eval, b)?)),
        None => None,
    };
    let pads_nonzero = attr::ints(node, "pads")?.is_some_and(|p| p.iter().any(|&v| v != 0));
    let auto_pad = attr::string(node, "auto_pad")?.unwrap_or_default();
    let padded = pads_nonzero || auto_pad.starts_with("SAME");
    let new_bias_name = bias_name
        .clone()
        .unwrap_or_else(|| format!("{weight_name}_bias"));
    let bn_label = node_label(bn);
    let input = ForwardInput {
        node,
        bn_name: &bn_label,
        weight_name: &weight_name,
        weight: &weight_values,
        bias_name: &new_bias_name,
        bias: bias.as_deref(),
        affine: &affine,
        group,
        padded,
        positions: if flatten.is_some() { 0 } else { 1 },
        activation_dtype: eval.dtype(&data_in).unwrap_or(weight.dtype),
    };
    let rewrite = or_skip!(match kind {
        FoldKind::Conv => rules::forward_conv::plan(&input),
        FoldKind::ConvTranspose => rules::forward_conv_transpose::plan(&input),
        FoldKind::Gemm | FoldKind::MatMul => rules::forward_gemm::plan(&input),
    });
    // A chain of Adds whose shift has to stay as an Add would only be traded for another.
    skip_if!(
        rewrite.shift_add.is_some() && only_adds(&steps),
        SkipReason::ShiftStaysAsAdd
    );
    let folded_weight = or_skip!(scale_within_range(&weight, &rewrite.weight, ctx)?);
    let exclusive = |name: &str| {
        index.is_own_initializer(name)
            && index.consumers(name) == [consumer]
            && !index.is_graph_input(name)
            && !index.is_graph_output(name)
    };
    let mut detached: Vec<String> = step_constants(index, &steps);
    detached.push(weight_name.clone());
    detached.extend(bias_name.iter().cloned());
    let max_rel_weight_change = affine.max_rel_change();
    Ok(Ok(ForwardPlan {
        bn: bn_index,
        steps: steps[1..].iter().map(|s| s.node).collect(),
        data: data_in,
        consumer,
        flatten,
        kind,
        weight_in_place: exclusive(&weight_name),
        bias_in_place: bias_name.as_deref().is_some_and(exclusive),
        weight_name,
        bias_name,
        rewrite,
        folded_weight,
        detached,
        max_rel_weight_change,
    }))
}

/// Whether `Reshape(x, shape)` is a flatten to `[batch, features]` that keeps each sample in one
/// row: a constant shape `[0, -1]` or `[0, K]`; or `[N, -1]` / `[-1, K]` / `[N, K]` when the static
/// shape of `x` shows that `N` is its batch and `K` its features per sample.
pub(super) fn reshape_keeps_rows(
    index: &GraphIndex,
    eval: &ConstEval,
    x: &str,
    shape: &str,
) -> Result<bool> {
    let Ok(target) = eval.value(shape)? else {
        return Ok(false);
    };
    let target = target.as_i64();
    if target.len() != 2 {
        return Ok(false);
    }
    if target[0] == 0 && target[1] != 0 {
        return Ok(true);
    }
    if target[1] == -1 && target[0] > 0 {
        return Ok(batch_dim(index, x) == Some(target[0] as usize));
    }
    let Some(dims) = eval.static_shape(x) else {
        return Ok(false);
    };
    let (Some(&batch), features) = (dims.first(), dims.iter().skip(1).product::<usize>()) else {
        return Ok(false);
    };
    let rows_ok = target[0] == -1 || target[0] == batch as i64;
    let cols_ok = target[1] == -1 || target[1] == features as i64;
    Ok(rows_ok && cols_ok && !(target[0] == -1 && target[1] == -1))
}

/// The static batch (axis 0) of `name`, followed back through ops that keep axis 0 of their
/// first input (convolutions, pooling, normalizations, element-wise activations) to a declared
/// shape.
pub(super) fn batch_dim(index: &GraphIndex, name: &str) -> Option<usize> {
    let mut name = name.to_string();
    for _ in 0..index.graph.node.len() + 1 {
        if let Some(Some(batch)) = index.declared_shape(&name).and_then(|d| d.first().copied()) {
            return Some(batch);
        }
        let node = index.node(index.producer(&name)?);
        let keeps_batch = crate::graph::keeps_batch_and_rank(node.op_type())
            || matches!(node.op_type(), "GlobalAveragePool" | "GlobalMaxPool");
        let keeps_batch = keeps_batch && matches!(node.domain(), "" | "ai.onnx");
        if !keeps_batch {
            return None;
        }
        name = node.input.first()?.clone();
    }
    None
}
