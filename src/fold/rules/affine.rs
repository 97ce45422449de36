//! A BatchNormalization as the per-channel affine map `y = scale·x + shift`, and rounding a
//! folded value once into its dtype.

use super::SkipReason;
use crate::tensor::{Dtype, Tensor};

/// The per-channel affine map of an inference BatchNormalization, `y = scale·x + shift`, with
/// any constant added between the producer and the BN already moved into `shift`.
#[derive(Clone, Debug, PartialEq)]
pub struct Affine {
    /// `γ / √(σ² + ε)`
    pub scale: Vec<f64>,
    /// `β − μ·scale` (+ `scale·c` for a constant `c` added before the BN)
    pub shift: Vec<f64>,
}

impl Affine {
    /// The number of channels.
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// `max |scale − 1|`: how much the fold changes a weight, relatively.
    pub fn max_rel_change(&self) -> f64 {
        self.scale
            .iter()
            .map(|s| (s - 1.0).abs())
            .fold(0.0, f64::max)
    }

    /// The constant `d = shift / scale`, shaped `[C, 1, …]` for data of rank `rank`, such that
    /// `scale·(X + d)` is the BN: what stays as an `Add` when only the scale can fold forward.
    pub fn shift_before(
        &self,
        rank: usize,
        dtype: Dtype,
        name: &str,
    ) -> Result<Tensor, SkipReason> {
        if let Some(channel) = self.scale.iter().position(|a| *a == 0.0 || !a.is_finite()) {
            return Err(SkipReason::ZeroScaleUnderPadding { channel });
        }
        let d: Vec<f64> = self
            .shift
            .iter()
            .zip(&self.scale)
            .map(|(c, a)| c / a)
            .collect();
        let mut dims = vec![self.channels()];
        dims.resize(rank.max(2) - 1, 1);
        round_into(dtype, dims, d, name)
    }
}

/// Checks that a bias has one value per output channel and returns its values (zeros if absent).
pub fn bias_values(
    bias: Option<&Tensor>,
    bias_name: &str,
    channels: usize,
) -> Result<Vec<f64>, SkipReason> {
    match bias {
        None => Ok(vec![0.0; channels]),
        Some(b) if b.len() == channels => Ok(b.data.clone()),
        Some(b) => Err(SkipReason::ShapeMismatch {
            tensor: bias_name.to_string(),
            detail: format!("bias has {} values for {channels} channels", b.len()),
        }),
    }
}

/// Rounds every value of `values` into `dtype`; a value that does not fit skips the fold.
pub fn round_into(
    dtype: Dtype,
    dims: Vec<usize>,
    values: Vec<f64>,
    name: &str,
) -> Result<Tensor, SkipReason> {
    let out_of_range = || SkipReason::FoldedValueOutOfRange {
        tensor: name.to_string(),
    };
    let mut data = values;
    let fits = match dtype {
        Dtype::F64 => data.iter().all(|v| v.is_finite()),
        Dtype::F32 => data.iter_mut().fold(true, |fits, v| {
            *v = *v as f32 as f64;
            fits & v.is_finite()
        }),
        _ => data.iter_mut().fold(true, |fits, v| match dtype.round(*v) {
            Some(r) if r.is_finite() => {
                *v = r;
                fits
            }
            _ => false,
        }),
    };
    if !fits {
        return Err(out_of_range());
    }
    Ok(Tensor::new(dtype, dims, data))
}
