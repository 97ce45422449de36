//! BatchNormalization → ConvTranspose (forward).
//!
//! **Pattern**: `Y = ConvTranspose(BN(X), W, B?)`; the BN's output feeds only this node and is
//! not a graph output.
//!
//! **Preconditions**: `W` is `[C_in, C_out/group, k…]` with `C_in` the BN's channel count; every
//! scale non-zero.
//!
//! **Rewrite**: `Y = ConvTranspose(Add(X, d), W', B)`: the scale folds, the shift stays as one
//! `Add`. A transposed convolution spreads each input over overlapping windows, so a constant
//! input does not give a constant output at the borders (nor between strides when the kernel is
//! not a multiple of the stride): the shift cannot move into the bias exactly.
//!
//! **Math**: with `a = γ/√(σ²+ε)` and `c = β − μ·a`: `W'[i,…] = a[i]·W[i,…]` (input channels are
//! axis 0 for every `group`) and `d = c / a`, so that `a·(X + d) = BN(X)`.

use super::{ConsumerRewrite, ForwardInput, PlannedForward, SkipReason};
use crate::scaled::Scaling;

/// Plans the forward fold of a BN into the ConvTranspose that consumes it.
pub fn plan(input: &ForwardInput) -> PlannedForward {
    let w = input.weight;
    let affine = input.affine;
    let channels = affine.channels();
    let rank = w.dims.len();
    if rank < 3
        || w.is_empty()
        || w.dims[0] != channels
        || !channels.is_multiple_of(input.group.max(1))
    {
        return Err(SkipReason::ShapeMismatch {
            tensor: input.weight_name.to_string(),
            detail: format!(
                "ConvTranspose weight {:?} does not read the BN's {channels} channels on axis 0",
                w.dims
            ),
        });
    }
    let weight = Scaling::new(w.len() / channels, affine.scale.clone());
    if affine.shift.iter().all(|&c| c == 0.0) {
        return Ok(ConsumerRewrite {
            weight,
            bias: None,
            shift_add: None,
            gemm_beta_one: false,
        });
    }
    let shift = affine.shift_before(rank, input.activation_dtype, input.bn_name)?;
    Ok(ConsumerRewrite {
        weight,
        bias: None,
        shift_add: Some(shift),
        gemm_beta_one: false,
    })
}
