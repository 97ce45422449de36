//! What a quantizer will trip on in a model as it will run, and what to do about it: weights a
//! quantizer takes for activations, an opset too old for per-channel INT8, layers that lose
//! much more per tensor than per channel, dead channels, and variances below ε.

use std::collections::{BTreeSet, HashSet};

use schemars::JsonSchema;
use serde::Serialize;

use super::{BatchNormReadiness, LayerReadiness};
use crate::graph::node_label;
use crate::model::Model;

/// A layer whose per-channel SQNR is this much above its per-tensor SQNR (two bits) is worth
/// quantizing per channel, or equalizing for a per-tensor target.
pub const PER_CHANNEL_GAIN_DB: f64 = 12.0;

/// What a readiness warning is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarningCode {
    /// Layer weights stored as `Constant` nodes, which quantizers treat as activations.
    ConstantNodeWeights,
    /// An opset below 13, where `DequantizeLinear` has no axis for per-channel INT8.
    #[serde(rename = "per_channel_needs_opset_13")]
    PerChannelNeedsOpset13,
    /// Layers whose per-tensor SQNR is far below their per-channel SQNR.
    PerTensorFarBelowPerChannel,
    /// BatchNormalization channels whose scale is zero.
    DeadChannels,
    /// BatchNormalization channels whose running variance is below epsilon.
    VarianceBelowEpsilon,
}

impl WarningCode {
    /// The code as the JSON report writes it.
    pub fn as_str(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(code)) => code,
            _ => String::new(),
        }
    }
}

impl std::fmt::Display for WarningCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// One warning: a code, the nodes it is about (worst first), and what to do, for people.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct ReadinessWarning {
    /// What it is about.
    pub code: WarningCode,
    /// The nodes it is about, worst first.
    pub nodes: Vec<String>,
    /// What it means and what to do.
    pub message: String,
}

/// The warnings for `model` (as it will run) with its layers' and BatchNormalizations' figures.
pub fn warnings(
    model: &Model,
    layers: &[LayerReadiness],
    batch_norms: &[BatchNormReadiness],
) -> Vec<ReadinessWarning> {
    let mut found = Vec::new();
    let constant_weights = constant_node_weights(model);
    if let Some(first) = constant_weights.first() {
        found.push(ReadinessWarning {
            code: WarningCode::ConstantNodeWeights,
            message: format!(
                "{} layer weight{} stored as Constant nodes (first: {first}): onnxruntime's \
                 quantizer treats a Constant node's output as an activation, one scale per tensor \
                 even when per-channel is asked; fold without --keep-constant-nodes to store them \
                 as initializers",
                constant_weights.len(),
                plural(constant_weights.len())
            ),
            nodes: constant_weights,
        });
    }
    let opset = model.opset();
    if opset < 13 && (!layers.is_empty() || !found.is_empty()) {
        found.push(ReadinessWarning {
            code: WarningCode::PerChannelNeedsOpset13,
            nodes: Vec::new(),
            message: format!(
                "opset {opset}: DequantizeLinear has no axis before opset 13, so per-channel INT8 \
                 cannot be written (onnxruntime writes a model that does not load); convert the \
                 model to opset 13 first (onnx.version_converter.convert_version(model, 13))"
            ),
        });
    }
    found.extend(per_tensor_losses(layers, None));
    found.extend(batch_norm_warnings(batch_norms));
    found
}

/// The layers (by label) whose weight is computed by a `Constant` node.
fn constant_node_weights(model: &Model) -> Vec<String> {
    let Some(graph) = model.proto.graph.as_ref() else {
        return Vec::new();
    };
    // The outputs of the few `Constant` nodes, not an index of the whole graph (which took
    // 0.09 ms of efficientnet_b0's serial end).
    let constants: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Constant")
        .flat_map(|n| n.output.iter().map(String::as_str))
        .filter(|o| !o.is_empty())
        .collect();
    graph
        .node
        .iter()
        .filter(|n| super::output_axis(n).is_some())
        .filter(|n| constants.contains(n.input[1].as_str()))
        .map(node_label)
        .collect()
}

/// The warnings of a run that equalized (`equalized`: the labels of every layer in a pair),
/// with `layers` the figures they came from: the per-tensor loss warning, built again, says how
/// many of its layers were in a pair and why the others cannot be, instead of advising
/// equalization.
pub fn after_equalization(
    warnings: &mut [ReadinessWarning],
    layers: &[LayerReadiness],
    equalized: &BTreeSet<&str>,
) {
    for w in warnings
        .iter_mut()
        .filter(|w| w.code == WarningCode::PerTensorFarBelowPerChannel)
    {
        if let Some(again) = per_tensor_losses(layers, Some(equalized)) {
            *w = again;
        }
    }
}

/// What the per-tensor loss warning advises for a per-tensor target about the layers `losing`:
/// equalization, or (`equalized`: the layers in a pair, after `--equalize`) what it did.
fn equalization_advice(
    losing: &[(&LayerReadiness, f64)],
    equalized: Option<&BTreeSet<&str>>,
) -> String {
    let Some(equalized) = equalized else {
        return "for a per-tensor target, cross-layer equalization balances the channel ranges"
            .into();
    };
    let paired = losing
        .iter()
        .filter(|(l, _)| equalized.contains(l.node.as_str()))
        .count();
    let why = "the layer beside each is joined to it through an activation that is not \
               positively homogeneous (Clip, HardSwish, Sigmoid, SiLU…), or through more than one path";
    match (paired, losing.len() - paired) {
        (0, _) => format!("--equalize found no exact rescaling for them ({why})"),
        (_, 0) => "--equalize balanced each with a neighbour as far as an exact rescaling goes"
            .to_string(),
        (paired, rest) => format!(
            "--equalize balanced {paired} of them with a neighbour and found no exact \
             rescaling for the other {rest} ({why})"
        ),
    }
}

fn per_tensor_losses(
    layers: &[LayerReadiness],
    equalized: Option<&BTreeSet<&str>>,
) -> Option<ReadinessWarning> {
    let gain = |l: &LayerReadiness| match (l.sqnr_per_tensor_db, l.sqnr_per_channel_db) {
        (Some(t), Some(c)) if l.non_finite_elements == 0 => Some(c - t),
        _ => None,
    };
    let mut losing: Vec<(&LayerReadiness, f64)> = layers
        .iter()
        .filter_map(|l| gain(l).map(|g| (l, g)))
        .filter(|&(_, g)| g >= PER_CHANNEL_GAIN_DB)
        .collect();
    losing.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.node.cmp(&b.0.node)));
    let (worst, _) = losing.first()?;
    let message = format!(
        "{} layer{} lose {PER_CHANNEL_GAIN_DB:.0} dB or more per tensor against per channel \
         (worst: {}, {:.1} dB per tensor, {:.1} dB per channel, channel ranges spread {:.1}×): \
         quantize them per channel; {}",
        losing.len(),
        plural(losing.len()),
        worst.node,
        worst.sqnr_per_tensor_db.unwrap_or_default(),
        worst.sqnr_per_channel_db.unwrap_or_default(),
        worst.range_spread,
        equalization_advice(&losing, equalized),
    );
    Some(ReadinessWarning {
        code: WarningCode::PerTensorFarBelowPerChannel,
        nodes: losing.iter().map(|(l, _)| l.node.clone()).collect(),
        message,
    })
}

fn batch_norm_warnings(batch_norms: &[BatchNormReadiness]) -> Vec<ReadinessWarning> {
    let mut found = Vec::new();
    let mut by = |code: WarningCode, count: fn(&BatchNormReadiness) -> usize, what: &str| {
        let mut hit: Vec<&BatchNormReadiness> =
            batch_norms.iter().filter(|b| count(b) > 0).collect();
        hit.sort_by(|a, b| count(b).cmp(&count(a)).then_with(|| a.node.cmp(&b.node)));
        let Some(worst) = hit.first() else {
            return;
        };
        let total: usize = hit.iter().map(|b| count(b)).sum();
        found.push(ReadinessWarning {
            code,
            message: format!(
                "{total} channel{} in {} BatchNormalization{} {what} (most in {}: {} of {})",
                plural(total),
                hit.len(),
                plural(hit.len()),
                worst.node,
                count(worst),
                worst.channels
            ),
            nodes: hit.iter().map(|b| b.node.clone()).collect(),
        });
    };
    by(
        WarningCode::DeadChannels,
        |b| b.dead_channels,
        "are dead: each outputs the constant β, which the next layer can absorb and its input \
         channel be pruned; if unexpected, check the training",
    );
    by(
        WarningCode::VarianceBelowEpsilon,
        |b| b.tiny_variance_channels,
        "have a running variance below ε, so ε, not the data, sets their scale: statistics \
         of a layer that saw little data; recalibrate the BatchNormalization statistics",
    );
    found
}

fn plural(n: usize) -> &'static str {
    match n {
        1 => "",
        _ => "s",
    }
}
