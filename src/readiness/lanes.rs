//! The element loop of a weight's sums, in lanes: the terms of [`BLOCK`] elements (each one's
//! square and its two quantization errors squared) side by side, then added to the three sums:
//! a span of [`SPAN`] terms at once where that gives the bits of the additions one after the
//! other ([`binade`](super::binade)), otherwise one element after the other, in order. Every
//! term is the same IEEE operation as in the element-by-element loop and every sum is the one
//! the terms give in order, so the figures are identical to the bit.
//!
//! The loop is compiled three times ([`crate::isa`]): for the build's baseline, for AVX2 and for
//! AVX-512F, and the widest the processor has is chosen at run time (the build targets baseline
//! x86-64, whose two f64 lanes leave the terms slower than the additions they feed). No variant
//! contracts a multiplication and an addition: Rust never fuses them unasked.

use super::binade::{add_in_order, Span, Totals, SPAN};
use crate::isa::dispatch;
use crate::tensor::{self, Dtype};

/// Elements whose terms are computed side by side.
pub(super) const BLOCK: usize = 8;

/// How far from an integer a step count may lie before the reciprocal is not trusted:
/// `v·(1/step)` is within 3.4e-16 relative of `v/step` as rounded (two roundings against one),
/// so within ±127 steps the two round to different integers only within 5e-14 of a half step.
pub(super) const NEAR_HALF: f64 = 0.5 - 1e-9;

/// Adding and subtracting 1.5·2^52 rounds an f64 below 2^51 to the nearest integer, ties to
/// even, in the default rounding mode: no call to the math library on targets without SSE4.1.
pub(super) const ROUND: f64 = 6_755_399_441_055_744.0;

/// One channel's elements as the sums read them.
#[derive(Clone, Copy, Debug)]
pub(super) enum ChannelValues<'a> {
    /// Values widened to f64.
    Values(&'a [f64]),
    /// Little-endian f32 elements, widened as they are read.
    F32(&'a [u8]),
}

impl ChannelValues<'_> {
    /// Appends the values, widened to f64, to `out`.
    pub fn widen_into(self, out: &mut Vec<f64>) {
        match self {
            ChannelValues::Values(v) => out.extend_from_slice(v),
            ChannelValues::F32(raw) => tensor::decode_le_into(Dtype::F32, raw, out),
        }
    }

    /// The number of values that are NaN or infinite.
    pub fn non_finite(self) -> usize {
        match self {
            ChannelValues::Values(v) => v.iter().filter(|v| !v.is_finite()).count(),
            ChannelValues::F32(raw) => raw
                .chunks_exact(4)
                .filter(|c| !f32_at(c).is_finite())
                .count(),
        }
    }
}

/// The f32 in the first four bytes of `c`, widened.
#[inline(always)]
fn f32_at(c: &[u8]) -> f64 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64
}

/// The two INT8 grids of a channel, as steps and their reciprocals.
#[derive(Clone, Copy)]
pub(super) struct Grids {
    /// The per-tensor grid's step and reciprocal.
    pub tensor: (f64, f64),
    /// The channel's own grid's step and reciprocal.
    pub channel: (f64, f64),
}

/// `steps` clipped to ±127 and its nearest integer, ties to even.
#[inline(always)]
fn nearest_step(steps: f64) -> (f64, f64) {
    let steps = steps.clamp(-127.0, 127.0);
    (steps, (steps + ROUND) - ROUND)
}

/// The terms of `v`: its square, its two quantization errors squared, and the larger distance
/// of its two step counts from their nearest integers.
#[inline(always)]
fn terms_of(v: f64, grids: &Grids) -> (f64, f64, f64, f64) {
    let (t_step, t) = grids.tensor;
    let (c_step, c) = grids.channel;
    let (t_steps, t_nearest) = nearest_step(v * t);
    let (c_steps, c_nearest) = nearest_step(v * c);
    let off = larger((t_steps - t_nearest).abs(), (c_steps - c_nearest).abs());
    let t_error = v - t_nearest * t_step;
    let c_error = v - c_nearest * c_step;
    (v * v, t_error * t_error, c_error * c_error, off)
}

/// The larger of `a` and `b`, or `b` when either is NaN (one instruction, where `f64::max`
/// takes three): a NaN element leaves its sums NaN whatever its distance from a half step.
#[inline(always)]
fn larger(a: f64, b: f64) -> f64 {
    if a > b {
        a
    } else {
        b
    }
}

/// The terms of `block`, side by side: the squares and the two noises.
#[inline(always)]
fn block_terms(block: &[f64; BLOCK], grids: &Grids, off: &mut [f64; BLOCK]) -> [[f64; BLOCK]; 3] {
    let mut terms = [[0.0; BLOCK]; 3];
    for i in 0..BLOCK {
        let (s, t, c, o) = terms_of(block[i], grids);
        (terms[0][i], terms[1][i], terms[2][i]) = (s, t, c);
        off[i] = larger(o, off[i]);
    }
    terms
}

/// Adds the terms of `count` blocks to `sums`: whole spans through
/// [`binade`](super::binade), the blocks left one element after the other (their terms side
/// by side all the same).
#[inline(always)]
fn add_blocks(
    sums: &mut Totals,
    count: usize,
    block: impl Fn(usize) -> [f64; BLOCK],
    grids: &Grids,
    off: &mut [f64; BLOCK],
) {
    const SPAN_BLOCKS: usize = SPAN / BLOCK;
    let spans = count / SPAN_BLOCKS;
    if spans > 0 {
        let mut span = Span::new();
        for s in 0..spans {
            for b in 0..SPAN_BLOCKS {
                let [signal, tensor_noise, channel_noise] =
                    block_terms(&block(s * SPAN_BLOCKS + b), grids, off);
                let at = b * BLOCK..(b + 1) * BLOCK;
                span.signal[at.clone()].copy_from_slice(&signal);
                span.tensor_noise[at.clone()].copy_from_slice(&tensor_noise);
                span.channel_noise[at].copy_from_slice(&channel_noise);
            }
            span.add_to(sums);
        }
    }
    for b in spans * SPAN_BLOCKS..count {
        let [signal, tensor_noise, channel_noise] = block_terms(&block(b), grids, off);
        add_in_order(sums, &signal, &tensor_noise, &channel_noise);
    }
}

/// Adds the terms of one element to `sums`.
#[inline(always)]
fn add_one(sums: &mut Totals, v: f64, grids: &Grids, off: &mut f64) {
    let (s, t, c, n) = terms_of(v, grids);
    sums.signal += s;
    sums.tensor_noise += t;
    sums.channel_noise += c;
    *off = larger(n, *off);
}

/// The loop itself, inlined into each variant; whether any element lay near a half step (an
/// element's distance from its nearest step is kept per lane, the largest).
#[inline(always)]
fn accumulate(sums: &mut Totals, values: ChannelValues, grids: &Grids) -> bool {
    let mut off = [0.0; BLOCK];
    match values {
        ChannelValues::Values(v) => {
            let blocks = v.len() / BLOCK;
            let block = |b: usize| -> [f64; BLOCK] {
                let b = &v[BLOCK * b..][..BLOCK];
                std::array::from_fn(|i| b[i])
            };
            add_blocks(sums, blocks, block, grids, &mut off);
            for &v in &v[BLOCK * blocks..] {
                add_one(sums, v, grids, &mut off[0]);
            }
        }
        ChannelValues::F32(raw) => {
            let blocks = raw.len() / (4 * BLOCK);
            let block = |b: usize| -> [f64; BLOCK] {
                // Re-sliced to its known length, so the indexing below is checked once.
                let b = &raw[4 * BLOCK * b..][..4 * BLOCK];
                std::array::from_fn(|i| {
                    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]) as f64
                })
            };
            add_blocks(sums, blocks, block, grids, &mut off);
            for c in raw[4 * BLOCK * blocks..].chunks_exact(4) {
                add_one(sums, f32_at(c), grids, &mut off[0]);
            }
        }
    }
    off.iter().any(|&off| off > NEAR_HALF)
}

pub(super) use crate::isa::Isa;

dispatch! {
    /// [`accumulate`] compiled for the variant given.
    fn accumulate_with(sums: &mut Totals, values: ChannelValues, grids: &Grids) -> bool = accumulate;
}

impl Isa {
    /// Adds the terms of `values` to `sums` with this variant; whether any element lay near a
    /// half step.
    pub(super) fn accumulate(
        self,
        sums: &mut Totals,
        values: ChannelValues,
        grids: &Grids,
    ) -> bool {
        accumulate_with(self, sums, values, grids)
    }
}
