//! BatchNormalization → Conv (forward: the BN feeds the Conv, e.g. after a ReLU).
//!
//! **Pattern**: `Y = Conv(BN(X), W, B?)`, any rank, any `group` (depthwise included); the BN's
//! output feeds only this Conv and is not a graph output.
//!
//! **Preconditions**: `W` is `[C_out, C_in/group, k…]` with `C_in` the BN's channel count; `W`
//! and `B` are floating-point constants. Padding decides the rewrite: padded zeros are not
//! `BN(0)`, so the shift folds into the bias only when the Conv does not pad (all `pads` zero,
//! `auto_pad` NOTSET or VALID). A padded Conv takes the scale alone (exact: zero padding commutes
//! with scaling) and the shift stays as one `Add` before it, which needs every scale non-zero;
//! a zero shift (a chain that only scales) needs no `Add`. The `Add`'s output is a new tensor:
//! it holds `X + d`, not what the BN's output held.
//!
//! **Rewrite**: unpadded: `Y = Conv(X, W', B')`, the BN removed; padded: `Y = Conv(Add(X, d), W', B)`,
//! or `Y = Conv(X, W', B)` when the shift is zero.
//!
//! **Math**: with `a = γ/√(σ²+ε)`, `c = β − μ·a` and `i(o, j) = group(o)·C_in/group + j` the input
//! channel that weight column `j` of output `o` reads: `W'[o,j,…] = W[o,j,…]·a[i(o,j)]` and
//! `B'[o] = B[o] + Σ_{j,taps} W[o,j,taps]·c[i(o,j)]`; padded: `d = c / a` so `a·(X + d) = BN(X)`.

use super::{bias_values, round_into, ConsumerRewrite, ForwardInput, PlannedForward, SkipReason};
use crate::scaled::Scaling;

/// Plans the forward fold of a BN into the Conv that consumes it.
pub fn plan(input: &ForwardInput) -> PlannedForward {
    let w = input.weight;
    let affine = input.affine;
    let channels = affine.channels();
    let group = input.group.max(1);
    let rank = w.dims.len();
    if rank < 3 || w.is_empty() || w.dims[1] * group != channels || !w.dims[0].is_multiple_of(group)
    {
        return Err(SkipReason::ShapeMismatch {
            tensor: input.weight_name.to_string(),
            detail: format!(
                "Conv weight {:?} with group {group} does not read the BN's {channels} channels",
                w.dims
            ),
        });
    }
    let outputs = w.dims[0];
    let per_group_in = w.dims[1];
    let per_group_out = outputs / group;
    let taps: usize = w.dims[2..].iter().product();
    let channel_of = |o: usize, j: usize| (o / per_group_out) * per_group_in + j;
    let weight = if group == 1 {
        Scaling::new(taps, affine.scale.clone())
    } else {
        let factors = (0..outputs * per_group_in)
            .map(|r| affine.scale[channel_of(r / per_group_in, r % per_group_in)])
            .collect();
        Scaling::new(taps, factors)
    };
    if input.padded && affine.shift.iter().all(|&c| c == 0.0) {
        // A scale alone (a `Div` by 6 after a hard-swish): no Add, the bias stays.
        return Ok(ConsumerRewrite {
            weight,
            bias: None,
            shift_add: None,
            gemm_beta_one: false,
        });
    }
    if input.padded {
        let shift = affine.shift_before(rank, input.activation_dtype, input.bn_name)?;
        return Ok(ConsumerRewrite {
            weight,
            bias: None,
            shift_add: Some(shift),
            gemm_beta_one: false,
        });
    }
    let bias = bias_values(input.bias, input.bias_name, outputs)?;
    let bias: Vec<f64> = (0..outputs)
        .map(|o| {
            let mut sum = bias[o];
            for j in 0..per_group_in {
                let c = affine.shift[channel_of(o, j)];
                let start = (o * per_group_in + j) * taps;
                sum += w.data[start..start + taps].iter().sum::<f64>() * c;
            }
            sum
        })
        .collect();
    let bias_dtype = input.bias.map_or(w.dtype, |b| b.dtype);
    Ok(ConsumerRewrite {
        weight,
        bias: Some(round_into(
            bias_dtype,
            vec![outputs],
            bias,
            input.bias_name,
        )?),
        shift_add: None,
        gemm_beta_one: false,
    })
}
