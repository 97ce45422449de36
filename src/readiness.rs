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

use serde::Serialize;

use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{node_label, GraphIndex, OuterScope};
use crate::model::Model;
use crate::tensor::Tensor;

/// Below this output standard deviation a BatchNormalization channel counts as dead.
pub const DEAD_STD: f64 = 1e-4;
/// Fewer effective INT8 bits than this marks a channel as starved by the per-tensor grid.
pub const MIN_EFFECTIVE_BITS: f64 = 4.0;

/// The readiness of one weight.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// Channels with fewer than [`MIN_EFFECTIVE_BITS`] effective bits under the per-tensor grid
    /// (all-zero channels not counted).
    pub starved_channels: usize,
    /// Channels whose weights are all zero.
    pub zero_channels: usize,
}

/// The statistics of one BatchNormalization.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNormReadiness {
    /// The BatchNormalization node.
    pub node: String,
    /// Channels.
    pub channels: usize,
    /// Channels whose output standard deviation is below [`DEAD_STD`].
    pub dead_channels: usize,
    /// The largest `|γ|/√(σ²+ε)`.
    pub max_amplification: f64,
    /// Channels with running variance below ε.
    pub tiny_variance_channels: usize,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Readiness {
    /// Every weight of the analysed model, in graph order.
    pub layers: Vec<LayerReadiness>,
    /// Every BatchNormalization of the model before folding.
    pub batch_norms: Vec<BatchNormReadiness>,
}

impl Readiness {
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
/// statistics of `original`.
pub fn analyse(original: &Model, folded: &Model) -> Result<Readiness> {
    let mut out = Readiness::default();
    let has = |graph: &&crate::proto::GraphProto, wanted: fn(&crate::proto::NodeProto) -> bool| {
        graph.node.iter().any(wanted)
    };
    // No index of a graph that has nothing to analyse.
    if let Some(graph) = folded
        .proto
        .graph
        .as_ref()
        .filter(|g| has(g, |n| output_axis(n).is_some()))
    {
        let index = GraphIndex::new(graph, OuterScope::default());
        let eval = ConstEval::new(&index, &folded.store, folded.opset(), true);
        for node in &graph.node {
            let Some(axis) = output_axis(node) else {
                continue;
            };
            let name = &node.input[1];
            // Initializers are decoded one at a time and dropped (a large model's weights are
            // never all in memory); weights computed by Constant nodes go through the evaluator.
            let weight = match index.initializer(name) {
                Some(t) if crate::tensor::Dtype::from_code(t.data_type()).is_some() => {
                    std::rc::Rc::new(crate::tensor::decode(t, &folded.store)?)
                }
                _ => match eval.value(name)? {
                    Ok(w) => w,
                    Err(_) => continue,
                },
            };
            if !weight.dtype.is_float() || weight.is_empty() || weight.dims.is_empty() {
                continue;
            }
            let group = crate::attr::int(node, "group")?.unwrap_or(1).max(1) as usize;
            // Output channels on axis 0 are contiguous: no copy.
            let gathered;
            let channels: Vec<&[f64]> = if axis == 0 {
                weight
                    .data
                    .chunks(weight.len() / weight.dims[0].max(1))
                    .collect()
            } else {
                gathered = channel_values(&weight, axis, group);
                gathered.iter().map(Vec::as_slice).collect()
            };
            out.layers.push(layer(node, name, &channels));
        }
    }
    if let Some(graph) = original
        .proto
        .graph
        .as_ref()
        .filter(|g| has(g, |n| n.op_type() == "BatchNormalization"))
    {
        let index = GraphIndex::new(graph, OuterScope::default());
        let eval = ConstEval::new(&index, &original.store, original.opset(), true);
        for node in graph
            .node
            .iter()
            .filter(|n| n.op_type() == "BatchNormalization")
        {
            if let Some(bn) = batch_norm(node, &eval)? {
                out.batch_norms.push(bn);
            }
        }
    }
    Ok(out)
}

/// Which axis of the (right-hand) weight holds output channels: 0 for Conv, 1 for ConvTranspose
/// (per group block), by `transB` for Gemm, the last for MatMul.
fn output_axis(node: &crate::proto::NodeProto) -> Option<usize> {
    if !matches!(node.domain(), "" | "ai.onnx") || node.input.len() < 2 {
        return None;
    }
    match node.op_type() {
        "Conv" => Some(0),
        "ConvTranspose" => Some(1),
        "Gemm" => {
            let trans_b = node
                .attribute
                .iter()
                .find(|a| a.name() == "transB")
                .and_then(|a| a.i)
                .unwrap_or(0);
            Some(if trans_b == 1 { 0 } else { 1 })
        }
        "MatMul" => Some(usize::MAX),
        _ => None,
    }
}

/// The weight's values grouped by output channel.
fn channel_values(w: &Tensor, axis: usize, group: usize) -> Vec<Vec<f64>> {
    let rank = w.dims.len();
    let axis = axis.min(rank - 1);
    let outer: usize = w.dims[..axis].iter().product();
    let size = w.dims[axis];
    let inner: usize = w.dims[axis + 1..].iter().product();
    let transpose_groups = axis == 1 && rank > 2 && group > 1 && w.dims[0] % group == 0;
    let channels = if transpose_groups { size * group } else { size };
    let mut out = vec![Vec::new(); channels];
    for o in 0..outer {
        let block = if transpose_groups {
            o / (w.dims[0] / group)
        } else {
            0
        };
        for c in 0..size {
            let start = (o * size + c) * inner;
            out[block * size + c].extend_from_slice(&w.data[start..start + inner]);
        }
    }
    out
}

fn layer(node: &crate::proto::NodeProto, weight: &str, channels: &[&[f64]]) -> LayerReadiness {
    let ranges: Vec<f64> = channels
        .iter()
        .map(|c| c.iter().fold(0.0, |m: f64, v| m.max(v.abs())))
        .collect();
    let max_range = ranges.iter().copied().fold(0.0, f64::max);
    let mut sorted = ranges.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let signal: f64 = channels.iter().copied().flatten().map(|v| v * v).sum();
    let tensor_step = max_range / 127.0;
    let tensor_noise: f64 = channels
        .iter()
        .copied()
        .flatten()
        .map(|&v| (v - quantize(v, tensor_step)).powi(2))
        .sum();
    let channel_noise: f64 = channels
        .iter()
        .zip(&ranges)
        .flat_map(|(c, &r)| c.iter().map(move |&v| (v - quantize(v, r / 127.0)).powi(2)))
        .sum();
    let non_finite = channels
        .iter()
        .copied()
        .flatten()
        .filter(|v| !v.is_finite())
        .count();
    let db = |noise: f64| (noise > 0.0 && non_finite == 0).then(|| 10.0 * (signal / noise).log10());
    let starved = ranges
        .iter()
        .filter(|&&r| r > 0.0 && (r / tensor_step).log2() + 1.0 < MIN_EFFECTIVE_BITS)
        .count();
    LayerReadiness {
        node: node_label(node),
        op_type: node.op_type().to_string(),
        weight: weight.to_string(),
        channels: channels.len(),
        channel_ranges: ranges.clone(),
        range_spread: if median > 0.0 {
            max_range / median
        } else if max_range > 0.0 {
            f64::INFINITY
        } else {
            1.0
        },
        sqnr_per_tensor_db: db(tensor_noise),
        sqnr_per_channel_db: db(channel_noise),
        starved_channels: starved,
        zero_channels: ranges.iter().filter(|&&r| r == 0.0).count(),
        non_finite_elements: non_finite,
    }
}

/// Symmetric INT8: round to the grid of `step`, clipped to ±127 steps.
fn quantize(v: f64, step: f64) -> f64 {
    if step <= 0.0 {
        return 0.0;
    }
    // Clipping first gives the same result (a value within ±127 rounds within ±127), and below
    // 2^51 adding and subtracting 1.5·2^52 rounds to the nearest integer, ties to even, in the
    // default rounding mode: no call to the math library on targets without SSE4.1.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let steps = (v / step).clamp(-127.0, 127.0);
    ((steps + ROUND) - ROUND) * step
}

fn batch_norm(
    node: &crate::proto::NodeProto,
    eval: &ConstEval,
) -> Result<Option<BatchNormReadiness>> {
    if node.input.len() < 5 {
        return Ok(None);
    }
    let mut params = Vec::new();
    for name in &node.input[1..5] {
        match eval.value(name)? {
            Ok(v) => params.push(v),
            Err(_) => return Ok(None),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Dtype;

    #[test]
    fn metrics_of_a_tiny_weight_match_hand_computation() {
        // Two output channels: [1, -0.5] and [0.01, 0.02].
        let w = Tensor::new(Dtype::F32, vec![2, 2, 1, 1], vec![1.0, -0.5, 0.01, 0.02]);
        let channels = channel_values(&w, 0, 1);
        assert_eq!(channels, vec![vec![1.0, -0.5], vec![0.01, 0.02]]);
        let node = crate::proto::NodeProto {
            op_type: Some("Conv".into()),
            name: Some("c".into()),
            ..Default::default()
        };
        let slices: Vec<&[f64]> = channels.iter().map(Vec::as_slice).collect();
        let l = layer(&node, "w", &slices);
        // r = [1, 0.02]; median 0.51; spread 1/0.51.
        assert!((l.range_spread - 1.0 / 0.51).abs() < 1e-12);
        // Per tensor, Δ = 1/127: 1 → 127Δ exact; -0.5 → -64Δ (63.5 rounds to even 64);
        // 0.01 → 1Δ (1.27); 0.02 → 3Δ (2.54).
        let d = 1.0 / 127.0;
        let noise = (0.5f64 - 64.0 * d).powi(2) + (0.01 - d).powi(2) + (0.02 - 3.0 * d).powi(2);
        let signal = 1.0 + 0.25 + 0.0001 + 0.0004;
        let want = 10.0 * (signal / noise).log10();
        assert!((l.sqnr_per_tensor_db.unwrap() - want).abs() < 1e-9);
        // Channel 2 uses 2.54 steps: log2(2.54) + 1 = 2.3 bits < 4.
        assert_eq!(l.starved_channels, 1);
        assert_eq!(l.zero_channels, 0);
        assert!(l.sqnr_per_channel_db.unwrap() > l.sqnr_per_tensor_db.unwrap());
    }

    #[test]
    fn a_weight_holding_nan_has_no_sqnr_and_is_the_worst_layer() {
        let node = |name: &str| crate::proto::NodeProto {
            op_type: Some("Conv".into()),
            name: Some(name.into()),
            ..Default::default()
        };
        let nan = layer(&node("nan"), "w", &[&[1.0, f64::NAN], &[0.5, 0.25]]);
        assert_eq!(nan.non_finite_elements, 1);
        assert_eq!(
            (nan.sqnr_per_tensor_db, nan.sqnr_per_channel_db),
            (None, None)
        );
        let fine = layer(&node("fine"), "w", &[&[1.0, 0.3], &[0.5, 0.25]]);
        assert_eq!(fine.non_finite_elements, 0);
        assert!(fine.sqnr_per_tensor_db.is_some());
        let r = Readiness {
            layers: vec![fine, nan],
            batch_norms: vec![],
        };
        assert_eq!(r.worst(1)[0].node, "nan");
    }

    #[test]
    fn quantization_rounds_half_to_even_and_clips() {
        for (v, want) in [
            (63.5, 64.0),
            (62.5, 62.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
            (126.7, 127.0),
            (300.0, 127.0),
            (-300.0, -127.0),
        ] {
            assert_eq!(quantize(v, 1.0), want, "{v}");
            assert_eq!(quantize(v, 1.0), v.round_ties_even().clamp(-127.0, 127.0));
        }
    }

    #[test]
    fn conv_transpose_channels_are_gathered_per_group_block() {
        // [C_in=4, C_out/group=1, 1] with group 2: output channel 0 is rows 0-1, channel 1 rows 2-3.
        let w = Tensor::new(Dtype::F32, vec![4, 1, 1], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            channel_values(&w, 1, 2),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
    }
}
