//! The inner loops of scaling: scratch buffers, chunks of a source, the f32 fast path, and the
//! factor segments of a run of elements.

use super::{Scaling, CHUNK};
use crate::error::Result;
use crate::tensor::{self, Dtype};

/// Buffers reused from one tensor to the next (a fresh large allocation costs page faults).
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) raw: Vec<u8>,
    pub(super) values: Vec<f64>,
    pub(super) bytes: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Runs `f` on this thread's scratch buffers (taken out while in use, so nesting is safe).
pub(super) fn scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// A piece of a source: little-endian stored bytes, or values.
pub(super) enum Chunk<'c> {
    Raw(&'c [u8]),
    Values(&'c [f64]),
}

/// The largest magnitude among little-endian floats of `dtype` (NaN when there is a NaN):
/// the maximum of the bit patterns without their sign, which orders like the magnitudes.
pub(super) fn max_magnitude(dtype: Dtype, raw: &[u8]) -> f64 {
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

pub(super) fn for_each_slice(
    data: &[f64],
    first: usize,
    f: &mut dyn FnMut(usize, Chunk) -> Result<()>,
) -> Result<()> {
    for (k, chunk) in data.chunks(CHUNK).enumerate() {
        f(first + k * CHUNK, Chunk::Values(chunk))?;
    }
    Ok(())
}

/// The common case in one pass: little-endian f32 elements `start..` of a source, each widened
/// to f64, multiplied by its factor and rounded once back to f32, appended to `out`. The index
/// (in `raw`) of the first result that is not finite, if any.
pub(super) fn scale_f32(
    raw: &[u8],
    start: usize,
    scalings: &[Scaling],
    out: &mut Vec<u8>,
) -> Option<usize> {
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
pub(super) fn segment_at(scalings: &[Scaling], at: usize, remaining: usize) -> (f64, usize) {
    let mut factor = 1.0;
    let mut segment = remaining;
    for s in scalings {
        factor *= s.factor(at);
        segment = segment.min(s.run - at % s.run);
    }
    (factor, segment)
}

/// Multiplies `values` (elements `start..start + values.len()`) by the product of the factors.
pub(super) fn apply_scalings(scalings: &[Scaling], start: usize, values: &mut [f64]) {
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
