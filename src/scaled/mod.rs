//! Folded weights that are computed when they are written, not when they are planned.
//!
//! Every fold rewrites a weight the same way: each element is multiplied by a per-channel
//! factor, `W'[i] = f(i)·W[i]`. A [`ScaledTensor`] records the source tensor (its stored bytes
//! are not copied) and the [`Scaling`]s to apply, and produces the folded bytes a chunk at a
//! time: decode to f64, multiply by the product of the factors, round once into the tensor's
//! own dtype. A model's folded weights therefore never sit in memory together, and a weight
//! folded twice (a BN on each side of a Conv, or BN → BN) is still rounded only once.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::proto::TensorProto;
use crate::tensor::{self, Dtype, Tensor};

mod kernels;
mod maxima;
mod reading;
pub(crate) use kernels::largest_f32_ignoring_nan;
use kernels::{apply_scalings, max_magnitude, scale_f32, scratch, Chunk};
pub use maxima::MIN_SHARED_FACTOR;
pub use reading::SourceRead;

/// The largest product of factor magnitudes for which an f32 or f64 fold is not checked before
/// it is written (see [`ScaledTensor::fits`]).
pub const WIDE_FACTOR_LIMIT: f64 = 1e6;

/// Elements decoded and encoded per step: large enough that reading the source costs few
/// system calls, small enough that the buffers stay in cache.
pub(crate) const CHUNK: usize = 1 << 14;

/// Sources of at least this many elements are checked for non-finite values in two halves at
/// once: planning reads every candidate weight before anything is written, and that read is
/// otherwise a stretch where one core works alone.
const SPLIT_CHECK: usize = 1 << 18;

/// `W'[i] = factors[(i / run) % factors.len()] · W[i]` over the row-major elements: the factor
/// stays the same for `run` consecutive elements and the factors repeat with their own length.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaling {
    /// Consecutive elements that share a factor (at least 1).
    pub run: usize,
    /// The factors, in the order the runs meet them.
    pub factors: Vec<f64>,
}

impl Scaling {
    /// Scales blocks of `run` elements by `factors`, cycling through them.
    pub fn new(run: usize, factors: Vec<f64>) -> Scaling {
        Scaling {
            run: run.max(1),
            factors,
        }
    }

    /// The factor of element `index`.
    pub fn factor(&self, index: usize) -> f64 {
        self.factors[(index / self.run) % self.factors.len()]
    }

    fn max_abs(&self) -> f64 {
        self.factors.iter().fold(0.0, |m, f| m.max(f.abs()))
    }
}

/// Where a scaled tensor's values come from.
#[derive(Clone, Debug)]
pub enum ScaledSource {
    /// A stored tensor (initializer or `Constant` value): inline, typed or external.
    Stored(Box<TensorProto>),
    /// Values computed from constants (e.g. `Transpose` of an initializer).
    Values(Arc<Tensor>),
}

/// A tensor defined as its source times per-channel factors, materialized when read.
#[derive(Clone, Debug)]
pub struct ScaledTensor {
    /// The name errors refer to.
    pub name: String,
    /// The element type, the source's.
    pub dtype: Dtype,
    /// The shape, the source's.
    pub dims: Vec<usize>,
    /// The unscaled values.
    pub source: ScaledSource,
    /// Applied in order; their product multiplies each element before the one rounding.
    pub scalings: Vec<Scaling>,
}

impl ScaledTensor {
    /// A stored tensor as it is.
    pub fn stored(t: &TensorProto) -> Result<ScaledTensor> {
        Ok(ScaledTensor {
            name: t.name().to_string(),
            dtype: tensor::proto_dtype(t)?,
            dims: tensor::proto_dims(t)?,
            source: ScaledSource::Stored(Box::new(t.clone())),
            scalings: Vec::new(),
        })
    }

    /// Computed values as they are.
    pub fn values(name: &str, value: Arc<Tensor>) -> ScaledTensor {
        ScaledTensor {
            name: name.to_string(),
            dtype: value.dtype,
            dims: value.dims.clone(),
            source: ScaledSource::Values(value),
            scalings: Vec::new(),
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This tensor with one more scaling.
    pub fn then(&self, scaling: Scaling) -> ScaledTensor {
        let mut scaled = self.clone();
        scaled.scalings.push(scaling);
        scaled
    }

    /// Whether every scaled value is finite and fits the dtype. Reads the source once for its
    /// largest magnitude; only when that bound overflows are the products themselves checked.
    ///
    /// For f32 and f64 with factors under [`WIDE_FACTOR_LIMIT`] the answer is yes without
    /// reading: only a weight above 3·10³² (or one already infinite or NaN) could fail, and the
    /// one rounding at write time still checks every value, failing with the tensor's name.
    pub fn fits(&self, store: &ExternalStore) -> Result<bool> {
        let factor_bound = self.scalings.iter().fold(1.0, |b, s| b * s.max_abs());
        if self.scalings.is_empty()
            || (matches!(self.dtype, Dtype::F32 | Dtype::F64) && factor_bound <= WIDE_FACTOR_LIMIT)
        {
            return Ok(true);
        }
        let mut largest = 0.0f64;
        self.for_each_source_chunk(store, &mut |_, chunk| {
            largest = largest.max(match chunk {
                Chunk::Raw(raw) => max_magnitude(self.dtype, raw),
                Chunk::Values(values) => {
                    values.iter().fold(
                        0.0,
                        |m, v| {
                            if v.is_nan() {
                                f64::NAN
                            } else {
                                m.max(v.abs())
                            }
                        },
                    )
                }
            });
            Ok(())
        })?;
        if !largest.is_finite() {
            return Ok(false);
        }
        let bound = largest * factor_bound;
        if self.dtype.round(bound).is_some_and(f64::is_finite) {
            return Ok(true);
        }
        Ok(self
            .encode(store, SourceRead::Copied, &mut |_| Ok(()))?
            .is_none())
    }

    /// The first element of the source (before any scaling) that is NaN or infinite, with its
    /// value. Reads the source once, comparing bit patterns; only a chunk that holds such a
    /// value is decoded. A stored source of at least `SPLIT_CHECK` elements is read in two
    /// halves at once, the second on a thread of its own.
    pub fn first_not_finite(&self, store: &ExternalStore) -> Result<Option<(usize, f64)>> {
        let numel = self.len();
        if numel < SPLIT_CHECK || matches!(self.source, ScaledSource::Values(_)) {
            return self.first_not_finite_in(store, 0..numel);
        }
        let mid = numel / 2;
        std::thread::scope(|scope| {
            let second = std::thread::Builder::new()
                .name("bnfold-check".into())
                .spawn_scoped(scope, || self.first_not_finite_in(store, mid..numel));
            let Ok(second) = second else {
                return self.first_not_finite_in(store, 0..numel);
            };
            let first = self.first_not_finite_in(store, 0..mid);
            let second = second
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            match first? {
                Some(found) => Ok(Some(found)),
                None => second,
            }
        })
    }

    /// [`ScaledTensor::first_not_finite`] among the source's elements `range`.
    fn first_not_finite_in(
        &self,
        store: &ExternalStore,
        range: Range<usize>,
    ) -> Result<Option<(usize, f64)>> {
        let mut found = None;
        self.source_chunks(store, range, &mut |start, chunk| {
            if found.is_some() {
                return Ok(());
            }
            let at = match chunk {
                Chunk::Raw(raw) if max_magnitude(self.dtype, raw).is_finite() => None,
                Chunk::Raw(raw) => tensor::decode_le(self.dtype, raw)
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !v.is_finite())
                    .map(|(i, &v)| (start + i, v)),
                Chunk::Values(values) => values
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !v.is_finite())
                    .map(|(i, &v)| (start + i, v)),
            };
            found = at;
            Ok(())
        })?;
        Ok(found)
    }

    /// Calls `sink` with the scaled values' little-endian bytes, in order, a chunk at a time.
    pub fn stream(
        &self,
        store: &ExternalStore,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<()> {
        self.stream_chunks(store, SourceRead::Copied, &mut |chunk| sink(chunk))
    }

    /// [`ScaledTensor::stream`], the source read as `read` says, each chunk in a buffer the
    /// sink may keep by swapping in one of its own (any length and contents: the next chunk is
    /// written over it): no copy.
    pub fn stream_chunks(
        &self,
        store: &ExternalStore,
        read: SourceRead,
        sink: &mut dyn FnMut(&mut Vec<u8>) -> std::io::Result<()>,
    ) -> Result<()> {
        match self.encode(store, read, sink)? {
            None => Ok(()),
            Some(element) => Err(Error::FoldedNotFinite {
                tensor: self.name.clone(),
                element,
                dtype: self.dtype.name().to_string(),
            }),
        }
    }

    /// The scaled values' bytes.
    pub fn to_bytes(&self, store: &ExternalStore) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len() * self.dtype.size());
        self.stream(store, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// The scaled values as computed in f64, before their one rounding into the dtype (what a
    /// further exact computation on the weight starts from).
    pub fn exact(&self, store: &ExternalStore) -> Result<Tensor> {
        let mut data = Vec::with_capacity(self.len());
        self.for_each_source_chunk(store, &mut |start, chunk| {
            let first = data.len();
            match chunk {
                Chunk::Raw(raw) => tensor::decode_le_into(self.dtype, raw, &mut data),
                Chunk::Values(v) => data.extend_from_slice(v),
            }
            apply_scalings(&self.scalings, start, &mut data[first..]);
            Ok(())
        })?;
        Ok(Tensor::new(self.dtype, self.dims.clone(), data))
    }

    /// The scaled values, rounded into the dtype, widened to f64.
    pub fn decode(&self, store: &ExternalStore) -> Result<Tensor> {
        let bytes = self.to_bytes(store)?;
        let mut data = Vec::with_capacity(self.len());
        tensor::decode_le_into(self.dtype, &bytes, &mut data);
        Ok(Tensor::new(self.dtype, self.dims.clone(), data))
    }

    /// Encodes into `sink`; the index of the first value that does not fit, if any.
    fn encode(
        &self,
        store: &ExternalStore,
        read: SourceRead,
        sink: &mut dyn FnMut(&mut Vec<u8>) -> std::io::Result<()>,
    ) -> Result<Option<usize>> {
        let mut values = scratch(|s| std::mem::take(&mut s.values));
        let mut bytes = scratch(|s| std::mem::take(&mut s.bytes));
        let mut overflow = None;
        let mut each = |start, chunk: Chunk| {
            let bad = match chunk {
                Chunk::Raw(raw) if self.dtype == Dtype::F32 => {
                    // Every byte is written over: a buffer long enough already is not cleared.
                    bytes.resize(raw.len() - raw.len() % 4, 0);
                    scale_f32(raw, start, &self.scalings, &mut bytes)
                }
                _ => {
                    bytes.clear();
                    values.clear();
                    match chunk {
                        Chunk::Raw(raw) => tensor::decode_le_into(self.dtype, raw, &mut values),
                        Chunk::Values(v) => values.extend_from_slice(v),
                    }
                    apply_scalings(&self.scalings, start, &mut values);
                    tensor::encode_le_into(self.dtype, &values, &mut bytes)
                }
            };
            if let Some(bad) = bad {
                overflow = Some(start + bad);
                return Err(Error::tensor(&self.name, "out of range"));
            }
            sink(&mut bytes).map_err(|e| Error::tensor(&self.name, format!("writing: {e}")))
        };
        match read {
            SourceRead::Copied => self.for_each_source_chunk(store, &mut each),
            SourceRead::InPlace => self.for_each_mapped_chunk(store, &mut each),
        }
        .or_else(|e| if overflow.is_some() { Ok(()) } else { Err(e) })?;
        scratch(|s| {
            s.values = values;
            s.bytes = bytes;
        });
        Ok(overflow)
    }
}

#[cfg(test)]
mod tests;
