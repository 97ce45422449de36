//! The running sums behind a weight's SQNR figures: the signal `ΣW²` and the noise `Σ(W − Q(W))²`
//! under the per-tensor and the per-channel INT8 grid, each one f64 sum over the weight's
//! elements in order, channel after channel.
//!
//! The order is what makes every figure the same to the last digit whatever the weight's
//! layout or how it reaches the analysis. The terms run in vector lanes
//! ([`lanes`](super::lanes)), and so do the additions of a span that stays in its sums'
//! binades ([`binade`](super::binade)); the spans added in order run under the next span's
//! vector work, so the loop is bound by its vector instructions, not by the three chains of
//! additions (bench/RESULTS.md, session 22).

#[cfg(test)]
mod against_order;

#[cfg(target_arch = "x86_64")]
use super::avx512::Pending;
use super::binade::Totals;
use super::lanes::{ChannelValues, Grids, Isa, ROUND};

/// The running sums of a weight's figures, over its channels in order.
#[derive(Default)]
pub(super) struct Sums {
    /// `ΣW²` and the noise on the per-tensor grid and on each channel's, without the span
    /// still pending.
    totals: Totals,
    /// The terms added in lanes and not yet to `totals` ([`avx512`](super::avx512)).
    #[cfg(target_arch = "x86_64")]
    pending: Option<Box<Pending>>,
    /// Elements that are NaN or infinite.
    pub non_finite: usize,
}

impl Sums {
    /// Adds one channel's values. Each is quantized by a multiplication by the grid's
    /// reciprocal ([`lanes`](super::lanes)); when one of them lies near a half step, where the
    /// reciprocal and the quotient could round to different integers, the channel's noise is
    /// summed again with the division ([`quantize`]), so every sum is the one the division
    /// gives.
    /// `scratch` holds the widened values when that happens.
    pub fn add_channel(
        &mut self,
        values: ChannelValues,
        tensor: &Grid,
        channel: &Grid,
        scratch: &mut Vec<f64>,
    ) {
        self.add_channel_with(Isa::widest(), values, tensor, channel, scratch);
    }

    /// [`Sums::add_channel`] with the loop compiled for `isa`.
    fn add_channel_with(
        &mut self,
        isa: Isa,
        values: ChannelValues,
        tensor: &Grid,
        channel: &Grid,
        scratch: &mut Vec<f64>,
    ) {
        let (Some(t), Some(c)) = (tensor.reciprocal, channel.reciprocal) else {
            self.settle();
            scratch.clear();
            values.widen_into(scratch);
            self.add_divided(scratch, tensor, channel, true);
            return;
        };
        let grids = Grids {
            tensor: (tensor.step, t),
            channel: (channel.step, c),
        };
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512
            && super::avx512::accumulate(&mut self.totals, &mut self.pending, values, &grids)
        {
            let signal = self
                .pending
                .as_ref()
                .map(|p| p.signal_after(self.totals.signal));
            if !signal.unwrap_or(self.totals.signal).is_finite() {
                self.non_finite += values.non_finite();
            }
            return;
        }
        self.settle();
        let before = self.totals;
        let near_half = isa.accumulate(&mut self.totals, values, &grids);
        // A NaN or an infinity leaves the signal NaN or infinite for good, so the count is
        // taken only then (an overflow of finite squares counts nothing, as it should).
        if !self.totals.signal.is_finite() {
            self.non_finite += values.non_finite();
        }
        if near_half {
            (self.totals.tensor_noise, self.totals.channel_noise) =
                (before.tensor_noise, before.channel_noise);
            scratch.clear();
            values.widen_into(scratch);
            self.add_divided(scratch, tensor, channel, false);
        }
    }

    /// The sums of every value added (the span still pending added first).
    pub fn totals(&mut self) -> Totals {
        self.settle();
        self.totals
    }

    /// Adds the span still pending to the sums.
    fn settle(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if let Some(pending) = &mut self.pending {
            pending.settle_into(&mut self.totals);
        }
    }

    /// Adds the noise of `values` quantized by the division, and their signal when `signal`.
    fn add_divided(&mut self, values: &[f64], tensor: &Grid, channel: &Grid, signal: bool) {
        for &v in values {
            if signal {
                self.totals.signal += v * v;
                self.non_finite += usize::from(!v.is_finite());
            }
            self.totals.tensor_noise += (v - quantize(v, tensor.step)).powi(2);
            self.totals.channel_noise += (v - quantize(v, channel.step)).powi(2);
        }
    }
}

/// A symmetric INT8 grid of `step` and, where it is a positive finite number, its reciprocal.
pub(super) struct Grid {
    /// The grid's step.
    pub step: f64,
    reciprocal: Option<f64>,
}

impl Grid {
    /// The grid of `step`.
    pub fn new(step: f64) -> Grid {
        let reciprocal = 1.0 / step;
        Grid {
            step,
            reciprocal: (step > 0.0 && reciprocal.is_finite() && reciprocal > 0.0)
                .then_some(reciprocal),
        }
    }
}

/// Symmetric INT8: round to the grid of `step`, clipped to ±127 steps (clipping first gives
/// the same result: a value within ±127 rounds within ±127).
pub(crate) fn quantize(v: f64, step: f64) -> f64 {
    if step <= 0.0 {
        return 0.0;
    }
    let steps = (v / step).clamp(-127.0, 127.0);
    ((steps + ROUND) - ROUND) * step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_rounds_half_to_even_and_clips() {
        for (v, want) in [
            (63.5, 64.0),
            (62.5, 62.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
            (126.7, 127.0),
            (300.0, 127.0),
            (-300.0, -127.0),
        ] {
            assert_eq!(quantize(v, 1.0), want, "{v}");
            assert_eq!(quantize(v, 1.0), v.round_ties_even().clamp(-127.0, 127.0));
        }
    }

    /// The sums of one channel as the division gives them, one value after the other.
    fn divided(values: &[f64], tensor_step: f64, channel_step: f64) -> (u64, u64, u64) {
        let (mut signal, mut t, mut c) = (0.0f64, 0.0f64, 0.0f64);
        for &v in values {
            signal += v * v;
            t += (v - quantize(v, tensor_step)).powi(2);
            c += (v - quantize(v, channel_step)).powi(2);
        }
        (signal.to_bits(), t.to_bits(), c.to_bits())
    }

    #[test]
    fn sums_by_the_reciprocal_are_the_sums_by_the_division() {
        // Values on and around every half step of several grids, a sweep of each grid's whole
        // range, and grids without a usable reciprocal: every sum identical to the bit.
        for step in [
            1.0 / 127.0,
            0.1 / 127.0,
            3.3e-3,
            7.7e-9,
            1e-300,
            2.5e-310,
            0.0,
        ] {
            let mut near = Vec::new();
            for k in -128..=128 {
                for offset in [-1e-12, -1e-15, 0.0, 1e-15, 1e-12, 0.25] {
                    let v: f64 = (k as f64 + 0.5 + offset) * step;
                    let up = f64::from_bits(v.to_bits() + 1);
                    near.extend([v, up, -v]);
                }
            }
            // A low-discrepancy sweep, far from half steps or not.
            let sweep: Vec<f64> = (0..10_000)
                .map(|i| ((i as f64 * 0.618_033_988_749_895).fract() * 2.0 - 1.0) * 127.0 * step)
                .collect();
            for values in [&near, &sweep] {
                for channel_step in [step, step * 0.37] {
                    let mut sums = Sums::default();
                    let (tensor, channel) = (Grid::new(step), Grid::new(channel_step));
                    sums.add_channel(
                        ChannelValues::Values(values),
                        &tensor,
                        &channel,
                        &mut Vec::new(),
                    );
                    let totals = sums.totals();
                    let got = (
                        totals.signal.to_bits(),
                        totals.tensor_noise.to_bits(),
                        totals.channel_noise.to_bits(),
                    );
                    assert_eq!(got, divided(values, step, channel_step), "step {step}");
                }
            }
        }
    }

    /// The sums of `values` with the loop compiled for `isa`, as bits, and the count of
    /// non-finite elements.
    fn sums_with(isa: Isa, values: ChannelValues, tensor: f64, channel: f64) -> [u64; 4] {
        let mut sums = Sums::default();
        let grids = (Grid::new(tensor), Grid::new(channel));
        sums.add_channel_with(isa, values, &grids.0, &grids.1, &mut Vec::new());
        let totals = sums.totals();
        [
            totals.signal.to_bits(),
            totals.tensor_noise.to_bits(),
            totals.channel_noise.to_bits(),
            sums.non_finite as u64,
        ]
    }

    /// An xorshift generator of f32 values in `[-1, 1)`, widened.
    fn f32_values(mut state: u64) -> impl FnMut() -> f64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 as f64
        }
    }

    /// `values` as little-endian f32 bytes.
    fn f32_bytes(values: &[f64]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_instruction_set_gives_the_sums_of_the_element_loop() {
        // Every length around the block of eight, lengths around spans (several spans of
        // sums that grow through binades and meet f32 squares half-way on their grids), values
        // read as f64 and as f32 bytes, on a channel's own grid and on grids that clip: each
        // variant this processor runs gives the sums of the division, one element after the
        // other, to the bit.
        let mut next = f32_values(0x9e37_79b9_7f4a_7c15);
        for len in (0..=41).chain([127, 128, 129, 255, 256, 263, 300, 1000, 5000]) {
            let values: Vec<f64> = (0..len).map(|_| next()).collect();
            let raw = f32_bytes(&values);
            let range = values.iter().fold(0.0, |m: f64, v| m.max(v.abs()));
            for (tensor, channel) in [(range / 127.0, range / 254.0), (0.01, 0.003)] {
                let (s, t, c) = divided(&values, tensor, channel);
                for isa in Isa::available() {
                    for source in [ChannelValues::Values(&values), ChannelValues::F32(&raw)] {
                        let got = sums_with(isa, source, tensor, channel);
                        assert_eq!(got, [s, t, c, 0], "{isa:?}, {len} values, {source:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn channels_of_every_length_whole_or_in_pieces_give_the_sums_of_the_element_loop() {
        // A weight of 150 channels, each on its own grid, of every length around a block and a
        // span, added whole and cut into pieces as written chunks cut them, as f64 values and as
        // f32 bytes: every variant gives the sums of the division over the channels in order,
        // one element after the other, to the bit.
        let mut next = f32_values(0x2545_f491_4f6c_dd1d);
        let lengths = (1..=40).chain([63, 64, 65, 127, 128, 129, 200, 257, 1000]);
        let channels: Vec<Vec<f64>> = lengths
            .cycle()
            .take(150)
            .enumerate()
            .map(|(k, len)| {
                let scale = (1 + k % 7) as f64;
                (0..len).map(|_| (next() * scale) as f32 as f64).collect()
            })
            .collect();
        let range = |c: &Vec<f64>| c.iter().fold(0.0, |m: f64, v| m.max(v.abs()));
        let tensor = Grid::new(channels.iter().map(range).fold(0.0, f64::max) / 127.0);
        let (mut s, mut t, mut c) = (0.0f64, 0.0f64, 0.0f64);
        for values in &channels {
            let channel_step = range(values) / 127.0;
            for &v in values {
                s += v * v;
                t += (v - quantize(v, tensor.step)).powi(2);
                c += (v - quantize(v, channel_step)).powi(2);
            }
        }
        for isa in Isa::available() {
            for piece in [usize::MAX, 5, 64] {
                for as_f32 in [false, true] {
                    let mut sums = Sums::default();
                    for values in &channels {
                        let channel = Grid::new(range(values) / 127.0);
                        for part in values.chunks(piece.min(values.len())) {
                            let raw = f32_bytes(part);
                            let source = match as_f32 {
                                true => ChannelValues::F32(&raw),
                                false => ChannelValues::Values(part),
                            };
                            sums.add_channel_with(isa, source, &tensor, &channel, &mut Vec::new());
                        }
                    }
                    let got = sums.totals();
                    assert_eq!(
                        [got.signal, got.tensor_noise, got.channel_noise].map(f64::to_bits),
                        [s, t, c].map(f64::to_bits),
                        "{isa:?}, pieces of {piece}, f32 bytes {as_f32}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_counts_non_finite_elements() {
        // A NaN and an infinity at every position of 19 values (two blocks and a remainder).
        for at in 0..19 {
            let mut values: Vec<f64> = (0..19).map(|k| (k as f64 * 0.37).sin()).collect();
            values[at] = f64::NAN;
            values[(at + 7) % 19] = f64::NEG_INFINITY;
            let raw = f32_bytes(&values);
            for isa in Isa::available() {
                for source in [ChannelValues::Values(&values), ChannelValues::F32(&raw)] {
                    let [signal, .., non_finite] = sums_with(isa, source, 0.01, 0.005);
                    assert!(f64::from_bits(signal).is_nan(), "{isa:?}, at {at}");
                    assert_eq!(non_finite, 2, "{isa:?}, at {at}");
                }
            }
        }
    }

    #[test]
    fn a_value_the_reciprocal_rounds_the_other_way_is_quantized_by_the_division() {
        // Grids on which the reciprocal and the division round an f32 value to different
        // integers whose errors squared differ (found by search). The value comes first, where
        // the sum is its term, and last, after a block of eight: both noises are the division's.
        let grids: [(f64, f64); 6] = [
            (0.0020023735623862877, 0.1992361694574356),
            (0.021281156046637176, -0.925730288028717),
            (0.0010637647575802273, -0.11967353522777557),
            (0.005724633441251867, 0.1459781527519226),
            (0.010235176669607918, 0.7113447785377502),
            (0.0021706338411842294, -0.16605348885059357),
        ];
        for (step, v) in grids {
            assert_ne!(
                (v * (1.0 / step)).round_ties_even(),
                (v / step).round_ties_even()
            );
            let q = (0.25 * step) as f32 as f64;
            let values = [v, q, q, q, q, q, q, q, v];
            let raw = f32_bytes(&values);
            let (s, t, c) = divided(&values, step, step);
            for isa in Isa::available() {
                for source in [ChannelValues::Values(&values), ChannelValues::F32(&raw)] {
                    assert_eq!(sums_with(isa, source, step, step), [s, t, c, 0], "{isa:?}");
                }
            }
        }
    }
}
