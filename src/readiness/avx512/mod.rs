//! The element loop of a weight's sums ([`lanes`](super::lanes)) written out for AVX-512 (F, DQ
//! and VL), where every element of every channel runs in lanes:
//!
//! - a span of terms runs on from one channel to the next ([`Pending`]): its terms are rounded
//!   onto their sums' grids and added in lanes as they are computed ([`binade`](super::binade)),
//!   and kept: a span with terms half-way on a sum's grid is settled by a scan over those ties,
//!   and one that leaves its binade is added one term after the other;
//! - a channel's last elements are loaded under a mask, the lanes beyond them zero, whose terms
//!   are zero and change no sum;
//! - a block with an element near a half step has its step counts taken again by the division
//!   (for the other elements of the block the reciprocal and the division give the same
//!   integer), so no channel is summed twice;
//! - `vrndscalepd` rounds a step count in one instruction (the portable loop adds and subtracts
//!   1.5·2⁵²) and `vrangepd` takes the larger magnitude of two lanes in one.
//!
//! Every term is the same IEEE operation as in the element loop, in the same order: a
//! multiplication and a subtraction stay two instructions, the clip keeps `f64::clamp`'s
//! operands (a NaN passes through), and the rounding differs only in the sign of a zero, which
//! leaves every difference and every square the same. So the sums are identical to the bit, as
//! the tests of [`sums`](super::sums) check on every variant.

mod pending;

use std::arch::x86_64::*;

use super::binade::{binade_of, Totals, SPAN};
use super::lanes::{ChannelValues, Grids, NEAR_HALF};
pub(super) use pending::Pending;
use pending::{end_of_span, LANES};

/// `vrangepd`'s immediate for the larger magnitude of its operands, sign cleared.
const LARGER_MAGNITUDE: i32 = 0b1011;

/// `vrndscalepd`'s immediate for the nearest integer, ties to even, without the precision
/// exception.
const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// Whether this processor runs the loop.
pub(super) fn runs() -> bool {
    crate::isa::has_avx512_dq_vl()
}

/// Adds the terms of `values` to the span `pending` (made on first use), which adds them to
/// `sums` each time it is full; `false`, and nothing added, when the processor lacks the
/// instructions. The span's last terms reach `sums` by [`Pending::settle_into`].
#[allow(unsafe_code)]
pub(super) fn accumulate(
    sums: &mut Totals,
    pending: &mut Option<Box<Pending>>,
    values: ChannelValues,
    grids: &Grids,
) -> bool {
    if !runs() {
        return false;
    }
    let pending = pending.get_or_insert_with(Pending::new);
    // SAFETY: the processor has the three instruction sets, checked just before.
    unsafe { accumulate_in_lanes(sums, pending, values, grids) };
    true
}

/// The two grids, each lane holding the same number.
#[derive(Clone, Copy)]
struct Lanes {
    tensor_step: __m512d,
    tensor: __m512d,
    channel_step: __m512d,
    channel: __m512d,
    low: __m512d,
    high: __m512d,
    near_half: __m512d,
}

/// The span's lanes for one sum: the start of the sum's binade, the terms rounded to its grid
/// added, and their largest distance from their rounding.
#[derive(Clone, Copy)]
struct Rounded {
    base: __m512d,
    total: __m512d,
    worst: __m512d,
}

#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn accumulate_in_lanes(
    sums: &mut Totals,
    pending: &mut Pending,
    values: ChannelValues,
    grids: &Grids,
) {
    let lanes = Lanes {
        tensor_step: _mm512_set1_pd(grids.tensor.0),
        tensor: _mm512_set1_pd(grids.tensor.1),
        channel_step: _mm512_set1_pd(grids.channel.0),
        channel: _mm512_set1_pd(grids.channel.1),
        low: _mm512_set1_pd(-127.0),
        high: _mm512_set1_pd(127.0),
        near_half: _mm512_set1_pd(NEAR_HALF),
    };
    let mut span = resume(sums, pending);
    let mut len = pending.len;
    let (blocks, last) = match values {
        ChannelValues::Values(v) => (v.len() / LANES, v.len() % LANES),
        ChannelValues::F32(raw) => (raw.len() / (4 * LANES), raw.len() / 4 % LANES),
    };
    let kept = &mut pending.terms;
    let mut block = 0;
    while block < blocks {
        let run = (blocks - block).min((SPAN - len) / LANES);
        let at = (len..).step_by(LANES);
        match values {
            ChannelValues::Values(v) => {
                for (b, at) in (block..block + run).zip(at) {
                    fold(&mut span, kept, at, block_terms(load_f64(v, b), &lanes));
                }
            }
            ChannelValues::F32(raw) => {
                for (b, at) in (block..block + run).zip(at) {
                    fold(&mut span, kept, at, block_terms(load_f32(raw, b), &lanes));
                }
            }
        }
        (block, len) = (block + run, len + run * LANES);
        end_span_if_full(sums, kept, &mut len, &mut span);
    }
    if last > 0 {
        let terms = block_terms(load_first(values, blocks, last), &lanes);
        fold(&mut span, kept, len, terms);
        len += LANES;
        end_span_if_full(sums, kept, &mut len, &mut span);
    }
    pending.len = len;
    for (k, sum) in span.iter().enumerate() {
        pending.rounded[k] = stored(sum.total);
        pending.worst[k] = stored(sum.worst);
    }
}

/// The lanes of the span in `pending`, whose sums are `sums`.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
#[allow(unsafe_code)]
fn resume(sums: &Totals, pending: &Pending) -> [Rounded; 3] {
    let starts = [sums.signal, sums.tensor_noise, sums.channel_noise];
    std::array::from_fn(|k| Rounded {
        base: _mm512_set1_pd(binade_of(starts[k])),
        // SAFETY: each array holds the eight f64 read.
        total: unsafe { _mm512_loadu_pd(pending.rounded[k].as_ptr()) },
        worst: unsafe { _mm512_loadu_pd(pending.worst[k].as_ptr()) },
    })
}

/// Adds a block's terms to the span, and keeps them from `at` on.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
#[allow(unsafe_code)]
fn fold(span: &mut [Rounded; 3], kept: &mut [[f64; SPAN]; 3], at: usize, terms: [__m512d; 3]) {
    for ((sum, terms), kept) in span.iter_mut().zip(terms).zip(kept.iter_mut()) {
        let rounded = _mm512_sub_pd(_mm512_add_pd(sum.base, terms), sum.base);
        sum.total = _mm512_add_pd(sum.total, rounded);
        let distance = _mm512_sub_pd(terms, rounded);
        sum.worst = _mm512_range_pd::<LARGER_MAGNITUDE>(distance, sum.worst);
        let kept = &mut kept[at..at + LANES];
        // SAFETY: `kept` has room for the eight f64 written.
        unsafe { _mm512_storeu_pd(kept.as_mut_ptr(), terms) };
    }
}

/// Adds the span to `sums` when it is full (`len` terms), and empties it.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
fn end_span_if_full(
    sums: &mut Totals,
    kept: &[[f64; SPAN]; 3],
    len: &mut usize,
    span: &mut [Rounded; 3],
) {
    if *len == SPAN {
        end_span(sums, kept, SPAN, span);
        *len = 0;
    }
}

/// Adds the span (its first `len` terms `kept`, in lanes `span`) to `sums`; the lanes are
/// empty again.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline(never)]
fn end_span(sums: &mut Totals, kept: &[[f64; SPAN]; 3], len: usize, span: &mut [Rounded; 3]) {
    let sums_in_order = [
        &mut sums.signal,
        &mut sums.tensor_noise,
        &mut sums.channel_noise,
    ];
    for ((sum, lanes), kept) in sums_in_order.into_iter().zip(span.iter_mut()).zip(kept) {
        let total = _mm512_reduce_add_pd(lanes.total);
        let worst = _mm512_reduce_max_pd(lanes.worst);
        *sum = end_of_span(*sum, total, worst, &kept[..len]);
        *lanes = Rounded {
            base: _mm512_set1_pd(binade_of(*sum)),
            total: _mm512_setzero_pd(),
            worst: _mm512_setzero_pd(),
        };
    }
}

/// Block `block` of f64 values.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
#[allow(unsafe_code)]
fn load_f64(values: &[f64], block: usize) -> __m512d {
    let values = &values[LANES * block..][..LANES];
    // SAFETY: `values` holds the eight f64 read.
    unsafe { _mm512_loadu_pd(values.as_ptr()) }
}

/// Block `block` of little-endian f32 elements, widened.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
#[allow(unsafe_code)]
fn load_f32(raw: &[u8], block: usize) -> __m512d {
    let bytes = &raw[4 * LANES * block..][..4 * LANES];
    // SAFETY: `bytes` holds the eight f32 read (unaligned loads).
    _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(bytes.as_ptr().cast()) })
}

/// The first `count` (1 to 7) elements of block `block` of `values`, widened, the other lanes
/// zero.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
#[allow(unsafe_code)]
fn load_first(values: ChannelValues, block: usize, count: usize) -> __m512d {
    let mask: __mmask8 = (1u8 << count) - 1;
    match values {
        ChannelValues::F32(raw) => {
            let bytes = &raw[4 * LANES * block..][..4 * count];
            // SAFETY: `bytes` holds the `count` f32 the mask lets the load read.
            _mm512_cvtps_pd(unsafe { _mm256_maskz_loadu_ps(mask, bytes.as_ptr().cast()) })
        }
        ChannelValues::Values(v) => {
            let values = &v[LANES * block..][..count];
            // SAFETY: `values` holds the `count` f64 the mask lets the load read.
            unsafe { _mm512_maskz_loadu_pd(mask, values.as_ptr()) }
        }
    }
}

/// The lanes as an array.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
#[allow(unsafe_code)]
fn stored(lanes: __m512d) -> [f64; LANES] {
    let mut out = [0.0; LANES];
    // SAFETY: `out` has room for the eight f64 written.
    unsafe { _mm512_storeu_pd(out.as_mut_ptr(), lanes) };
    out
}

/// The terms of a block, side by side: the squares and the two noises.
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
fn block_terms(v: __m512d, lanes: &Lanes) -> [__m512d; 3] {
    let clip = |steps| _mm512_min_pd(lanes.high, _mm512_max_pd(lanes.low, steps));
    let nearest = |steps| _mm512_roundscale_pd::<NEAREST>(steps);
    let tensor_steps = clip(_mm512_mul_pd(v, lanes.tensor));
    let channel_steps = clip(_mm512_mul_pd(v, lanes.channel));
    let (mut tensor_nearest, mut channel_nearest) = (nearest(tensor_steps), nearest(channel_steps));
    let distance = _mm512_range_pd::<LARGER_MAGNITUDE>(
        _mm512_sub_pd(tensor_steps, tensor_nearest),
        _mm512_sub_pd(channel_steps, channel_nearest),
    );
    if _mm512_cmp_pd_mask::<_CMP_GT_OQ>(distance, lanes.near_half) != 0 {
        tensor_nearest = nearest(clip(_mm512_div_pd(v, lanes.tensor_step)));
        channel_nearest = nearest(clip(_mm512_div_pd(v, lanes.channel_step)));
    }
    let tensor_error = _mm512_sub_pd(v, _mm512_mul_pd(tensor_nearest, lanes.tensor_step));
    let channel_error = _mm512_sub_pd(v, _mm512_mul_pd(channel_nearest, lanes.channel_step));
    [
        _mm512_mul_pd(v, v),
        _mm512_mul_pd(tensor_error, tensor_error),
        _mm512_mul_pd(channel_error, channel_error),
    ]
}
