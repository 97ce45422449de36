//! The largest written magnitude of each run of a scaled tensor's elements, known before it
//! is written: what the readiness figures take as channel ranges, so that their sums can run
//! on the written bytes themselves as they stream out.

use super::kernels::{max_magnitude, segment_at, Chunk};
use super::ScaledTensor;
use crate::error::Result;
use crate::external::ExternalStore;
use crate::tensor;

/// The fewest consecutive elements sharing a factor for which [`ScaledTensor::run_maxima`]
/// reads the source's maxima instead of declining.
pub const MIN_SHARED_FACTOR: usize = 8;

impl ScaledTensor {
    /// Whether [`ScaledTensor::run_maxima`] can read the maxima of runs of `run` elements:
    /// `run` divides the tensor and the factor stays the same for at least
    /// [`MIN_SHARED_FACTOR`] consecutive elements (else reading the maxima costs as much as
    /// scaling).
    pub fn has_run_maxima(&self, run: usize) -> bool {
        let shared = self.scalings.iter().fold(run, |g, s| gcd(g, s.run));
        run > 0
            && self.len().is_multiple_of(run)
            && (self.scalings.is_empty() || shared >= MIN_SHARED_FACTOR)
    }

    /// The largest magnitude of the scaled values (as written, rounded into the dtype) in each
    /// run of `run` elements, read from the source alone: rounding is monotone and symmetric,
    /// so among elements that share a factor `F` the largest written magnitude is the source's
    /// largest `m` scaled, `round(m·|F|)`. For a `run` that [`ScaledTensor::has_run_maxima`]
    /// accepts (any other is read element by element, as slowly as scaling).
    pub fn run_maxima(&self, store: &ExternalStore, run: usize) -> Result<Vec<f64>> {
        let numel = self.len();
        let run = run.max(1);
        let size = self.dtype.size();
        let mut maxima = vec![0.0f64; numel.div_ceil(run)];
        let mut one = Vec::with_capacity(1);
        let mut bytes = Vec::with_capacity(size);
        self.for_each_mapped_chunk(store, &mut |start, chunk| {
            let count = match chunk {
                Chunk::Raw(raw) => raw.len() / size,
                Chunk::Values(v) => v.len(),
            };
            let mut pos = 0;
            while pos < count {
                let at = start + pos;
                let (factor, segment) = segment_at(&self.scalings, at, count - pos);
                let segment = segment.min(run - at % run);
                let largest = match chunk {
                    Chunk::Raw(raw) => {
                        max_magnitude(self.dtype, &raw[pos * size..][..segment * size])
                    }
                    Chunk::Values(v) => v[pos..pos + segment]
                        .iter()
                        .fold(0.0, |m: f64, v| m.max(v.abs())),
                };
                // The one rounding the writer applies, through the same encoder and decoder.
                one.clear();
                one.push(largest * factor.abs());
                bytes.clear();
                let _ = tensor::encode_le_into(self.dtype, &one, &mut bytes);
                one.clear();
                tensor::decode_le_into(self.dtype, &bytes, &mut one);
                let slot = &mut maxima[at / run];
                *slot = slot.max(one.first().copied().unwrap_or(f64::NAN).abs());
                pos += segment;
            }
            Ok(())
        })?;
        Ok(maxima)
    }
}

/// The greatest common divisor.
fn gcd(a: usize, b: usize) -> usize {
    match b {
        0 => a,
        _ => gcd(b, a % b),
    }
}
