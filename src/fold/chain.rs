//! The matcher's walk: from the node that ends a chain back through its per-channel affine
//! steps ([`super::rules::steps`]: Identity, inference BatchNormalizations, `Mul`, `Add`, `Sub`,
//! `Div` of a constant) to where it starts: a layer, or a `Concat` of layers; and the chain's
//! steps composed into one map.

use super::options::PassContext;
use super::plan::{bn_affine, float_constant};
use super::rules::{Affine, Arithmetic, ChannelAxis, FoldKind, SkipReason};
use crate::attr::{self, node_error};
use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{node_label, GraphIndex};
use crate::proto::NodeProto;

/// What one node of a chain does to its data input.
pub(super) enum StepMap {
    /// Passes its input on.
    Identity,
    /// An inference BatchNormalization.
    BatchNorm,
    /// `Mul`, `Add`, `Sub` or `Div` of the data and the constant `constant`.
    Arithmetic {
        /// Which step.
        step: Arithmetic,
        /// The constant operand.
        constant: String,
    },
}

/// A node of the chain, its data input and its map.
pub(super) struct Step {
    pub(super) node: usize,
    pub(super) data: String,
    pub(super) map: StepMap,
}

/// The node that ends a chain as its first step (a BN's own preconditions are the caller's).
fn end_step(
    eval: &ConstEval,
    end_index: usize,
    end: &NodeProto,
) -> Result<std::result::Result<Step, SkipReason>> {
    Ok(match end.op_type() {
        "BatchNormalization" => Ok(Step {
            node: end_index,
            data: end.input[0].clone(),
            map: StepMap::BatchNorm,
        }),
        _ => arithmetic_step(eval, end_index, end)?.ok_or(SkipReason::NoProducer),
    })
}

/// Where a chain starts.
pub(super) enum Start {
    /// A Conv, ConvTranspose, Gemm or MatMul (the node's index).
    Layer(usize),
    /// A `Concat` (the node's index).
    Concat(usize),
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

/// The chain ending at node `end_index`, its steps from the end back, and where it starts; or
/// why there is none.
pub(super) fn walk_back(
    index: &GraphIndex,
    eval: &ConstEval,
    end_index: usize,
    ctx: &PassContext,
) -> Result<std::result::Result<(Vec<Step>, Start), SkipReason>> {
    let end = index.node(end_index);
    skip_if!(excluded(end, ctx), SkipReason::NodeExcluded);
    if end.op_type() == "BatchNormalization" {
        if end.input.len() < 5
            || end.output.is_empty()
            || end.input[..5].iter().any(|i| i.is_empty())
        {
            return Err(node_error(end, "needs 5 inputs and an output"));
        }
        or_skip!(inference_batch_norm(index, end, ctx)?);
    }
    let end_step = or_skip!(end_step(eval, end_index, end)?);
    let mut steps = vec![end_step];
    loop {
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
        let default_domain = matches!(node.domain(), "" | "ai.onnx");
        if default_domain && FoldKind::from_op_type(node.op_type()).is_some() {
            return Ok(Ok((steps, Start::Layer(p))));
        }
        if default_domain && node.op_type() == "Concat" {
            return Ok(Ok((steps, Start::Concat(p))));
        }
        match middle_step(index, eval, p, ctx)? {
            Some(step) => steps.push(step),
            None => {
                return Ok(Err(SkipReason::UnsupportedProducer {
                    op_type: node.op_type().to_string(),
                }))
            }
        }
    }
}

/// A forward fold's chain ending at `end_index`: its steps from the end back, as far as they go
/// (each step's input feeding it alone), and the tensor the chain starts from.
pub(super) fn walk_back_forward(
    index: &GraphIndex,
    eval: &ConstEval,
    end_index: usize,
    ctx: &PassContext,
) -> Result<std::result::Result<(Vec<Step>, String), SkipReason>> {
    let end = index.node(end_index);
    let end_step = or_skip!(end_step(eval, end_index, end)?);
    let mut steps = vec![end_step];
    loop {
        let last = &steps[steps.len() - 1];
        let (name, consumer) = (last.data.clone(), last.node);
        if index.is_graph_output(&name) || !index.feeds_only(&name, consumer) {
            return Ok(Ok((steps, name)));
        }
        let step = match index.producer(&name) {
            Some(p) => middle_step(index, eval, p, ctx)?,
            None => None,
        };
        match step {
            Some(step) => steps.push(step),
            None => return Ok(Ok((steps, name))),
        }
    }
}

/// The channel count a chain's constants show: its first BN's, or its first constant holding
/// more than one value; `None` when every constant is a scalar.
pub(super) fn constant_channels(
    index: &GraphIndex,
    eval: &ConstEval,
    steps: &[Step],
    bn_maps: &[Affine],
) -> Result<Option<usize>> {
    if let Some(bn) = bn_maps.first() {
        return Ok(Some(bn.channels()));
    }
    for step in steps {
        if let StepMap::Arithmetic { constant, .. } = &step.map {
            if let Ok(value) = eval.value(constant)? {
                if value.len() > 1 {
                    return Ok(Some(value.len()));
                }
            }
        }
    }
    let _ = index;
    Ok(None)
}

/// The maps of the chain's BatchNormalizations, from the end back: their parameters are what
/// most often keeps a chain from folding, so they are read first.
pub(super) fn batch_norm_maps(
    index: &GraphIndex,
    eval: &ConstEval,
    steps: &[Step],
) -> Result<std::result::Result<Vec<Affine>, SkipReason>> {
    let mut maps = Vec::new();
    for step in steps {
        if let StepMap::BatchNorm = step.map {
            maps.push(or_skip!(bn_affine(eval, index.node(step.node))?));
        }
    }
    Ok(Ok(maps))
}

/// The constants the chain's steps read (BN parameters, arithmetic operands): detached when the
/// chain folds.
pub(super) fn step_constants(index: &GraphIndex, steps: &[Step]) -> Vec<String> {
    let mut constants = Vec::new();
    for step in steps {
        match &step.map {
            StepMap::Identity => {}
            StepMap::BatchNorm => constants.extend(index.node(step.node).input[1..5].to_vec()),
            StepMap::Arithmetic { constant, .. } => constants.push(constant.clone()),
        }
    }
    constants
}

/// Whether every step only adds (Identity and `Add`): the chain scales nothing.
pub(super) fn only_adds(steps: &[Step]) -> bool {
    steps.iter().all(|s| {
        matches!(
            s.map,
            StepMap::Identity
                | StepMap::Arithmetic {
                    step: Arithmetic::Add,
                    ..
                }
        )
    })
}

/// Whether `--skip-node` names `node` (by label, name or first output).
pub(super) fn excluded(node: &NodeProto, ctx: &PassContext) -> bool {
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
pub(super) fn layer_channels(
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
pub(super) fn compose(
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
