//! One Conv as equalization reads it: its weight's block ranges and the factors on its output
//! and input channels, the ranges they give, and whether the scaled weight still fits.

use crate::consts::ConstEval;
use crate::error::Result;
use crate::folded::FoldedWeights;
use crate::graph::GraphIndex;
use crate::proto::GraphProto;
use crate::scaled::ScaledTensor;
use crate::tensor::Tensor;

use super::super::options::PassContext;
use super::super::rules::round_into;

/// A Conv's weight as equalization reads it.
pub(super) struct Layer {
    pub(super) node: usize,
    pub(super) weight_name: String,
    pub(super) weight: ScaledTensor,
    pub(super) values: Tensor,
    pub(super) group: usize,
    /// `max |W[o, j, taps]|` per output channel `o` and weight column `j`.
    pub(super) block_max: Vec<f64>,
    /// Output channels divide by these; input channels multiply by `input`.
    pub(super) output: Vec<f64>,
    pub(super) input: Vec<f64>,
}

impl Layer {
    pub(super) fn outputs(&self) -> usize {
        self.values.dims[0]
    }
    pub(super) fn columns(&self) -> usize {
        self.values.dims[1]
    }
    pub(super) fn taps(&self) -> usize {
        self.values.dims[2..].iter().product::<usize>().max(1)
    }
    /// The input channel that column `j` of output `o` reads.
    pub(super) fn channel(&self, o: usize, j: usize) -> usize {
        (o / (self.outputs() / self.group)) * self.columns() + j
    }
    pub(super) fn output_range(&self, o: usize) -> f64 {
        (0..self.columns())
            .map(|j| self.block_max[o * self.columns() + j] * self.input[self.channel(o, j)])
            .fold(0.0, f64::max)
            / self.output[o]
    }
    /// The range of the weights reading input channel `i`.
    pub(super) fn input_range(&self, i: usize) -> f64 {
        let per_group = self.outputs() / self.group;
        let (g, j) = (i / self.columns(), i % self.columns());
        (g * per_group..(g + 1) * per_group)
            .map(|o| self.block_max[o * self.columns() + j] / self.output[o])
            .fold(0.0, f64::max)
            * self.input[i]
    }
}

/// The factors of `layer`'s weight, per row of taps: `input[channel] / output[o]`.
pub(super) fn weight_factors(layer: &Layer) -> Vec<f64> {
    let columns = layer.columns();
    (0..layer.outputs() * columns)
        .map(|r| {
            let (o, j) = (r / columns, r % columns);
            layer.input[layer.channel(o, j)] / layer.output[o]
        })
        .collect()
}

/// Whether `layer`'s weight and bias, scaled as settled, still fit their dtype (every value
/// checked: a huge weight a small factor pushes past the range fails).
pub(super) fn fits(layer: &Layer, bias: Option<&Tensor>) -> bool {
    let factors = weight_factors(layer);
    let taps = layer.taps();
    let dtype = layer.values.dtype;
    let weight_fits = layer.values.data.iter().enumerate().all(|(k, v)| {
        dtype
            .round(v * factors[k / taps])
            .is_some_and(f64::is_finite)
    });
    weight_fits && bias.is_none_or(|b| scaled_bias(layer, b).is_some())
}

/// `b / output`, rounded into the bias's dtype (none when a value does not fit).
pub(super) fn scaled_bias(layer: &Layer, bias: &Tensor) -> Option<Tensor> {
    let values = bias
        .data
        .iter()
        .zip(&layer.output)
        .map(|(b, s)| b / s)
        .collect();
    round_into(bias.dtype, bias.dims.clone(), values, "bias").ok()
}

/// The Conv `n`'s weight, when it is a float constant (and its bias, if any, one too).
pub(super) fn read(
    graph: &GraphProto,
    index: &GraphIndex,
    eval: &ConstEval,
    ctx: &PassContext,
    folded: &FoldedWeights,
    n: usize,
) -> Result<Option<Layer>> {
    let node = &graph.node[n];
    let name = &node.input[1];
    let weight = match (folded.get(name), index.initializer(name)) {
        (Some(f), _) => f.value.clone(),
        (None, Some(t)) if !index.is_graph_input(name) => ScaledTensor::stored(t)?,
        _ => return Ok(None),
    };
    if !weight.dtype.is_float() || weight.dims.len() < 3 || weight.is_empty() {
        return Ok(None);
    }
    if let Some(bias) = node.input.get(2).filter(|b| !b.is_empty()) {
        match eval.value(bias)? {
            Ok(b) if b.dtype.is_float() && b.len() == weight.dims[0] => {}
            _ => return Ok(None),
        }
    }
    let group = crate::attr::int(node, "group")?.unwrap_or(1).max(1) as usize;
    if weight.dims[0] % group != 0 {
        return Ok(None);
    }
    let values = weight.exact(ctx.store)?;
    let (outputs, columns) = (values.dims[0], values.dims[1]);
    let taps = values.len() / (outputs * columns).max(1);
    let block_max = values
        .data
        .chunks(taps.max(1))
        .map(|block| block.iter().fold(0.0, |m: f64, v| m.max(v.abs())))
        .collect();
    Ok(Some(Layer {
        node: n,
        weight_name: name.clone(),
        weight,
        values,
        group,
        block_max,
        output: vec![1.0; outputs],
        input: vec![1.0; columns * group],
    }))
}

/// The weight's per-tensor SQNR, and its worst output channel's under the same grid.
pub(super) fn sqnr(layer: &Layer) -> (f64, f64) {
    let (outputs, columns, taps) = (layer.outputs(), layer.columns(), layer.taps());
    let value = |k: usize| {
        let (o, j) = (k / (columns * taps), (k / taps) % columns);
        layer.values.data[k] * layer.input[layer.channel(o, j)] / layer.output[o]
    };
    let max = (0..outputs)
        .map(|o| layer.output_range(o))
        .fold(0.0, f64::max);
    if max <= 0.0 {
        return (f64::INFINITY, f64::INFINITY);
    }
    let step = max / 127.0;
    let db = |signal: f64, noise: f64| match noise > 0.0 {
        true => 10.0 * (signal / noise).log10(),
        false => f64::INFINITY,
    };
    let per = columns * taps;
    let (mut signal, mut noise, mut worst) = (0.0, 0.0, f64::INFINITY);
    for o in 0..outputs {
        let (mut s, mut n) = (0.0, 0.0);
        for k in o * per..(o + 1) * per {
            let w = value(k);
            let q = (w / step).round().clamp(-127.0, 127.0) * step;
            s += w * w;
            n += (w - q) * (w - q);
        }
        if s > 0.0 {
            worst = worst.min(db(s, n));
        }
        signal += s;
        noise += n;
    }
    (db(signal, noise), worst)
}
