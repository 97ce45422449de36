//! One Conv, ConvTranspose, Gemm or MatMul as equalization reads it: its weight's block ranges
//! and the factors on its output and input channels, the ranges they give, and whether the
//! scaled weight still fits. Every weight is read output channels first (`[O, I / group,
//! taps…]`, as a Conv's); a ConvTranspose's `[I, O / group, taps…]` and a MatMul's or a
//! `transB = 0` Gemm's `[K, N]` are stored input channels first and scaled in that layout.

use crate::attr;
use crate::consts::{transpose, ConstEval};
use crate::error::Result;
use crate::folded::FoldedWeights;
use crate::graph::GraphIndex;
use crate::proto::{GraphProto, NodeProto};
use crate::scaled::{ScaledTensor, Scaling};
use crate::tensor::Tensor;

use super::super::options::PassContext;
use super::super::rules::round_into;

/// A layer's weight as equalization reads it.
pub(super) struct Layer {
    pub(super) node: usize,
    pub(super) weight_name: String,
    /// Where its bias is read, per output channel: a node and its input (a Conv's or Gemm's
    /// own third input, or the constant of the `Add` after a MatMul).
    pub(super) bias: Option<(usize, usize)>,
    /// The weight as stored.
    pub(super) weight: ScaledTensor,
    /// Its values with output channels first: `[O, C / group, taps…]`.
    pub(super) values: Tensor,
    /// Whether the weight is stored input channels first (a ConvTranspose, a MatMul, a Gemm
    /// with `transB = 0`): `values` has its output and input channels swapped, group by group.
    pub(super) stored_transposed: bool,
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

/// The layer's weight as equalization writes it: scaled per output channel (down) and per
/// input channel (up), in the layout it is stored in.
pub(super) fn scaled_weight(layer: &Layer) -> ScaledTensor {
    if layer.stored_transposed {
        // Element (i, j, tap) of `[I, O / group, taps…]` takes `input[i] / output[o]`, with `o`
        // output `j` of the group that reads input `i`.
        let (per_group, taps) = (layer.outputs() / layer.group, layer.taps());
        let down: Vec<f64> = match layer.group {
            1 => layer.output.iter().map(|s| 1.0 / s).collect(),
            _ => (0..layer.input.len() * per_group)
                .map(|r| {
                    let (i, j) = (r / per_group, r % per_group);
                    1.0 / layer.output[(i / layer.columns()) * per_group + j]
                })
                .collect(),
        };
        return layer
            .weight
            .then(Scaling::new(per_group * taps, layer.input.clone()))
            .then(Scaling::new(taps, down));
    }
    layer
        .weight
        .then(Scaling::new(layer.taps(), weight_factors(layer)))
}

/// Whether node `n` is a layer equalization reads: a Conv, a ConvTranspose, a Gemm or a MatMul
/// (its weight the second input); `as_second` asks that its data input carry the channels
/// where the first layer writes them (a Gemm without `transA`).
pub(super) fn is_layer(node: &NodeProto, as_second: bool) -> Result<bool> {
    if !matches!(node.domain(), "" | "ai.onnx") || node.input.len() < 2 {
        return Ok(false);
    }
    Ok(match node.op_type() {
        "Conv" | "ConvTranspose" | "MatMul" => true,
        "Gemm" => !as_second || attr::int(node, "transA")?.unwrap_or(0) == 0,
        _ => false,
    })
}

/// Whether layers of these op types can be a pair: convolutions (either kind) read and write
/// channels on axis 1 of an `[N, C, …]` tensor, matrix products (Gemm, MatMul) on the last axis.
pub(super) fn pair_kinds(first: &str, second: &str) -> bool {
    let convolution = |op: &str| matches!(op, "Conv" | "ConvTranspose");
    let product = |op: &str| matches!(op, "Gemm" | "MatMul");
    (convolution(first) && convolution(second)) || (product(first) && product(second))
}

/// The layer `n`'s weight, when it is a float constant (and its bias, if any, one too, per
/// output channel).
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
    let product = matches!(node.op_type(), "Gemm" | "MatMul");
    let rank_fits = match product {
        true => weight.dims.len() == 2,
        false => weight.dims.len() >= 3,
    };
    if !weight.dtype.is_float() || !rank_fits || weight.is_empty() {
        return Ok(None);
    }
    let stored_transposed = match node.op_type() {
        "ConvTranspose" | "MatMul" => true,
        _ => product && attr::int(node, "transB")?.unwrap_or(0) == 0,
    };
    let group = attr::int(node, "group")?.unwrap_or(1).max(1) as usize;
    let outputs = match stored_transposed {
        true => weight.dims[1] * group,
        false => weight.dims[0],
    };
    let bias = node.input.get(2).filter(|b| !b.is_empty());
    if let Some(bias) = bias {
        if !per_output_channel(eval, bias, outputs)? {
            return Ok(None);
        }
    }
    if outputs % group != 0 || weight.dims[0] % group != 0 {
        return Ok(None);
    }
    let values = match stored_transposed {
        true => match output_first(&weight.exact(ctx.store)?, group) {
            Some(t) => t,
            None => return Ok(None),
        },
        false => weight.exact(ctx.store)?,
    };
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
        bias: bias.map(|_| (n, 2)),
        weight,
        values,
        stored_transposed,
        group,
        block_max,
        output: vec![1.0; outputs],
        input: vec![1.0; columns * group],
    }))
}

/// Whether `bias` is a float constant of one value per output channel, laid on the last axis
/// (`[N]`, `[1, N]`: a Gemm's C, or the constant added after a MatMul; a Conv's `[C]`), not one
/// per sample.
pub(super) fn per_output_channel(eval: &ConstEval, bias: &str, outputs: usize) -> Result<bool> {
    Ok(match eval.value(bias)? {
        Ok(b) => b.dtype.is_float() && b.dims.last() == Some(&outputs) && b.len() == outputs,
        Err(_) => false,
    })
}

/// A weight stored input channels first (`[I, O / group, taps…]`) with its output channels
/// first: `[O, I / group, taps…]`, group by group.
fn output_first(stored: &Tensor, group: usize) -> Option<Tensor> {
    let (inputs, per_group) = (stored.dims[0], stored.dims[1]);
    let taps: usize = stored.dims[2..].iter().product();
    let dims = vec![group, inputs / group, per_group, taps];
    let blocks = Tensor::new(stored.dtype, dims, stored.data.clone());
    let swapped = transpose(&blocks, Some(&[0, 2, 1, 3]))?;
    let dims = [per_group * group, inputs / group]
        .into_iter()
        .chain(stored.dims[2..].iter().copied())
        .collect();
    Some(Tensor::new(stored.dtype, dims, swapped.data))
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
