//! Conv → BatchNormalization.
//!
//! **Pattern**: `Y = BN(Conv(X, W, B?))`, 1-D, 2-D or 3-D, any `group` (depthwise included).
//!
//! **Preconditions**: `W` is `[C_out, C_in/group, k…]` with `C_out` equal to the BN's channel
//! count; `B`, when present, has `C_out` values; `W` is a floating-point constant.
//!
//! **Rewrite**: `Y = Conv(X, W', B')`; the Conv takes over the BN's output name.
//!
//! **Math**: with `s = γ/√(σ²+ε)` and `t = β − μ·s`, `W'[o,…] = s[o]·W[o,…]` and
//! `B'[o] = s[o]·B[o] + t[o]` (output channels are axis 0 of `W` for every `group`).

use super::{bias_values, round_into, FoldInput, NodeChange, Planned, ProducerRewrite, SkipReason};
use crate::scaled::Scaling;

/// Plans the fold of a BN into a Conv.
pub fn plan(input: &FoldInput) -> Planned {
    let w = input.weight;
    let affine = input.affine;
    let channels = affine.channels();
    if w.dims.len() < 3 || w.dims[0] != channels || w.is_empty() {
        return Ok(Err(SkipReason::ShapeMismatch {
            tensor: input.weight_name.to_string(),
            detail: format!(
                "Conv weight of shape {:?} does not have the BN's {channels} output channels on axis 0",
                w.dims
            ),
        }));
    }
    let bias = match bias_values(input.bias, input.bias_name, channels) {
        Ok(b) => b,
        Err(skip) => return Ok(Err(skip)),
    };
    let bias: Vec<f64> = (0..channels)
        .map(|o| affine.scale[o] * bias[o] + affine.shift[o])
        .collect();
    let bias_dtype = input.bias.map_or(w.dtype, |b| b.dtype);
    let weight = Scaling::new(w.len() / channels, affine.scale.clone());
    Ok(rewrite(input, weight, bias_dtype, bias))
}

/// The rewrite of a Conv-like producer: the weight's scaling and the bias rounded into its dtype.
pub(crate) fn rewrite(
    input: &FoldInput,
    weight: Scaling,
    bias_dtype: crate::tensor::Dtype,
    bias: Vec<f64>,
) -> Result<ProducerRewrite, SkipReason> {
    let bias_len = bias.len();
    Ok(ProducerRewrite {
        weight_slot: input.weight_slot,
        weight,
        bias: round_into(bias_dtype, vec![bias_len], bias, input.bias_name)?,
        change: NodeChange::None,
    })
}
