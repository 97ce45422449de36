//! The certificate of a BatchNormalization decomposed into `Mul` and `Add`
//! (`--decompose-standalone`): the Mul's constant must hold `s = γ/√(σ² + ε)` and the Add's
//! `β − μ·s`, each element within half an ulp (plus the f64 slack where terms cancel).

use super::ulps::compare;
use super::{Side, TensorCheck};
use crate::error::Result;
use crate::graph::GraphIndex;
use crate::proto::NodeProto;

/// Every decomposition in the fused graph: (the Add that took over a BN's output, the Mul before
/// it reading the BN's input, the original BN).
pub(crate) fn decompositions<'g>(
    orig: &GraphIndex<'g>,
    fused: &GraphIndex<'g>,
) -> Vec<(&'g NodeProto, &'g NodeProto, &'g NodeProto)> {
    let mut found = Vec::new();
    for add in fused.graph.node.iter().filter(|n| n.op_type() == "Add") {
        let Some(bn) = add
            .output
            .first()
            .and_then(|o| orig.producer(o))
            .map(|i| orig.node(i))
            .filter(|bn| bn.op_type() == "BatchNormalization")
        else {
            continue;
        };
        let mul = add
            .input
            .first()
            .and_then(|i| fused.producer(i))
            .map(|i| fused.node(i))
            .filter(|m| m.op_type() == "Mul" && m.input.first() == bn.input.first());
        if let Some(mul) = mul {
            found.push((add, mul, bn));
        }
    }
    found
}

/// The Mul's and the Add's constants against the BN's scale and shift.
pub(crate) fn certify_decomposition(
    orig: &Side,
    fused: &Side,
    bn: &NodeProto,
    mul: &NodeProto,
    add: &NodeProto,
) -> Result<std::result::Result<Vec<TensorCheck>, String>> {
    let (scale, shift, shift_terms) = match super::forward::bn_affine(orig, bn)? {
        Ok(map) => (map.scale, map.shift, map.shift_terms),
        Err(why) => return Ok(Err(why)),
    };
    let scale_terms: Vec<f64> = scale.iter().map(|s| s.abs()).collect();
    let slack = 16.0 * f64::EPSILON;
    let mut checks = Vec::new();
    for (node, expected, terms) in [(mul, &scale, &scale_terms), (add, &shift, &shift_terms)] {
        let Some(name) = node.input.get(1) else {
            return Ok(Err(format!("'{}' has one input", node.name())));
        };
        let stored = match fused.value(name)? {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        checks.push(compare(
            name,
            &stored,
            (expected, terms, slack),
            &stored.dims,
            &[],
        ));
    }
    Ok(Ok(checks))
}
