//! ConvTranspose → BatchNormalization.
//!
//! **Pattern**: `Y = BN(ConvTranspose(X, W, B?))`, any rank and `group`.
//!
//! **Preconditions**: `W` is `[C_in, C_out/group, k…]` with `group·W.dims[1]` equal to the BN's
//! channel count; `B`, when present, has `C_out` values.
//!
//! **Rewrite**: `Y = ConvTranspose(X, W', B')`; the node takes over the BN's output name.
//!
//! **Math**: input channel `i` belongs to group `g = i / (C_in/group)`, and `W[i, j, …]` feeds
//! output channel `o = g·(C_out/group) + j`, so `W'[i, j, …] = s[o]·W[i, j, …]` and
//! `B'[o] = s[o]·B[o] + t[o]`.

use super::conv::rewrite;
use super::{bias_values, FoldInput, Planned, SkipReason};
use crate::attr;
use crate::scaled::Scaling;

/// Plans the fold of a BN into a ConvTranspose.
pub fn plan(input: &FoldInput) -> Planned {
    let w = input.weight;
    let affine = input.affine;
    let channels = affine.channels();
    let group = attr::int(input.node, "group")?.unwrap_or(1);
    let group = usize::try_from(group).ok().filter(|&g| g > 0);
    let fits = |g: usize| {
        w.dims.len() >= 3
            && w.dims[0].is_multiple_of(g)
            && w.dims[1].checked_mul(g) == Some(channels)
    };
    let Some(group) = group.filter(|&g| fits(g)) else {
        return Ok(Err(SkipReason::ShapeMismatch {
            tensor: input.weight_name.to_string(),
            detail: format!(
                "ConvTranspose weight of shape {:?} with group {} does not give the BN's {channels} output channels",
                w.dims,
                attr::int(input.node, "group")?.unwrap_or(1)
            ),
        }));
    };
    let bias = match bias_values(input.bias, input.bias_name, channels) {
        Ok(b) => b,
        Err(skip) => return Ok(Err(skip)),
    };
    let in_per_group = w.dims[0] / group;
    let out_per_group = w.dims[1];
    let kernel: usize = w.dims[2..].iter().product();
    // Run r = i·(C_out/group) + j of `kernel` taps belongs to output channel
    // group(i)·(C_out/group) + j.
    let weight = if group == 1 {
        Scaling::new(kernel, affine.scale.clone())
    } else {
        let factors = (0..w.dims[0] * out_per_group)
            .map(|r| {
                let (i, j) = (r / out_per_group, r % out_per_group);
                affine.scale[(i / in_per_group) * out_per_group + j]
            })
            .collect();
        Scaling::new(kernel, factors)
    };
    let bias: Vec<f64> = (0..channels)
        .map(|o| affine.scale[o] * bias[o] + affine.shift[o])
        .collect();
    let bias_dtype = input.bias.map_or(w.dtype, |b| b.dtype);
    Ok(rewrite(input, weight, bias_dtype, bias))
}
