//! The figures of a comparison: streaming error statistics of a tensor against its reference, the
//! default tolerances, and the seeded random numbers every sample is drawn from.

use std::collections::BTreeMap;

use super::{OutputCheck, VerifyOptions};
use crate::tensor::Dtype;

/// `max |x − y|` over two equally long value lists (NaN against anything else: infinite).
pub(crate) fn max_abs_difference(x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
        .fold(
            0.0,
            |m: f64, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
}

/// The default relative tolerance of a dtype: a few hundred ulps of accumulated rounding.
pub fn default_tolerance(dtype: Option<Dtype>) -> f64 {
    match dtype {
        Some(Dtype::F64) => 1e-9,
        Some(Dtype::F16) => 1e-2,
        Some(Dtype::Bf16) => 5e-2,
        _ => 1e-4,
    }
}

/// Streaming error statistics of one tensor: memory does not grow with the tensor's size.
pub(crate) struct Accumulator {
    rtol: f64,
    max_abs: f64,
    max_ref: f64,
    /// Largest `|a − b| − rtol·|a|`: the tensor passes when it is at most `atol`.
    worst_excess: f64,
    /// Largest relative error per binary exponent of `|a|`.
    max_rel_by_exponent: BTreeMap<i32, f64>,
}

impl Accumulator {
    pub(crate) fn new(rtol: f64) -> Accumulator {
        Accumulator {
            rtol,
            max_abs: 0.0,
            max_ref: 0.0,
            worst_excess: f64::NEG_INFINITY,
            max_rel_by_exponent: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, a: &[f64], b: &[f64]) {
        for (&x, &y) in a.iter().zip(b) {
            let same = x == y || (x.is_nan() && y.is_nan());
            let diff = if same { 0.0 } else { (x - y).abs() };
            let diff = if diff.is_nan() { f64::INFINITY } else { diff };
            self.max_abs = self.max_abs.max(diff);
            self.max_ref = self.max_ref.max(x.abs());
            if diff > 0.0 {
                let excess = diff - self.rtol * x.abs();
                let excess = if excess.is_nan() {
                    f64::INFINITY
                } else {
                    excess
                };
                self.worst_excess = self.worst_excess.max(excess);
                if x.abs() > 0.0 && x.is_finite() {
                    let exponent = x.abs().log2().floor() as i32;
                    let rel = self.max_rel_by_exponent.entry(exponent).or_insert(0.0);
                    *rel = rel.max(diff / x.abs());
                }
            }
        }
    }

    pub(crate) fn check(
        &self,
        name: &str,
        graph_output: bool,
        dtype: Option<Dtype>,
        o: &VerifyOptions,
    ) -> OutputCheck {
        let tol = default_tolerance(dtype);
        let atol = o.atol.unwrap_or(tol * self.max_ref.max(f64::MIN_POSITIVE));
        let max_rel = self
            .max_rel_by_exponent
            .iter()
            .filter(|(&e, _)| 2f64.powi(e) >= atol)
            .map(|(_, &r)| r)
            .fold(0.0, f64::max);
        OutputCheck {
            name: name.to_string(),
            graph_output,
            max_abs_error: self.max_abs,
            max_rel_error: max_rel,
            normalized_error: if self.max_ref > 0.0 {
                self.max_abs / self.max_ref
            } else {
                self.max_abs
            },
            max_magnitude: self.max_ref,
            atol,
            rtol: self.rtol,
            passed: self.worst_excess <= atol,
            reference: None,
        }
    }
}

/// splitmix64 with a Box–Muller normal: small, seeded, identical on every platform.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check of `candidate` against `reference` (f32 tolerances), with `atol` if given.
    fn checked(reference: &[f64], candidate: &[f64], atol: Option<f64>) -> OutputCheck {
        let mut errors = Accumulator::new(default_tolerance(Some(Dtype::F32)));
        errors.add(reference, candidate);
        let options = VerifyOptions {
            atol,
            ..VerifyOptions::default()
        };
        errors.check("y", true, Some(Dtype::F32), &options)
    }

    #[test]
    fn the_largest_relative_error_is_over_elements_at_least_the_absolute_tolerance() {
        // Errors of 1e-3, 5e-4 and 1e-4 on references 100, 0.5 and 0.004: relative 1e-5, 1e-3
        // and 0.025. The default absolute tolerance, 1e-4 of the largest magnitude (0.01),
        // leaves out 0.004 (below 0.01); an absolute tolerance of 1e-3 takes it in.
        let (reference, candidate) = ([100.0, 0.5, 0.004], [100.001, 0.5005, 0.0041]);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 1e-9;
        let by_default = checked(&reference, &candidate, None);
        assert!(near(by_default.atol, 0.01), "{}", by_default.atol);
        let relative = by_default.max_rel_error;
        assert!(near(relative, 1e-3), "{relative}");
        assert!(near(by_default.max_abs_error, 1e-3));
        assert!(near(by_default.normalized_error, 1e-5));
        let with_atol = checked(&reference, &candidate, Some(1e-3));
        let relative = with_atol.max_rel_error;
        assert!(near(relative, 0.025), "{relative}");
    }
}
