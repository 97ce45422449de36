//! Cross-layer equalization (`--equalize`, Nagel et al. 2019), exact mode.
//!
//! - **Pattern**: `Conv A → (Relu | LeakyRelu | PRelu | Identity)? → Conv B`, any `group` on
//!   either side (depthwise included, so `A → depthwise → C` equalizes as two pairs), either
//!   or both a ConvTranspose instead; or the same between two matrix products, Gemm or MatMul
//!   (a Gemm of any `transB`, B without `transA`; a MatMul's rank-2 weight on its right, its
//!   bias an `Add` of a per-channel constant right after it), in the main graph.
//! - **Preconditions**: A's output, the bias Add's and the activation's feed only the next node
//!   and are no graph outputs; B reads the activation on its data input; both weights (and A's bias, per output
//!   channel) are float constants of one dtype; B's weight reads A's channels. Activations that
//!   are not positively homogeneous (`Clip`, Relu6, HardSwish, Sigmoid) end no pair: no
//!   approximation is made.
//! - **Rewrite**: per channel `i` of A's output, `W_A[i] ← W_A[i] / s_i`, `b_A[i] ← b_A[i] / s_i`,
//!   `W_B[:, i] ← W_B[:, i] · s_i`, with `s_i = √(r_A,i / r_B,i)`: `r_A,i` the range of A's output
//!   channel `i`, `r_B,i` the range of B's weights reading it. Pairs are visited until no factor
//!   moves by more than 1e-6 (a layer between two pairs settles between both), then each weight
//!   is written once, rounded once from the weight as it would run (a MatMul's bias in its Add).
//!   The tensors between A and B get new names: they hold `x / s`, not what they held.
//! - **Math**: `f(x / s) = f(x) / s` for `s > 0` and `f` ∈ {Relu, LeakyRelu, PRelu, Identity}, and
//!   a convolution or a matrix product is linear in its input (zero padding included), so
//!   `B(f(A(x)))` is unchanged up to the rounding of the new weights. After it,
//!   `r_A,i / s_i = r_B,i · s_i = √(r_A,i·r_B,i)`.

use foldhash::HashMap;

use super::cleanup::remove_dead;
use super::edits::{write_tensor, GraphNames, NewTensor};
use super::options::PassContext;
use crate::consts::ConstEval;
use crate::error::Result;
use crate::folded::FoldedWeights;
use crate::graph::{node_label, GraphIndex, OuterScope};
use crate::proto::GraphProto;
use crate::report::{AbsorptionPlan, AbsorptionRecord, EqualizationRecord};
use crate::tensor::Tensor;

mod absorb;
mod layer;
mod pairs;
pub(super) mod statistics;

pub use absorb::apply as apply_absorption;
pub use statistics::BatchNormStatistics;

use layer::{fits, scaled_bias, scaled_weight, sqnr, weight_factors, Layer};
use pairs::{find_pairs, Pair};

/// Rounds of visiting every pair, at most.
const MAX_ROUNDS: usize = 200;
/// A round whose largest factor is within this of 1 ends the iteration.
const SETTLED: f64 = 1e-6;

/// Equalizes every pair of `graph`; returns what it did.
pub(super) fn equalize(
    graph: &mut GraphProto,
    ctx: &PassContext,
    folded: &mut FoldedWeights,
) -> Result<(Vec<EqualizationRecord>, AbsorptionPlan)> {
    let (mut layers, mut pairs) = {
        let index = GraphIndex::new(graph, OuterScope::default());
        let eval = evaluator(&index, ctx, folded);
        find_pairs(graph, &index, &eval, ctx, folded)?
    };
    let biases = biases(graph, ctx, folded, &layers)?;
    // A pair whose layer would not fit its dtype (a weight or bias scaled past its range) is
    // left out, and the others settle again without it.
    loop {
        if pairs.is_empty() {
            return Ok(Default::default());
        }
        settle(&mut layers, &pairs);
        let mut overflowing = Vec::new();
        for (k, layer) in layers.iter().enumerate() {
            if !fits(layer, biases[k].as_ref()) {
                overflowing.push(k);
            }
        }
        if overflowing.is_empty() {
            break;
        }
        pairs.retain(|p| !overflowing.contains(&p.a) && !overflowing.contains(&p.b));
    }
    let settled: Vec<(Vec<f64>, Vec<f64>)> = layers
        .iter()
        .map(|l| (l.output.clone(), l.input.clone()))
        .collect();
    for layer in &mut layers {
        layer.output.fill(1.0);
        layer.input.fill(1.0);
    }
    let before: Vec<(f64, f64, f64)> = pairs.iter().map(|p| figures(&layers, p)).collect();
    let ranges_before: Vec<Vec<f64>> = pairs.iter().map(|p| ranges(&layers[p.a])).collect();
    for (layer, (output, input)) in layers.iter_mut().zip(settled) {
        (layer.output, layer.input) = (output, input);
    }
    // High-bias absorption, planned from the settled factors (applied later, on a copy).
    let (shifts, mut plan) = match ctx.statistics {
        Some(statistics) => {
            let slots: Vec<absorb::BiasSlot> = layers
                .iter()
                .zip(&biases)
                .map(|(l, b)| absorb::BiasSlot {
                    at: l.bias.unwrap_or((l.node, 2)),
                    value: b.as_ref(),
                })
                .collect();
            let (shifts, deltas) = absorb::shifts(graph, &layers, &pairs, &slots, statistics);
            match absorb::plan(graph, &layers, &slots, &deltas) {
                Some(plan) => (shifts, plan),
                None => (Vec::new(), AbsorptionPlan::default()),
            }
        }
        None => (Vec::new(), AbsorptionPlan::default()),
    };
    let records = pairs
        .iter()
        .enumerate()
        .zip(before.into_iter().zip(ranges_before))
        .map(|((k, p), (before, first_ranges_before))| {
            let after = figures(&layers, p);
            let absorption = shifts
                .get(k)
                .and_then(Option::as_ref)
                .map(|s| AbsorptionRecord {
                    channels: s.channels,
                    largest_shift: s.largest,
                    float_change: None,
                });
            EqualizationRecord {
                graph: "main".into(),
                first: node_label(&graph.node[layers[p.a].node]),
                activation: p.activation.map(|n| graph.node[n].op_type().to_string()),
                second: node_label(&graph.node[layers[p.b].node]),
                first_op_type: graph.node[layers[p.a].node].op_type().to_string(),
                second_op_type: graph.node[layers[p.b].node].op_type().to_string(),
                channels: layers[p.a].outputs(),
                sqnr_first_before_db: before.0,
                sqnr_first_after_db: after.0,
                sqnr_second_before_db: before.1,
                sqnr_second_after_db: after.1,
                worst_channel_before_db: before.2,
                worst_channel_after_db: after.2,
                first_ranges_before,
                first_ranges_after: ranges(&layers[p.a]),
                absorption,
            }
        })
        .collect();
    let seconds: Vec<(usize, usize)> = (0..pairs.len())
        .filter(|&k| shifts.get(k).is_some_and(Option::is_some))
        .map(|k| (k, layers[pairs[k].b].node))
        .collect();
    let outputs = rewrite(graph, ctx, folded, &layers, biases, &pairs)?;
    plan.name_nodes(&outputs, &seconds);
    Ok((records, plan))
}

fn evaluator<'a>(
    index: &'a GraphIndex<'a>,
    ctx: &'a PassContext,
    folded: &'a FoldedWeights,
) -> ConstEval<'a> {
    ConstEval::new(
        index,
        ctx.store,
        ctx.opset,
        ctx.options.inputs_are_constants,
    )
    .with_folded(folded)
}

/// Visits the pairs (from factors of 1) until no factor moves by more than [`SETTLED`].
fn settle(layers: &mut [Layer], pairs: &[Pair]) {
    for layer in layers.iter_mut() {
        layer.output.fill(1.0);
        layer.input.fill(1.0);
    }
    for _ in 0..MAX_ROUNDS {
        let mut moved: f64 = 0.0;
        for p in pairs {
            for i in 0..layers[p.a].outputs() {
                let (ra, rb) = (layers[p.a].output_range(i), layers[p.b].input_range(i));
                if ra <= 0.0 || rb <= 0.0 || !ra.is_finite() || !rb.is_finite() {
                    continue;
                }
                let s = (ra / rb).sqrt();
                moved = moved.max((s - 1.0).abs());
                layers[p.a].output[i] *= s;
                layers[p.b].input[i] *= s;
            }
        }
        if moved < SETTLED {
            break;
        }
    }
}

/// Each layer's bias, decoded.
fn biases(
    graph: &GraphProto,
    ctx: &PassContext,
    folded: &FoldedWeights,
    layers: &[Layer],
) -> Result<Vec<Option<Tensor>>> {
    let index = GraphIndex::new(graph, OuterScope::default());
    let eval = evaluator(&index, ctx, folded);
    layers
        .iter()
        .map(|l| match l.bias {
            Some((n, k)) => Ok(eval
                .value(&graph.node[n].input[k])?
                .ok()
                .map(|t| Tensor::clone(&t))),
            None => Ok(None),
        })
        .collect()
}

/// Per-tensor symmetric INT8 SQNR of the two weights of a pair as they stand, and of the first
/// weight's worst output channel under that grid.
fn figures(layers: &[Layer], p: &Pair) -> (f64, f64, f64) {
    let (first, worst) = sqnr(&layers[p.a]);
    (first, sqnr(&layers[p.b]).0, worst)
}

/// The range of each output channel of `layer`'s weight as its factors stand.
fn ranges(layer: &Layer) -> Vec<f64> {
    (0..layer.outputs())
        .map(|o| layer.output_range(o))
        .collect()
}

/// Writes each equalized weight (and A's bias) once, and renames the tensors between A and B;
/// returns each node's first output as renamed (by node index before the clean-up).
fn rewrite(
    graph: &mut GraphProto,
    ctx: &PassContext,
    folded: &mut FoldedWeights,
    layers: &[Layer],
    biases: Vec<Option<Tensor>>,
    pairs: &[Pair],
) -> Result<Vec<String>> {
    let consumers: HashMap<String, usize> = {
        let index = GraphIndex::new(graph, OuterScope::default());
        layers
            .iter()
            .map(|l| (l.weight_name.clone(), index.consumers(&l.weight_name).len()))
            .collect()
    };
    let mut replaced = Vec::new();
    let mut names = GraphNames::new(graph, folded);
    for (layer, bias) in layers.iter().zip(biases) {
        if weight_factors(layer).iter().all(|&f| f == 1.0) {
            continue;
        }
        let scaled = scaled_weight(layer);
        let in_place = consumers.get(&layer.weight_name) == Some(&1);
        let template = names.initializer(graph, &layer.weight_name).cloned();
        let weight = write_tensor(
            graph,
            &mut names,
            &layer.weight_name,
            in_place,
            NewTensor::Scaled(Box::new(scaled)),
            template.as_ref(),
        )?;
        if weight != layer.weight_name {
            replaced.push(layer.weight_name.clone());
        }
        graph.node[layer.node].input[1] = weight;
        let at = layer
            .bias
            .filter(|_| layer.output.iter().any(|&s| s != 1.0));
        if let (Some(bias), Some((n, k))) = (bias, at) {
            let name = graph.node[n].input[k].clone();
            // Checked to fit before anything was written.
            let Some(rounded) = scaled_bias(layer, &bias) else {
                continue;
            };
            let new = write_tensor(
                graph,
                &mut names,
                &name,
                false,
                NewTensor::Values(rounded),
                None,
            )?;
            graph.node[n].input[k] = new;
            replaced.push(name);
        }
    }
    for p in pairs {
        // Each tensor from A to B, renamed where it is written and where it is read.
        let chain: Vec<usize> = std::iter::once(layers[p.a].node)
            .chain(p.between())
            .chain([layers[p.b].node])
            .collect();
        for step in chain.windows(2) {
            let (writer, reader) = (step[0], step[1]);
            let old = graph.node[writer].output[0].clone();
            let renamed = names.unique(&format!("{old}_equalized"));
            graph.node[writer].output[0] = renamed.clone();
            for input in graph.node[reader].input.iter_mut().filter(|i| **i == old) {
                *input = renamed.clone();
            }
        }
    }
    drop(names);
    let outputs = graph
        .node
        .iter()
        .map(|n| n.output.first().cloned().unwrap_or_default())
        .collect();
    remove_dead(graph, replaced, ctx);
    folded.retain_initializers_of(graph);
    Ok(outputs)
}
