//! MatMul → BatchNormalization.
//!
//! **Pattern**: `Y = BN(MatMul(A, W))` with `W` a constant (possibly a `Transpose` of one, which
//! the constant evaluator sees through).
//!
//! **Preconditions**: the product has rank 2 (BN's channel axis 1 is then the weight's output
//! axis; for rank ≥ 3 axis 1 is a batch-like axis of `A` and nothing folds); `W` is the right
//! operand, `[K, N]` with `N` the BN's channel count.
//!
//! **Rewrite**: `Y = Gemm(A, W', b)` (opset ≥ 7; bf16 needs opset 13), else
//! `Y = Add(MatMul(A, W'), b)`; the last node takes over the BN's output name.
//!
//! **Math**: `BN(A·W) = A·(W·diag(s)) + t`, so `W'[k,n] = s[n]·W[k,n]` and `b[n] = t[n]`.

use super::{round_into, FoldInput, NodeChange, Planned, ProducerRewrite, SkipReason};
use crate::scaled::Scaling;
use crate::tensor::Dtype;

/// Plans the fold of a BN into a MatMul.
pub fn plan(input: &FoldInput) -> Planned {
    if input.weight_slot != 1 {
        return Ok(Err(SkipReason::MatMulWeightOnLeft));
    }
    if input.output_rank != Some(2) {
        return Ok(Err(SkipReason::MatMulRank {
            rank: input.output_rank,
        }));
    }
    let w = input.weight;
    let affine = input.affine;
    let channels = affine.channels();
    if w.dims.len() != 2 || w.dims[1] != channels {
        return Ok(Err(SkipReason::ShapeMismatch {
            tensor: input.weight_name.to_string(),
            detail: format!(
                "MatMul weight of shape {:?} does not have the BN's {channels} outputs on axis 1",
                w.dims
            ),
        }));
    }
    let weight = Scaling::new(1, affine.scale.clone());
    let gemm_supports = input.opset >= 13 || (input.opset >= 7 && w.dtype != Dtype::Bf16);
    let rewrite = || -> Result<ProducerRewrite, SkipReason> {
        Ok(ProducerRewrite {
            weight_slot: 1,
            weight,
            bias: round_into(
                w.dtype,
                vec![channels],
                affine.shift.clone(),
                input.bias_name,
            )?,
            change: if gemm_supports {
                NodeChange::MatMulToGemm
            } else {
                NodeChange::MatMulThenAdd
            },
        })
    };
    Ok(rewrite())
}
