//! An exact, input-free certificate for backward folds: every element of every rewritten weight
//! and bias, checked against the fold's formula recomputed here, in f64, from the original
//! model's own parameters.
//!
//! **Which nodes**: a Conv, ConvTranspose or Gemm of the fused model (or the `Add` after a
//! MatMul, before opset 7) whose output name the original model gives to a BatchNormalization or
//! to a `Mul`, `Add`, `Sub` or `Div`: the node took over that output, so it claims to compute the
//! original's chain `layer → (Identity | BatchNormalization | Mul, Add, Sub, Div of a per-channel
//! constant)*`. This needs no fold report, so `bnfold verify original fused` certifies too.
//!
//! **Formula**: along the chain the per-channel affine map composes, `y = S·(layer without
//! bias) + T`, starting from `S = 1`, `T = bias` (or `β·C` for a Gemm), with `T += a` for an
//! added constant, `S ← c·S`, `T ← c·T` for a multiplied one (divided: by `c`), `T ← c − T`,
//! `S ← −S` for `c − x`, and `S ← s·S`, `T ← s·T + (β − μ·s)` for a BN (`s = γ/√(σ²+ε)`). The fused
//! weight must hold `S·W` along the layer's output-channel layout (`[C_out, …]` for Conv,
//! `[C_in, C_out/group, …]` for ConvTranspose, the columns of `op(B)` for Gemm, with `α` and
//! `β` of both nodes accounted for), the fused bias `T`.
//!
//! **Tolerance**: each stored element within half a unit in the last place of its dtype from
//! the exact value, plus what computing that value in f64 may itself be off by: `16·k·ε₆₄`
//! times the sum of the magnitudes of its terms, for a chain of `k` steps (it matters only
//! where terms cancel, as `s·b + β − μ·s` can, and for f64 tensors, which it bounds to a few
//! ulps). So any f32, f16 or bf16 element off by more than one rounding fails, named.
//!
//! The region run of the whole-model check is what shows the formula itself is right; this shows
//! that what was written is the formula.

use schemars::JsonSchema;
use serde::Serialize;

mod backward;
mod chain;
mod decomposed;
mod forward;
mod targets;
pub(crate) mod ulps;

use backward::{certify_concat, certify_node};
pub(crate) use chain::chain_from;
use decomposed::certify_decomposition;
pub(crate) use decomposed::decompositions;
pub(crate) use forward::{forward_folds, ForwardFold};
use forward::{input_side, InputSide};
pub(crate) use targets::{concat_targets, fold_targets};
use ulps::compare;
pub use ulps::{ulps, unit};

use crate::attr;
use crate::consts::ConstEval;
use crate::error::Result;
use crate::graph::{node_label, GraphIndex};
use crate::model::Model;
use crate::pairs::graph_pairs;
use crate::proto::NodeProto;
use crate::tensor::{self, Tensor};

/// The certificate of one fused node.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct NodeCertificate {
    /// The graph holding it: `main`, or a subgraph's path as the fold report has it.
    pub graph: String,
    /// The fused node (name, or first output).
    pub node: String,
    /// Its op type.
    pub op_type: String,
    /// The original BatchNormalization whose output it took over.
    pub batch_norm: String,
    /// Each rewritten tensor checked; empty when the node could not be certified.
    pub tensors: Vec<TensorCheck>,
    /// Why it could not be certified, when it could not.
    pub unproven: Option<String>,
}

/// One rewritten tensor against its formula.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct TensorCheck {
    /// The tensor of the fused model.
    pub tensor: String,
    /// Elements compared.
    pub elements: usize,
    /// The largest distance from the exact value, in units in the last place of its dtype.
    pub max_ulps: f64,
    /// The first element beyond the bound, when there is one.
    pub first_bad_element: Option<usize>,
    /// The bound, in ulps.
    pub bound_ulps: f64,
    /// Whether every element is within what computing the formula in the tensor's own dtype
    /// may be off by (half an ulp plus 4 units of rounding of the magnitudes of its terms): a
    /// fold another tool computed in float32 is, without being rounded once.
    pub within_float_arithmetic: bool,
}

impl TensorCheck {
    /// Whether every element is within the bound.
    pub fn passed(&self) -> bool {
        self.first_bad_element.is_none()
    }
}

impl NodeCertificate {
    /// Whether every tensor passed (and the node could be certified).
    pub fn passed(&self) -> bool {
        self.unproven.is_none() && self.tensors.iter().all(TensorCheck::passed)
    }

    /// Whether every tensor is within float arithmetic of the formula (see
    /// [`TensorCheck::within_float_arithmetic`]), though perhaps not rounded once.
    pub fn within_float_arithmetic(&self) -> bool {
        self.unproven.is_none() && self.tensors.iter().all(|t| t.within_float_arithmetic)
    }
}

/// Certifies every node of `fused` (main graph and subgraphs, see [`crate::pairs`]) that took
/// over a BatchNormalization's output in `original`.
pub fn certify(original: &Model, fused: &Model) -> Result<Vec<NodeCertificate>> {
    let (original, fused) = (original.with_folded_inline()?, fused.with_folded_inline()?);
    let (original, fused) = (original.as_ref(), fused.as_ref());
    let mut out = Vec::new();
    for pair in graph_pairs(original, fused) {
        let orig_index = GraphIndex::new(pair.original, pair.original_scope());
        let fused_index = GraphIndex::new(pair.fused, pair.fused_scope());
        let orig = Side::new(&orig_index, original);
        let fused_side = Side::new(&fused_index, fused);
        for (node, bn) in fold_targets(&orig_index, &fused_index) {
            let mut cert = NodeCertificate {
                graph: pair.path.clone(),
                node: node_label(node),
                op_type: node.op_type().to_string(),
                batch_norm: node_label(bn),
                tensors: Vec::new(),
                unproven: None,
            };
            match certify_node(&orig, &fused_side, bn, node)? {
                Ok(tensors) => cert.tensors = tensors,
                Err(why) => cert.unproven = Some(why),
            }
            out.push(cert);
        }
        for (concat, end) in concat_targets(&orig_index, &fused_index) {
            let cert = |node: &NodeProto| NodeCertificate {
                graph: pair.path.clone(),
                node: node_label(node),
                op_type: node.op_type().to_string(),
                batch_norm: node_label(end),
                tensors: Vec::new(),
                unproven: None,
            };
            match certify_concat(&orig, &fused_side, end, concat)? {
                Ok(parts) => {
                    for (layer, checks) in parts {
                        let mut c = cert(layer);
                        match checks {
                            Ok(tensors) => c.tensors = tensors,
                            Err(why) => c.unproven = Some(why),
                        }
                        out.push(c);
                    }
                }
                Err(why) => {
                    let mut c = cert(concat);
                    c.unproven = Some(why);
                    out.push(c);
                }
            }
        }
        for fold in forward_folds(&orig_index, &fused_index) {
            let mut cert = NodeCertificate {
                graph: pair.path.clone(),
                node: node_label(fold.node),
                op_type: fold.node.op_type().to_string(),
                batch_norm: node_label(fold.bn),
                tensors: Vec::new(),
                unproven: None,
            };
            match certify_forward(&orig, &fused_side, &fold)? {
                Ok(tensors) => cert.tensors = tensors,
                Err(why) => cert.unproven = Some(why),
            }
            out.push(cert);
        }
        for (add, mul, bn) in decompositions(&orig_index, &fused_index) {
            let mut cert = NodeCertificate {
                graph: pair.path.clone(),
                node: node_label(add),
                op_type: "Mul+Add".into(),
                batch_norm: node_label(bn),
                tensors: Vec::new(),
                unproven: None,
            };
            match certify_decomposition(&orig, &fused_side, bn, mul, add)? {
                Ok(tensors) => cert.tensors = tensors,
                Err(why) => cert.unproven = Some(why),
            }
            out.push(cert);
        }
    }
    Ok(out)
}

/// The main-graph outputs of every fold the certificate and the regions find (a fused node that
/// took over a BN's output, a forward fold's layer, a decomposition's Add): the tensors whose
/// fold is proven where it is.
pub(crate) fn folded_outputs(original: &Model, fused: &Model) -> Vec<String> {
    let Some(pair) = graph_pairs(original, fused).into_iter().next() else {
        return Vec::new();
    };
    let orig_index = GraphIndex::new(pair.original, pair.original_scope());
    let fused_index = GraphIndex::new(pair.fused, pair.fused_scope());
    let backward = fold_targets(&orig_index, &fused_index)
        .into_iter()
        .map(|(node, _)| node);
    let forward = forward_folds(&orig_index, &fused_index)
        .into_iter()
        .map(|f| f.node);
    let decomposed = decompositions(&orig_index, &fused_index)
        .into_iter()
        .map(|(add, ..)| add);
    backward
        .chain(forward)
        .chain(decomposed)
        .filter_map(|n| n.output.first().cloned())
        .collect()
}

/// The BatchNormalization before `layer` in the original that folded forward into it too (a
/// BN on each side of one layer, `fused_layer` its fused node): the BN producing the layer's data
/// input, when the fused layer reads past it (from the BN's own input) or through the `Add`
/// that keeps its shift (an `Add` of the BN's input, under the BN's output name).
pub(crate) fn forward_folded_before<'g>(
    orig: &GraphIndex<'g>,
    fused: &GraphIndex<'_>,
    layer: &NodeProto,
    fused_layer: &NodeProto,
) -> Option<&'g NodeProto> {
    let data = layer.input.first()?;
    let before = orig.node(orig.producer(data)?);
    if before.op_type() != "BatchNormalization" {
        return None;
    }
    // The fused layer reads the BN's input: directly, or through the Add that keeps its shift
    // (a layer that reads anything else took something else before it).
    let bn_input = before.input.first()?;
    let reads = fused_layer.input.first()?;
    let direct = reads == bn_input;
    let through_shift = fused.producer(reads).is_some_and(|p| {
        let p = fused.node(p);
        p.op_type() == "Add" && p.input.first() == Some(bn_input)
    });
    (direct || through_shift).then_some(before)
}

/// The node before `layer` in the original that the fused layer reads past when that is not one
/// BatchNormalization ([`forward_folded_before`] composes that): a per-channel `Mul`, `Add`,
/// `Sub` or `Div` chain folded forward into the layer, which the certificate and the region
/// run do not compose. Such a layer is no fold target: the divergence check proves it with the
/// chains on both sides.
pub(crate) fn chain_folded_before<'g>(
    orig: &GraphIndex<'g>,
    fused: &GraphIndex<'_>,
    layer: &NodeProto,
    fused_layer: &NodeProto,
) -> Option<&'g NodeProto> {
    let data = layer.input.first()?;
    if fused_layer.input.first() == Some(data)
        || forward_folded_before(orig, fused, layer, fused_layer).is_some()
    {
        return None;
    }
    orig.producer(data).map(|p| orig.node(p))
}

/// One model with its index and evaluator.
pub(crate) struct Side<'a> {
    pub(crate) index: &'a GraphIndex<'a>,
    pub(crate) eval: ConstEval<'a>,
    pub(crate) model: &'a Model,
}

impl<'a> Side<'a> {
    /// `model` with its index and a constant evaluator over it.
    pub(crate) fn new(index: &'a GraphIndex<'a>, model: &'a Model) -> Side<'a> {
        Side {
            index,
            eval: ConstEval::new(index, &model.store, model.opset(), true),
            model,
        }
    }

    /// The value of constant `name`; an initializer is decoded on its own (not memoized, so a
    /// large model's weights are not all held at once).
    pub(crate) fn value(&self, name: &str) -> Result<std::result::Result<Tensor, String>> {
        if let Some(t) = self.index.initializer(name) {
            return Ok(Ok(tensor::decode(t, &self.model.store)?));
        }
        let found = self.eval.value(name)?;
        Ok(found
            .map(|t| Tensor::clone(&t))
            .map_err(|_| format!("'{name}' is not a constant")))
    }

    fn producer(&self, name: &str) -> Option<&'a NodeProto> {
        self.index.producer(name).map(|i| self.index.node(i))
    }
}

/// A forward fold's weight, bias and shift against the BN's map applied to the original layer.
fn certify_forward(
    orig: &Side,
    fused: &Side,
    fold: &ForwardFold,
) -> Result<std::result::Result<Vec<TensorCheck>, String>> {
    let side: InputSide = match input_side(orig, fused, fold.bn, fold.layer, &fold.fused_nodes)? {
        Ok(side) => side,
        Err(why) => return Ok(Err(why)),
    };
    let node = fold.node;
    let (alpha, beta) = match node.op_type() {
        "Gemm" => (
            attr::float(node, "alpha")?.unwrap_or(1.0) as f64,
            attr::float(node, "beta")?.unwrap_or(1.0) as f64,
        ),
        _ => (1.0, 1.0),
    };
    let layer_alpha = match fold.layer.op_type() {
        "Gemm" => attr::float(fold.layer, "alpha")?.unwrap_or(1.0) as f64,
        _ => 1.0,
    };
    let slack = 16.0 * (1 + side.terms) as f64 * f64::EPSILON;
    let mut checks: Vec<TensorCheck> = side.shift_check.iter().cloned().collect();
    let stored_weight = match fused.value(&node.input[1])? {
        Ok(w) => w,
        Err(why) => return Ok(Err(why)),
    };
    let expected: Vec<f64> = side
        .weight
        .data
        .iter()
        .map(|w| w * layer_alpha / alpha)
        .collect();
    let terms: Vec<f64> = expected.iter().map(|e| e.abs()).collect();
    checks.push(compare(
        &node.input[1],
        &stored_weight,
        (&expected, &terms, slack),
        &side.weight.dims,
        &[],
    ));
    let stored_bias = match node.input.get(2).filter(|n| !n.is_empty()) {
        Some(name) => match fused.value(name)? {
            Ok(b) => Some((name, b)),
            Err(why) => return Ok(Err(why)),
        },
        None => None,
    };
    match (stored_bias, &side.bias) {
        (Some((name, stored)), expected) => {
            let (values, terms) = match expected {
                Some(b) => (
                    b.data.iter().map(|v| v / beta).collect::<Vec<f64>>(),
                    side.bias_terms.iter().map(|t| t / beta.abs()).collect(),
                ),
                None => (vec![0.0; stored.len()], vec![0.0; stored.len()]),
            };
            let dims = expected
                .as_ref()
                .map_or(stored.dims.clone(), |b| b.dims.clone());
            checks.push(compare(name, &stored, (&values, &terms, slack), &dims, &[]));
        }
        (None, Some(b)) if b.data.iter().any(|&v| v != 0.0) => {
            return Ok(Err("the fused layer has no bias but the fold shifts".into()));
        }
        (None, _) => {}
    }
    Ok(Ok(checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Dtype;

    #[test]
    fn ulps_count_units_of_the_dtype() {
        assert_eq!(ulps(Dtype::F32, 1.0, 1.0), 0.0);
        let next = f32::from_bits(1.0f32.to_bits() + 1) as f64;
        assert_eq!(ulps(Dtype::F32, 1.0, next), 1.0);
        assert_eq!(ulps(Dtype::F32, 1.0 + (next - 1.0) / 2.0, next), 0.5);
        let f16_next = half::f16::from_bits(half::f16::ONE.to_bits() + 2).to_f64();
        assert_eq!(ulps(Dtype::F16, 1.0, f16_next), 2.0);
    }
}
