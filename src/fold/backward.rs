//! Backward folds: `producer → (Identity | Add of a constant)* → BatchNormalization`, where
//! the producer is a Conv, ConvTranspose, Gemm or MatMul whose output feeds the chain alone.
//! The matcher walks the chain back from the BN and asks the rule of the producer's kind
//! (in [`super::rules`]) for its shape checks and rewrite.

use super::options::PassContext;
use super::plan::{
    bn_affine, constant, float_constant, layer_weight, scale_within_range, ChainPlan,
};
use super::rules::{self, FoldInput, FoldKind, SkipReason};
use crate::attr::{self, node_error};
use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{node_label, GraphIndex};
use crate::tensor::Tensor;

/// The read-only step: everything about one BN chain, or why it does not fold.
pub(super) fn plan_chain(
    index: &GraphIndex,
    eval: &ConstEval,
    bn_index: usize,
    ctx: &PassContext,
) -> Result<std::result::Result<ChainPlan, SkipReason>> {
    let bn = index.node(bn_index);
    let label = node_label(bn);
    skip_if!(
        ctx.options.skip_nodes.contains(&label)
            || ctx.options.skip_nodes.contains(bn.name())
            || bn
                .output
                .first()
                .is_some_and(|o| ctx.options.skip_nodes.contains(o)),
        SkipReason::NodeExcluded
    );
    if bn.input.len() < 5 || bn.output.is_empty() || bn.input[..5].iter().any(|i| i.is_empty()) {
        return Err(node_error(bn, "needs 5 inputs and an output"));
    }
    skip_if!(
        attr::int(bn, "training_mode")?.unwrap_or(0) != 0,
        SkipReason::TrainingMode
    );
    skip_if!(
        ctx.opset < 7 && attr::int(bn, "is_test")?.unwrap_or(0) == 0,
        SkipReason::TrainingMode
    );
    skip_if!(
        ctx.opset < 9 && attr::int(bn, "spatial")?.unwrap_or(1) != 1,
        SkipReason::NotSpatial
    );
    skip_if!(
        bn.output[1..]
            .iter()
            .any(|o| !o.is_empty() && (!index.consumers(o).is_empty() || index.is_graph_output(o))),
        SkipReason::ExtraOutputsUsed
    );

    // Walk back from the BN through Identity and Add-of-a-constant to the producer.
    let mut consumer = bn_index;
    let mut name = bn.input[0].as_str();
    let mut passthrough = Vec::new();
    let mut added: Vec<(String, std::rc::Rc<Tensor>)> = Vec::new();
    let producer = loop {
        skip_if!(
            index.is_graph_output(name),
            SkipReason::ProducerOutputIsGraphOutput {
                tensor: name.to_string()
            }
        );
        skip_if!(
            !index.feeds_only(name, consumer),
            SkipReason::ProducerOutputShared {
                tensor: name.to_string()
            }
        );
        let Some(p) = index.producer(name) else {
            return Ok(Err(SkipReason::NoProducer));
        };
        let node = index.node(p);
        match node.op_type() {
            "Identity" if node.input.len() == 1 => {
                passthrough.push(p);
                consumer = p;
                name = &node.input[0];
            }
            "Add" if node.input.len() == 2 => {
                let constant = (0..2).find_map(|k| match eval.value(&node.input[k]) {
                    Ok(Ok(v)) => Some(Ok((k, v))),
                    Ok(Err(_)) => None,
                    Err(e) => Some(Err(e)),
                });
                let Some((k, value)) = constant.transpose()? else {
                    return Ok(Err(SkipReason::UnsupportedProducer {
                        op_type: "Add".into(),
                    }));
                };
                added.push((node.input[k].clone(), value));
                passthrough.push(p);
                consumer = p;
                name = &node.input[1 - k];
            }
            op => match FoldKind::from_op_type(op)
                .filter(|_| matches!(node.domain(), "" | "ai.onnx"))
            {
                Some(_) => break p,
                None => {
                    return Ok(Err(SkipReason::UnsupportedProducer {
                        op_type: op.to_string(),
                    }))
                }
            },
        }
    };
    let prod = index.node(producer);
    let Some(kind) = FoldKind::from_op_type(prod.op_type()) else {
        return Ok(Err(SkipReason::NoProducer));
    };
    if let Some(only) = &ctx.options.only {
        skip_if!(!only.contains(&kind), SkipReason::KindExcluded { kind });
    }
    if prod.output.len() != 1 || prod.input.len() < 2 {
        return Err(node_error(
            prod,
            "expected at least 2 inputs and one output",
        ));
    }

    let mut affine = or_skip!(bn_affine(eval, bn)?);
    let channels = affine.channels();

    // Producer weight and bias.
    let weight_slot = match kind {
        FoldKind::MatMul => {
            let right = constant(eval, &prod.input[1])?;
            let left = constant(eval, &prod.input[0])?;
            match (right, left) {
                (Err(_), Ok(_)) => return Ok(Err(SkipReason::MatMulWeightOnLeft)),
                _ => 1,
            }
        }
        _ => 1,
    };
    let weight_name = prod.input[weight_slot].clone();
    let weight = or_skip!(layer_weight(index, eval, &weight_name)?);
    let bias_name = match kind {
        FoldKind::MatMul => None,
        _ => prod.input.get(2).filter(|b| !b.is_empty()).cloned(),
    };
    let bias = match &bias_name {
        Some(b) => Some(or_skip!(float_constant(eval, b)?)),
        None => None,
    };

    let output_rank = match kind {
        FoldKind::Conv | FoldKind::ConvTranspose => Some(weight.dims.len()),
        FoldKind::Gemm => Some(2),
        FoldKind::MatMul => eval.rank(&prod.output[0]),
    };
    for (added_name, value) in &added {
        let per_channel = output_rank.and_then(|rank| per_channel_values(value, rank, channels));
        let Some(c) = per_channel else {
            return Ok(Err(SkipReason::AddNotPerChannel {
                tensor: added_name.clone(),
            }));
        };
        for (k, v) in c.iter().enumerate() {
            affine.shift[k] += affine.scale[k] * v;
        }
    }

    let new_bias_name = bias_name
        .clone()
        .unwrap_or_else(|| format!("{weight_name}_bias"));
    let input = FoldInput {
        node: prod,
        weight_name: &weight_name,
        bias_name: &new_bias_name,
        weight: &weight,
        weight_slot,
        bias: bias.as_deref(),
        affine: &affine,
        output_rank,
        opset: ctx.opset,
    };
    let rewrite = or_skip!(match kind {
        FoldKind::Conv => rules::conv::plan(&input)?,
        FoldKind::ConvTranspose => rules::conv_transpose::plan(&input)?,
        FoldKind::Gemm => rules::gemm::plan(&input)?,
        FoldKind::MatMul => rules::matmul::plan(&input)?,
    });
    let folded_weight = or_skip!(scale_within_range(&weight, &rewrite.weight, ctx)?);

    let exclusive = |name: &str| {
        index.is_own_initializer(name)
            && index.consumers(name) == [producer]
            && !index.is_graph_input(name)
            && !index.is_graph_output(name)
    };
    let mut detached: Vec<String> = bn.input[1..5].to_vec();
    detached.push(weight_name.clone());
    detached.extend(bias_name.iter().cloned());
    detached.extend(added.iter().map(|(n, _)| n.clone()));
    let max_rel_weight_change = affine.max_rel_change();
    Ok(Ok(ChainPlan {
        bn: bn_index,
        producer,
        passthrough,
        kind,
        weight_in_place: exclusive(&weight_name),
        bias_in_place: bias_name.as_deref().is_some_and(exclusive),
        weight_name,
        bias_name,
        rewrite,
        folded_weight,
        detached,
        max_rel_weight_change,
        followed_by: sole_direct_consumer(index, &bn.output[0]),
    }))
}

/// The op type of the one node that takes `name` as a direct input (uses inside subgraphs do not
/// count), if exactly one does.
pub(super) fn sole_direct_consumer(index: &GraphIndex, name: &str) -> Option<String> {
    let mut consumers: Vec<usize> = index
        .consumers(name)
        .iter()
        .copied()
        .filter(|&i| index.node(i).input.iter().any(|input| input == name))
        .collect();
    consumers.dedup();
    match consumers.as_slice() {
        [only] => Some(index.node(*only).op_type().to_string()),
        _ => None,
    }
}

/// The per-channel values of a constant added to a tensor of rank `rank` with `channels`
/// channels on axis 1, when it adds one value per channel and does not grow the tensor.
pub(super) fn per_channel_values(value: &Tensor, rank: usize, channels: usize) -> Option<Vec<f64>> {
    if value.dims.len() > rank || rank < 2 {
        return None;
    }
    let offset = rank - value.dims.len();
    let mut varies_per_channel = false;
    for (axis, &d) in value.dims.iter().enumerate() {
        if axis + offset == 1 && d == channels {
            varies_per_channel = true;
        } else if d != 1 {
            return None;
        }
    }
    match (varies_per_channel, value.len()) {
        (true, _) => Some(value.data.clone()),
        (false, 1) => Some(vec![value.data[0]; channels]),
        _ => None,
    }
}
