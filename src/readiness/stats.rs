//! The figures of one weight, from its stored bytes or its values, without widening the whole
//! tensor: each output channel is read twice, once for the ranges and once for the sums (f32
//! channels stored in one run straight from their bytes, others decoded into a small buffer),
//! which run over the channels in order, so that every figure is the same to the last digit
//! whatever the weight's layout.

use crate::graph::node_label;
use crate::proto::NodeProto;
use crate::tensor::{self, Dtype};

use super::binade::Totals;
use super::lanes::ChannelValues;
use super::layout::{ChannelLayout, Elements};
use super::sums::{Grid, Sums};
use super::{LayerReadiness, MIN_EFFECTIVE_BITS};
use crate::isa::Isa;
use crate::scaled::largest_f32_ignoring_nan;

/// The figures of the weight `name` of `node`, channels laid out as `layout`.
pub fn layer(
    node: &NodeProto,
    name: &str,
    layout: &ChannelLayout,
    elements: Elements,
) -> LayerReadiness {
    let channels = layout.channels();
    let mut values = Vec::new();
    let ranges: Vec<f64> = (0..channels)
        .map(|k| match layout.f32_run(elements, k) {
            Some(raw) => f32_range(raw),
            None => {
                layout.gather(elements, k, &mut values);
                values.iter().fold(0.0, |m: f64, v| m.max(v.abs()))
            }
        })
        .collect();
    let tensor_grid = tensor_grid(&ranges);
    let mut sums = Sums::default();
    let mut scratch = Vec::new();
    for (k, &range) in ranges.iter().enumerate() {
        let channel_grid = Grid::new(range / 127.0);
        let channel_values = match layout.f32_run(elements, k) {
            Some(raw) => ChannelValues::F32(raw),
            None => {
                layout.gather(elements, k, &mut values);
                ChannelValues::Values(&values)
            }
        };
        sums.add_channel(channel_values, &tensor_grid, &channel_grid, &mut scratch);
    }
    figures(node, name, ranges, sums.totals(), sums.non_finite)
}

/// The largest magnitude among little-endian elements of `dtype` (NaN ignored), as the ranges
/// of [`layer`] take it.
pub(super) fn range_of(dtype: Dtype, raw: &[u8]) -> f64 {
    match dtype {
        Dtype::F32 => f32_range(raw),
        _ => {
            let mut values = Vec::new();
            tensor::decode_le_into(dtype, raw, &mut values);
            values.iter().fold(0.0, |m: f64, v| m.max(v.abs()))
        }
    }
}

/// The per-tensor INT8 grid of a weight whose channel ranges are `ranges`.
pub(super) fn tensor_grid(ranges: &[f64]) -> Grid {
    Grid::new(ranges.iter().copied().fold(0.0, f64::max) / 127.0)
}

/// The figures of the weight `name` of `node` from its channel ranges and its sums, taken
/// over its channels in order on the grids of [`tensor_grid`] and of each channel's range.
pub(super) fn figures(
    node: &NodeProto,
    name: &str,
    ranges: Vec<f64>,
    totals: Totals,
    non_finite: usize,
) -> LayerReadiness {
    let max_range = ranges.iter().copied().fold(0.0, f64::max);
    let tensor_grid = tensor_grid(&ranges);
    let Totals {
        signal,
        tensor_noise,
        channel_noise,
    } = totals;
    let median = median(&ranges);
    let db = |noise: f64| (noise > 0.0 && non_finite == 0).then(|| 10.0 * (signal / noise).log10());
    let starved = ranges
        .iter()
        .filter(|&&r| r > 0.0 && (r / tensor_grid.step).log2() + 1.0 < MIN_EFFECTIVE_BITS)
        .count();
    LayerReadiness {
        node: node_label(node),
        op_type: node.op_type().to_string(),
        weight: name.to_string(),
        channels: ranges.len(),
        range_spread: if median > 0.0 {
            max_range / median
        } else if max_range > 0.0 {
            f64::INFINITY
        } else {
            1.0
        },
        sqnr_per_tensor_db: db(tensor_noise),
        sqnr_per_channel_db: db(channel_noise),
        starved_channels: starved,
        zero_channels: ranges.iter().filter(|&&r| r == 0.0).count(),
        non_finite_elements: non_finite,
        channel_ranges: ranges,
    }
}

/// The middle of `ranges` in order (the mean of the two middle ones for an even count), found
/// by selection: a sort cost a tenth of the readiness thread's time outside the sums on
/// mobilenet_v3_small.
fn median(ranges: &[f64]) -> f64 {
    let mut ranges = ranges.to_vec();
    let count = ranges.len();
    if count == 0 {
        return f64::NAN;
    }
    let (below, &mut upper, _) = ranges.select_nth_unstable_by(count / 2, f64::total_cmp);
    match count % 2 {
        1 => upper,
        _ => {
            let lower = below
                .iter()
                .copied()
                .max_by(f64::total_cmp)
                .unwrap_or(upper);
            (lower + upper) / 2.0
        }
    }
}

/// The largest magnitude among little-endian f32 values, NaN ignored (as `f64::max` does),
/// with the widest vector instructions the processor has.
fn f32_range(raw: &[u8]) -> f64 {
    largest_f32_ignoring_nan(Isa::widest(), raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::layout::tests::channel_values;

    fn conv(name: &str) -> NodeProto {
        NodeProto {
            op_type: Some("Conv".into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn metrics_of_a_tiny_weight_match_hand_computation() {
        // Two output channels: [1, -0.5] and [0.01, 0.02].
        let data = [1.0, -0.5, 0.01, 0.02];
        let dims = [2, 2, 1, 1];
        assert_eq!(
            channel_values(&dims, 0, 1, &data),
            vec![vec![1.0, -0.5], vec![0.01, 0.02]]
        );
        let layout = ChannelLayout::new(&dims, 0, 1);
        let l = layer(&conv("c"), "w", &layout, Elements::Values(&data));
        // r = [1, 0.02]; median 0.51; spread 1/0.51.
        assert!((l.range_spread - 1.0 / 0.51).abs() < 1e-12);
        // Per tensor, Δ = 1/127: 1 → 127Δ exact; -0.5 → -64Δ (63.5 rounds to even 64);
        // 0.01 → 1Δ (1.27); 0.02 → 3Δ (2.54).
        let d = 1.0 / 127.0;
        let noise = (0.5f64 - 64.0 * d).powi(2) + (0.01 - d).powi(2) + (0.02 - 3.0 * d).powi(2);
        let signal = 1.0 + 0.25 + 0.0001 + 0.0004;
        let want = 10.0 * (signal / noise).log10();
        assert!((l.sqnr_per_tensor_db.unwrap() - want).abs() < 1e-9);
        // Channel 2 uses 2.54 steps: log2(2.54) + 1 = 2.3 bits < 4.
        assert_eq!(l.starved_channels, 1);
        assert_eq!(l.zero_channels, 0);
        assert!(l.sqnr_per_channel_db.unwrap() > l.sqnr_per_tensor_db.unwrap());
    }

    #[test]
    fn stored_bytes_give_the_figures_of_their_values() {
        // f16 and f32 storage of the same values: every figure identical to the values' own.
        let data = [0.5, -0.25, 3.0, 0.125, -2.0, 1.5];
        let dims = [3, 2];
        for dtype in [Dtype::F16, Dtype::F32, Dtype::F64] {
            let mut raw = Vec::new();
            let _ = tensor::encode_le_into(dtype, &data, &mut raw);
            for axis in [0, 1] {
                let layout = ChannelLayout::new(&dims, axis, 1);
                let from_values = layer(&conv("c"), "w", &layout, Elements::Values(&data));
                let from_raw = layer(&conv("c"), "w", &layout, Elements::Raw(dtype, &raw));
                assert_eq!(from_raw, from_values, "{dtype:?} axis {axis}");
            }
        }
    }

    #[test]
    fn a_weight_holding_nan_has_no_sqnr_and_is_the_worst_layer() {
        let layout = ChannelLayout::new(&[2, 2], 0, 1);
        let nan = layer(
            &conv("nan"),
            "w",
            &layout,
            Elements::Values(&[1.0, f64::NAN, 0.5, 0.25]),
        );
        assert_eq!(nan.non_finite_elements, 1);
        assert_eq!(
            (nan.sqnr_per_tensor_db, nan.sqnr_per_channel_db),
            (None, None)
        );
        let fine = layer(
            &conv("fine"),
            "w",
            &layout,
            Elements::Values(&[1.0, 0.3, 0.5, 0.25]),
        );
        assert_eq!(fine.non_finite_elements, 0);
        assert!(fine.sqnr_per_tensor_db.is_some());
        let r = super::super::Readiness {
            layers: vec![fine, nan],
            batch_norms: vec![],
            warnings: vec![],
        };
        assert_eq!(r.worst(1)[0].node, "nan");
    }

    #[test]
    fn every_non_finite_element_is_counted_in_whichever_channel() {
        // A NaN in the first channel, an infinity and a NaN in the third, stored f32 and as
        // values; squares that overflow f64 are no non-finite elements.
        let values = [1.0, f64::NAN, 0.5, 0.25, f64::INFINITY, f64::NAN, 2.0, -1.0];
        let layout = ChannelLayout::new(&[4, 2], 0, 1);
        let raw: Vec<u8> = values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect();
        for elements in [Elements::Values(&values), Elements::Raw(Dtype::F32, &raw)] {
            assert_eq!(
                layer(&conv("c"), "w", &layout, elements).non_finite_elements,
                3
            );
        }
        let huge = [1e200, -1e200, 1.0, 2.0];
        let layout = ChannelLayout::new(&[2, 2], 0, 1);
        let overflowing = layer(&conv("c"), "w", &layout, Elements::Values(&huge));
        assert_eq!(overflowing.non_finite_elements, 0);
    }

    #[test]
    fn the_median_by_selection_is_the_median_of_the_sorted_ranges() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for count in 1..40 {
            let ranges: Vec<f64> = (0..count)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Repeated values and zeros among them, as dead channels give.
                    match i % 5 {
                        0 => 0.0,
                        1 => 0.5,
                        _ => (state >> 11) as f64 / (1u64 << 53) as f64,
                    }
                })
                .collect();
            let mut sorted = ranges.clone();
            sorted.sort_by(f64::total_cmp);
            let want = match count % 2 {
                1 => sorted[count / 2],
                _ => (sorted[count / 2 - 1] + sorted[count / 2]) / 2.0,
            };
            assert_eq!(median(&ranges).to_bits(), want.to_bits(), "{ranges:?}");
        }
    }

    #[test]
    fn f32_ranges_ignore_nan_as_the_maximum_of_values_does() {
        let values = [1.5f32, -3.25, f32::NAN, 0.0, -0.0];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let want = values
            .iter()
            .fold(0.0, |m: f64, &v| m.max((v as f64).abs()));
        assert_eq!(f32_range(&raw), want);
        assert_eq!(f32_range(&f32::NAN.to_le_bytes()), 0.0);
        assert_eq!(f32_range(&f32::NEG_INFINITY.to_le_bytes()), f64::INFINITY);
        // Every length around the eight lanes, the largest at every position, NaNs between.
        for len in 1..40 {
            for at in 0..len {
                let values: Vec<f32> = (0..len)
                    .map(|k| match k {
                        k if k == at => -7.5,
                        k if k % 5 == 3 => f32::NAN,
                        k => (k as f32 * 0.37).sin(),
                    })
                    .collect();
                let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                for isa in Isa::available() {
                    let got = largest_f32_ignoring_nan(isa, &raw);
                    assert_eq!(got, 7.5, "{isa:?}, length {len}, largest at {at}");
                }
            }
        }
    }
}
