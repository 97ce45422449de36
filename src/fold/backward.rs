//! Backward folds: `layer → step* → end`, where the layer is a Conv, ConvTranspose, Gemm or
//! MatMul whose output feeds the chain alone and every step and the end are per-channel affine
//! steps ([`super::rules::steps`]: Identity, an inference BatchNormalization, or `Mul`, `Add`,
//! `Sub`, `Div` of a constant). The matcher walks back from the end, composes the chain into one
//! per-channel map and asks the rule of the layer's kind (in [`super::rules`]) for its shape
//! checks and rewrite, so a whole chain folds at once and its bias is rounded once.

use super::options::PassContext;
use super::plan::{
    bn_affine, constant, float_constant, layer_weight, scale_within_range, ChainPlan,
};
use super::rules::SkipReason;
use super::rules::{self, Affine, Arithmetic, ChannelAxis, FoldInput, FoldKind, NodeChange};
use crate::attr::{self, node_error};
use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{node_label, GraphIndex};
use crate::proto::NodeProto;

/// What one node of a chain does to its data input.
enum StepMap {
    Identity,
    BatchNorm,
    Arithmetic { step: Arithmetic, constant: String },
}

/// A node of the chain, its data input and its map.
struct Step {
    node: usize,
    data: String,
    map: StepMap,
}

/// Whether `node` can end a backward chain: a BatchNormalization, or an element-wise op that
/// may be a per-channel affine step.
pub(super) fn may_end_chain(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx")
        && matches!(
            node.op_type(),
            "BatchNormalization" | "Mul" | "Add" | "Sub" | "Div"
        )
}

/// The read-only step: everything about one chain ending at node `end_index`, or why it does
/// not fold.
pub(super) fn plan_chain(
    index: &GraphIndex,
    eval: &ConstEval,
    end_index: usize,
    ctx: &PassContext,
) -> Result<std::result::Result<ChainPlan, SkipReason>> {
    let end = index.node(end_index);
    skip_if!(excluded(end, ctx), SkipReason::NodeExcluded);
    let end_step = match end.op_type() {
        "BatchNormalization" => {
            if end.input.len() < 5
                || end.output.is_empty()
                || end.input[..5].iter().any(|i| i.is_empty())
            {
                return Err(node_error(end, "needs 5 inputs and an output"));
            }
            or_skip!(inference_batch_norm(index, end, ctx)?);
            Step {
                node: end_index,
                data: end.input[0].clone(),
                map: StepMap::BatchNorm,
            }
        }
        _ => match arithmetic_step(eval, end_index, end)? {
            Some(step) => step,
            None => return Ok(Err(SkipReason::NoProducer)),
        },
    };

    // Walk back from the end through the steps to the layer.
    let mut steps = vec![end_step];
    let producer = loop {
        let last = &steps[steps.len() - 1];
        let (name, consumer) = (last.data.as_str(), last.node);
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
        let layer = matches!(node.domain(), "" | "ai.onnx")
            && FoldKind::from_op_type(node.op_type()).is_some();
        if layer {
            break p;
        }
        match middle_step(index, eval, p, ctx)? {
            Some(step) => steps.push(step),
            None => {
                return Ok(Err(SkipReason::UnsupportedProducer {
                    op_type: node.op_type().to_string(),
                }))
            }
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

    // Each BN's own map first: its parameters are what most often keeps a chain from folding.
    let mut bn_maps = Vec::new();
    for step in &steps {
        if let StepMap::BatchNorm = step.map {
            bn_maps.push(or_skip!(bn_affine(eval, index.node(step.node))?));
        }
    }

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
    let Some(rank) = output_rank else {
        return Ok(Err(SkipReason::MatMulRank { rank: None }));
    };
    let channels = match bn_maps.first() {
        Some(bn) => bn.channels(),
        None => or_skip!(layer_channels(kind, prod, &weight_name, &weight.dims)?),
    };
    let axis = ChannelAxis {
        rank,
        axis: if kind == FoldKind::MatMul {
            rank.saturating_sub(1)
        } else {
            1
        },
        channels,
    };
    let affine = or_skip!(compose(index, eval, &steps, bn_maps, &axis)?);

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
    // A MatMul that keeps its bias as an Add would only trade the chain's one Add for another.
    let only_adds = steps.iter().all(|s| {
        matches!(
            s.map,
            StepMap::Identity
                | StepMap::Arithmetic {
                    step: Arithmetic::Add,
                    ..
                }
        )
    });
    skip_if!(
        rewrite.change == NodeChange::MatMulThenAdd && only_adds,
        SkipReason::MatMulKeepsBiasAdd { opset: ctx.opset }
    );
    let scaled = affine.scale.iter().any(|&s| s != 1.0);
    let folded_weight = match scaled {
        true => Some(or_skip!(scale_within_range(&weight, &rewrite.weight, ctx)?)),
        false => None,
    };

    let exclusive = |name: &str| {
        index.is_own_initializer(name)
            && index.consumers(name) == [producer]
            && !index.is_graph_input(name)
            && !index.is_graph_output(name)
    };
    let mut detached: Vec<String> = Vec::new();
    for step in &steps {
        match &step.map {
            StepMap::Identity => {}
            StepMap::BatchNorm => detached.extend(index.node(step.node).input[1..5].to_vec()),
            StepMap::Arithmetic { constant, .. } => detached.push(constant.clone()),
        }
    }
    if scaled {
        detached.push(weight_name.clone());
    }
    detached.extend(bias_name.iter().cloned());
    let max_rel_weight_change = affine.max_rel_change();
    Ok(Ok(ChainPlan {
        bn: end_index,
        producer,
        passthrough: steps[1..].iter().map(|s| s.node).collect(),
        kind,
        weight_in_place: exclusive(&weight_name),
        bias_in_place: bias_name.as_deref().is_some_and(exclusive),
        weight_name,
        bias_name,
        rewrite,
        folded_weight,
        detached,
        max_rel_weight_change,
        followed_by: sole_direct_consumer(index, &end.output[0]),
    }))
}

/// Whether `--skip-node` names `node` (by label, name or first output).
fn excluded(node: &NodeProto, ctx: &PassContext) -> bool {
    let skip = &ctx.options.skip_nodes;
    skip.contains(&node_label(node))
        || skip.contains(node.name())
        || node.output.first().is_some_and(|o| skip.contains(o))
}

/// Whether a BN computes the inference map: `training_mode` off (`is_test` on before opset 7),
/// `spatial` before opset 9, its running-statistics outputs unused.
fn inference_batch_norm(
    index: &GraphIndex,
    bn: &NodeProto,
    ctx: &PassContext,
) -> Result<std::result::Result<(), SkipReason>> {
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
    Ok(Ok(()))
}

/// Node `i` as a step in the middle of a chain, or `None` when the chain cannot pass it.
fn middle_step(
    index: &GraphIndex,
    eval: &ConstEval,
    i: usize,
    ctx: &PassContext,
) -> Result<Option<Step>> {
    let node = index.node(i);
    if !matches!(node.domain(), "" | "ai.onnx") || node.output.is_empty() || excluded(node, ctx) {
        return Ok(None);
    }
    Ok(match node.op_type() {
        "Identity" if node.input.len() == 1 => Some(Step {
            node: i,
            data: node.input[0].clone(),
            map: StepMap::Identity,
        }),
        "BatchNormalization"
            if node.input.len() >= 5
                && node.input[..5].iter().all(|i| !i.is_empty())
                && inference_batch_norm(index, node, ctx)?.is_ok() =>
        {
            Some(Step {
                node: i,
                data: node.input[0].clone(),
                map: StepMap::BatchNorm,
            })
        }
        _ => arithmetic_step(eval, i, node)?,
    })
}

/// Node `i` as `Mul`, `Add`, `Sub` or `Div` of its data and a constant, affine in the data.
fn arithmetic_step(eval: &ConstEval, i: usize, node: &NodeProto) -> Result<Option<Step>> {
    if node.input.len() != 2 || node.output.is_empty() || node.input.iter().any(|n| n.is_empty()) {
        return Ok(None);
    }
    let mut constant_slot = None;
    for (k, name) in node.input.iter().enumerate() {
        if eval.value(name)?.is_ok() {
            if constant_slot.is_some() {
                return Ok(None);
            }
            constant_slot = Some(k);
        }
    }
    let Some(k) = constant_slot else {
        return Ok(None);
    };
    Ok(Arithmetic::of(node.op_type(), k).map(|step| Step {
        node: i,
        data: node.input[1 - k].clone(),
        map: StepMap::Arithmetic {
            step,
            constant: node.input[k].clone(),
        },
    }))
}

/// The output channels of a layer, from its weight's shape.
fn layer_channels(
    kind: FoldKind,
    layer: &NodeProto,
    weight_name: &str,
    dims: &[usize],
) -> Result<std::result::Result<usize, SkipReason>> {
    let channels = match kind {
        FoldKind::Conv => dims.first().copied(),
        FoldKind::ConvTranspose => {
            let group = attr::int(layer, "group")?.unwrap_or(1).max(1) as usize;
            dims.get(1).map(|d| d * group)
        }
        FoldKind::Gemm => match attr::int(layer, "transB")?.unwrap_or(0) != 0 {
            true => dims.first().copied(),
            false => dims.get(1).copied(),
        },
        FoldKind::MatMul => dims.last().copied(),
    };
    Ok(channels
        .filter(|_| dims.len() >= 2)
        .ok_or_else(|| SkipReason::ShapeMismatch {
            tensor: weight_name.to_string(),
            detail: format!(
                "a {} weight of shape {dims:?} has no output channels",
                kind.op_type()
            ),
        }))
}

/// The chain's steps, from the end back to the layer, composed into one per-channel map.
fn compose(
    index: &GraphIndex,
    eval: &ConstEval,
    steps: &[Step],
    bn_maps: Vec<Affine>,
    axis: &ChannelAxis,
) -> Result<std::result::Result<Affine, SkipReason>> {
    let mut affine = Affine::identity(axis.channels);
    let mut bn_maps = bn_maps.into_iter();
    for step in steps {
        let node = index.node(step.node);
        match &step.map {
            StepMap::Identity => {}
            StepMap::BatchNorm => {
                let Some(bn) = bn_maps.next() else {
                    continue;
                };
                skip_if!(
                    bn.channels() != axis.channels,
                    SkipReason::ShapeMismatch {
                        tensor: node.input[1].clone(),
                        detail: format!(
                            "{} values for the {} channels of the chain",
                            bn.channels(),
                            axis.channels
                        ),
                    }
                );
                affine.after(&bn.scale, &bn.shift);
            }
            StepMap::Arithmetic { step, constant } => {
                let value = or_skip!(float_constant(eval, constant)?);
                or_skip!(affine.after_arithmetic(*step, node.op_type(), constant, &value, axis));
            }
        }
    }
    Ok(Ok(affine))
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
