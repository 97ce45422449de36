//! BatchNormalization → (Flatten →) Gemm or MatMul (forward: a classifier head, or BN1d before a
//! Linear). A MatMul with a constant right-hand weight is the Gemm with `alpha = beta = 1`, no
//! `transB` and no `C`; it becomes that Gemm, with the shift as its `C`.
//!
//! **Pattern**: `Y = Gemm(A, B, C?)` with `A = BN(X)` for `X` of shape `[M, C]`, or
//! `A = Flatten(BN(X), axis=1)` for `X` of shape `[M, C, …]`; the BN's output (and the
//! Flatten's) feeds only this path and is not a graph output.
//!
//! **Preconditions**: `transA = 0`; `B` and `C` floating-point constants; `K` (the rows of
//! `op(B)`) a multiple of the BN's channel count, each channel repeated over the `K / C`
//! positions Flatten lays out after it (channel-major, row-major order).
//!
//! **Rewrite**: `Y = Gemm(X', B', C')` with `beta = 1`, the BN removed (Flatten kept).
//!
//! **Math**: with `a`, `c` per channel and `ch(k) = k / (K/C)`: `op(B)'[k,n] = a[ch(k)]·op(B)[k,n]`
//! and `C'[…,n] = β·C[…,n] + α·Σ_k c[ch(k)]·op(B)[k,n]`, since
//! `α·(A·diag(a) + 1·cᵀ)·op(B) + β·C = α·A·(diag(a)·op(B)) + α·1·(cᵀ·op(B)) + β·C`.

use super::{round_into, ConsumerRewrite, ForwardInput, PlannedForward, SkipReason};
use crate::scaled::Scaling;

/// Plans the forward fold of a BN into the Gemm that consumes it.
pub fn plan(input: &ForwardInput) -> PlannedForward {
    let w = input.weight;
    let affine = input.affine;
    let channels = affine.channels();
    let node = input.node;
    let int = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name() == name)
            .and_then(|a| a.i)
            .unwrap_or(0)
    };
    let float = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name() == name)
            .and_then(|a| a.f)
            .unwrap_or(1.0) as f64
    };
    if int("transA") != 0 {
        return Err(SkipReason::GemmTransposedA);
    }
    let trans_b = int("transB") == 1;
    let (alpha, beta) = (float("alpha"), float("beta"));
    if w.dims.len() != 2 {
        return Err(SkipReason::ShapeMismatch {
            tensor: input.weight_name.into(),
            detail: format!("Gemm weight of shape {:?} is not a matrix", w.dims),
        });
    }
    let (k, n) = if trans_b {
        (w.dims[1], w.dims[0])
    } else {
        (w.dims[0], w.dims[1])
    };
    if channels == 0
        || k % channels != 0
        || (input.positions != 0 && k != channels * input.positions)
    {
        return Err(SkipReason::ShapeMismatch {
            tensor: input.weight_name.into(),
            detail: format!("Gemm reads {k} features, not a whole number of positions for each of the BN's {channels} channels"),
        });
    }
    let per_channel = k / channels;
    let at = |row: usize, col: usize| {
        if trans_b {
            col * k + row
        } else {
            row * n + col
        }
    };
    let mut shift = vec![0.0; n];
    for row in 0..k {
        let ch = row / per_channel;
        for (col, s) in shift.iter_mut().enumerate() {
            *s += w.data[at(row, col)] * affine.shift[ch];
        }
    }
    // Row `row` of op(B) is scaled by a[row / per_channel]: in B = [K, N] a row is N
    // consecutive elements; in B = [N, K] (transB) the rows are the columns.
    let weight = if trans_b {
        Scaling::new(per_channel, affine.scale.clone())
    } else {
        Scaling::new(per_channel * n, affine.scale.clone())
    };
    let (dims, values): (Vec<usize>, Vec<f64>) = match input.bias {
        None => (vec![n], shift.iter().map(|s| alpha * s).collect()),
        Some(c) => {
            let rows = match c.dims.as_slice() {
                [_, _] if c.dims[0] > 1 => c.dims[0],
                _ => 1,
            };
            let value = |m: usize, col: usize| match c.dims.as_slice() {
                [] | [1] | [1, 1] => c.data[0],
                [len] | [1, len] if *len == n => c.data[col],
                [_, 1] => c.data[m],
                _ => c.data[m * n + col],
            };
            let ok = match c.dims.as_slice() {
                [] | [1] | [1, 1] => true,
                [len] | [1, len] => *len == n,
                [_, 1] => true,
                [_, len] => *len == n,
                _ => false,
            };
            if !ok {
                return Err(SkipReason::ShapeMismatch {
                    tensor: input.bias_name.into(),
                    detail: format!("C of shape {:?} does not broadcast to [M, {n}]", c.dims),
                });
            }
            let values = (0..rows)
                .flat_map(|m| (0..n).map(move |col| (m, col)))
                .map(|(m, col)| beta * value(m, col) + alpha * shift[col])
                .collect();
            (if rows > 1 { vec![rows, n] } else { vec![n] }, values)
        }
    };
    let bias_dtype = input.bias.map_or(w.dtype, |b| b.dtype);
    Ok(ConsumerRewrite {
        weight,
        bias: Some(round_into(bias_dtype, dims, values, input.bias_name)?),
        shift_add: None,
        gemm_beta_one: true,
    })
}
