//! Quantization readiness: how well each layer's weights, as they will run after folding,
//! survive symmetric INT8 quantization, and what the BatchNormalization statistics say about
//! dead or amplified channels.
//!
//! Per weight of a Conv, ConvTranspose, Gemm or MatMul, with `r_c = max |W_c|` over output
//! channel `c`: the spread `max r_c / median r_c`; the per-tensor SQNR
//! `10·log10(ΣW² / Σ(W − Q(W))²)` with `Q` rounding to the grid `Δ = max r_c / 127` (clipped to
//! ±127 steps), and the same with one grid per channel (`Δ_c = r_c / 127`); and the channels
//! left with fewer than 4 effective bits under the per-tensor grid (`log2(r_c/Δ) + 1 < 4`).
//! Per BatchNormalization: dead channels (output standard deviation `|γ|·√(σ²/(σ²+ε))` below
//! [`DEAD_STD`], so the channel is the constant β), the largest amplification `|γ|/√(σ²+ε)`,
//! and the channels whose running variance is below ε.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod background;
mod binade;
mod early;
mod jobs;
mod lanes;
mod layers;
mod layout;
mod pool;
mod stats;
mod streamed;
mod sums;
mod thread;
mod warnings;
mod written;

use std::cell::OnceCell;
use std::rc::Rc;

use foldhash::HashMap;
use schemars::JsonSchema;
use serde::Serialize;

use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{node_label, GraphIndex, OuterScope};
use crate::model::Model;
use crate::proto::TensorProto;
use crate::tensor::{self, Tensor};

pub use background::LayerFigures;
pub use early::EarlyFigures;
pub use warnings::{ReadinessWarning, PER_CHANNEL_GAIN_DB};

/// Below this output standard deviation a BatchNormalization channel counts as dead.
pub const DEAD_STD: f64 = 1e-4;
/// Fewer effective INT8 bits than this marks a channel as starved by the per-tensor grid.
pub const MIN_EFFECTIVE_BITS: f64 = 4.0;

/// The readiness of one weight.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct LayerReadiness {
    /// The node (name, or first output).
    pub node: String,
    /// Its op type.
    pub op_type: String,
    /// The weight tensor.
    pub weight: String,
    /// Output channels.
    pub channels: usize,
    /// `r_c = max |W_c|` per output channel.
    pub channel_ranges: Vec<f64>,
    /// `max r_c / median r_c`.
    pub range_spread: f64,
    /// Per-tensor symmetric INT8 SQNR in dB (`null`: exact, or not defined when the weight
    /// holds NaN or an infinity, see `non_finite_elements`).
    pub sqnr_per_tensor_db: Option<f64>,
    /// Per-channel symmetric INT8 SQNR in dB (`null` as for the per-tensor figure).
    pub sqnr_per_channel_db: Option<f64>,
    /// Weight elements that are NaN or infinite: no SQNR is defined for such a layer.
    pub non_finite_elements: usize,
    /// Channels with fewer than 4 effective bits under the per-tensor grid
    /// (all-zero channels not counted).
    pub starved_channels: usize,
    /// Channels whose weights are all zero.
    pub zero_channels: usize,
}

/// The statistics of one BatchNormalization.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct BatchNormReadiness {
    /// The BatchNormalization node.
    pub node: String,
    /// Channels.
    pub channels: usize,
    /// Channels whose output standard deviation `|γ|·√(σ²/(σ²+ε))` is below 1e-4.
    pub dead_channels: usize,
    /// The largest `|γ|/√(σ²+ε)`.
    pub max_amplification: f64,
    /// Channels with running variance below ε.
    pub tiny_variance_channels: usize,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
pub struct Readiness {
    /// Every weight of the analysed model, in graph order.
    pub layers: Vec<LayerReadiness>,
    /// Every BatchNormalization of the model before folding.
    pub batch_norms: Vec<BatchNormReadiness>,
    /// What a quantizer will trip on, and what to do.
    pub warnings: Vec<ReadinessWarning>,
}

impl Readiness {
    /// Of a run that equalized the layers `equalized` (by label; none: no equalization): the
    /// warnings say what equalization did instead of advising it.
    pub fn after_equalization(&mut self, equalized: &std::collections::BTreeSet<&str>) {
        if !equalized.is_empty() {
            warnings::after_equalization(&mut self.warnings, &self.layers, equalized);
        }
    }

    /// The report of `model` (as it will run) from its layers' and BatchNormalizations' figures,
    /// with the warnings they call for.
    pub fn new(
        model: &Model,
        layers: Vec<LayerReadiness>,
        batch_norms: Vec<BatchNormReadiness>,
    ) -> Readiness {
        let warnings = warnings::warnings(model, &layers, &batch_norms);
        Readiness {
            layers,
            batch_norms,
            warnings,
        }
    }

    /// The layers with the lowest per-tensor SQNR, worst first.
    pub fn worst(&self, n: usize) -> Vec<&LayerReadiness> {
        let mut layers: Vec<&LayerReadiness> = self.layers.iter().collect();
        layers.sort_by(|a, b| {
            // A layer whose weight holds NaN or an infinity is the worst of all; an exact one
            // the best.
            let key = |l: &LayerReadiness| match l.non_finite_elements {
                0 => l.sqnr_per_tensor_db.unwrap_or(f64::INFINITY),
                _ => f64::NEG_INFINITY,
            };
            key(a).total_cmp(&key(b)).then_with(|| a.node.cmp(&b.node))
        });
        layers.truncate(n);
        layers
    }
}

/// Analyses the weights of `folded` (the model as it will run) and the BatchNormalization
/// statistics of `original`, writing nothing: each folded weight is computed as writing would
/// (see [`LayerFigures`] for the figures computed while a model is written).
pub fn analyse(original: &Model, folded: &Model) -> Result<Readiness> {
    measure(folded, batch_norms(original)?)
}

/// The report of `folded`'s weights beside `batch_norms`, the statistics taken from the model
/// before it folded (see [`batch_norms`]).
pub fn measure(folded: &Model, batch_norms: Vec<BatchNormReadiness>) -> Result<Readiness> {
    let layers = LayerFigures::start(folded)?.finish()?;
    Ok(Readiness::new(folded, layers, batch_norms))
}

/// The statistics of every BatchNormalization in the main graph of `model` (before folding).
/// A parameter stored as an initializer is decoded as the evaluator decodes it; the evaluator
/// (and the graph index it needs) is built only for a parameter that is not.
pub fn batch_norms(model: &Model) -> Result<Vec<BatchNormReadiness>> {
    let mut out = Vec::new();
    let Some(graph) = model
        .proto
        .graph
        .as_ref()
        .filter(|g| g.node.iter().any(|n| n.op_type() == "BatchNormalization"))
    else {
        return Ok(out);
    };
    let initializers: HashMap<&str, &TensorProto> =
        graph.initializer.iter().map(|t| (t.name(), t)).collect();
    let index = OnceCell::new();
    let eval = OnceCell::new();
    let param = |name: &str| -> Result<Option<Rc<Tensor>>> {
        if let Some(t) = initializers.get(name) {
            return Ok(Some(Rc::new(tensor::decode(t, &model.store)?)));
        }
        let eval = eval.get_or_init(|| {
            let index = index.get_or_init(|| GraphIndex::new(graph, OuterScope::default()));
            ConstEval::new(index, &model.store, model.opset(), true)
        });
        Ok(eval.value(name)?.ok())
    };
    for node in graph
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization")
    {
        if let Some(bn) = batch_norm(node, &param)? {
            out.push(bn);
        }
    }
    Ok(out)
}

/// Which axis of the (right-hand) weight holds output channels: 0 for Conv, 1 for ConvTranspose
/// (per group block), by `transB` for Gemm, the last for MatMul.
pub(crate) fn output_axis(node: &crate::proto::NodeProto) -> Option<usize> {
    if !matches!(node.domain(), "" | "ai.onnx") || node.input.len() < 2 {
        return None;
    }
    match node.op_type() {
        "Conv" => Some(0),
        "ConvTranspose" => Some(1),
        "Gemm" => match crate::attr::int(node, "transB") {
            Ok(Some(1)) => Some(0),
            _ => Some(1),
        },
        "MatMul" => Some(usize::MAX),
        _ => None,
    }
}

/// The statistics of the BatchNormalization `node`, its parameters' values given by `param`
/// (`None` when one is not a constant).
fn batch_norm(
    node: &crate::proto::NodeProto,
    param: &dyn Fn(&str) -> Result<Option<Rc<Tensor>>>,
) -> Result<Option<BatchNormReadiness>> {
    if node.input.len() < 5 {
        return Ok(None);
    }
    let mut params = Vec::new();
    for name in &node.input[1..5] {
        match param(name)? {
            Some(v) => params.push(v),
            None => return Ok(None),
        }
    }
    let channels = params[0].len();
    if params.iter().any(|p| p.len() != channels) {
        return Ok(None);
    }
    let epsilon = crate::attr::float(node, "epsilon")?.unwrap_or(1e-5) as f64;
    let (gamma, var) = (&params[0].data, &params[3].data);
    let mut dead = 0;
    let mut amplification: f64 = 0.0;
    let mut tiny = 0;
    for c in 0..channels {
        let denominator = var[c] + epsilon;
        if denominator <= 0.0 || !denominator.is_finite() {
            continue;
        }
        let std = gamma[c].abs() * (var[c].max(0.0) / denominator).sqrt();
        dead += usize::from(std < DEAD_STD);
        amplification = amplification.max(gamma[c].abs() / denominator.sqrt());
        tiny += usize::from(var[c] < epsilon);
    }
    Ok(Some(BatchNormReadiness {
        node: node_label(node),
        channels,
        dead_channels: dead,
        max_amplification: amplification,
        tiny_variance_channels: tiny,
    }))
}
