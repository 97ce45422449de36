//! Distances in units in the last place, and a rewritten tensor against its exact values.

use super::TensorCheck;
use crate::tensor::{Dtype, Tensor};

/// `stored` (shape `dims` of the expectation) against `expected` = (values, the magnitude of
/// their terms, the relative slack of computing them in f64), element by element.
pub(super) fn compare(
    name: &str,
    stored: &Tensor,
    (expected, terms, slack): (&[f64], &[f64], f64),
    dims: &[usize],
    rounded: &[(Vec<f64>, Vec<f64>)],
) -> TensorCheck {
    let bound = 0.5 + 1e-9;
    let mut check = TensorCheck {
        tensor: name.to_string(),
        elements: expected.len(),
        max_ulps: 0.0,
        first_bad_element: None,
        bound_ulps: bound,
        within_float_arithmetic: true,
    };
    if stored.dims != dims || stored.len() != expected.len() {
        check.first_bad_element = Some(0);
        check.max_ulps = f64::INFINITY;
        check.within_float_arithmetic = false;
        return check;
    }
    let float_slack = 4.0 * 0.5 * unit(stored.dtype, 1.0);
    for (k, ((&v, &e), &m)) in stored.data.iter().zip(expected).zip(terms).enumerate() {
        // Half an ulp of each intermediate rounding, carried by the scales applied after it.
        let carried: f64 = rounded
            .iter()
            .map(|(value, since)| 0.5 * unit(stored.dtype, value[k]) * since[k])
            .sum();
        let beyond = ((v - e).abs() - slack * m - carried).max(0.0);
        let off = ulps(stored.dtype, e, e + beyond.copysign(v - e));
        if off > check.max_ulps || off.is_nan() {
            check.max_ulps = if off.is_nan() { f64::INFINITY } else { off };
        }
        if (off > bound || off.is_nan()) && check.first_bad_element.is_none() {
            check.first_bad_element = Some(k);
        }
        if off > bound || off.is_nan() {
            let beyond_float = (beyond - float_slack * m).max(0.0);
            let off_float = ulps(stored.dtype, e, e + beyond_float.copysign(v - e));
            if off_float > bound || off_float.is_nan() {
                check.within_float_arithmetic = false;
            }
        }
    }
    check
}

/// `|stored − exact|` in units in the last place of `dtype`, the unit taken at the larger of
/// the two magnitudes.
pub fn ulps(dtype: Dtype, exact: f64, stored: f64) -> f64 {
    if exact == stored {
        return 0.0;
    }
    (stored - exact).abs() / unit(dtype, exact.abs().max(stored.abs()))
}

/// One unit in the last place of `dtype` at `magnitude` (the subnormal spacing below the
/// smallest normal).
pub fn unit(dtype: Dtype, magnitude: f64) -> f64 {
    let (precision, min_exponent) = match dtype {
        Dtype::F32 => (24, -126),
        Dtype::F16 => (11, -14),
        Dtype::Bf16 => (8, -126),
        _ => (53, -1022),
    };
    let magnitude = magnitude.abs();
    let exponent = if magnitude > 0.0 && magnitude.is_finite() {
        ((magnitude.to_bits() >> 52) & 0x7ff) as i32 - 1023
    } else {
        min_exponent
    };
    power_of_two(exponent.max(min_exponent) - (precision - 1))
}

/// `2^e` for the exponents of f64's normal range and below it to its smallest subnormal, by its
/// bits (`powi` costs a call per element of every certified tensor).
fn power_of_two(e: i32) -> f64 {
    match e {
        -1022..=1023 => f64::from_bits(((e + 1023) as u64) << 52),
        -1074..=-1023 => f64::from_bits(1u64 << (e + 1074)),
        _ => 2f64.powi(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn power_of_two_by_bits_is_powi_over_the_whole_range() {
        for e in -1022..1100 {
            assert_eq!(super::power_of_two(e), 2f64.powi(e), "2^{e}");
        }
        // Below the normal range powi divides by an overflowing power; the bits are exact.
        for e in -1074..-1022 {
            assert_eq!(
                super::power_of_two(e),
                2f64.powi(e + 60) / 2f64.powi(60),
                "2^{e}"
            );
        }
    }
}
