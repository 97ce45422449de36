//! A span of terms added to the three running sums at once, to the bit the sums one term after
//! the other give, when the span stays inside its sums' binades; otherwise one after the other.
//!
//! Pattern: a running sum `s` and non-negative terms `t₁ … tₙ` (squares), summed in order:
//! `sₖ₊₁ = fl(sₖ + tₖ)`. Each addition waits on the one before, which bounds the loop at the
//! latency of an addition per term and sum.
//!
//! Math: let `b = 2^e ≤ s < 2b` be the binade of `s`; its grid has the step `u = b·2⁻⁵²`.
//! `rₖ = fl(b + tₖ) − b` is `tₖ` rounded to the nearest multiple of `u` (the subtraction is
//! exact), and `dₖ = tₖ − rₖ` is exact too, with `|dₖ| ≤ u/2`. If no `|dₖ|` equals `u/2` (no
//! tie, where the parity of the sum decides) and `s + Σr < 2b`, then by induction every
//! `sₖ + tₖ` lies inside `[b, 2b − u/2)`, rounds to the grid of `u`, and so rounds to
//! `sₖ + rₖ`: the sequential result is `s + Σr`. The `rₖ` are multiples of `u`, so any
//! grouping of their sum is exact while it stays below `2b`, and a sum that reaches `2b` is
//! seen to reach it (rounding is monotone), so the terms add in vector lanes. A NaN or an
//! infinity fails the test `s + Σr < 2b`; a sum below [`LEAST`] (zero, or near the subnormal
//! range where `u/2` is not exact) passes only when every term is zero.
//!
//! Rewrite: none; a span that fails the test is added one term after the other, as it always
//! was: at a weight's start, where a sum doubles, and where a term falls exactly half-way on
//! the sum's grid (an f32 value's square has 48 significant bits, so that is common while a
//! sum is within some 2¹² of its terms, and rare later).

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

/// Terms in a span: the terms kept to add again one after the other when a span leaves a
/// binade.
pub(super) const SPAN: usize = 128;

/// The least sum whose binade the lanes use: `2⁻⁹⁶⁰`, far above the subnormals, so `u/2` is a
/// normal number.
pub(super) const LEAST: f64 = f64::MIN_POSITIVE * (1u64 << 62) as f64;

/// `2⁻⁵³`: half the step of a binade's grid, relative to its start.
pub(super) const HALF_STEP: f64 = 1.0 / (1u64 << 53) as f64;

/// The three kinds of terms of [`SPAN`] elements: the squares and the two noises.
pub(super) struct Span {
    /// The squares, `W²`.
    pub signal: [f64; SPAN],
    /// The noise on the per-tensor grid.
    pub tensor_noise: [f64; SPAN],
    /// The noise on the channel's grid.
    pub channel_noise: [f64; SPAN],
}

impl Span {
    /// A span of zero terms.
    pub fn new() -> Span {
        Span {
            signal: [0.0; SPAN],
            tensor_noise: [0.0; SPAN],
            channel_noise: [0.0; SPAN],
        }
    }

    /// Adds the span's terms to `sums`, to the bit as one after the other: in lanes when every
    /// sum stays in its binade, otherwise one after the other.
    #[inline(always)]
    pub fn add_to(&self, sums: &mut Totals) {
        let ends = (
            end_in_binade(sums.signal, &self.signal),
            end_in_binade(sums.tensor_noise, &self.tensor_noise),
            end_in_binade(sums.channel_noise, &self.channel_noise),
        );
        if let (Some(signal), Some(tensor_noise), Some(channel_noise)) = ends {
            *sums = Totals {
                signal,
                tensor_noise,
                channel_noise,
            };
            return;
        }
        add_in_order(sums, &self.signal, &self.tensor_noise, &self.channel_noise);
    }
}

/// Adds the terms to `sums` one element after the other, in order (the three slices are as
/// long).
#[inline(always)]
pub(super) fn add_in_order(
    sums: &mut Totals,
    signal: &[f64],
    tensor_noise: &[f64],
    channel_noise: &[f64],
) {
    for ((s, t), c) in signal.iter().zip(tensor_noise).zip(channel_noise) {
        sums.signal += s;
        sums.tensor_noise += t;
        sums.channel_noise += c;
    }
}

/// `start` plus `terms` one after the other, when the sum stays in the binade of `start` and
/// no term is a tie on its grid.
#[inline(always)]
fn end_in_binade(start: f64, terms: &[f64; SPAN]) -> Option<f64> {
    let base = binade_of(start);
    let mut rounded = [0.0; SPAN];
    let mut off = [0.0; SPAN];
    for i in 0..SPAN {
        rounded[i] = (base + terms[i]) - base;
        off[i] = (terms[i] - rounded[i]).abs();
    }
    // Halves folded onto halves: exact while below `2b`, and seen to reach it otherwise.
    let mut width = SPAN / 2;
    while width > 0 {
        for i in 0..width {
            rounded[i] += rounded[i + width];
            // Not `f64::max`: a NaN fails the test of the sum anyway.
            off[i] = if off[i + width] > off[i] {
                off[i + width]
            } else {
                off[i]
            };
        }
        width /= 2;
    }
    settle(start, base, rounded[0], off[0])
}

/// The start `b` of the binade of `start`, the sum a span is added to (a negative sum, which
/// sums of squares never are, keeps its sign and fails the test of [`settle`]).
#[inline(always)]
pub(super) fn binade_of(start: f64) -> f64 {
    f64::from_bits(start.to_bits() & 0xfff0_0000_0000_0000)
}

/// The sum one after the other of a span's terms from `start`, given `total`, the sum in any
/// grouping of the terms rounded to the grid of `base = binade_of(start)`, and `worst`, the
/// largest distance of a term from its rounding: `start + total` when the span stays in the
/// binade and no term is a tie; `None` when it must be added one term after the other.
#[inline(always)]
pub(super) fn settle(start: f64, base: f64, total: f64, worst: f64) -> Option<f64> {
    if total == 0.0 && worst == 0.0 {
        // Every term is zero: the sum stays as it was.
        return Some(start);
    }
    let end = start + total;
    (base >= LEAST && worst < base * HALF_STEP && end < 2.0 * base).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `start` plus `terms`, one after the other.
    fn in_order(start: f64, terms: &[f64; SPAN]) -> f64 {
        terms.iter().fold(start, |sum, t| sum + t)
    }

    /// A span whose three kinds of terms are `terms`.
    fn span_of(terms: [f64; SPAN]) -> Span {
        Span {
            signal: terms,
            tensor_noise: terms,
            channel_noise: terms,
        }
    }

    /// Checks the lanes against the terms one after the other from `start`: the same bits
    /// whenever the lanes answer, and from [`Span::add_to`] always. Whether the lanes answered.
    fn check(start: f64, terms: [f64; SPAN]) -> bool {
        let want = in_order(start, &terms);
        let lanes = end_in_binade(start, &terms);
        if let Some(end) = lanes {
            assert_eq!(end.to_bits(), want.to_bits(), "start {start:e}, {terms:?}");
        }
        let mut sums = Totals {
            signal: start,
            tensor_noise: start,
            channel_noise: start,
        };
        span_of(terms).add_to(&mut sums);
        for got in [sums.signal, sums.tensor_noise, sums.channel_noise] {
            assert_eq!(got.to_bits(), want.to_bits(), "start {start:e}, {terms:?}");
        }
        lanes.is_some()
    }

    /// An xorshift generator of uniform numbers in `[0, 1)`.
    fn uniform(mut state: u64) -> impl FnMut() -> f64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn spans_of_squares_add_in_lanes_to_the_bits_of_the_sum_in_order() {
        // Squares of f32 values (48 significant bits, so exact ties on the sum's grid are
        // common while the sum is small) and of f64 values, spread over ranges of magnitude,
        // from sums of every size a weight's sums go through: every answer is the sum in order,
        // and the lanes answer for most spans once the sum is well above its terms.
        let mut next = uniform(0x9e37_79b9_7f4a_7c15);
        let (mut spans, mut in_lanes) = (0, 0);
        for start_in_terms in [0.0, 1.0, 100.0, 1e4, 1e6, 1e9] {
            for spread in [1.0f64, 1e3, 1e12] {
                for f32_values in [true, false] {
                    let (mut sum_spans, mut sum_in_lanes) = (0, 0);
                    for _ in 0..200 {
                        let terms: [f64; SPAN] = std::array::from_fn(|_| {
                            let v = (next() * 2.0 - 1.0) * spread.powf(-next());
                            let v = if f32_values { v as f32 as f64 } else { v };
                            v * v
                        });
                        let start = start_in_terms * SPAN as f64 * next();
                        sum_spans += 1;
                        sum_in_lanes += usize::from(check(start, terms));
                    }
                    if start_in_terms >= 1e6 {
                        assert!(
                            sum_in_lanes * 10 >= sum_spans * 9,
                            "{sum_in_lanes}/{sum_spans}"
                        );
                    }
                    (spans, in_lanes) = (spans + sum_spans, in_lanes + sum_in_lanes);
                }
            }
        }
        assert!(in_lanes * 2 > spans, "{in_lanes} of {spans} spans in lanes");
    }

    #[test]
    fn a_tie_on_the_grid_is_added_in_order() {
        // 1 + 2⁻⁵² plus 2⁻⁵³ lies half-way between two neighbours and rounds to the even one,
        // 1 + 2⁻⁵¹; the term rounded on its own would be lost. The lanes decline.
        let start = 1.0 + f64::EPSILON;
        let mut terms = [0.0; SPAN];
        terms[37] = f64::EPSILON / 2.0;
        assert_eq!(end_in_binade(start, &terms), None);
        assert!(!check(start, terms));
        assert_eq!(in_order(start, &terms), 1.0 + 2.0 * f64::EPSILON);
        // Just below the tie the term is lost in both, and the lanes answer.
        terms[37] = f64::EPSILON / 2.0 * (1.0 - f64::EPSILON);
        assert!(check(start, terms));
    }

    #[test]
    fn a_sum_that_leaves_its_binade_is_added_in_order() {
        // 1.9 plus 128 × 0.01 crosses 2; 1.5 plus 128 × 0.003 does not; a single term that
        // reaches the next binade on its own is declined too.
        assert!(!check(1.9, [0.01; SPAN]));
        assert!(check(1.5, [0.003; SPAN]));
        let mut terms = [0.0; SPAN];
        terms[5] = 3.0;
        assert!(!check(1.5, terms));
    }

    #[test]
    fn zero_tiny_and_non_finite_sums_and_terms() {
        let mut one = [0.0; SPAN];
        one[100] = 1e-3;
        // From zero the lanes answer only when every term is zero.
        assert!(check(0.0, [0.0; SPAN]));
        assert!(!check(0.0, one));
        // A subnormal sum, and a sum far below the least binade the lanes use.
        assert!(check(1e-310, [0.0; SPAN]));
        assert!(!check(1e-310, [1e-320; SPAN]));
        assert!(!check(1e-300, [1e-305; SPAN]));
        // Terms far below the grid's half step are lost in both.
        assert!(check(1.0, [1e-30; SPAN]));
        // NaN and infinite terms and sums, and a sum that overflows.
        for bad in [f64::NAN, f64::INFINITY] {
            let mut terms = [1e-3; SPAN];
            terms[64] = bad;
            assert!(!check(1.0, terms));
            assert!(!check(bad, [1e-3; SPAN]));
        }
        assert!(!check(f64::MAX, [f64::MAX / 64.0; SPAN]));
        assert!(check(f64::MAX / 2.0, [1e290; SPAN]));
    }
}
