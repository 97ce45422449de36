//! The inner loops of scaling: scratch buffers, chunks of a source, the f32 fast path, and the
//! factor segments of a run of elements.

use super::{Scaling, CHUNK};
use crate::error::Result;
use crate::isa::{dispatch, Isa};
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
        Dtype::F32 => largest_f32_bits(Isa::widest(), raw),
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

dispatch! {
    /// [`largest_f32_loop`] compiled for the variant given, a NaN winning.
    fn largest_f32_bits(raw: &[u8]) -> f64 = largest_f32_loop::<true>;
}

dispatch! {
    /// [`largest_f32_loop`] compiled for the variant given, NaN ignored (as `f64::max` does):
    /// the channel ranges of the readiness figures.
    pub(crate) fn largest_f32_ignoring_nan(raw: &[u8]) -> f64 = largest_f32_loop::<false>;
}

/// The largest magnitude among little-endian f32 values: the maximum of their bit patterns
/// without the sign, which order as the magnitudes do, compared as i32 (never negative once the
/// sign is cleared; a loop the compiler vectorizes). A NaN wins when `NAN_WINS`, else counts as
/// zero.
#[inline(always)]
fn largest_f32_loop<const NAN_WINS: bool>(raw: &[u8]) -> f64 {
    let widest = raw
        .chunks_exact(4)
        .map(|c| {
            let bits = (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff) as i32;
            match NAN_WINS || bits <= 0x7f80_0000 {
                true => bits,
                false => 0,
            }
        })
        .fold(0, i32::max);
    f32::from_bits(widest as u32) as f64
}

dispatch! {
    /// [`scale_f32_run_loop`] compiled for the variant given.
    fn scale_f32_run(target: &mut [u8], raw: &[u8], factor: f64) -> bool = scale_f32_run_loop;
}

/// Little-endian f32 elements of `raw`, each widened to f64, multiplied by `factor` and
/// rounded once back to f32, into `target` (as long); whether every result is finite.
#[inline(always)]
fn scale_f32_run_loop(target: &mut [u8], raw: &[u8], factor: f64) -> bool {
    let mut finite = true;
    for (o, c) in target.chunks_exact_mut(4).zip(raw.chunks_exact(4)) {
        finite &= scale_one(o, c, factor);
    }
    finite
}

/// The little-endian f32 in `c`, widened, multiplied by `factor` and rounded once back to f32,
/// into `o`; whether it is finite.
#[inline(always)]
fn scale_one(o: &mut [u8], c: &[u8], factor: f64) -> bool {
    let r = (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64 * factor) as f32;
    o.copy_from_slice(&r.to_le_bytes());
    r.is_finite()
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
/// to f64, multiplied by its factor and rounded once back to f32, into `target` (as many
/// bytes). The index (in `raw`) of the first result that is not finite, if any.
pub(super) fn scale_f32(
    raw: &[u8],
    start: usize,
    scalings: &[Scaling],
    target: &mut [u8],
) -> Option<usize> {
    let count = raw.len() / 4;
    let mut finite = true;
    match scalings {
        [only] if only.run == 1 => {
            let len = only.factors.len();
            let factors = only.factors.iter().cycle().skip(start % len);
            for ((o, c), factor) in target
                .chunks_exact_mut(4)
                .zip(raw.chunks_exact(4))
                .zip(factors)
            {
                finite &= scale_one(o, c, *factor);
            }
        }
        _ => {
            let isa = Isa::widest();
            let mut pos = 0;
            while pos < count {
                let (factor, segment) = segment_at(scalings, start + pos, count - pos);
                let bytes = pos * 4..(pos + segment) * 4;
                finite &= scale_f32_run(isa, &mut target[bytes.clone()], &raw[bytes], factor);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 bit patterns of every kind: normal values of both signs over many binades,
    /// subnormals, zeros, the largest finite, infinities and NaNs of both signs.
    fn patterns(len: usize, seed: u64) -> Vec<u8> {
        let mut next = super::super::tests::xorshift(seed);
        (0..len)
            .flat_map(|i| {
                let state = (next() >> 32) as u32;
                let bits = match i % 13 {
                    0 => 0x8000_0000,
                    1 => state & 0x807f_ffff,
                    2 => 0x7f7f_ffff | (state & 0x8000_0000),
                    _ => (state & 0x8fff_ffff) | 0x3000_0000,
                };
                bits.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn every_instruction_set_finds_the_largest_magnitude_of_the_baseline_loop() {
        // Every length around a vector's width, then an infinity and a NaN at each position
        // of 19 elements (a NaN wins, as the bit patterns order it).
        for len in 0..=41 {
            let raw = patterns(len, 0x9e37 + len as u64);
            let want = largest_f32_loop::<true>(&raw).to_bits();
            for isa in Isa::available() {
                assert_eq!(
                    largest_f32_bits(isa, &raw).to_bits(),
                    want,
                    "{isa:?}, {len}"
                );
            }
        }
        for at in 0..19 {
            for special in [f32::INFINITY, f32::NAN] {
                let mut raw = patterns(19, 7);
                raw[4 * at..4 * at + 4].copy_from_slice(&(-special).to_le_bytes());
                for isa in Isa::available() {
                    let got = largest_f32_bits(isa, &raw);
                    match special.is_nan() {
                        true => assert!(got.is_nan(), "{isa:?}, {at}"),
                        false => assert_eq!(got, f64::INFINITY, "{isa:?}, {at}"),
                    }
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_scales_as_the_formula_rounds() {
        // Each element widened, multiplied in f64 and rounded once to f32, against the
        // formula element by element; factors that overflow, reach subnormals or flip signs.
        for len in 0..=41 {
            let raw = patterns(len, 0x51 + len as u64);
            for factor in [1.0, -0.3, 1e-40, 3e38, f64::MIN_POSITIVE, 1.0 / 3.0] {
                let want: Vec<u8> = raw
                    .chunks_exact(4)
                    .flat_map(|c| {
                        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        ((v as f64 * factor) as f32).to_le_bytes()
                    })
                    .collect();
                let finite = want
                    .chunks_exact(4)
                    .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite());
                for isa in Isa::available() {
                    let mut got = vec![0xa5; raw.len()];
                    let all_finite = scale_f32_run(isa, &mut got, &raw, factor);
                    // NaN payloads may differ; everything else to the bit.
                    for (g, w) in got.chunks_exact(4).zip(want.chunks_exact(4)) {
                        let (g, w) = (
                            f32::from_le_bytes(g.try_into().unwrap()),
                            f32::from_le_bytes(w.try_into().unwrap()),
                        );
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{isa:?}, {len}, {factor}"
                        );
                    }
                    assert_eq!(all_finite, finite, "{isa:?}, {len}, {factor}");
                }
            }
        }
    }
}
