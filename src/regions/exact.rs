//! A region judged by its arithmetic: the original region evaluated in f64 is the exact value
//! (to 2⁻⁵³, far below any dtype's rounding), and the fused nodes pass when their error against
//! it is no worse than a small factor of the original region's own error, plus a floor of a few
//! units of rounding of `M = Σ|W|·|x| + |b|` (what rounding the folded weights once may move an
//! output element by, at most half a unit).
//!
//! Errors are measured in units of rounding of each element's `M`: `|y − exact| / (u·M)`, `u`
//! the unit roundoff of the region's dtype (2⁻²⁴ for f32). That is tight for a shallow Conv,
//! fair to an ill-conditioned one (a large amplification or cancellation makes the original's
//! own error large, and the bound follows it), and meaningful in f16 and bf16 (bf16 regions,
//! which tract does not run, compute in f32 from their exact bf16 values).

use super::arithmetic::Arithmetic;
use crate::certificate::ulps::unit;
use crate::model::Model;
use crate::tensor::Dtype;
use crate::verify::{
    default_tolerance, fixed_runner, to_tract, Accumulator, ExactCheck, OutputCheck, Runner,
    SplitMix, VerifyOptions,
};

/// The fused nodes may be this many times as far from the exact value as the original region.
pub const ORIGINAL_ERROR_FACTOR: f64 = 4.0;
/// And this many units of rounding of `M` beyond that (rounding the folded weights once moves an
/// element by at most half of one).
pub const FLOOR_UNITS: f64 = 2.0;

/// The four models of a region (or of a batch of them merged), with one output per region.
pub(super) struct RegionModels {
    /// The original region, as stored (f32 for a bf16 region).
    pub(super) original: Model,
    /// The fused nodes, likewise.
    pub(super) fused: Model,
    /// The original region in f64.
    pub(super) exact: Model,
    /// The fused nodes on magnitudes (in f32).
    pub(super) magnitudes: Model,
}

/// What each region's output is measured in: its stored dtype and the terms of each output
/// element's dot product.
#[derive(Clone, Copy, Debug)]
pub(super) struct Units {
    pub(super) dtype: Dtype,
    pub(super) terms: usize,
}

impl Units {
    fn roundoff(self) -> f64 {
        0.5 * unit(self.dtype, 1.0)
    }

    /// The bound for an original error of `original` units.
    fn bound(self, original: f64) -> f64 {
        let reference_no_wider = if self.dtype == Dtype::F64 {
            self.terms as f64
        } else {
            0.0
        };
        ORIGINAL_ERROR_FACTOR * original + FLOOR_UNITS + reference_no_wider
    }
}

/// Runs `models` on seeded random inputs (one per region, the values representable in the
/// region's dtype) and judges each output (named `outputs`, measured in `units`), with the
/// fused output's comparison against the original's (the report's figures); `Err` when tract
/// cannot run one of the models.
pub(super) fn judge(
    models: &RegionModels,
    outputs: &[String],
    units: &[Units],
    options: &VerifyOptions,
) -> std::result::Result<Vec<(ExactCheck, OutputCheck)>, String> {
    let (original, shapes) = fixed_runner(&models.original, outputs)?;
    let run = |m: &Model| fixed_runner(m, outputs).map(|(r, _)| r);
    let (fused, exact, magnitudes): (Runner, Runner, Runner) = (
        run(&models.fused)?,
        run(&models.exact)?,
        run(&models.magnitudes)?,
    );
    if shapes.len() != units.len() || outputs.len() != units.len() {
        return Err("a region model without one input and one output per region".into());
    }
    let mut stats = vec![Stats::default(); outputs.len()];
    let mut against_original: Vec<Accumulator> = units
        .iter()
        .map(|u| Accumulator::new(options.rtol.unwrap_or(default_tolerance(Some(u.dtype)))))
        .collect();
    let mut rng = SplitMix(options.seed);
    for _ in 0..options.samples.max(1) {
        let mut stored = Vec::new();
        let mut wide = Vec::new();
        let mut abs = Vec::new();
        for ((dtype, shape), u) in shapes.iter().zip(units) {
            let n: usize = shape.iter().product();
            let values: Vec<f64> = (0..n)
                .map(|_| u.dtype.round(rng.normal()).unwrap_or(0.0))
                .collect();
            stored.push(to_tract(*dtype, shape, &values));
            wide.push(to_tract(Dtype::F64, shape, &values));
            let magnitudes: Vec<f64> = values.iter().map(|v| v.abs()).collect();
            abs.push(to_tract(magnitudes_dtype(u.dtype), shape, &magnitudes));
        }
        let o = original.run(&stored)?;
        let f = fused.run(&stored)?;
        let e = exact.run(&wide)?;
        let m = magnitudes.run(&abs)?;
        for (k, s) in stats.iter_mut().enumerate() {
            let lens = [o[k].len(), f[k].len(), e[k].len(), m[k].len()];
            if lens.iter().any(|&l| l != lens[0]) {
                return Err(format!(
                    "'{}' has {lens:?} values in the four runs",
                    outputs[k]
                ));
            }
            s.add(&o[k], &f[k], &e[k], &m[k], units[k]);
            against_original[k].add(&o[k], &f[k]);
        }
    }
    Ok(stats
        .iter()
        .zip(units)
        .zip(against_original.iter().zip(outputs))
        .map(|((s, &u), (acc, name))| {
            let bound = u.bound(s.original);
            let exact = ExactCheck {
                fused_error_units: s.fused,
                original_error_units: s.original,
                bound_units: bound,
                unit_roundoff: u.roundoff(),
                passed: s.fused <= bound,
            };
            (exact, acc.check(name, false, Some(u.dtype), options))
        })
        .collect())
}

/// The largest errors seen, in units of rounding of `M`.
#[derive(Clone, Debug, Default)]
struct Stats {
    original: f64,
    fused: f64,
}

impl Stats {
    fn add(&mut self, o: &[f64], f: &[f64], e: &[f64], m: &[f64], u: Units) {
        let roundoff = u.roundoff();
        // Below the dtype's smallest spacing an element is exact or flushed: no unit to count.
        let tiny = unit(u.dtype, 0.0);
        let units = |y: f64, exact: f64, magnitude: f64| {
            let off = (y - exact).abs() - tiny;
            match off {
                off if off <= 0.0 => 0.0,
                off => {
                    // A sum of magnitudes that overflowed its dtype is at least that dtype's
                    // largest value: measuring against it is conservative.
                    let magnitude = match (magnitude, magnitudes_dtype(u.dtype)) {
                        (m, Dtype::F32) if m == f64::INFINITY => f64::from(f32::MAX),
                        (m, _) if m == f64::INFINITY => f64::MAX,
                        (m, _) => m,
                    };
                    let r = off / (roundoff * magnitude);
                    if r.is_nan() {
                        f64::INFINITY
                    } else {
                        r
                    }
                }
            }
        };
        for k in 0..o.len() {
            self.original = self.original.max(units(o[k], e[k], m[k]));
            self.fused = self.fused.max(units(f[k], e[k], m[k]));
        }
    }
}

/// The dtype a region's magnitudes are computed in: f32 (fast), f64 for f64 regions.
fn magnitudes_dtype(dtype: Dtype) -> Dtype {
    match dtype {
        Dtype::F64 => Dtype::F64,
        _ => Dtype::F32,
    }
}

/// The arithmetic each of the four models is built in, for a region stored as `dtype`.
pub(super) fn arithmetics(dtype: Dtype) -> [Arithmetic; 4] {
    let stored = match dtype {
        Dtype::Bf16 => Arithmetic::Widened(Dtype::F32),
        _ => Arithmetic::Stored,
    };
    [
        stored,
        stored,
        Arithmetic::Widened(Dtype::F64),
        Arithmetic::Magnitudes(magnitudes_dtype(dtype)),
    ]
}
