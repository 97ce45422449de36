//! Gemm → BatchNormalization.
//!
//! **Pattern**: `Y = BN(Gemm(A, B, C?))` with any `transA`, `transB`, `alpha`, `beta`.
//!
//! **Preconditions**: `B` is a constant `[K, N]` (`[N, K]` with `transB=1`) with `N` the BN's
//! channel count; `C`, when present, broadcasts to `[M, N]` (scalar, `[N]`, `[1, N]`, `[M, 1]`,
//! `[M, N]`).
//!
//! **Rewrite**: `Y = Gemm(A, B', C')` with `beta = 1`; the Gemm takes over the BN's output name.
//!
//! **Math**: `BN(α·A·B + β·C) = α·A·(B·diag(s)) + (s·β·C + t)`, so
//! `B'[k,n] = s[n]·B[k,n]` (`B'[n,k]` with `transB=1`) and `C'[m,n] = s[n]·β·C[m,n] + t[n]`.

use super::{round_into, FoldInput, NodeChange, Planned, ProducerRewrite, SkipReason};
use crate::attr;
use crate::consts::broadcast_to;
use crate::scaled::Scaling;
use crate::tensor::Tensor;

/// Plans the fold of a BN into a Gemm.
pub fn plan(input: &FoldInput) -> Planned {
    let b = input.weight;
    let affine = input.affine;
    let channels = affine.channels();
    let trans_b = attr::int(input.node, "transB")?.unwrap_or(0) != 0;
    let beta = attr::float(input.node, "beta")?.unwrap_or(1.0) as f64;
    let n_axis = if trans_b { 0 } else { 1 };
    if b.dims.len() != 2 || b.dims[n_axis] != channels {
        return Ok(Err(SkipReason::ShapeMismatch {
            tensor: input.weight_name.to_string(),
            detail: format!(
                "Gemm weight of shape {:?} (transB={}) does not have the BN's {channels} outputs",
                b.dims, trans_b as u8
            ),
        }));
    }
    // transB: B is [N, K], a row per output; else [K, N], a column per output.
    let weight = if trans_b {
        Scaling::new(b.dims[1], affine.scale.clone())
    } else {
        Scaling::new(1, affine.scale.clone())
    };
    let c = match input.bias {
        None => Tensor::new(b.dtype, vec![1, channels], vec![0.0; channels]),
        Some(c) => {
            let rows = if c.dims.len() == 2 { c.dims[0] } else { 1 };
            match (c.dims.len() <= 2)
                .then(|| broadcast_to(c, &[rows, channels]))
                .flatten()
            {
                Some(full) => full,
                None => {
                    return Ok(Err(SkipReason::ShapeMismatch {
                        tensor: input.bias_name.to_string(),
                        detail: format!(
                            "Gemm C of shape {:?} does not broadcast to [M, {channels}]",
                            c.dims
                        ),
                    }))
                }
            }
        }
    };
    let bias: Vec<f64> = c
        .data
        .iter()
        .enumerate()
        .map(|(flat, &v)| {
            let n = flat % channels;
            affine.scale[n] * beta * v + affine.shift[n]
        })
        .collect();
    let keeps_matrix = input.bias.is_some_and(|c| c.dims.len() == 2) || c.dims[0] != 1;
    let bias_dims = if keeps_matrix {
        c.dims.clone()
    } else {
        vec![channels]
    };
    let bias_dtype = input.bias.map_or(b.dtype, |c| c.dtype);
    let rewrite = || -> Result<ProducerRewrite, SkipReason> {
        Ok(ProducerRewrite {
            weight_slot: input.weight_slot,
            weight,
            bias: round_into(bias_dtype, bias_dims, bias, input.bias_name)?,
            change: NodeChange::GemmBetaOne,
        })
    };
    Ok(rewrite())
}
