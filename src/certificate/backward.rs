//! The certificate of a backward fold: the chain from the layer (through pass-throughs and BNs)
//! composed in f64 and compared, element by element, with the fused node's weight and bias; a
//! layer with a BN on each side has the one before applied to its weight and bias first.

use super::chain::{apply_step, chain_from, concat_chain_from, start_chain, Layout};
use super::forward::input_side;
use super::ulps::compare;
use super::{forward_folded_before, Side, TensorCheck};
use crate::error::Result;
use crate::graph::node_label;
use crate::proto::NodeProto;

/// Certifies `node` of the fused model, which took over `bn`'s output.
pub(super) fn certify_node(
    orig: &Side,
    fused: &Side,
    bn: &NodeProto,
    node: &NodeProto,
) -> Result<std::result::Result<Vec<TensorCheck>, String>> {
    let (layer, steps) = match chain_from(orig, bn) {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    certify_layer(orig, fused, layer, &steps, node, None)
}

/// Certifies each layer of the fused `concat`, which took over `end`'s output: every layer
/// feeding it against its range of the chain's channels. One result per Concat input, with the
/// fused layer.
pub(super) fn certify_concat<'f>(
    orig: &Side,
    fused: &Side<'f>,
    end: &NodeProto,
    concat: &'f NodeProto,
) -> Result<std::result::Result<Vec<CertifiedPart<'f>>, String>> {
    let (orig_concat, steps) = match concat_chain_from(orig, end) {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    if orig_concat.input != concat.input {
        return Ok(Err(
            "the fused Concat does not take the original's inputs".into()
        ));
    }
    let mut layers = Vec::new();
    for name in &concat.input {
        let (Some(layer), Some(fused_layer)) = (orig.producer(name), fused.producer(name)) else {
            return Ok(Err(format!("Concat input '{name}' comes from no layer")));
        };
        let weight = match orig.value(layer.input.get(1).map_or("", String::as_str))? {
            Ok(w) => w,
            Err(why) => return Ok(Err(why)),
        };
        let channels = match Layout::of(layer, fused_layer, &weight)? {
            Ok(layout) => layout.channels,
            Err(why) => return Ok(Err(why)),
        };
        layers.push((layer, fused_layer, channels));
    }
    let total = layers.iter().map(|(_, _, c)| c).sum();
    let mut parts = Vec::new();
    let mut offset = 0;
    for (layer, fused_layer, channels) in layers {
        let checks = certify_layer(
            orig,
            fused,
            layer,
            &steps,
            fused_layer,
            Some((offset, total)),
        )?;
        parts.push((fused_layer, checks));
        offset += channels;
    }
    Ok(Ok(parts))
}

/// A fused layer of a Concat fold and its checks.
pub(super) type CertifiedPart<'f> = (&'f NodeProto, std::result::Result<Vec<TensorCheck>, String>);

/// Certifies the fused `node` as `layer → steps` of the original; `part` is the layer's
/// `(offset, total)` among the chain's channels when it feeds a Concat.
fn certify_layer(
    orig: &Side,
    fused: &Side,
    layer: &NodeProto,
    steps: &[&NodeProto],
    node: &NodeProto,
    part: Option<(usize, usize)>,
) -> Result<std::result::Result<Vec<TensorCheck>, String>> {
    // Before opset 7 a MatMul fold is `Add(MatMul(A, W'), b)`: the Add took the name.
    let (fused_layer, fused_bias_name) = match node.op_type() {
        "Add" => {
            let matmul = node.input.iter().find_map(|i| {
                fused
                    .producer(i)
                    .filter(|p| p.op_type() == "MatMul")
                    .map(|p| (p, i))
            });
            let Some((matmul, product)) = matmul else {
                return Ok(Err("an Add that does not follow a MatMul".into()));
            };
            let bias = node.input.iter().find(|i| *i != product).cloned();
            (matmul, bias)
        }
        _ => (node, node.input.get(2).cloned().filter(|n| !n.is_empty())),
    };
    // A BN on each side: the one before folded forward too; its map is applied to the layer's
    // weight and bias first, then the chain after it composes as usual.
    let input_map = match forward_folded_before(orig.index, fused.index, layer, fused_layer) {
        Some(before) if matches!(layer.op_type(), "Conv" | "ConvTranspose") => {
            let fused_nodes = nodes_into(fused, fused_layer, &before.input[0]);
            match input_side(orig, fused, before, layer, &fused_nodes)? {
                Ok(side) => Some(side),
                Err(why) => return Ok(Err(why)),
            }
        }
        Some(before) => {
            return Ok(Err(format!(
                "the {} also took {} forward, on its input side, which this certificate does \
                 not compose for it",
                layer.op_type(),
                node_label(before)
            )))
        }
        None => None,
    };
    let weight = match &input_map {
        Some(side) => side.weight.clone(),
        None => match orig.value(&layer.input[1])? {
            Ok(w) => w,
            Err(why) => return Ok(Err(why)),
        },
    };
    let fused_weight_name = &fused_layer.input[1];
    let fused_weight = match fused.value(fused_weight_name)? {
        Ok(w) => w,
        Err(why) => return Ok(Err(why)),
    };
    let layout = match Layout::of(layer, fused_layer, &weight)? {
        Ok(l) => l,
        Err(why) => return Ok(Err(why)),
    };
    let channels = layout.channels;
    let original_bias = match (&input_map, layer.input.get(2).filter(|n| !n.is_empty())) {
        (Some(side), _) => side.bias.clone(),
        (None, Some(name)) => match orig.value(name)? {
            Ok(b) => Some(b),
            Err(why) => return Ok(Err(why)),
        },
        (None, None) => None,
    };
    let mut chain = match start_chain(layer, original_bias.as_ref(), channels)? {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    if let Some((offset, total)) = part {
        (chain.offset, chain.total) = (offset, total);
    }
    if let Some(side) = input_map
        .as_ref()
        .filter(|s| s.bias_terms.len() == chain.shift.len())
    {
        chain.shift_terms.clone_from(&side.bias_terms);
    }
    for step in steps {
        if let Err(why) = apply_step(orig, step, &mut chain)? {
            return Ok(Err(why));
        }
    }
    // A BN on each side with the forward shift in the bias: bnfold folds one side at a time and
    // rounds the bias in between, in either order: the forward bias `B + Σ W·c` (then scaled by
    // the chain), or the chain's bias from `B` alone (then the forward gain added).
    if let Some(side) = input_map.as_ref().filter(|s| s.shift_check.is_none()) {
        if let Some(b) = &side.bias {
            let per = |k: usize| b.data[if b.len() == 1 { 0 } else { k % b.len() }].abs();
            let forward_first: Vec<f64> = (0..chain.shift.len()).map(per).collect();
            let scaled_by: Vec<f64> = (0..chain.shift.len())
                .map(|k| chain.scale[k % channels].abs())
                .collect();
            chain.intermediate.push((forward_first, scaled_by));
        }
        let own_bias = match layer.input.get(2).filter(|n| !n.is_empty()) {
            Some(name) => match orig.value(name)? {
                Ok(b) => Some(b),
                Err(why) => return Ok(Err(why)),
            },
            None => None,
        };
        if let Ok(mut backward_only) = start_chain(layer, own_bias.as_ref(), channels)? {
            for step in steps {
                if let Err(why) = apply_step(orig, step, &mut backward_only)? {
                    return Ok(Err(why));
                }
            }
            let stored: Vec<f64> = backward_only.shift.iter().map(|t| t.abs()).collect();
            let ones = vec![1.0; stored.len()];
            if stored.len() == chain.shift.len() {
                chain.intermediate.push((stored, ones));
            }
        }
        // And the gain taken from the scaled weights as stored (each within half an ulp):
        // at most half a unit of rounding of `|S|·Σ|W|·|c|`.
        if side.bias.is_some() {
            let own = |k: usize| {
                own_bias.as_ref().map_or(0.0, |o| {
                    o.data[if o.len() == 1 { 0 } else { k % o.len() }].abs()
                })
            };
            let gain: Vec<f64> = (0..chain.shift.len())
                .map(|k| {
                    let terms = side.bias_terms.get(k).copied().unwrap_or(0.0) - own(k);
                    2.0 * chain.scale[k % channels].abs() * terms.max(0.0)
                })
                .collect();
            chain.intermediate.push((vec![1.0; gain.len()], gain));
        }
    }
    let mut checks = Vec::new();
    let channel_of = layout.channel_of(&weight.dims);
    let expected_weight: Vec<f64> = weight
        .data
        .iter()
        .enumerate()
        .map(|(k, &w)| chain.scale[channel_of(k)] * w * layout.weight_factor)
        .collect();
    let weight_terms: Vec<f64> = expected_weight.iter().map(|e| e.abs()).collect();
    let summed = input_map.as_ref().map_or(0, |side| side.terms);
    let slack = 16.0 * (chain.steps + summed) as f64 * f64::EPSILON;
    if let Some(check) = input_map.as_ref().and_then(|side| side.shift_check.clone()) {
        checks.push(check);
    }
    checks.push(compare(
        fused_weight_name,
        &fused_weight,
        (&expected_weight, &weight_terms, slack),
        &weight.dims,
        &[],
    ));
    let fused_bias = match fused_bias_name {
        Some(name) => match fused.value(&name)? {
            Ok(b) => Some((name, b)),
            Err(why) => return Ok(Err(why)),
        },
        None => None,
    };
    let needs_bias = chain.shift.iter().any(|&t| t != 0.0);
    match fused_bias {
        Some((name, bias)) => {
            let rows = bias.len() / channels.max(1);
            if bias.len() != rows * channels || (rows != chain.shift_rows && chain.shift_rows != 1)
            {
                return Ok(Err(format!(
                    "fused bias '{name}' of shape {:?} does not hold the chain's {} x {channels} shift",
                    bias.dims, chain.shift_rows
                )));
            }
            let at = |k: usize| {
                let (row, n) = (k / channels, k % channels);
                let row = if chain.shift_rows == 1 { 0 } else { row };
                row * channels + n
            };
            let expected: Vec<f64> = (0..bias.len())
                .map(|k| chain.shift[at(k)] / layout.bias_factor)
                .collect();
            let terms: Vec<f64> = (0..bias.len())
                .map(|k| chain.shift_terms[at(k)] / layout.bias_factor.abs())
                .collect();
            let rounded: Vec<(Vec<f64>, Vec<f64>)> = chain
                .intermediate
                .iter()
                .map(|(value, since)| {
                    let pick = |v: &[f64]| (0..bias.len()).map(|k| v[at(k)]).collect();
                    (pick(value), pick(since))
                })
                .collect();
            checks.push(compare(
                &name,
                &bias,
                (&expected, &terms, slack),
                &bias.dims,
                &rounded,
            ));
        }
        None if needs_bias => {
            return Ok(Err("the fused node has no bias but the chain shifts".into()));
        }
        None => {}
    }
    Ok(Ok(checks))
}

/// The fused nodes from `data` to `layer` (the shift's `Add`, a Flatten or Reshape), in order.
fn nodes_into<'g>(fused: &Side<'g>, layer: &'g NodeProto, data: &str) -> Vec<&'g NodeProto> {
    let mut nodes = vec![layer];
    let mut current = layer.input.first().cloned().unwrap_or_default();
    while current != data {
        match fused.producer(&current) {
            Some(p) if matches!(p.op_type(), "Add" | "Flatten" | "Reshape") => {
                nodes.push(p);
                current = p.input.first().cloned().unwrap_or_default();
            }
            _ => break,
        }
    }
    nodes.reverse();
    nodes
}
