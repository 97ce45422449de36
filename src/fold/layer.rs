//! One layer as a backward fold reads and rewrites it: its weight and bias, and what a chain's
//! per-channel map makes of them by the rule of its kind (shared by a chain into one layer and
//! a chain split among a Concat's layers).

use std::rc::Rc;

use super::chain::layer_channels;
use super::options::PassContext;
use super::plan::{constant, float_constant, layer_weight, scale_within_range, LayerFold};
use super::rules::{self, Affine, ChannelAxis, FoldInput, FoldKind, NodeChange, SkipReason};
use crate::attr::node_error;
use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::GraphIndex;
use crate::scaled::ScaledTensor;
use crate::tensor::Tensor;

/// A layer's weight and bias as a fold reads them.
pub(super) struct LayerParams {
    producer: usize,
    kind: FoldKind,
    weight_slot: usize,
    weight_name: String,
    weight: ScaledTensor,
    bias_name: Option<String>,
    bias: Option<Rc<Tensor>>,
    rank: usize,
    /// Its output channels, from the weight's shape.
    pub(super) channels: std::result::Result<usize, SkipReason>,
}

impl LayerParams {
    /// Where the layer's output channels lie in its product, `channels` of them.
    pub(super) fn axis(&self, channels: usize) -> ChannelAxis {
        let axis = match self.kind {
            FoldKind::MatMul => self.rank.saturating_sub(1),
            _ => 1,
        };
        ChannelAxis {
            rank: self.rank,
            axis,
            channels,
        }
    }

    /// The layer's tensors that `fold` replaces.
    pub(super) fn detached(&self, fold: &LayerFold) -> Vec<String> {
        let weight = fold
            .folded_weight
            .is_some()
            .then(|| self.weight_name.clone());
        weight.into_iter().chain(self.bias_name.clone()).collect()
    }
}

/// The weight and bias of the layer `producer`, or why they cannot be folded into.
pub(super) fn read_layer(
    index: &GraphIndex,
    eval: &ConstEval,
    ctx: &PassContext,
    producer: usize,
) -> Result<std::result::Result<LayerParams, SkipReason>> {
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
    let checked = !ctx.options.defer_weight_check;
    let weight = or_skip!(layer_weight(index, eval, &weight_name, checked)?);
    let bias_name = match kind {
        FoldKind::MatMul => None,
        _ => prod.input.get(2).filter(|b| !b.is_empty()).cloned(),
    };
    let bias = match &bias_name {
        Some(b) => Some(or_skip!(float_constant(eval, b)?)),
        None => None,
    };
    let rank = match kind {
        FoldKind::Conv | FoldKind::ConvTranspose => Some(weight.dims.len()),
        FoldKind::Gemm => Some(2),
        FoldKind::MatMul => eval.rank(&prod.output[0]),
    };
    let Some(rank) = rank else {
        return Ok(Err(SkipReason::MatMulRank { rank: None }));
    };
    let channels = layer_channels(kind, prod, &weight_name, &weight.dims)?;
    Ok(Ok(LayerParams {
        producer,
        kind,
        weight_slot,
        weight_name,
        weight,
        bias_name,
        bias,
        rank,
        channels,
    }))
}

/// What `affine` on the layer's output makes of the layer, by the rule of its kind.
pub(super) fn fold_layer(
    index: &GraphIndex,
    ctx: &PassContext,
    layer: &LayerParams,
    affine: &Affine,
    only_adds: bool,
) -> Result<std::result::Result<LayerFold, SkipReason>> {
    let prod = index.node(layer.producer);
    let new_bias_name = layer
        .bias_name
        .clone()
        .unwrap_or_else(|| format!("{}_bias", layer.weight_name));
    let input = FoldInput {
        node: prod,
        weight_name: &layer.weight_name,
        bias_name: &new_bias_name,
        weight: &layer.weight,
        weight_slot: layer.weight_slot,
        bias: layer.bias.as_deref(),
        affine,
        output_rank: Some(layer.rank),
        opset: ctx.opset,
    };
    let rewrite = or_skip!(match layer.kind {
        FoldKind::Conv => rules::conv::plan(&input)?,
        FoldKind::ConvTranspose => rules::conv_transpose::plan(&input)?,
        FoldKind::Gemm => rules::gemm::plan(&input)?,
        FoldKind::MatMul => rules::matmul::plan(&input)?,
    });
    // A MatMul that keeps its bias as an Add would only trade the chain's one Add for another.
    skip_if!(
        rewrite.change == NodeChange::MatMulThenAdd && only_adds,
        SkipReason::MatMulKeepsBiasAdd { opset: ctx.opset }
    );
    let scaled = affine.scale.iter().any(|&s| s != 1.0);
    let folded_weight = match scaled {
        true => Some(or_skip!(scale_within_range(
            &layer.weight,
            &rewrite.weight,
            ctx
        )?)),
        false => None,
    };
    let exclusive = |name: &str| {
        index.is_own_initializer(name)
            && index.consumers(name) == [layer.producer]
            && !index.is_graph_input(name)
            && !index.is_graph_output(name)
    };
    Ok(Ok(LayerFold {
        producer: layer.producer,
        kind: layer.kind,
        weight_in_place: exclusive(&layer.weight_name),
        bias_in_place: layer.bias_name.as_deref().is_some_and(exclusive),
        weight_name: layer.weight_name.clone(),
        bias_name: layer.bias_name.clone(),
        rewrite,
        folded_weight,
        max_rel_weight_change: affine.max_rel_change(),
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
