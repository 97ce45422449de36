//! Folded weights that are computed when they are written, not when they are planned.
//!
//! Every fold rewrites a weight the same way: each element is multiplied by a per-channel
//! factor, `W'[i] = f(i)·W[i]`. A [`ScaledTensor`] records the source tensor (its stored bytes
//! are not copied) and the [`Scaling`]s to apply, and produces the folded bytes a chunk at a
//! time: decode to f64, multiply by the product of the factors, round once into the tensor's
//! own dtype. A model's folded weights therefore never sit in memory together, and a weight
//! folded twice (a BN on each side of a Conv, or BN → BN) is still rounded only once.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::proto::TensorProto;
use crate::tensor::{self, Dtype, Tensor};

/// The largest product of factor magnitudes for which an f32 or f64 fold is not checked before
/// it is written (see [`ScaledTensor::fits`]).
pub const WIDE_FACTOR_LIMIT: f64 = 1e6;

/// Elements decoded and encoded per step: large enough that reading the source costs few
/// system calls, small enough that the buffers stay in cache.
const CHUNK: usize = 1 << 14;

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
        Ok(self.encode(store, &mut |_| Ok(()))?.is_none())
    }

    /// The first element of the source (before any scaling) that is NaN or infinite, with its
    /// value. Reads the source once, comparing bit patterns; only a chunk that holds such a
    /// value is decoded.
    pub fn first_not_finite(&self, store: &ExternalStore) -> Result<Option<(usize, f64)>> {
        let mut found = None;
        self.for_each_source_chunk(store, &mut |start, chunk| {
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

    /// Calls `sink` with the little-endian bytes of the scaled values, in order, a chunk at a
    /// time.
    pub fn stream(
        &self,
        store: &ExternalStore,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<()> {
        match self.encode(store, sink)? {
            None => Ok(()),
            Some(element) => Err(Error::tensor(
                &self.name,
                format!(
                    "folded element {element} is not finite in {} (scaled past its range)",
                    self.dtype.name()
                ),
            )),
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
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<Option<usize>> {
        let mut values = scratch(|s| std::mem::take(&mut s.values));
        let mut bytes = scratch(|s| std::mem::take(&mut s.bytes));
        let mut overflow = None;
        self.for_each_source_chunk(store, &mut |start, chunk| {
            bytes.clear();
            let bad = match chunk {
                Chunk::Raw(raw) if self.dtype == Dtype::F32 => {
                    scale_f32(raw, start, &self.scalings, &mut bytes)
                }
                _ => {
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
            sink(&bytes).map_err(|e| Error::tensor(&self.name, format!("writing: {e}")))
        })
        .or_else(|e| if overflow.is_some() { Ok(()) } else { Err(e) })?;
        scratch(|s| {
            s.values = values;
            s.bytes = bytes;
        });
        Ok(overflow)
    }

    /// Reads the source a chunk at a time: `f(first element, chunk)`, stored bytes as they are.
    fn for_each_source_chunk(
        &self,
        store: &ExternalStore,
        f: &mut dyn FnMut(usize, Chunk) -> Result<()>,
    ) -> Result<()> {
        let numel = self.len();
        let size = self.dtype.size();
        let stored = match &self.source {
            ScaledSource::Values(v) => return for_each_slice(&v.data, f),
            ScaledSource::Stored(t) => t,
        };
        let mut raw = scratch(|s| std::mem::take(&mut s.raw));
        let mut read_chunks = |read: &mut dyn FnMut(usize, &mut [u8]) -> Result<()>| {
            let mut start = 0;
            while start < numel {
                let end = (start + CHUNK).min(numel);
                raw.resize((end - start) * size, 0);
                read(start * size, &mut raw)?;
                f(start, Chunk::Raw(&raw))?;
                start = end;
            }
            Ok::<(), Error>(())
        };
        if tensor::is_external(stored) {
            let (path, offset) = store.locate(stored, numel * size)?;
            let (file, _) = crate::source::open_regular(&path)?;
            read_chunks(&mut |at, buf| {
                crate::source::read_exact_at(&file, buf, offset + at as u64)
                    .map_err(|e| Error::io(&path, e))
            })?;
            scratch(|s| s.raw = raw);
            return Ok(());
        }
        match stored.raw_data.as_ref().filter(|r| !r.is_empty()) {
            Some(data) if data.len() == numel * size => {
                read_chunks(&mut |at, buf| store.read_inline(stored.name(), data, at, buf))?;
                scratch(|s| s.raw = raw);
                Ok(())
            }
            Some(data) => Err(Error::tensor(
                stored.name(),
                format!(
                    "raw_data has {} bytes, the shape needs {}",
                    data.len(),
                    numel * size
                ),
            )),
            None => for_each_slice(&tensor::decode(stored, store)?.data, f),
        }
    }
}

/// Buffers reused from one tensor to the next (a fresh large allocation costs page faults).
#[derive(Default)]
struct Scratch {
    raw: Vec<u8>,
    values: Vec<f64>,
    bytes: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Runs `f` on this thread's scratch buffers (taken out while in use, so nesting is safe).
fn scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// A piece of a source: little-endian stored bytes, or values.
enum Chunk<'c> {
    Raw(&'c [u8]),
    Values(&'c [f64]),
}

/// The largest magnitude among little-endian floats of `dtype` (NaN when there is a NaN):
/// the maximum of the bit patterns without their sign, which orders like the magnitudes.
fn max_magnitude(dtype: Dtype, raw: &[u8]) -> f64 {
    fn widest<const N: usize>(raw: &[u8], mask: u64, bits: impl Fn([u8; N]) -> u64) -> u64 {
        raw.chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                bits(b) & mask
            })
            .max()
            .unwrap_or(0)
    }
    match dtype {
        Dtype::F32 => {
            // 31-bit patterns compare as i32: a loop the compiler vectorizes.
            let widest = raw
                .chunks_exact(4)
                .map(|c| {
                    (u32::from_le_bytes(c.try_into().unwrap_or_default()) & 0x7fff_ffff) as i32
                })
                .fold(0, i32::max);
            f32::from_bits(widest as u32) as f64
        }
        Dtype::F64 => f64::from_bits(widest(raw, u64::MAX >> 1, u64::from_le_bytes)),
        Dtype::F16 => {
            half::f16::from_bits(widest(raw, 0x7fff, |b| u16::from_le_bytes(b) as u64) as u16)
                .to_f64()
        }
        Dtype::Bf16 => {
            half::bf16::from_bits(widest(raw, 0x7fff, |b| u16::from_le_bytes(b) as u64) as u16)
                .to_f64()
        }
        _ => {
            let mut values = Vec::new();
            tensor::decode_le_into(dtype, raw, &mut values);
            values.iter().fold(0.0, |m, v| m.max(v.abs()))
        }
    }
}

fn for_each_slice(data: &[f64], f: &mut dyn FnMut(usize, Chunk) -> Result<()>) -> Result<()> {
    for (k, chunk) in data.chunks(CHUNK).enumerate() {
        f(k * CHUNK, Chunk::Values(chunk))?;
    }
    Ok(())
}

/// The common case in one pass: little-endian f32 elements `start..` of a source, each widened
/// to f64, multiplied by its factor and rounded once back to f32, appended to `out`. The index
/// (in `raw`) of the first result that is not finite, if any.
fn scale_f32(raw: &[u8], start: usize, scalings: &[Scaling], out: &mut Vec<u8>) -> Option<usize> {
    let count = raw.len() / 4;
    let base = out.len();
    out.resize(base + count * 4, 0);
    let target = &mut out[base..];
    let mut finite = true;
    let mut scale = |range: std::ops::Range<usize>, factor: &mut dyn FnMut() -> f64| {
        let bytes = range.start * 4..range.end * 4;
        for (o, c) in target[bytes.clone()]
            .chunks_exact_mut(4)
            .zip(raw[bytes].chunks_exact(4))
        {
            let mut b = [0u8; 4];
            b.copy_from_slice(c);
            let r = (f32::from_le_bytes(b) as f64 * factor()) as f32;
            finite &= r.is_finite();
            o.copy_from_slice(&r.to_le_bytes());
        }
    };
    match scalings {
        [only] if only.run == 1 => {
            let len = only.factors.len();
            let mut factors = only.factors.iter().cycle().skip(start % len).copied();
            scale(0..count, &mut || factors.next().unwrap_or(1.0));
        }
        _ => {
            let mut pos = 0;
            while pos < count {
                let (factor, segment) = segment_at(scalings, start + pos, count - pos);
                scale(pos..pos + segment, &mut || factor);
                pos += segment;
            }
        }
    }
    if finite {
        return None;
    }
    target
        .chunks_exact(4)
        .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
}

/// The product of the factors at element `at`, and for how many elements (at most `remaining`)
/// it stays the same.
fn segment_at(scalings: &[Scaling], at: usize, remaining: usize) -> (f64, usize) {
    let mut factor = 1.0;
    let mut segment = remaining;
    for s in scalings {
        factor *= s.factor(at);
        segment = segment.min(s.run - at % s.run);
    }
    (factor, segment)
}

/// Multiplies `values` (elements `start..start + values.len()`) by the product of the factors.
fn apply_scalings(scalings: &[Scaling], start: usize, values: &mut [f64]) {
    if let [only] = scalings {
        if only.run == 1 {
            let len = only.factors.len();
            let factors = only.factors.iter().cycle().skip(start % len);
            values.iter_mut().zip(factors).for_each(|(v, f)| *v *= f);
            return;
        }
    }
    let mut pos = 0;
    while pos < values.len() {
        let (factor, segment) = segment_at(scalings, start + pos, values.len() - pos);
        values[pos..pos + segment]
            .iter_mut()
            .for_each(|v| *v *= factor);
        pos += segment;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(
        dtype: Dtype,
        dims: Vec<usize>,
        data: Vec<f64>,
        scalings: Vec<Scaling>,
    ) -> ScaledTensor {
        let mut t = ScaledTensor::values("w", Arc::new(Tensor::new(dtype, dims, data)));
        t.scalings = scalings;
        t
    }

    #[test]
    fn runs_and_cycles_follow_the_row_major_layout() {
        // [2, 3]: per row (run 3) then per column (run 1, cycling).
        let t = scaled(
            Dtype::F64,
            vec![2, 3],
            vec![1.0; 6],
            vec![
                Scaling::new(3, vec![2.0, 3.0]),
                Scaling::new(1, vec![1.0, 10.0, 100.0]),
            ],
        );
        let store = ExternalStore::none();
        assert_eq!(
            t.decode(&store).unwrap().data,
            vec![2.0, 20.0, 200.0, 3.0, 30.0, 300.0]
        );
    }

    #[test]
    fn two_scalings_round_once() {
        // Scaled by 1.1 then by 1/1.1, the f16 weight 1.0 must stay 1.0. Rounded after each
        // factor it would not: 1.1 rounds to 1.0996 in f16, and 1.0996 / 1.1 to 0.99951.
        let t = scaled(
            Dtype::F16,
            vec![1],
            vec![1.0],
            vec![Scaling::new(1, vec![1.1]), Scaling::new(1, vec![1.0 / 1.1])],
        );
        assert_eq!(t.decode(&ExternalStore::none()).unwrap().data, vec![1.0]);
        let twice = Dtype::F16
            .round(Dtype::F16.round(1.1).unwrap() / 1.1)
            .unwrap();
        assert_eq!(twice, 0.99951171875);
    }

    #[test]
    fn overflow_is_found_by_the_bound_and_confirmed_element_wise() {
        let store = ExternalStore::none();
        // The bound (60000 · 2) overflows f16, but the large value sits in the channel scaled
        // by 0.5: every product fits.
        let fits = scaled(
            Dtype::F16,
            vec![2, 1],
            vec![60000.0, 1.0],
            vec![Scaling::new(1, vec![0.5, 2.0])],
        );
        assert!(fits.fits(&store).unwrap());
        let overflows = scaled(
            Dtype::F16,
            vec![2, 1],
            vec![60000.0, 1.0],
            vec![Scaling::new(1, vec![2.0, 0.5])],
        );
        assert!(!overflows.fits(&store).unwrap());
        let err = overflows.to_bytes(&store).unwrap_err().to_string();
        assert!(err.contains("'w'") && err.contains("float16"), "{err}");
    }
}
