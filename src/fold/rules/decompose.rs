//! Standalone BatchNormalization → Mul, Add (on request, `--decompose-standalone`).
//!
//! **Pattern**: a BN that folds neither backward nor forward (on a graph input, after Add,
//! Concat or pooling).
//!
//! **Preconditions**: inference BN with constant parameters; the rank of its input is known.
//!
//! **Rewrite**: `Y = Add(Mul(X, s), t)`, for runtimes and accelerators without BatchNormalization.
//!
//! **Math**: `s = γ/√(σ²+ε)`, `t = β − μ·s`, each shaped `[C, 1, …]` (rank − 1 axes) so that it
//! broadcasts over channel axis 1; rounded once into the BN's data dtype.

use super::{round_into, Affine, SkipReason};
use crate::tensor::{Dtype, Tensor};

/// The `Mul` and `Add` constants that replace a BN with input of rank `rank`.
pub fn plan(
    affine: &Affine,
    rank: usize,
    dtype: Dtype,
    bn_name: &str,
) -> Result<(Tensor, Tensor), SkipReason> {
    let mut dims = vec![affine.channels()];
    dims.resize(rank.max(2) - 1, 1);
    Ok((
        round_into(dtype, dims.clone(), affine.scale.clone(), bn_name)?,
        round_into(dtype, dims, affine.shift.clone(), bn_name)?,
    ))
}
