//! The element loop of a weight's sums, in lanes: the terms of [`BLOCK`] elements (each one's
//! square and its two quantization errors squared) side by side, then added to the three sums
//! one element after the other, in order. Every term is the same IEEE operation as in the
//! element-by-element loop and every sum takes its terms in the same order, so the figures are
//! identical to the bit; only the work between the additions runs in vector registers.
//!
//! The loop is compiled three times ([`crate::isa`]): for the build's baseline, for AVX2 and for
//! AVX-512F, and the widest the processor has is chosen at run time (the build targets baseline
//! x86-64, whose two f64 lanes leave the terms slower than the additions they feed). No variant
//! contracts a multiplication and an addition: Rust never fuses them unasked.

use crate::isa::dispatch;
use crate::tensor::{self, Dtype};

/// The three running sums of a weight: `ΣW²` and the noise on the per-tensor and the channel's
/// grid.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Totals {
    /// `ΣW²`.
    pub signal: f64,
    /// `Σ(W − Q(W))²` on the per-tensor grid.
    pub tensor_noise: f64,
    /// `Σ(W − Q(W))²` on the channel's grid.
    pub channel_noise: f64,
}

/// Elements whose terms are computed side by side.
const BLOCK: usize = 8;

/// How far from an integer a step count may lie before the reciprocal is not trusted:
/// `v·(1/step)` is within 3.4e-16 relative of `v/step` as rounded (two roundings against one),
/// so within ±127 steps the two round to different integers only within 5e-14 of a half step.
const NEAR_HALF: f64 = 0.5 - 1e-9;

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

/// The terms of `v`: its square, its two quantization errors squared, and whether either
/// step count lies near a half step.
#[inline(always)]
fn terms(v: f64, grids: &Grids) -> (f64, f64, f64, bool) {
    let (t_step, t) = grids.tensor;
    let (c_step, c) = grids.channel;
    let (t_steps, t_nearest) = nearest_step(v * t);
    let (c_steps, c_nearest) = nearest_step(v * c);
    let near_half =
        ((t_steps - t_nearest).abs() > NEAR_HALF) | ((c_steps - c_nearest).abs() > NEAR_HALF);
    let t_error = v - t_nearest * t_step;
    let c_error = v - c_nearest * c_step;
    (v * v, t_error * t_error, c_error * c_error, near_half)
}

/// Adds the terms of `block` to `sums`, lanes first, then one element after the other.
#[inline(always)]
fn add_block(sums: &mut Totals, block: &[f64; BLOCK], grids: &Grids, near: &mut [bool; BLOCK]) {
    let mut signal = [0.0; BLOCK];
    let mut tensor_noise = [0.0; BLOCK];
    let mut channel_noise = [0.0; BLOCK];
    for i in 0..BLOCK {
        let (s, t, c, n) = terms(block[i], grids);
        (signal[i], tensor_noise[i], channel_noise[i]) = (s, t, c);
        near[i] |= n;
    }
    for i in 0..BLOCK {
        sums.signal += signal[i];
        sums.tensor_noise += tensor_noise[i];
        sums.channel_noise += channel_noise[i];
    }
}

/// Adds the terms of one element to `sums`.
#[inline(always)]
fn add_one(sums: &mut Totals, v: f64, grids: &Grids, near: &mut bool) {
    let (s, t, c, n) = terms(v, grids);
    sums.signal += s;
    sums.tensor_noise += t;
    sums.channel_noise += c;
    *near |= n;
}

/// The loop itself, inlined into each variant; whether any element lay near a half step.
#[inline(always)]
fn accumulate(sums: &mut Totals, values: ChannelValues, grids: &Grids) -> bool {
    let mut near = [false; BLOCK];
    match values {
        ChannelValues::Values(v) => {
            let mut blocks = v.chunks_exact(BLOCK);
            for b in &mut blocks {
                let block: [f64; BLOCK] = std::array::from_fn(|i| b[i]);
                add_block(sums, &block, grids, &mut near);
            }
            for &v in blocks.remainder() {
                add_one(sums, v, grids, &mut near[0]);
            }
        }
        ChannelValues::F32(raw) => {
            let mut blocks = raw.chunks_exact(4 * BLOCK);
            for b in &mut blocks {
                // Re-sliced to its known length, so the indexing below is checked once.
                let b = &b[..4 * BLOCK];
                let block: [f64; BLOCK] = std::array::from_fn(|i| {
                    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]) as f64
                });
                add_block(sums, &block, grids, &mut near);
            }
            for c in blocks.remainder().chunks_exact(4) {
                add_one(sums, f32_at(c), grids, &mut near[0]);
            }
        }
    }
    near.iter().any(|&n| n)
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
