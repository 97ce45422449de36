//! High-bias absorption (`--equalize=absorb`; Nagel et al. 2019, §4.2): an approximation,
//! planned beside the exact equalization and applied on a copy of its result, so that the exact
//! model stays what the verification proves and the change is measured against it.
//!
//! - **Pattern**: an equalized pair `A → Relu → B` whose A writes a BatchNormalization's output
//!   (folded into A: per channel, that output's mean β and standard deviation |γ| are known), B a
//!   Conv (any group) or a Gemm.
//! - **Preconditions**: A has a bias; `c_i > 0` for some channel.
//! - **Rewrite**: on A's equalized output (channel `i` divided by `s_i`),
//!   `c_i = max(0, (β_i − 3·|γ_i|) / s_i)`; `b_A[i] −= c_i` and
//!   `b_B[o] += Σ_{i, taps} W_B[o, i, taps] · c_i` (a bias made for B when it has none). Each
//!   bias is rounded once, from its exact equalized value.
//! - **Math**: `Relu(x − c) = Relu(x) − c` wherever `x ≥ c`, which a channel of those
//!   statistics is about 99.9 % of the time (three standard deviations below its mean), and B is
//!   linear, so `B(Relu(x − c)) + B(c) = B(Relu(x))` there; it differs where `x < c` and where
//!   B's zero padding meets the constant. The float model changes: the change is measured, not
//!   proven.

use crate::error::Result;
use crate::model::Model;
use crate::proto::GraphProto;
use crate::tensor::Tensor;

use super::super::edits::{write_tensor, GraphNames, NewTensor};
use super::super::rules::round_into;
use super::layer::Layer;
use super::statistics::BatchNormStatistics;
use super::Pair;
use crate::report::{AbsorptionPlan, PlannedBias};

/// How many standard deviations below its mean a channel's shift stops.
const DEVIATIONS: f64 = 3.0;

/// One pair's shifts: the channels absorbed and the largest `c_i`.
pub(super) struct PairShift {
    pub(super) channels: usize,
    pub(super) largest: f64,
}

/// Where a layer's bias is and what it holds before absorption.
pub(super) struct BiasSlot<'a> {
    /// The node holding it (or to hold it) and its input.
    pub(super) at: (usize, usize),
    /// Its value before equalization, if any.
    pub(super) value: Option<&'a Tensor>,
}

/// The shift of each pair that absorbs (`None` for the others: one needs A's bias in `slots`),
/// and per layer the change of its equalized bias, with the factors `layers` settled on.
pub(super) fn shifts(
    graph: &GraphProto,
    layers: &[Layer],
    pairs: &[Pair],
    slots: &[BiasSlot],
    statistics: &BatchNormStatistics,
) -> (Vec<Option<PairShift>>, Vec<Option<Vec<f64>>>) {
    let mut deltas: Vec<Option<Vec<f64>>> = vec![None; layers.len()];
    let mut out = Vec::new();
    for p in pairs {
        let (a, b) = (&layers[p.a], &layers[p.b]);
        let relu = p
            .activation
            .is_some_and(|n| graph.node[n].op_type() == "Relu");
        let second = matches!(graph.node[b.node].op_type(), "Conv" | "Gemm");
        let stats = statistics.0.get(&graph.node[a.node].output[0]);
        let Some((mean, deviation)) =
            stats.filter(|_| relu && second && slots[p.a].value.is_some())
        else {
            out.push(None);
            continue;
        };
        if mean.len() != a.outputs() {
            out.push(None);
            continue;
        }
        let c: Vec<f64> = (0..a.outputs())
            .map(|i| ((mean[i] - DEVIATIONS * deviation[i]) / a.output[i]).max(0.0))
            .collect();
        if c.iter().any(|c| !c.is_finite()) || c.iter().all(|&c| c == 0.0) {
            out.push(None);
            continue;
        }
        let delta_a = deltas[p.a].get_or_insert_with(|| vec![0.0; a.outputs()]);
        for (d, c) in delta_a.iter_mut().zip(&c) {
            *d -= c;
        }
        let (columns, taps) = (b.columns(), b.taps());
        let delta_b = deltas[p.b].get_or_insert_with(|| vec![0.0; b.outputs()]);
        for (o, d) in delta_b.iter_mut().enumerate() {
            for j in 0..columns {
                let channel = b.channel(o, j);
                let row = (o * columns + j) * taps;
                let sum: f64 = b.values.data[row..row + taps].iter().sum();
                *d += sum * b.input[channel] / b.output[o] * c[channel];
            }
        }
        out.push(Some(PairShift {
            channels: c.iter().filter(|&&c| c > 0.0).count(),
            largest: c.iter().copied().fold(0.0, f64::max),
        }));
    }
    (out, deltas)
}

/// The plan: each changed layer's bias, its equalized value plus its change, rounded once into
/// the bias's dtype (the weight's for a bias made anew); `None` when one would not fit.
pub(super) fn plan(
    graph: &GraphProto,
    layers: &[Layer],
    slots: &[BiasSlot],
    deltas: &[Option<Vec<f64>>],
) -> Option<AbsorptionPlan> {
    let mut biases = Vec::new();
    for (k, delta) in deltas.iter().enumerate() {
        let Some(delta) = delta else { continue };
        let layer = &layers[k];
        let (node, input) = slots[k].at;
        let (dtype, dims, base) = match slots[k].value {
            Some(b) => (
                b.dtype,
                b.dims.clone(),
                graph.node[node].input[input].clone(),
            ),
            None => (
                layer.values.dtype,
                vec![layer.outputs()],
                format!("{}_bias", layer.weight_name),
            ),
        };
        let values: Vec<f64> = (0..layer.outputs())
            .map(|o| slots[k].value.map_or(0.0, |b| b.data[o]) / layer.output[o] + delta[o])
            .collect();
        let value = round_into(dtype, dims, values, &base).ok()?;
        biases.push(PlannedBias {
            node,
            node_output: String::new(),
            input,
            base_name: format!("{base}_absorbed"),
            value,
        });
    }
    Some(AbsorptionPlan {
        biases,
        measured_at: Vec::new(),
    })
}

/// Writes the planned biases into `model` (the exactly equalized model, or a copy of it): each
/// a new initializer, read where the old bias was read; an old bias nothing reads any more is
/// removed.
pub fn apply(model: &mut Model, plan: &AbsorptionPlan) -> Result<()> {
    let Some(graph) = model.proto.graph.as_mut() else {
        return Ok(());
    };
    let mut names = GraphNames::new(graph, &mut model.folded);
    let mut replaced = Vec::new();
    for bias in &plan.biases {
        let Some(n) = graph
            .node
            .iter()
            .position(|n| n.output.first() == Some(&bias.node_output))
        else {
            let missing = format!(
                "high-bias absorption: no node writes '{}'",
                bias.node_output
            );
            return Err(crate::error::Error::InvalidGraph(missing));
        };
        let value = NewTensor::Values(bias.value.clone());
        let name = write_tensor(graph, &mut names, &bias.base_name, false, value, None)?;
        let inputs = &mut graph.node[n].input;
        if inputs.len() <= bias.input {
            inputs.resize(bias.input + 1, String::new());
        }
        let old = std::mem::replace(&mut inputs[bias.input], name);
        if !old.is_empty() {
            replaced.push(old);
        }
    }
    drop(names);
    let read: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name()))
        .collect();
    let unread: Vec<String> = replaced
        .into_iter()
        .filter(|r| !read.contains(r.as_str()))
        .collect();
    graph
        .initializer
        .retain(|t| !unread.iter().any(|u| u == t.name()));
    model.folded.retain_initializers_of(graph);
    Ok(())
}
