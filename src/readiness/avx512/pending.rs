//! The span the loop adds in lanes, carried from one channel to the next, and how it reaches
//! the sums, to the bit of the terms one after the other.
//!
//! Pattern: a span of non-negative terms added to a sum `s` in the binade `[b, 2b)`, whose grid
//! has the step `u` ([`binade`](crate::readiness::binade)): each term `t` is rounded to the
//! grid, `r = fl(b + t) − b`, and the rounded terms added in lanes.
//!
//! Preconditions: the sum stays below `2b` and `b` is not tiny. A term that lies half-way on
//! the grid (a tie: `|t − r| = u/2`, common for squares of f32 values, which have 48
//! significant bits) was the span's undoing in [`binade`](crate::readiness::binade): the sum in
//! order rounds it to an even sum, which depends on every term before.
//!
//! Math: in units of `u` the sum is an integer `S` and a term is `T`; a term that is no tie
//! adds `R = round(T)` whatever `S` is; a tie, `T = I + ½`, leaves `S + I` or `S + I + 1`,
//! whichever is even. `fl(b + t)` rounds the tie to the even one of `I` and `I + 1` (`b` is
//! even on its grid), so the rounded term is right when `S` is even and one step off, towards
//! `t`, when `S` is odd. After a tie the sum is even, so the parity of `S` at a tie is the
//! parity of the terms since the tie before (or of the start and the terms since it): the
//! lowest bit of `fl(b + t)` for each. The lanes take the rounded terms, the ties and those
//! bits; a scan over the ties gives the correction.
//!
//! Rewrite: a span that leaves its binade or starts on a tiny sum is added one term after the
//! other, that sum alone.

use std::arch::x86_64::*;

use crate::readiness::binade::{add_in_order, binade_of, settle, Totals, HALF_STEP, LEAST, SPAN};

/// Lanes in a block.
pub(super) const LANES: usize = 8;

/// A span whose terms come a block of [`LANES`] at a time, from one channel or several: the
/// terms so far, and per sum the terms rounded to the grid of the binade the sum is in, added
/// lane by lane, with their largest distance from their rounding. The sums stay as they are
/// until the span ends.
pub(crate) struct Pending {
    /// The terms so far: the squares and the two noises, in order.
    pub terms: [[f64; SPAN]; 3],
    /// Per sum and lane, the rounded terms added.
    pub rounded: [[f64; LANES]; 3],
    /// Per sum and lane, the largest distance of a term from its rounding.
    pub worst: [[f64; LANES]; 3],
    /// Terms in the span.
    pub len: usize,
}

impl Pending {
    /// An empty span.
    pub(super) fn new() -> Box<Pending> {
        Box::new(Pending {
            terms: [[0.0; SPAN]; 3],
            rounded: [[0.0; LANES]; 3],
            worst: [[0.0; LANES]; 3],
            len: 0,
        })
    }

    /// `ΣW²` after the span, as far as being finite goes: `signal` and the rounded squares.
    pub(crate) fn signal_after(&self, signal: f64) -> f64 {
        signal + self.rounded[0].iter().sum::<f64>()
    }

    /// Ends the span: its terms added to `sums`, each sum to the bit of its terms one after
    /// the other. The span is empty again.
    #[allow(unsafe_code)]
    pub(crate) fn settle_into(&mut self, sums: &mut Totals) {
        if super::runs() {
            // SAFETY: the processor has the instruction sets, checked just before.
            unsafe {
                let mut span = super::resume(sums, self);
                super::end_span(sums, &self.terms, self.len, &mut span);
            }
        } else {
            // Never made on such a processor: the terms one after the other all the same.
            let [signal, tensor_noise, channel_noise] = &self.terms;
            let len = self.len;
            add_in_order(
                sums,
                &signal[..len],
                &tensor_noise[..len],
                &channel_noise[..len],
            );
        }
        self.len = 0;
        self.rounded = [[0.0; LANES]; 3];
        self.worst = [[0.0; LANES]; 3];
    }
}

/// `start` plus `terms` one after the other, given `total`, the terms rounded to the grid of
/// the binade of `start` and added in any grouping, and `worst`, their largest distance from
/// their rounding: in lanes when the sum stays in its binade, ties and all, otherwise one term
/// after the other.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
pub(super) fn end_of_span(start: f64, total: f64, worst: f64, terms: &[f64]) -> f64 {
    let base = binade_of(start);
    settle(start, base, total, worst)
        .or_else(|| {
            let tied = base >= LEAST && worst == base * HALF_STEP;
            tied.then(|| end_with_ties(start, base, total, terms))
                .flatten()
        })
        .unwrap_or_else(|| terms.iter().fold(start, |sum, t| sum + t))
}

/// `start` plus `terms` one after the other, when the sum stays in the binade that starts at
/// `base` (not tiny), ties and all (the module's Math); `total` is the terms rounded to the
/// binade's grid, added. `terms` is whole blocks.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[allow(unsafe_code)]
fn end_with_ties(start: f64, base: f64, total: f64, terms: &[f64]) -> Option<f64> {
    let (b, half) = (_mm512_set1_pd(base), _mm512_set1_pd(base * HALF_STEP));
    // The parity of the sum, in steps of `u`, before the block's first term.
    let mut odd_sum = start.to_bits() & 1 == 1;
    let mut correction = 0i64;
    for terms in terms.chunks_exact(LANES) {
        // SAFETY: a chunk holds the eight f64 read.
        let t = unsafe { _mm512_loadu_pd(terms.as_ptr()) };
        let on_grid = _mm512_add_pd(b, t);
        let distance = _mm512_abs_pd(_mm512_sub_pd(t, _mm512_sub_pd(on_grid, b)));
        let mut ties = _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(distance, half);
        let odd = _mm512_test_epi64_mask(_mm512_castpd_si512(on_grid), _mm512_set1_epi64(1));
        let mut from = 0;
        while ties != 0 {
            let at = ties.trailing_zeros();
            let before = odd & lanes_between(from, at);
            if odd_sum ^ (before.count_ones() % 2 == 1) {
                let t = terms[at as usize];
                correction += if t > (base + t) - base { 1 } else { -1 };
            }
            (odd_sum, from) = (false, at + 1);
            ties &= ties - 1;
        }
        odd_sum ^= (odd & lanes_between(from, LANES as u32)).count_ones() % 2 == 1;
    }
    let end = start + (total + correction as f64 * base * 2.0 * HALF_STEP);
    (end < 2.0 * base).then_some(end)
}

/// The mask of lanes `from` to `to`, `to` excluded.
fn lanes_between(from: u32, to: u32) -> u8 {
    ((1u16 << to) - (1u16 << from)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `start` plus `terms` one after the other.
    fn in_order(start: f64, terms: &[f64]) -> f64 {
        terms.iter().fold(start, |sum, t| sum + t)
    }

    /// What the scan over the ties and the whole end of a span in the binade `[1, 2)` give;
    /// `None`, said on stderr, where the processor lacks the instructions.
    #[allow(unsafe_code)]
    fn ends(start: f64, total: f64, worst: f64, terms: &[f64]) -> Option<(Option<f64>, f64)> {
        if !super::super::runs() {
            eprintln!("skipped: this processor lacks AVX-512 F, DQ or VL");
            return None;
        }
        // SAFETY: the processor has the instruction sets, checked just before.
        unsafe {
            Some((
                end_with_ties(start, 1.0, total, terms),
                end_of_span(start, total, worst, terms),
            ))
        }
    }

    #[test]
    fn ties_on_odd_and_even_sums_end_where_the_terms_one_after_the_other_end() {
        // Sums in [1, 2), whose grid has the step u = 2⁻⁵², and spans of terms that are ties
        // (an odd number of half steps), on the grid, between, or zero, so that the sum in
        // order is odd at some ties and even at others: the scan over the ties gives the sum in
        // order to the bit, where the plain lanes decline.
        let u = f64::EPSILON;
        let mut state = 0x853c_49e6_748f_ea9bu64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut declined = 0;
        for trial in 0..2000 {
            let start = 1.0 + next(1 << 40) as f64 * u;
            let terms: Vec<f64> = (0..SPAN)
                .map(|_| match next(4) {
                    0 => (next(64) as f64 + 0.5) * u,
                    1 => next(64) as f64 * u,
                    2 => (next(64) as f64 + 0.25) * u,
                    _ => 0.0,
                })
                .collect();
            let (total, worst) = terms.iter().fold((0.0, 0.0f64), |(total, worst), &t| {
                let rounded = (1.0 + t) - 1.0;
                (total + rounded, worst.max((t - rounded).abs()))
            });
            let want = in_order(start, &terms).to_bits();
            let Some((ties, end)) = ends(start, total, worst, &terms) else {
                return;
            };
            assert_eq!(ties.map(f64::to_bits), Some(want), "trial {trial}");
            assert_eq!(end.to_bits(), want, "trial {trial}");
            declined += usize::from(settle(start, 1.0, total, worst).is_none());
        }
        assert!(declined > 1900, "{declined} of 2000 spans had a tie");
    }

    #[test]
    fn a_span_that_leaves_its_binade_is_added_one_term_after_the_other() {
        // From just below 2, ties and all, the sum crosses into [2, 4): the scan declines and
        // the terms are added one after the other.
        let u = f64::EPSILON;
        let start = 2.0 - 40.0 * u;
        let terms = [1.5 * u; SPAN];
        let (total, worst) = (SPAN as f64 * 2.0 * u, u / 2.0);
        let Some((ties, end)) = ends(start, total, worst, &terms) else {
            return;
        };
        assert_eq!(ties, None);
        assert_eq!(end.to_bits(), in_order(start, &terms).to_bits());
    }
}
